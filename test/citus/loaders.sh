#!/usr/bin/env bash
# The loaders on Citus, as the billing role (no superuser): the demo on one
# node and distributed (msp_distribute), then a login of mspbill_billing
# stages the real Windows Security export (../shared/fixtures), the
# Windows, Entra ID and EMR fixtures and the licensing exports
# (test/fixtures/licensing) with \copy and loads them, twice, on both.
# Every loader's answer, and the logons, rejects, accounts, people and
# licence rows it wrote, must be identical.  Needs the cluster of
# test/bin/citus; prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
eval "$(bash "$TOP/test/bin/citus" env)"

q() { local db=$1 user=$2; shift 2; PGOPTIONS="-c search_path=public,mspbill -c client_min_messages=warning" \
	"$BINDIR/psql" -X -q -At -h "$CITUS_HOST" -p "$CITUS_PORT" -U "$user" -d "$db" "$@" 2>&1; }
S=mspbill_loaders_s
D=mspbill_loaders_d
echo "1..15"

q postgres postgres -c "DROP DATABASE IF EXISTS $S WITH (FORCE)" -c "CREATE DATABASE $S" >/dev/null
q "$S" postgres -c "CREATE EXTENSION mspbill" >/dev/null
citus_fresh_db "$D"
q "$D" postgres -c "CREATE EXTENSION btree_gist" >/dev/null
for db in $S $D; do
	(cd "$TOP/test/demo" && q "$db" postgres -f clinics.sql >/dev/null)
done
n_top=$(q "$S" postgres -c "SELECT count(*) FROM pg_class WHERE relnamespace = 'mspbill'::regnamespace AND relkind IN ('r', 'p') AND NOT relispartition")
tap_check "msp_distribute() on the demo" "$(q "$D" postgres -c "SELECT msp_distribute()")" \
	"8 reference tables, $((n_top - 8)) distributed tables, 13 delegated functions"
# the roles through the Citus database first (Citus carries them to the
# workers), then the login on every node (as test/citus/roles.sh does)
# (created on their own first: msp_install_roles() grants on the workers
# through connections of their own, which do not see roles its own
# transaction has just carried there, so on a fresh cluster it fails)
q "$D" postgres -c "DO \$\$DECLARE r text; BEGIN FOREACH r IN ARRAY '{admin,billing,bi,pii,report}'::text[] LOOP
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_' || r) THEN EXECUTE format('CREATE ROLE %I NOLOGIN', 'mspbill_' || r); END IF;
	END LOOP; END\$\$" >/dev/null
for db in $D $S; do q "$db" postgres -c "SELECT msp_install_roles()" >/dev/null; done
for port in "$CITUS_PORT" $((CITUS_PORT + 1)) $((CITUS_PORT + 2)); do
	"$BINDIR/psql" -X -q -h "$CITUS_HOST" -p "$port" -U postgres -d postgres -c "SET citus.enable_ddl_propagation TO off" \
		-c "DO \$\$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'loaders_billing') THEN
			CREATE ROLE loaders_billing LOGIN IN ROLE mspbill_billing; END IF; END\$\$" >/dev/null 2>&1
done
tap_check "the loading login is no superuser" \
	"$(q "$D" loaders_billing -c "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")" "f"

# one round of loads, as the billing login: every file staged with \copy
# (client_id from the session's mspbill.client_id), every loader's answer
F=$TOP/test/fixtures
SHIRE=$TOP/../shared/fixtures/windows-security/purplesharp_ad_playbook_I.logon_events.jsonl
RAW="WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
load_round() { q "$1" loaders_billing -v ON_ERROR_STOP=0 <<SQL
SET mspbill.client_id = 2;
\\copy windows_event_staging (raw) FROM '$SHIRE' $RAW
\\copy windows_event_staging (raw) FROM '$F/windows_winlogbeat.jsonl' $RAW
SELECT 'windows 2', * FROM msp_load_windows_events(2);
SET mspbill.client_id = 1;
\\copy windows_event_staging (raw) FROM '$F/windows_nxlog.jsonl' $RAW
\\copy windows_event_staging (raw) FROM '$F/windows_rdp_session.jsonl' $RAW
SELECT 'windows 1', * FROM msp_load_windows_events(1);
\\copy entra_signin_staging (raw) FROM '$F/entra_signins.jsonl' $RAW
SELECT 'entra 1 lines', * FROM msp_load_entra_signins(1);
\\copy entra_signin_staging (raw) FROM '$F/entra_graph_pages.json' $RAW
SELECT 'entra 1 graph', * FROM msp_load_entra_signins(1);
\\copy emr_audit_staging (user_name, workstation, event_time, action, event_id) FROM '$F/emr_audit.csv' WITH (FORMAT csv, HEADER)
SELECT 'emr 1', * FROM msp_load_emr_audit(1);
\\copy m365_graph_staging (raw) FROM '$F/licensing/graph_subscribed_skus.json' $RAW
\\copy m365_graph_staging (raw) FROM '$F/licensing/graph_users.jsonl' $RAW
SELECT 'graph 1', * FROM msp_load_m365_graph(1, '2026-01-31');
\\copy m365_users_csv_staging (raw) FROM '$F/licensing/m365_active_users.csv' $RAW
SELECT 'users csv 1', * FROM msp_load_m365_users_csv(1, '2026-02-01');
\\copy m365_activity_staging (raw) FROM '$F/licensing/m365_activity.csv' $RAW
SELECT 'activity 1', * FROM msp_load_m365_activity(1);
\\copy pax8_staging (raw) FROM '$F/licensing/pax8_subscriptions.csv' $RAW
SELECT 'pax8 1', * FROM msp_load_pax8_subscriptions(1, '2026-01-31');
SET mspbill.client_id = 2;
\\copy pax8_staging (raw) FROM '$F/licensing/pax8_subscriptions.json' $RAW
SELECT 'pax8 2', * FROM msp_load_pax8_subscriptions(2, '2026-01-31');
SET mspbill.client_id = 1;
\\copy psa_ticket_staging (raw) FROM '$F/licensing/psa_connectwise.json' $RAW
SELECT 'connectwise 1', * FROM msp_load_psa_tickets(1, 'connectwise');
\\copy psa_ticket_staging (raw) FROM '$F/licensing/psa_autotask.json' $RAW
SELECT 'autotask 1', * FROM msp_load_psa_tickets(1, 'autotask');
\\copy psa_ticket_staging (raw) FROM '$F/licensing/psa_halo.json' $RAW
SELECT 'halo 1', * FROM msp_load_psa_tickets(1, 'halopsa');
SQL
}
# what the loads write, read as the superuser
state="SELECT concat_ws(' ', (SELECT count(*) || ':' || md5(string_agg(concat_ws('|', client_id, account_id, device_id, at, ended, presence, source, source_event_id, session_key), ';' ORDER BY client_id, at, account_id, source, source_event_id, device_id, ended)) FROM logons),
	(SELECT count(*) || ':' || md5(string_agg(concat_ws('|', client_id, source, line_no, reason), ';' ORDER BY client_id, source, line_no, reason)) FROM load_rejects),
	(SELECT count(*) || ':' || md5(string_agg(concat_ws('|', client_id, account_id, realm, name, kind, person_id, application), ';' ORDER BY client_id, account_id)) FROM accounts),
	(SELECT count(*) FROM devices), (SELECT count(*) FROM m365_sku_counts), (SELECT count(*) FROM m365_license_assignments),
	(SELECT count(*) FROM pax8_subscriptions), (SELECT count(*) FROM psa_tickets),
	(SELECT count(*) || ':' || count(DISTINCT contact_id) FROM support_contacts))"
