#!/usr/bin/env bash
# The upgrade from the last release: install 0.1.0 (its install script is
# kept in upgrade/), load the demo as 0.1.0 loaded it, keep usersets in a
# table and a materialized view, finalize invoices, then ALTER EXTENSION
# mspbill UPDATE.  Afterwards the stored rows are unchanged and readable,
# and every object equals a fresh install of the current version
# (test/upgrade/describe.sql; each difference is printed with its object,
# the full diff is in test/out/upgrade/catalog.diff).  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
OLD=mspbill_test_upgrade_old
NEW=mspbill_test_upgrade_new
work="$TOP/test/out/upgrade"
rm -rf "$work"; mkdir -p "$work"
current=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$TOP/mspbill.control")
q() { local db=$1; shift; PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }
echo "1..34"

for db in "$OLD" "$NEW"; do drop_db "$db"; q postgres -c "CREATE DATABASE $db"; done
q "$OLD" -c "CREATE EXTENSION mspbill VERSION '0.1.0'" -c "ALTER DATABASE $OLD SET search_path = public, mspbill"
tap_check "0.1.0 installs from its kept script" "$(q "$OLD" -c "SELECT extversion FROM pg_extension WHERE extname = 'mspbill'")" "0.1.0"

# the demo as 0.1.0 shipped it, usersets kept by a user, finalized invoices
q "$OLD" -f "$TOP/test/upgrade/clinics--0.1.0.sql" >"$work/demo.log" 2>&1
tap_check "the 0.1.0 demo loads into 0.1.0" "$?" "0"
q "$OLD" -c "SELECT msp_install_roles()" \
	-c "CREATE TABLE public.kept_sets AS
	      SELECT client_id, userset_agg(person_id) AS people FROM accounts WHERE kind = 'individual' GROUP BY client_id" \
	-c "CREATE MATERIALIZED VIEW public.daily_people AS
	      SELECT l.client_id, msp_local_day(l.at, c.time_zone) AS day, userset_agg(a.person_id) AS people
	        FROM logons l JOIN accounts a USING (client_id, account_id) JOIN clients c USING (client_id)
	       WHERE a.kind = 'individual' AND l.presence GROUP BY 1, 2" \
	-c "CREATE VIEW public.totals AS SELECT client_id, (msp_invoice(client_id)).total FROM clients" \
	-c "SELECT msp_add_logon_partitions((date_trunc('month', now()) + interval '2 months')::date, 2)" >"$work/setup.log" 2>&1
ids=$(q "$OLD" -c "SELECT msp_finalize_invoice(1, NULL, '{device_silent}')" -c "SELECT msp_finalize_invoice(2, NULL, '{device_silent}')" 2>>"$work/setup.log" | tr '\n' ' ')
tap_check "two invoices finalized under 0.1.0" "$(q "$OLD" -c "SELECT string_agg(total::text, ' ' ORDER BY client_id) FROM invoices")" "456.00 942.00"

# Every row of every table of the extension and of the user's, as text, in
# the columns they had before the update (an update may add columns), but
# for the one 0.3.0 drops on purpose: logons.logon_id (a sequence's number
# no query read; issue 21, storage).
snapshot() {
	q "${SNAPDB:-$OLD}" -c "
	DO \$\$
	DECLARE r record; cols text;
	BEGIN
		CREATE TEMP TABLE IF NOT EXISTS snap (tbl text, cols text);
		IF NOT EXISTS (SELECT 1 FROM snap) THEN
			INSERT INTO snap
			SELECT c.oid::regclass::text,
			       (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
			         WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
			           AND NOT (c.oid = 'mspbill.logons'::regclass AND attname = 'logon_id'))
			  FROM pg_class c
			 WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition
			   AND c.relnamespace IN ('mspbill'::regnamespace, 'public'::regnamespace);
		END IF;
	END \$\$" -c "\\copy snap TO '$work/columns${SNAPDB:+.$SNAPDB}.txt'" 2>&1
}
rows() {
	local tbl cols
	while IFS=$'\t' read -r tbl cols; do
		q "${SNAPDB:-$OLD}" -c "SELECT '$tbl | ' || r::text FROM (SELECT $cols FROM $tbl) r ORDER BY 1" 2>&1
	done <"$work/columns${SNAPDB:+.$SNAPDB}.txt"
}
snapshot
rows >"$work/before.txt"
totals_before=$(q "$OLD" -c "SELECT string_agg(client_id || '=' || total, ' ' ORDER BY client_id) FROM public.totals")

