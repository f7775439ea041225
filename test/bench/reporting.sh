#!/usr/bin/env bash
# Reporting rows of the benchmark, runnable alone (BENCH_ONLY=reporting make
# bench) against a dataset of its own, smaller than the main one: 100
# clients, 24 months of workdays, 10 people and 3 shared PCs per client,
# about 0.6M logons (fixed seed).  Prints Markdown rows.
. "$(dirname "$0")/../bin/common.sh"
find_pg
[ "${BENCH_BUILT:-}" = 1 ] || build_install
cluster_start
DB=mspbill_bench_reporting
RUNS=${BENCH_RUNS:-3}
rb() { psql_q -d "$DB" "$@"; }
SETUP="SET search_path = public, mspbill; SET max_parallel_workers_per_gather = 2; SET jit = off;"
best_ms() { # best execution time of a query over $RUNS runs (EXPLAIN ANALYZE)
	local best="" t i
	for ((i = 0; i < RUNS; i++)); do
		t=$(rb -At -c "$SETUP" -c "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) $1" | sed -nE 's/^Execution Time: ([0-9.]+) ms$/\1/p')
		[ -n "$t" ] || die "query failed: $1"
		if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
	done
	echo "$best"
}
wall_ms() { # wall time of one statement (psql \timing)
	rb -At -c "$SETUP" -c '\timing on' -c "$1" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | tail -1
}

echo "building the reporting dataset (100 clients, 24 months)..." >&2
PGOPTIONS='-c client_min_messages=warning' psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
rb -c "CREATE EXTENSION mspbill" >/dev/null
rb >/dev/null <<'SQL'
SET search_path = public, mspbill;
SELECT setseed(0.18);
CREATE TEMP TABLE span AS
	SELECT (date_trunc('month', now()) - interval '24 months')::date AS first_day, date_trunc('month', now())::date AS next_month;
INSERT INTO clients (client_id, name, time_zone) SELECT c, 'Client ' || c, 'America/Chicago' FROM generate_series(1, 100) c;
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, price_per_seat)
SELECT c, 1, daterange(first_day - 30, NULL), 'per_user', 40.00, 25.00 FROM span, generate_series(1, 100) c;
INSERT INTO devices (client_id, device_id, name) SELECT c, d, 'PC' || d FROM generate_series(1, 100) c, generate_series(1, 12) d;
INSERT INTO people (client_id, person_id, pseudonym) SELECT c, p, 'p' || p FROM generate_series(1, 100) c, generate_series(1, 10) p;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id)
SELECT c, a, 'os', CASE WHEN a <= 10 THEN 'u' || a ELSE 'SHARED' || a END,
	   CASE WHEN a <= 10 THEN 'individual' ELSE 'shared' END, CASE WHEN a <= 10 THEN a END
  FROM generate_series(1, 100) c, generate_series(1, 13) a;
SELECT msp_add_logon_partitions(first_day, 25) FROM span;
-- bulk history without the triggers; the rollups are rebuilt from it below
SET session_replication_role = replica;
INSERT INTO logons (client_id, account_id, device_id, at, ended)
SELECT c, a, 1 + (a % 12), (d + time '08:00' + random() * interval '3 hours') AT TIME ZONE 'America/Chicago', NULL
  FROM span, generate_series(first_day, next_month - 1, interval '1 day') d, generate_series(1, 100) c, generate_series(1, 13) a
 WHERE extract(isodow FROM d) < 6 AND random() < 0.9;
RESET session_replication_role;
VACUUM ANALYZE;
SQL
logons=$(rb -At -c "SELECT count(*) FROM mspbill.logons")
rebuild=$(wall_ms "SELECT * FROM msp_rebuild_rollups()")
month="daterange((date_trunc('month', now()) - interval '1 month')::date, date_trunc('month', now())::date)"
raw=$(best_ms "SELECT msp_invoice(client_id, $month) FROM clients")
roll=$(best_ms "SELECT client_id, users, seats, devices, subtotal, total, status FROM period_invoices WHERE period = $month")
same=$(rb -At -c "$SETUP" -c "SELECT count(*) FROM (SELECT (msp_invoice(client_id, $month)).* FROM clients) i
	FULL JOIN (SELECT * FROM period_invoices WHERE period = $month) p USING (client_id)
	WHERE (i.users, i.seats, i.devices, i.subtotal, i.total) IS DISTINCT FROM (p.users, p.seats, p.devices, p.subtotal, p.total)")
# one more day of logons for every client, loaded with the triggers on
rb -c "SET search_path = public, mspbill" -c "INSERT INTO logons (client_id, account_id, device_id, at)
	SELECT c, a, 1 + (a % 12), (date_trunc('month', now())::date + time '09:00') AT TIME ZONE 'America/Chicago'
	  FROM generate_series(1, 100) c, generate_series(1, 13) a" >/dev/null
dirty=$(rb -At -c "SELECT count(*) FROM mspbill.rollup_dirty")
incr=$(wall_ms "SELECT * FROM msp_refresh_rollups()")
equal=$(rb -At -c "$SETUP" -c "CREATE TEMP TABLE k AS SELECT 'd' || d::text r FROM daily_activity d UNION ALL SELECT 'p' || p::text FROM period_invoices p" \
	-c "SELECT msp_rebuild_rollups()" -c "SELECT count(*) FROM ((SELECT r FROM k EXCEPT ALL SELECT 'd' || d::text FROM daily_activity d EXCEPT ALL SELECT 'p' || p::text FROM period_invoices p)
	UNION ALL (SELECT 'd' || d::text FROM daily_activity d UNION ALL SELECT 'p' || p::text FROM period_invoices p EXCEPT ALL SELECT r FROM k)) x" | tail -1)

ratio() { awk "BEGIN{r = $1 / $2; printf(r < 0.1 ? \"%.4f\" : \"%.2f\", r)}"; }
printf '| a month'"'"'s invoice figures, 100 clients, from the rollups (%s logons, 24 months) | %.1f ms | msp_invoice() from raw logons: %.0f ms | %sx |\n' "$logons" "$roll" "$raw" "$(ratio "$roll" "$raw")"
echo "|   figures identical to msp_invoice() | $([ "$same" = 0 ] && echo yes || echo "NO: $same clients differ") | | |"
printf '| incremental refresh after one more day for all clients (%s dirty pairs) | %.0f ms | full rebuild (msp_rebuild_rollups): %.0f ms | %sx |\n' "$dirty" "$incr" "$rebuild" "$(ratio "$incr" "$rebuild")"
echo "|   refreshed rollups identical to a rebuild | $([ "$equal" = 0 ] && echo yes || echo "NO: $equal rows differ") | | |"
[ "${KEEP_BENCH_DB:-}" = 1 ] || PGOPTIONS='-c client_min_messages=warning' psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null