before_s=$(q "$S" postgres -c "$state"); before_d=$(q "$D" postgres -c "$state")
tap_check "before the loads: the same rows on both" "$before_d" "$before_s"
answers() { grep -cE '^(windows|entra|emr|graph|users csv|activity|pax8|connectwise|autotask|halo)[^|]*[|]' <<<"$1"; }
for round in first second; do
	s=$(load_round "$S"); d=$(load_round "$D")
	tap_check "$round round on one node: 13 loads answered, no error" "$(answers "$s")/$(grep -c 'ERROR' <<<"$s")" "13/0"
	after_s=$(q "$S" postgres -c "$state")
	if [ $round = first ]; then
		tap_check "first round on one node: logons, rejects, accounts and licence rows written" \
			"$(awk '{ print ($1 != b1) + ($2 != b2) + ($3 != b3) + ($5 > 0) + ($6 > 0) + ($7 > 0) + ($8 > 0) }' b1="${before_s%% *}" b2="$(cut -d' ' -f2 <<<"$before_s")" b3="$(cut -d' ' -f3 <<<"$before_s")" <<<"$after_s")" "7"
		tap_check "the real export and winlogbeat on one node: every record accounted for (loaded, duplicate, skipped or rejected)" \
			"$(grep '^windows 2|' <<<"$s" | awk -F'|' '{ print $2 + $3 + $4 + $5 }')" "$(cat "$SHIRE" "$F/windows_winlogbeat.jsonl" | grep -c .)"
		first_s=$after_s
	else
		tap_check "second round on one node: the same files again add nothing but rejects" \
			"$(cut -d' ' -f1,3- <<<"$after_s")" "$(cut -d' ' -f1,3- <<<"$first_s")"
	fi
	# on Citus: the same answers, and the same rows written, as on one node
	after_d=$(q "$D" postgres -c "$state")
	tap_check "$round round on Citus: 13 loads answered, no error" "$(answers "$d")/$(grep -c 'ERROR' <<<"$d")" "13/0"
	[ "$(grep -c ERROR <<<"$d")" = 0 ] || grep -A2 ERROR <<<"$d" | head -20 | sed 's/^/# /'
	tap_check "$round round on Citus: every loader's answer as on one node" "$(grep -E '[|]' <<<"$d")" "$(grep -E '[|]' <<<"$s")"
	tap_check "$round round on Citus: the same logons, rejects, accounts, devices and licence rows as on one node" \
		"$after_d" "$after_s"
done
# a load of an empty stage as a superuser: the same answer on both
tap_check "a superuser's load of an empty stage on Citus, as on one node" \
	"$(q "$D" postgres -c "SELECT * FROM msp_load_windows_events(2)")" "$(q "$S" postgres -c "SELECT * FROM msp_load_windows_events(2)")"
# the databases dropped on every node: each keeps a Citus maintenance
# worker, and the suites after this one need theirs (max_worker_processes)
q postgres postgres -c "DROP DATABASE IF EXISTS $S WITH (FORCE)" >/dev/null
for port in "$CITUS_PORT" $((CITUS_PORT + 1)) $((CITUS_PORT + 2)); do
	PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -h "$CITUS_HOST" -p "$port" -U postgres -d postgres \
		-c "DROP DATABASE IF EXISTS $D WITH (FORCE)" >/dev/null 2>&1
done
exit 0