q "$OLD" -c "ALTER EXTENSION mspbill UPDATE" >"$work/update.log" 2>&1
tap_check "ALTER EXTENSION mspbill UPDATE succeeds" "$?" "0"
[ -s "$work/update.log" ] && sed 's/^/# /' "$work/update.log"
tap_check "the database is at the current version" \
	"$(q "$OLD" -c "SELECT extversion FROM pg_extension WHERE extname = 'mspbill'")" "$current"
# as the README says, the roles' grants are redone after an update
tap_check "msp_install_roles() runs on the updated database" \
	"$(q "$OLD" -c "SELECT msp_install_roles() IS NOT NULL" 2>&1)" "t"

tap_check "the logon partitions 0.1.0 created got the parent's row-level security" \
	"$(q "$OLD" -c "SELECT count(*) FILTER (WHERE c.relrowsecurity AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'client_rows'))
	                  || ' of ' || count(*)
	                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'mspbill.logons'::regclass")" "3 of 3"

rows >"$work/after.txt"
diff -u "$work/before.txt" "$work/after.txt" >"$work/rows.diff"
tap_check "every stored row unchanged (invoices, lines, audit trail, configuration, logons, usersets)" \
	"$(grep -c '^[-+][^-+]' "$work/rows.diff")" "0"
head -40 "$work/rows.diff" | sed 's/^/# /'
tap_check "the stored rows were read at all" "$([ "$(wc -l <"$work/before.txt")" -gt 100 ] && echo yes)" "yes"

tap_check "finalized invoices read through msp_finalized_invoice" \
	"$(q "$OLD" -c "SELECT string_agg((msp_finalized_invoice(client_id, period)).total::text, ' ' ORDER BY client_id) FROM invoices WHERE kind = 'invoice'")" \
	"456.00 942.00"
tap_check "their lines still add up to them" \
	"$(q "$OLD" -c "SELECT count(*) FROM invoices i WHERE total <> (SELECT sum(amount) FROM invoice_items t WHERE t.client_id = i.client_id AND t.invoice_id = i.invoice_id)")" "0"
tap_check "the audit trail reads: who finalized what" \
	"$(q "$OLD" -c "SELECT string_agg(action || ':' || client_id || ':' || (actor = 'postgres'), ' ' ORDER BY client_id) FROM audit_log WHERE action = 'finalize'")" \
	"finalize:1:true finalize:2:true"
tap_check "kept usersets are read and combined by the updated functions" \
	"$(q "$OLD" -c "SELECT string_agg(cardinality(people)::text || ':' || (people | people = people) || ':' || userset_contains(people, 1), ' ' ORDER BY client_id) FROM public.kept_sets")" \
	"$(q "$OLD" -c "SELECT string_agg(n || ':true:' || has1, ' ' ORDER BY client_id) FROM (
	      SELECT client_id, count(DISTINCT person_id) AS n, bool_or(person_id = 1) AS has1
	        FROM accounts WHERE kind = 'individual' GROUP BY client_id) s")"
tap_check "the user's materialized view refreshes to the same sets" \
	"$(q "$OLD" -c "CREATE TEMP TABLE b AS SELECT * FROM public.daily_people" -c "REFRESH MATERIALIZED VIEW public.daily_people" \
		-c "SELECT count(*) FROM b FULL JOIN public.daily_people d USING (client_id, day) WHERE b.people IS DISTINCT FROM d.people")" "0"
tap_check "the user's view over msp_invoice still answers" \
	"$(q "$OLD" -c "SELECT string_agg(client_id || '=' || total, ' ' ORDER BY client_id) FROM public.totals")" "$totals_before"

# the rollups (new in 0.2.0) cover what 0.1.0 stored: the update marks it,
# the first refresh computes it, and a rebuild from nothing agrees
rollups="SELECT 'd ' || r::text FROM mspbill.daily_activity r UNION ALL SELECT 'p ' || r::text FROM mspbill.period_invoices r
	     UNION ALL SELECT 'f ' || r::text FROM mspbill.pii_findings r ORDER BY 1"
