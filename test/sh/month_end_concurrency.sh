#!/usr/bin/env bash
# Month-end beside loading: two CALL msp_finalize_period runs of the same
# month at once, while pgbench loads late logons into that month (people
# not billed yet, so that every load changes what an invoice would bill)
# and logons of the current month.  Afterwards: no failed load, no
# deadlock, every client finalized exactly once across the two runs (the
# other run reports it already finalized), and every stored invoice read
# from one snapshot: its lines add up to its total, its evidence names
# exactly its users, and what the late logons add shows up as drift, to
# the cent.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
PGROOT=$(cluster_root)
DB=mspbill_test_month_end_concurrency
work="$TOP/test/out/month_end_concurrency"
rm -rf "$work"; mkdir -p "$work"
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
echo "1..10"

drop_db "$DB"
"$BINDIR/psql" -X -q -d postgres -c "CREATE DATABASE $DB"
q -c "CREATE EXTENSION mspbill" -c "ALTER DATABASE $DB SET search_path = public, mspbill"
# 60 clients of 5 people who log on every day of last month at their own
# PC, and 3 more each who have not logged on yet (the late ones)
q >/dev/null <<'SQL'
SET search_path = public, mspbill;
CREATE TABLE span AS SELECT (date_trunc('month', now()) - interval '1 month')::date AS p0, date_trunc('month', now())::date AS p1;
INSERT INTO clients (client_id, name, time_zone) SELECT c, 'Client ' || c, 'America/Chicago' FROM generate_series(1, 60) c;
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
SELECT c, 1, daterange(p0 - 90, NULL), 'per_user', 20.00 + c FROM span, generate_series(1, 60) c;
INSERT INTO devices (client_id, device_id, name) SELECT c, d, 'PC' || d FROM generate_series(1, 60) c, generate_series(1, 8) d;
INSERT INTO people (client_id, person_id, pseudonym) SELECT c, p, 'u' || p FROM generate_series(1, 60) c, generate_series(1, 8) p;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id)
SELECT client_id, person_id, 'os', 'C\u' || person_id, 'individual', person_id FROM people;
SELECT msp_add_logon_partitions(p0, 2) FROM span;
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT c, a, a, (d + time '08:00') AT TIME ZONE 'America/Chicago' + a * interval '7 minutes'
  FROM span, generate_series(1, 60) c, generate_series(1, 5) a, generate_series(p0, p1 - 1, interval '1 day') d;
-- the late people's PCs are used by the others too, so that no PC is silent
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT c, 1, dv, (d + time '12:00') AT TIME ZONE 'America/Chicago'
  FROM span, generate_series(1, 60) c, generate_series(6, 8) dv, generate_series(p0, p1 - 1, interval '1 day') d;
CREATE TABLE loads_done (n serial, client_id bigint, account_id bigint);
SQL
period=$(q -c "SELECT daterange(p0, p1) FROM span")
logons=$(q -c "SELECT count(*) FROM logons")

cat >"$work/late.sql" <<'SQL'
\set c random(1, 60)
\set a random(6, 8)
BEGIN;
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT :c, :a, :a, p0 + interval '3 days' + random() * interval '20 days' FROM span;
INSERT INTO loads_done (client_id, account_id) VALUES (:c, :a);
COMMIT;
SQL
cat >"$work/current.sql" <<'SQL'
\set c random(1, 60)
\set a random(1, 5)
BEGIN;
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (:c, :a, :a, now() - random() * interval '1 hour');
INSERT INTO loads_done (client_id, account_id) VALUES (:c, NULL);
COMMIT;
SQL
log_lines=$(wc -l <"$PGROOT/server.log")
"$BINDIR/pgbench" -n -c 2 -j 2 -T 20 -f "$work/late.sql@1" -f "$work/current.sql@3" "$DB" >"$work/pgbench.log" 2>&1 &
bench=$!
sleep 1
# two month-end runs of the same month at once, beside the loads
q -c "CALL msp_finalize_period('$period')" >"$work/run_a.out" 2>&1 &
run_a=$!
q -c "CALL msp_finalize_period('$period')" >"$work/run_b.out" 2>&1 &
run_b=$!
wait "$run_a"; rc_a=$?
wait "$run_b"; rc_b=$?
wait "$bench"; rc_bench=$?

tap_check "both month-end runs and pgbench ran to the end" "$rc_a $rc_b $rc_bench" "0 0 0"
tap_check "the runs overlapped the loads (loads committed after the first run began)" \
	"$(q -c "SELECT (SELECT count(*) FROM loads_done) > 0 AND (SELECT min(started_at) FROM finalize_runs) < now() - interval '1 second'")" "t"
tap_check "no failed load" "$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$work/pgbench.log")" "0"
tap_check "no deadlock, no serialization failure" \
	"$(tail -n +"$((log_lines + 1))" "$PGROOT/server.log" | grep -cE 'deadlock detected|could not serialize')" "0"
tap_check "every committed load is there" \
	"$(q -c "SELECT count(*) - $logons = (SELECT count(*) FROM loads_done) FROM logons")" "t"
tap_check "each client finalized by exactly one run, the other run saw it already finalized" \
	"$(q -c "SELECT count(*) FILTER (WHERE f = 1 AND a = 1), count(*) FROM (
	           SELECT client_id, count(*) FILTER (WHERE outcome = 'finalized') f,
	                  count(*) FILTER (WHERE outcome = 'already_finalized') a
	             FROM finalize_run_clients GROUP BY client_id) x")" "60|60"
tap_check "one invoice per client, none refused or failed" \
	"$(q -c "SELECT count(*), count(DISTINCT client_id), (SELECT count(*) FROM finalize_run_clients WHERE outcome IN ('refused', 'failed')) FROM invoices")" "60|60|0"
tap_check "every invoice's lines add up to its total, and its total to users x price (one snapshot)" \
	"$(q -c "SELECT count(*) FROM invoices i JOIN contracts k USING (client_id)
	          WHERE i.total <> (SELECT sum(amount) FROM invoice_items it WHERE it.client_id = i.client_id AND it.invoice_id = i.invoice_id)
	             OR i.total <> i.users * k.price_per_user")" "0"
tap_check "every invoice's evidence names exactly its users" \
	"$(q -c "SELECT count(*) FROM invoices WHERE jsonb_array_length(evidence) <> users")" "0"
# what the late logons added after each invoice's snapshot is its drift
tap_check "the drift of every client is the late people its invoice did not see, to the cent" \
	"$(q -c "SELECT count(*) FROM invoices i JOIN contracts k USING (client_id)
	          WHERE (SELECT coalesce(sum(difference), 0) FROM msp_invoice_drift(i.client_id, i.period))
	                <> ((SELECT count(DISTINCT person_id) FROM msp_billable_users(i.client_id, i.period)) - i.users) * k.price_per_user")" "0"

[ "${KEEP_DB:-}" = 1 ] || drop_db "$DB"
