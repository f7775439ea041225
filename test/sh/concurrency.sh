#!/usr/bin/env bash
# Concurrency: four sessions for 15 seconds, loading logons while others
# compute invoices, count people and REFRESH MATERIALIZED VIEW CONCURRENTLY
# (pgbench, bounded in time).  Afterwards: no failed transaction, no
# deadlock, every committed load kept, and the figures the sessions saw
# during the storm (invoice totals, distinct counts, the view's people)
# equal to their values before it and to their recomputations in the same
# snapshot.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
PGROOT=$(cluster_root)
DB=mspbill_test_concurrency
work="$TOP/test/out/concurrency"
rm -rf "$work"; mkdir -p "$work"
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
echo "1..11"

fresh_demo_db "$DB"
q -c "CREATE MATERIALIZED VIEW daily_people AS
        SELECT l.client_id, (l.at AT TIME ZONE 'UTC')::date AS day, userset_agg(a.person_id) AS people
          FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.kind = 'individual' GROUP BY 1, 2" \
      -c "CREATE UNIQUE INDEX ON daily_people (client_id, day)" \
      -c "CREATE TABLE loads_done (n serial)" \
      -c "CREATE TABLE seen_invoices (hospital numeric, dental numeric)" \
      -c "CREATE TABLE seen_counts (distinct_count bigint, count_distinct bigint, mv_people bigint, people bigint)"
# the loads add logons of people who are billable already (the nurses), so
# every figure below must stay what it was before the storm
hospital=$(q -c "SELECT (msp_invoice(1)).total")
dental=$(q -c "SELECT (msp_invoice(2)).total")
people=$(q -c "SELECT cardinality(userset_union(people)) FROM daily_people")
logons=$(q -c "SELECT count(*) FROM logons")
tap_check "the demo invoices before the storm" "$hospital $dental" "498.00 942.00"

cat >"$work/load.sql" <<'SQL'
\set account random(5, 7)
BEGIN;
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (1, :account, 5, now() - random() * interval '40 days');
INSERT INTO loads_done DEFAULT VALUES;
COMMIT;
SQL
# each session records what it saw; the assertions read it afterwards
cat >"$work/invoice.sql" <<'SQL'
INSERT INTO seen_invoices SELECT (msp_invoice(1)).total, (msp_invoice(2)).total;
SQL
cat >"$work/refresh.sql" <<'SQL'
REFRESH MATERIALIZED VIEW CONCURRENTLY daily_people;
SQL
cat >"$work/count.sql" <<'SQL'
INSERT INTO seen_counts
SELECT distinct_count(account_id), count(DISTINCT account_id),
       (SELECT cardinality(userset_union(people)) FROM daily_people),
       (SELECT count(DISTINCT a.person_id) FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.kind = 'individual')
  FROM logons;
SQL
log_lines=$(wc -l <"$PGROOT/server.log")
"$BINDIR/pgbench" -n -c 4 -j 2 -T 15 -f "$work/load.sql@6" -f "$work/invoice.sql@2" -f "$work/refresh.sql@1" \
	-f "$work/count.sql@1" "$DB" >"$work/pgbench.log" 2>&1
tap_check "pgbench ran to the end" "$?" "0"
tap_check "no failed transaction" "$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$work/pgbench.log")" "0"
tap_check "no deadlock" "$(tail -n +"$((log_lines + 1))" "$PGROOT/server.log" | grep -c 'deadlock detected')" "0"

loads=$(awk '/^SQL script 1:/ { on = 1 } on && /^ - [0-9]+ transactions/ { print $2; exit }' "$work/pgbench.log")
# pgbench counts the loads that ended before its deadline; a load in
# flight then may still commit, so its count is a lower bound
tap_check "every committed load is there, and pgbench's count of them" \
	"$(q -c "SELECT count(*) - $logons = (SELECT count(*) FROM loads_done) AND (SELECT count(*) FROM loads_done) >= ${loads:-0} AND ${loads:-0} > 0 FROM logons")" "t"
tap_check "invoices were computed during the storm, always the same totals" \
	"$(q -c "SELECT count(*) > 0, count(*) FILTER (WHERE hospital IS DISTINCT FROM $hospital OR dental IS DISTINCT FROM $dental) FROM seen_invoices")" "t|0"
tap_check "counts during the storm: distinct_count = COUNT(DISTINCT) in the same snapshot" \
	"$(q -c "SELECT count(*) > 0, count(*) FILTER (WHERE distinct_count IS DISTINCT FROM count_distinct) FROM seen_counts")" "t|0"
tap_check "the concurrently refreshed view always held every person, as the raw logons did" \
	"$(q -c "SELECT count(*) FILTER (WHERE mv_people IS DISTINCT FROM $people OR people IS DISTINCT FROM $people) FROM seen_counts")" "0"

# the view as the storm's last refresh left it may lack later logons, but
# never holds more than the logons do
tap_check "the view never holds a person on a day without their logon" \
	"$(q -c "SELECT count(*) FROM daily_people d LEFT JOIN (
	  SELECT l.client_id, (l.at AT TIME ZONE 'UTC')::date AS day, userset_agg(a.person_id) AS people
	    FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.kind = 'individual' GROUP BY 1, 2) r
	  USING (client_id, day) WHERE r.people IS NULL OR (d.people - r.people) <> userset(ARRAY[]::bigint[])")" "0"
q -c "REFRESH MATERIALIZED VIEW CONCURRENTLY daily_people"
tap_check "a last concurrent refresh brings the view to its recomputation" "$(q -c "
	SELECT count(*) FROM daily_people d FULL JOIN (
	  SELECT l.client_id, (l.at AT TIME ZONE 'UTC')::date AS day, userset_agg(a.person_id) AS people
	    FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.kind = 'individual' GROUP BY 1, 2) r
	  USING (client_id, day) WHERE d.people IS DISTINCT FROM r.people")" "0"
tap_check "and the invoices after the storm are the ones before it" \
	"$(q -c "SELECT (msp_invoice(1)).total || ' ' || (msp_invoice(2)).total")" "$hospital $dental"

drop_db "$DB"