q "$OLD" -c "SELECT msp_refresh_rollups()" -c "$rollups" >"$work/rollups.refreshed" 2>&1
q "$OLD" -c "SELECT msp_rebuild_rollups()" -c "$rollups" >"$work/rollups.rebuilt" 2>&1
tap_check "the first refresh after the update computes the rollups a rebuild computes" \
	"$(diff "$work/rollups.refreshed" "$work/rollups.rebuilt" >/dev/null && [ "$(wc -l <"$work/rollups.refreshed")" -gt 40 ] && echo same)" "same"
tap_check "the KPI rollup reports the invoices 0.1.0 finalized as stored" \
	"$(q "$OLD" -c "SELECT string_agg(status || ':' || total, ' ' ORDER BY client_id) FROM period_invoices p
	                 WHERE EXISTS (SELECT 1 FROM invoices i WHERE i.client_id = p.client_id AND i.period = p.period)")" \
	"finalized:456.00 finalized:942.00"

# ids get identity defaults; new ones follow the highest id 0.1.0 stored,
# whichever client holds it
tap_check "new clients, people, accounts, devices, contracts, contacts and pools number after 0.1.0's ids" \
	"$(q "$OLD" -c "WITH c AS (INSERT INTO clients (name) VALUES ('Upgrade Clinic') RETURNING client_id),
	                 p AS (INSERT INTO people (client_id, pseudonym) SELECT 1, 'after-update' RETURNING person_id),
	                 a AS (INSERT INTO accounts (client_id, realm, name, kind) SELECT 1, 'os', 'AFTER\\update', 'unknown' RETURNING account_id),
	                 d AS (INSERT INTO devices (client_id, name) SELECT 1, 'AFTER-UPDATE' RETURNING device_id),
	                 k AS (INSERT INTO contracts (client_id, effective, model, price_per_user)
	                       SELECT client_id, daterange('2020-01-01', NULL), 'per_user', 1 FROM c RETURNING contract_id),
	                 s AS (INSERT INTO support_contacts (client_id, person_id, at) SELECT 2, 1, now() RETURNING contact_id),
	                 o AS (INSERT INTO cost_pools (client_id, category, description, amount, currency, period)
	                       SELECT 1, 'other', 'after the update', 1, 'USD', daterange('2020-01-01', '2020-02-01') RETURNING pool_id)
	                 SELECT concat_ws(' ', (SELECT client_id FROM c) > (SELECT max(client_id) FROM clients),
	                        (SELECT person_id FROM p) > (SELECT max(person_id) FROM people),
	                        (SELECT account_id FROM a) > (SELECT max(account_id) FROM accounts),
	                        (SELECT device_id FROM d) > (SELECT max(device_id) FROM devices),
	                        (SELECT contract_id FROM k) > (SELECT max(contract_id) FROM contracts),
	                        (SELECT contact_id FROM s) > (SELECT max(contact_id) FROM support_contacts),
	                        (SELECT pool_id FROM o) > (SELECT max(pool_id) FROM cost_pools))" 2>&1)" \
	"t t t t t t t"

tap_check "ids 0.1.0 numbered per client stay shared: a cross-client union of its people counts them once (README)" \
	"$(q "$OLD" -c "SELECT cardinality(userset_union(people)) || ' of ' || (SELECT count(DISTINCT (client_id, person_id))
	                  FROM accounts WHERE kind = 'individual' AND client_id IN (1, 2)) FROM public.kept_sets")" "12 of 16"

# Text members: 0.1.0's library counted them under hash_bytes_extended(seed
# 0), which is hashtextextended(t, 0); 0.2.0's under a hash that is the
# same on every machine.  2415337466202865571 is the id 0.1.0's library
# (built from 80d98dc) gave 'STOLAF\nurse1' on this little-endian machine.
tap_check "text ids changed; hashtextextended(t, 0) still gives 0.1.0's (README)" \
	"$(q "$OLD" -c "SELECT (userset_text_id(E'STOLAF\\\\nurse1') <> 2415337466202865571) || ' ' || (hashtextextended(E'STOLAF\\\\nurse1', 0) = 2415337466202865571)")" "true true"

