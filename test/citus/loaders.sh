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
echo "1..19"

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
RAW="WITH (FORMAT csv, QUOTE E'\\\\x01', DELIMITER E'\\\\x02')"
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
for round in first second; do
	s=$(load_round "$S"); d=$(load_round "$D")
	tap_check "$round round: every loader's answer on Citus = on one node" "$d" "$s"
	tap_check "$round round: no error on one node" "$(grep -c 'ERROR' <<<"$s")" "0"
	tap_check "$round round: 15 loads answered" "$(grep -c '|' <<<"$d")" "15"
done
tap_check "the real export loaded logons for client 2 on Citus" \
	"$(q "$D" postgres -c "SELECT count(*) > 0 FROM logons l JOIN accounts a USING (client_id, account_id) WHERE l.client_id = 2 AND a.name ~* 'theshire|pgustavo|MORDORDC|WORKSTATION'")" "t"

# what they wrote, read as the superuser on both
same() { local name=$1 sql=$2
	tap_check "$name on Citus = on one node" "$(q "$D" postgres -c "$sql")" "$(q "$S" postgres -c "$sql")"
}
same "logons (every column but the id)" "SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', client_id, account_id, device_id, at, ended, presence, source, source_event_id, session_key), ';' ORDER BY client_id, at, account_id, source, source_event_id, device_id, ended)) FROM logons"
same "load_rejects" "SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', client_id, source, line_no, reason), ';' ORDER BY client_id, source, line_no, reason)) FROM load_rejects"
same "accounts" "SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', client_id, account_id, realm, name, kind, person_id, application), ';' ORDER BY client_id, account_id)) FROM accounts"
same "devices" "SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', client_id, device_id, name, kind, active), ';' ORDER BY client_id, device_id)) FROM devices"
same "Microsoft 365 SKU counts" "SELECT count(*) || ' ' || md5(string_agg(x::text, ';' ORDER BY x::text)) FROM m365_sku_counts x"
same "Microsoft 365 licence assignments" "SELECT count(*) || ' ' || md5(string_agg(x::text, ';' ORDER BY x::text)) FROM m365_license_assignments x"
same "Pax8 subscriptions" "SELECT count(*) || ' ' || md5(string_agg(x::text, ';' ORDER BY x::text)) FROM pax8_subscriptions x"
same "PSA tickets" "SELECT count(*) || ' ' || md5(string_agg(x::text, ';' ORDER BY x::text)) FROM psa_tickets x"
same "the stages are empty" "SELECT (SELECT count(*) FROM windows_event_staging) + (SELECT count(*) FROM entra_signin_staging) + (SELECT count(*) FROM emr_audit_staging) + (SELECT count(*) FROM m365_graph_staging) + (SELECT count(*) FROM pax8_staging) + (SELECT count(*) FROM psa_ticket_staging)"
exit 0
