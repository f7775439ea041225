#!/usr/bin/env bash
# The client-scoped roles on Citus, without an unsafe setting: the demo on
# one node and distributed (msp_distribute), invoices finalized on both,
# msp_install_roles() on the coordinator (it runs on the workers too); then
# a BI login mapped to client 1, a billing login and a sealed report login
# mapped to client 2 read the same things on both, and every cross-tenant
# read is refused alike.  What does not work yet on Citus is asserted as
# it fails, so that a fix shows up here.  Needs the cluster of
# test/bin/citus; prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
eval "$(bash "$TOP/test/bin/citus" env)"

# q DB [ROLE] ...: psql on the coordinator's server, as ROLE (a login)
q() { local db=$1 user=$2; shift 2; PGOPTIONS="-c search_path=public,mspbill -c client_min_messages=warning" \
	"$BINDIR/psql" -X -q -At -h "$CITUS_HOST" -p "$CITUS_PORT" -U "$user" -d "$db" "$@" 2>&1; }
S=mspbill_roles_s
D=mspbill_roles_d
echo "1..33"

q postgres postgres -c "DROP DATABASE IF EXISTS $S WITH (FORCE)" -c "CREATE DATABASE $S" >/dev/null
q "$S" postgres -c "CREATE EXTENSION mspbill" >/dev/null
citus_fresh_db "$D"
q "$D" postgres -c "CREATE EXTENSION btree_gist" >/dev/null
for db in $S $D; do
	(cd "$TOP/test/demo" && q "$db" postgres -f clinics.sql >/dev/null)
done
# all but the 8 reference tables distributed (test/citus/billing.sh checks each)
n_top=$(q "$S" postgres -c "SELECT count(*) FROM pg_class WHERE relnamespace = 'mspbill'::regnamespace AND relkind IN ('r', 'p') AND NOT relispartition")
tap_check "msp_distribute() on the demo" "$(q "$D" postgres -c "SELECT msp_distribute()")" \
	"8 reference tables, $((n_top - 8)) distributed tables, 13 delegated functions"
# the roles, created through the Citus database (which carries them to the
# workers), before the logins that are members of them
q "$D" postgres -c "SELECT msp_install_roles()" >/dev/null
# then the logins, on every node (Citus carries a role it sees created, not one
# that a former run of this suite left on the coordinator)
for port in "$CITUS_PORT" $((CITUS_PORT + 1)) $((CITUS_PORT + 2)); do
	"$BINDIR/psql" -X -q -h "$CITUS_HOST" -p "$port" -U postgres -d postgres -c "SET citus.enable_ddl_propagation TO off" \
		-c "DO \$\$DECLARE r text; BEGIN FOREACH r IN ARRAY '{bi,billing,report}'::text[] LOOP
			IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'roles_' || r) THEN EXECUTE format('CREATE ROLE %I LOGIN IN ROLE %I', 'roles_' || r, 'mspbill_' || r); END IF;
			END LOOP; END\$\$" >/dev/null 2>&1
done
# (the Citus database first: Citus carries a new role to the workers only
# when it is created there)
for db in $D $S; do
	q "$db" postgres -c "SELECT msp_install_roles()" \
		-c "INSERT INTO bi_client_access VALUES ('roles_bi', 1), ('roles_report', 2)" >/dev/null
	q "$db" postgres <<<"SELECT format('SELECT msp_finalize_invoice(%s, %L, %L)', client_id, msp_period(client_id),
			'{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]) FROM clients ORDER BY 1 \gexec" >/dev/null
done
tap_check "the roles' grants on tables reached the workers and the shards, those on views did not" \
	"$(q "$D" postgres -c "SELECT string_agg(result, ',') FROM run_command_on_workers(\$\$SELECT has_table_privilege('mspbill_bi', 'mspbill.logons', 'SELECT') || '/' || has_table_privilege('mspbill_bi', 'mspbill.account_labels', 'SELECT')\$\$)")" "true/false,true/false"
tap_check "two invoices finalized on both" \
	"$(q "$D" postgres -c "SELECT count(*) FROM invoices")/$(q "$S" postgres -c "SELECT count(*) FROM invoices")" "2/2"

# the same statement as a role on one node and on Citus
same() { local name=$1 role=$2 sql=$3 s d
	s=$(q "$S" "$role" -c "$sql"); d=$(q "$D" "$role" -c "$sql")
	tap_check "$role: $name on Citus = on one node" "$d" "$s"
}
tables="logons people devices contracts invoices invoice_items invoice_documents support_contacts cost_pools sister_clients"
per_client() { local t out=""; for t in $tables; do out="$out $t:$(q "$1" "$2" -c "SELECT string_agg(client_id || '=' || n, ',' ORDER BY client_id) FROM (SELECT client_id, count(*) n FROM mspbill.$t GROUP BY 1) x")"; done; echo "$out"; }

# --- BI, mapped to client 1 ---------------------------------------------------
s=$(per_client "$S" roles_bi); d=$(per_client "$D" roles_bi)
tap_check "roles_bi: rows per client of $(wc -w <<<"$tables") tables on Citus = on one node" "$d" "$s"
tap_check "roles_bi: only client 1's rows (row-level security on the shards)" \
	"$(grep -oE '[:,][0-9]+=' <<<"$d" | grep -vc '^[:,]1=$')" "0"