# every object of the updated database against a fresh install
q "$NEW" -c "CREATE EXTENSION mspbill" -c "SELECT mspbill.msp_install_roles()" >/dev/null
q "$OLD" -f "$TOP/test/upgrade/describe.sql" >"$work/catalog.updated" 2>&1
q "$NEW" -f "$TOP/test/upgrade/describe.sql" >"$work/catalog.fresh" 2>&1
diff -U 2 --label "updated from 0.1.0" --label "fresh $current" "$work/catalog.updated" "$work/catalog.fresh" >"$work/catalog.diff"
differing=$(grep -E '^[-+][^-+]' "$work/catalog.diff" | cut -d'|' -f1 | sed -E 's/^[-+]//; s/ +$//' | sort -u)
tap_check "every object of the updated database equals a fresh $current install" \
	"$(echo -n "$differing" | grep -c .)" "0"
if [ -n "$differing" ]; then
	echo "# objects that differ (- updated from 0.1.0, + fresh $current; all of it in test/out/upgrade/catalog.diff):"
	echo "$differing" | sed 's/^/#   /'
	head -150 "$work/catalog.diff" | sed 's/^/# /'
fi

# 0.1.0 finalized any period, 0.2.0 one invoice per client and day: an
# overlap 0.1.0 stored stops the update (finalized invoices are facts the
# update must not change) and names the invoices; nothing is changed.
CLASH=mspbill_test_upgrade_clash
drop_db "$CLASH"; q postgres -c "CREATE DATABASE $CLASH"
q "$CLASH" -c "CREATE EXTENSION mspbill VERSION '0.1.0'" \
	-c "INSERT INTO mspbill.clients (client_id, name, currency, time_zone) VALUES (1, 'A', 'USD', 'UTC')" \
	-c "INSERT INTO mspbill.invoices (client_id, invoice_id, kind, period, total, currency)
	    VALUES (1, 1, 'invoice', '[2026-01-01,2026-02-01)', 10, 'USD'), (1, 2, 'invoice', '[2026-01-15,2026-02-15)', 20, 'USD')" >"$work/clash.log" 2>&1
clash=$(q "$CLASH" -c "ALTER EXTENSION mspbill UPDATE" 2>&1)
tap_check "overlapping finalized invoices stop the update, named" \
	"$(echo "$clash" | grep -c 'finalized invoices bill the same days twice\|invoice 1 (\[2026-01-01,2026-02-01)) and invoice 2 (\[2026-01-15,2026-02-15))')" "2"
echo "$clash" | sed 's/^/# /'
tap_check "and a period that is not a calendar month is named in a warning" \
	"$(echo "$clash" | grep -c 'WARNING:  finalized invoices whose period is not a calendar month\|calendar months only: client 1: invoice 2 (\[2026-01-15,2026-02-15))\.$')" "2"
tap_check "and leave the database at 0.1.0 with its invoices" \
	"$(q "$CLASH" -c "SELECT extversion || ' ' || (SELECT string_agg(total::text, ' ' ORDER BY invoice_id) FROM mspbill.invoices) FROM pg_extension WHERE extname = 'mspbill'")" "0.1.0 10 20"

# Usersets as 0.1.0's library stored them (test/upgrade/usersets--0.1.0.tsv:
# the text of a set and the bytes 0.1.0's userset_in, built from 80d98dc,
# stored for it) read as the same sets under the current library.  The
# harness above runs 0.1.0's SQL on the current library, so only these
# bytes tell a change of the stored format.
tap_check "usersets stored by 0.1.0's library read the same (empty, extremes, dense, sparse)" \
	"$(q "$OLD" -c "CREATE TABLE public.old_bytes (set_text text, stored bytea)" \
		-c "\\copy public.old_bytes FROM '$TOP/test/upgrade/usersets--0.1.0.tsv' WITH (FORMAT csv, DELIMITER E'\\t')" \
		-c "CREATE CAST (bytea AS mspbill.userset) WITHOUT FUNCTION" \
		-c "SELECT count(*) FILTER (WHERE stored::userset::text = set_text
		                              AND cardinality(stored::userset) = cardinality(set_text::bigint[])
		                              AND userset_send(stored::userset) = userset_send(set_text::userset))
		           || ' of ' || count(*) FROM public.old_bytes" 2>&1)" "6 of 6"

drop_db "$OLD"
drop_db "$NEW"
drop_db "$CLASH"

