#!/usr/bin/env bash
# Concurrency: four sessions for 15 seconds, loading logons while others
# compute invoices, count people and REFRESH MATERIALIZED VIEW CONCURRENTLY
# (pgbench, bounded in time).  Afterwards: no failed transaction, no
# deadlock, and every figure equals its recomputation.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
PGROOT=$(cluster_root)
DB=mspbill_test_concurrency
work="$TOP/test/out/concurrency"
rm -rf "$work"; mkdir -p "$work"
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
echo "1..6"

fresh_demo_db "$DB"
q -c "CREATE MATERIALIZED VIEW daily_people AS
        SELECT l.client_id, (l.at AT TIME ZONE 'UTC')::date AS day, userset_agg(a.person_id) AS people
          FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.kind = 'individual' GROUP BY 1, 2" \
      -c "CREATE UNIQUE INDEX ON daily_people (client_id, day)"

cat >"$work/load.sql" <<'SQL'
\set account random(5, 7)
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (1, :account, 5, now() - random() * interval '40 days');
SQL
cat >"$work/invoice.sql" <<'SQL'
SELECT (msp_invoice(1)).total, (msp_invoice(2)).total;
SQL
cat >"$work/refresh.sql" <<'SQL'
REFRESH MATERIALIZED VIEW CONCURRENTLY daily_people;
SQL
cat >"$work/count.sql" <<'SQL'
SELECT distinct_count(account_id), (SELECT cardinality(userset_union(people)) FROM daily_people) FROM logons;
SQL
log_lines=$(wc -l <"$PGROOT/server.log")
"$BINDIR/pgbench" -n -c 4 -j 2 -T 15 -f "$work/load.sql@6" -f "$work/invoice.sql@2" -f "$work/refresh.sql@1" \
	-f "$work/count.sql@1" "$DB" >"$work/pgbench.log" 2>&1
tap_check "pgbench ran to the end" "$?" "0"
tap_check "no failed transaction" "$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$work/pgbench.log")" "0"
tap_check "no deadlock" "$(tail -n +"$((log_lines + 1))" "$PGROOT/server.log" | grep -c 'deadlock detected')" "0"
q -c "REFRESH MATERIALIZED VIEW CONCURRENTLY daily_people"
tap_check "the view equals its recomputation" "$(q -c "
	SELECT count(*) FROM daily_people d FULL JOIN (
	  SELECT l.client_id, (l.at AT TIME ZONE 'UTC')::date AS day, userset_agg(a.person_id) AS people
	    FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.kind = 'individual' GROUP BY 1, 2) r
	  USING (client_id, day) WHERE d.people IS DISTINCT FROM r.people")" "0"
tap_check "distinct_count equals COUNT(DISTINCT) after the storm" \
	"$(q -c "SELECT distinct_count(account_id) = count(DISTINCT account_id) FROM logons")" "t"
tap_check "the dental invoice never moved" "$(q -c "SELECT (msp_invoice(2)).total")" "942.00"

drop_db "$DB"