tap_check "roles_bi: some rows at all" "$(grep -c 'logons:1=[1-9]' <<<"$d")" "1"
same "client 2's logons, asked for directly (none)" roles_bi "SELECT count(*) FROM logons WHERE client_id = 2"
same "its mappings only" roles_bi "SELECT string_agg(role_name || '>' || client_id, ',') FROM bi_client_access"
same "msp_invoice(1)" roles_bi "SELECT msp_invoice(1)"
same "the stored invoice of client 1" roles_bi "SELECT concat_ws('|', client_id, kind, period, users, subtotal, total) FROM invoices"
out=$(q "$D" roles_bi -c "SELECT msp_invoice(2)")
tap_check "roles_bi: msp_invoice(2) refused on Citus as on one node" \
	"$(grep -c 'ERROR:  unknown client 2' <<<"$out")" "$(q "$S" roles_bi -c "SELECT msp_invoice(2)" | grep -c 'ERROR:  unknown client 2')"
out=$(q "$D" roles_bi -c "SELECT name FROM accounts LIMIT 1")
tap_check "roles_bi: account names refused (column privilege)" "$(grep -c 'permission denied for table accounts' <<<"$out")" "1"
out=$(q "$D" roles_bi -c "INSERT INTO bi_client_access VALUES ('roles_bi', 2)")
tap_check "roles_bi: may not map itself to another client" "$(grep -c 'permission denied for table bi_client_access' <<<"$out")" "1"
# (a setting any role may change: it does not widen what the policies show)
tap_check "roles_bi: with nested distributed execution turned on, still no row of client 2" \
	"$(q "$D" roles_bi -c "SET citus.allow_nested_distributed_execution = on" -c "SELECT count(*) FROM logons WHERE client_id = 2")" "0"
tap_check "roles_bi: no unsafe Citus setting is on" \
	"$(q "$D" roles_bi -c "SELECT current_setting('citus.allow_nested_distributed_execution') || current_setting('citus.enable_unsafe_triggers')")" "offoff"

# --- billing: every client ----------------------------------------------------
s=$(per_client "$S" roles_billing); d=$(per_client "$D" roles_billing)
tap_check "roles_billing: rows per client of $(wc -w <<<"$tables") tables on Citus = on one node" "$d" "$s"
tap_check "roles_billing: both clients' logons" "$(grep -c 'logons:1=[0-9]*,2=[0-9]*' <<<"$d")" "1"
same "msp_invoice of both clients" roles_billing "SELECT string_agg(msp_invoice(client_id)::text, ';' ORDER BY client_id) FROM clients"
same "msp_invoice_lines(2)" roles_billing "SELECT string_agg(x::text, ';') FROM msp_invoice_lines(2) x"
same "the stored invoices" roles_billing "SELECT string_agg(concat_ws('|', client_id, kind, period, users, subtotal, total), ';' ORDER BY client_id) FROM invoices"
same "account columns it may read" roles_billing "SELECT md5(string_agg(concat_ws('|', client_id, account_id, realm, kind, person_id), ';' ORDER BY client_id, account_id)) FROM accounts"
out=$(q "$D" roles_billing -c "UPDATE invoices SET total = 0")
tap_check "roles_billing: finalized invoices cannot be changed" "$(grep -c 'permission denied for table invoices' <<<"$out")" "1"

# --- the sealed report login, mapped to client 2 --------------------------------
same "msp_report_invoices() (its client's only)" roles_report "SELECT string_agg(concat_ws('|', client_id, kind, period, total), ';') FROM msp_report_invoices()"
tap_check "roles_report: msp_report_invoices() names client 2 only" \
	"$(q "$D" roles_report -c "SELECT string_agg(DISTINCT client_id::text, ',') FROM msp_report_invoices()")" "2"
same "msp_report_invoice(2)" roles_report "SELECT msp_report_invoice(2)"
same "msp_report_invoice_lines(2)" roles_report "SELECT string_agg(x::text, ';') FROM msp_report_invoice_lines(2) x"
same "msp_report_billable_users(2)" roles_report "SELECT string_agg(x::text, ';' ORDER BY x.person_id) FROM msp_report_billable_users(2) x"
out=$(q "$D" roles_report -c "SELECT msp_report_invoice(1)")
tap_check "roles_report: client 1 refused as unknown" "$(grep -c 'ERROR:  unknown client 1' <<<"$out")" "1"
out=$(q "$D" roles_report -c "SELECT count(*) FROM invoices")
tap_check "roles_report: no table at all" "$(grep -c 'permission denied for table invoices' <<<"$out")" "1"

# --- not yet on Citus (asserted as they fail) -------------------------------------
# account_labels runs with its owner's rights on one node, but Citus sends
# the shard query from the coordinator as the session user, who may not
# read accounts.name
tap_check "roles_bi: account_labels on one node shows client 1's accounts only" \
	"$(q "$S" roles_bi -c "SELECT string_agg(DISTINCT client_id::text, ',') || ' ' || (count(*) > 0) FROM account_labels")" "1 true"
out=$(q "$D" roles_bi -c "SELECT count(*) FROM account_labels")
tap_check "NOT YET: roles_bi: account_labels on Citus fails on the shard (permission denied for accounts_<shard>)" \
	"$(grep -c 'permission denied for table accounts_[0-9]' <<<"$out")" "1"
# and a delegated call reads the view on the worker, where the grant on it
# is not (Citus carries no grant on a view); granted there by hand, the
# shard query fails as above
out=$(q "$D" roles_billing -c "SELECT count(*) FROM msp_billable_users(1)")
tap_check "NOT YET: roles_billing: msp_billable_users (delegated) on Citus fails on account_labels" \
	"$(grep -c 'permission denied for view account_labels' <<<"$out")" "1"
out=$(q "$D" postgres -c "SELECT count(*) FROM kpi_billable_users")
tap_check "NOT YET: kpi_billable_users on Citus fails to plan, for every role" \
	"$(grep -c 'plan should not reference subplan' <<<"$out")" "1"
exit 0