# The upgrade from 0.2.0 itself: its kept install script, the demo as 0.2.0
# loaded it (test/upgrade/clinics--0.2.0.sql), a finalized invoice; after
# the update every stored row and every invoice reads the same, and every
# object equals a fresh install.
V2=mspbill_test_upgrade_v2
drop_db "$V2"; q postgres -c "CREATE DATABASE $V2"
q "$V2" -c "CREATE EXTENSION mspbill VERSION '0.2.0'" -c "ALTER DATABASE $V2 SET search_path = public, mspbill" >"$work/v2.log" 2>&1
(cd "$TOP/test/upgrade" && q "$V2" -f clinics--0.2.0.sql) >>"$work/v2.log" 2>&1
tap_check "0.2.0 installs from its kept script and loads its demo" "$?" "0"
q "$V2" -c "SELECT msp_install_roles()" -c "SELECT msp_finalize_invoice(1, NULL, '{device_silent}')" >>"$work/v2.log" 2>&1
tap_check "an invoice finalized under 0.2.0" "$(q "$V2" -c "SELECT count(*) FROM invoices WHERE kind = 'invoice'")" "1"
SNAPDB=$V2 snapshot
SNAPDB=$V2 rows >"$work/v2.before.txt"
priced="SELECT string_agg(client_id || '=' || (msp_invoice(client_id)).total || '/' || (SELECT count(*) FROM msp_invoice_lines(client_id)), ' ' ORDER BY client_id) FROM clients"
priced_before=$(q "$V2" -c "$priced")
q "$V2" -c "ALTER EXTENSION mspbill UPDATE" >"$work/v2.update.log" 2>&1
tap_check "ALTER EXTENSION mspbill UPDATE from 0.2.0 reaches $current" \
	"$(q "$V2" -c "SELECT extversion FROM pg_extension WHERE extname = 'mspbill'")" "$current"
sed 's/^/# /' "$work/v2.update.log"
q "$V2" -c "SELECT msp_install_roles()" >/dev/null 2>&1
SNAPDB=$V2 rows >"$work/v2.after.txt"
diff -u "$work/v2.before.txt" "$work/v2.after.txt" >"$work/v2.rows.diff"
tap_check "every row 0.2.0 stored is unchanged" \
	"$(grep -c '^[-+][^-+]' "$work/v2.rows.diff")/$([ "$(wc -l <"$work/v2.before.txt")" -gt 100 ] && echo read)" "0/read"
head -40 "$work/v2.rows.diff" | sed 's/^/# /'
tap_check "both invoices (one finalized, one computed) read the same after the update" "$(q "$V2" -c "$priced")" "$priced_before"
q "$V2" -f "$TOP/test/upgrade/describe.sql" >"$work/catalog.v2" 2>&1
diff -U 2 --label "updated from 0.2.0" --label "fresh $current" "$work/catalog.v2" "$work/catalog.fresh" >"$work/catalog.v2.diff"
differing=$(grep -E '^[-+][^-+]' "$work/catalog.v2.diff" | cut -d'|' -f1 | sed -E 's/^[-+]//; s/ +$//' | sort -u)
tap_check "every object of a database updated from 0.2.0 equals a fresh $current install" \
	"$(echo -n "$differing" | grep -c .)" "0"
if [ -n "$differing" ]; then
	echo "# objects that differ (all of it in test/out/upgrade/catalog.v2.diff):"
	echo "$differing" | sed 's/^/#   /'
	head -100 "$work/catalog.v2.diff" | sed 's/^/# /'
fi
# invoice documents (0.3.0): what 0.2.0 finalized stays unnumbered (README,
# Invoice documents); the first invoice finalized after the update is number 1
tap_check "the invoice 0.2.0 finalized stays unnumbered, its lines untaxed" \
	"$(q "$V2" -c "SELECT d.status || ' ' || coalesce(d.invoice_number, '-') || ' ' || d.tax || ' ' || (d.amount_due = d.net_amount)
	                 FROM msp_invoice_document(1) d")" "finalized unnumbered - 0 true"
tap_check "and an export of it says why it has no number" \
	"$(q "$V2" -c "SELECT count(*) FROM msp_export_xero(1, msp_period(1))" 2>&1 | grep -c 'has no number')" "1"
tap_check "the first invoice finalized after the update is INV-000001" \
	"$(q "$V2" -c "SELECT msp_finalize_invoice(2, NULL, '{device_silent}') IS NOT NULL" -c "SELECT invoice_number FROM msp_invoice_document(2)" | tr '\n' ' ')" "t INV-000001 "
drop_db "$V2"
