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
echo "1..47"

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
		-c "DO \$\$DECLARE r text; BEGIN FOREACH r IN ARRAY '{bi,billing,report,pii}'::text[] LOOP
			IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'roles_' || r) THEN EXECUTE format('CREATE ROLE %I LOGIN IN ROLE %I', 'roles_' || r, 'mspbill_' || r); END IF;
			END LOOP; END\$\$" -c "GRANT mspbill_bi TO roles_pii" >/dev/null 2>&1
done
# (the Citus database first: Citus carries a new role to the workers only
# when it is created there)
for db in $D $S; do
	q "$db" postgres -c "SELECT msp_install_roles()" \
		-c "INSERT INTO bi_client_access VALUES ('roles_bi', 1), ('roles_report', 2), ('roles_pii', 1)" >/dev/null
	q "$db" postgres <<<"SELECT format('SELECT msp_finalize_invoice(%s, %L, %L)', client_id, msp_period(client_id),
			'{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]) FROM clients ORDER BY 1 \gexec" >/dev/null
done
tap_check "the roles' grants on tables and on views reached the workers" \
	"$(q "$D" postgres -c "SELECT string_agg(result, ',') FROM run_command_on_workers(\$\$SELECT has_table_privilege('mspbill_bi', 'mspbill.logons', 'SELECT') || '/' || has_table_privilege('mspbill_bi', 'mspbill.account_labels', 'SELECT')\$\$)")" "true/true,true/true"
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

# --- account labels: names through msp_account_name on Citus -----------------------
# (roles_pii is the README's privacy officer, in mspbill_bi and mspbill_pii)
# (Citus reads the shards as the session user, whom the view's owner rights
# do not reach: msp_distribute() defines the view with a definer that reads
# the one name from the node's own shard)
labels="SELECT string_agg(concat_ws('|', client_id, account_id, realm, kind, label), ';' ORDER BY client_id, account_id) FROM account_labels"
for role in roles_bi roles_billing roles_pii postgres; do same "account_labels" "$role" "$labels"; done
tap_check "roles_bi: account_labels shows client 1's accounts only, with pseudonyms and shared names" \
	"$(q "$D" roles_bi -c "SELECT string_agg(DISTINCT client_id::text, ',') || ' ' || bool_or(label LIKE '% account %') || ' ' || bool_or(kind = 'shared' AND label NOT LIKE '% account %') FROM account_labels")" "1 true true"
tap_check "roles_pii: account_labels shows real names (none pseudonymous)" \
	"$(q "$D" roles_pii -c "SELECT count(*) > 0 AND count(*) FILTER (WHERE label LIKE '% account %') = 0 FROM account_labels")" "t"
tap_check "the view on every worker is the coordinator's" \
	"$(q "$D" postgres -c "SET search_path = public" -c "SELECT string_agg(DISTINCT md5(result), ',') = md5(pg_get_viewdef('mspbill.account_labels')) FROM run_command_on_workers(\$\$SELECT pg_get_viewdef('mspbill.account_labels')\$\$)")" "t"
# the definer called directly: only what the view would show
acct() { q "$D" postgres -c "SELECT account_id FROM accounts WHERE client_id = $1 AND kind $2 ORDER BY account_id LIMIT 1"; }
pa1=$(acct 1 "= 'individual'"); sa1=$(acct 1 "IN ('shared', 'service')"); sa2=$(acct 2 "IN ('shared', 'service')")
tap_check "roles_bi: msp_account_name of its client's person, its shared account, client 2's shared account" \
	"$(q "$D" roles_bi -c "SELECT concat_ws('/', msp_account_name(1, $pa1) IS NULL, msp_account_name(1, $sa1) = (SELECT label FROM account_labels WHERE account_id = $sa1), msp_account_name(2, $sa2) IS NULL)")" "t/t/t"
tap_check "roles_report: msp_account_name refused (no grant)" \
	"$(q "$D" roles_report -c "SELECT msp_account_name(1, $sa1)" | grep -c 'permission denied for function msp_account_name')" "1"
same "msp_billable_users(1) (delegated)" roles_billing "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM msp_billable_users(1) x"
same "msp_billable_users(2) (delegated)" roles_billing "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM msp_billable_users(2) x"
same "msp_billable_users(1) (delegated)" postgres "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM msp_billable_users(1) x"

# --- kpi_billable_users -------------------------------------------------------------
# The rollups computed on one node (msp_rebuild_rollups does not run on Citus:
# below) and copied into the distributed table, with earlier months made up
# alike on both: sets that change, sister clients' people, a gap, an
# unpriced month, a NULL list of sister people
q "$S" postgres -c "SELECT msp_rebuild_rollups()" >/dev/null
q "$S" postgres -c "\\copy period_invoices TO STDOUT" | q "$D" postgres -c "\\copy period_invoices FROM pstdin" >/dev/null
for db in $S $D; do
	q "$db" postgres -c "INSERT INTO period_invoices (client_id, period, status, users, total, currency, billable, sister_billable)
		SELECT c.client_id, daterange(m, (m + interval '1 month')::date), CASE WHEN k = 3 THEN 'unpriced' ELSE 'finalized' END,
			   (SELECT count(*) FROM generate_series(1, 25) i WHERE abs(hashint8(c.client_id * 1000 + k * 50 + i)) % 3 = 0) + (k % 2 = 0)::integer,
			   k * 10.5, 'USD',
			   (SELECT userset_agg(i) FROM generate_series(1, 25) i WHERE abs(hashint8(c.client_id * 1000 + k * 50 + i)) % 3 = 0),
			   CASE WHEN k % 2 = 0 THEN jsonb_build_array(jsonb_build_object('person_id', k, 'pseudonym', 'sis' || k, 'home_client_id', 3 - c.client_id))
					WHEN k = 5 THEN NULL ELSE '[]' END
		  FROM clients c, generate_series(1, 8) k, LATERAL (SELECT ('2026-10-01'::date - (k || ' months')::interval)::date AS m) mm
		 WHERE k <> 6" >/dev/null
done
kpi="SELECT string_agg(x::text, ';' ORDER BY x.client_id, x.month) FROM kpi_billable_users x"
for role in roles_bi roles_billing postgres; do same "kpi_billable_users" "$role" "$kpi"; done
tap_check "kpi_billable_users on Citus: months with a change, joined - left = change in each" \
	"$(q "$D" postgres -c "SELECT count(*) FILTER (WHERE change IS NOT NULL) || '/' || count(*) FILTER (WHERE joined_count - left_count <> change) FROM kpi_billable_users")" "10/0"
tap_check "roles_bi: kpi_billable_users shows client 1 only" \
	"$(q "$D" roles_bi -c "SELECT string_agg(DISTINCT client_id::text, ',') FROM kpi_billable_users")" "1"

# --- not yet on Citus (asserted as it fails) ----------------------------------------
# the rollups' refresh reads the logons through a SQL function with
# parameters, which Citus cannot plan
out=$(q "$D" postgres -c "SELECT msp_rebuild_rollups()")
tap_check "NOT YET: msp_rebuild_rollups on Citus fails to plan (parameters of a SQL function)" \
	"$(grep -c 'could not create distributed plan' <<<"$out")" "1"
exit 0
