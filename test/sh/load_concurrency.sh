#!/usr/bin/env bash
# A COPY into a stage while a load of that stage runs: for each of the
# eight loaders, session A loads (its transaction left open), session B
# then stages a line.  B must wait for A (otherwise A, emptying the stage
# at its end, would delete a line committed after it read the stage:
# a whole file lost without a reject), and once A commits B's line is
# still staged, for the next load.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
DB=mspbill_test_load_concurrency
work="$TOP/test/out/load_concurrency"
rm -rf "$work"; mkdir -p "$work"
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
echo "1..16"

fresh_demo_db "$DB"
# stage, the columns B stages, the load A runs
while IFS='|' read -r stage cols load; do
	# A: load, then stay open until B is seen waiting for a lock (20 s at most)
	PGAPPNAME=load_a q -c "BEGIN" -c "SELECT count(*) FROM $load" -c "
		DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
			LOOP
				PERFORM pg_stat_clear_snapshot();
				EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity
								   WHERE application_name = 'stage_b' AND wait_event_type = 'Lock');
				EXIT WHEN clock_timestamp() > t0 + interval '20 s';
				PERFORM pg_sleep(0.02);
			END LOOP;
		END \$\$" -c "SELECT 'b waited: ' || EXISTS (SELECT 1 FROM pg_stat_activity
								   WHERE application_name = 'stage_b' AND wait_event_type = 'Lock')" \
		-c "COMMIT" >"$work/$stage.a" 2>&1 &
	a=$!
	# B starts once A has loaded and is in its wait loop
	for _ in $(seq 1 400); do
		[ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'load_a' AND wait_event = 'PgSleep'")" = 1 ] && break
		sleep 0.05
	done
	PGAPPNAME=stage_b q -c "SET mspbill.client_id = 1" -c "INSERT INTO $stage ($cols) VALUES ('staged by b')" >"$work/$stage.b" 2>&1 &
	b=$!
	wait $a; wait $b
	tap_check "$stage: a COPY waits for the load under way" "$(grep -o 'b waited: [a-z]*' "$work/$stage.a")" "b waited: true"
	tap_check "$stage: the line staged meanwhile is still there for the next load" \
		"$(q -c "SELECT count(*) FROM $stage WHERE client_id = 1")" "1"
	q -c "DELETE FROM $stage WHERE client_id = 1"
done <<'LIST'
windows_event_staging|raw|msp_load_windows_events(1)
entra_signin_staging|raw|msp_load_entra_signins(1)
emr_audit_staging|user_name|msp_load_emr_audit(1)
m365_graph_staging|raw|msp_load_m365_graph(1)
m365_users_csv_staging|raw|msp_load_m365_users_csv(1)
m365_activity_staging|raw|msp_load_m365_activity(1)
pax8_staging|raw|msp_load_pax8_subscriptions(1)
psa_ticket_staging|raw|msp_load_psa_tickets(1, 'connectwise')
LIST
drop_db "$DB"
