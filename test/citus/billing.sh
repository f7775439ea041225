#!/usr/bin/env bash
# The whole of billing on Citus: msp_distribute() on a coordinator and two
# workers, against a single-node database loaded the same way.  The demo is
# loaded before distributing (an MSP moving its data), the random clients
# of test/model (fixed seed, sister clients included) after; every
# invoice, line, billable user, cost allocation, model comparison,
# data-quality finding and HIPAA summary, then a month-end (finalize,
# late data, drift, adjustment) must be identical to the cent.  It also
# asserts the plans that matter and msp_distribute()'s refusals.
# Needs the cluster of test/bin/citus; prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
eval "$(bash "$TOP/test/bin/citus" env)"
MODEL_CLIENTS=${MODEL_CLIENTS:-60}
MODEL_SEED=${MODEL_SEED:-17}
py=/usr/bin/python3
[ -x "$py" ] || py=python3

q() { local db=$1; shift; PGOPTIONS="-c search_path=public,mspbill -c client_min_messages=warning" \
	"$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$CITUS_HOST" -p "$CITUS_PORT" -U postgres -d "$db" "$@"; }
# a database of the coordinator's server without Citus: the single node
single_db() {
	q postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" &&
		q "$1" -c "CREATE EXTENSION mspbill"
}
load_demo() { (cd "$TOP/test/demo" && q "$1" -f clinics.sql >/dev/null 2>&1); }
load_model() { (cd "$TOP/test/citus" && "$py" load_model.py \
	"host=$CITUS_HOST port=$CITUS_PORT dbname=$1 user=postgres" "${2:-$MODEL_CLIENTS}" "${3:-$MODEL_SEED}" ${4:-}); }
echo "1..49"

# --- refusals -------------------------------------------------------------
single_db mspbill_s_demo
out=$(q mspbill_s_demo -c "SELECT msp_distribute()" 2>&1)
tap_check "without Citus: msp_distribute() refuses, with a hint" \
	"$(grep -c 'ERROR:  Citus is not installed in this database' <<<"$out")/$(grep -c 'HINT:  On the coordinator' <<<"$out")" "1/1"
tap_check "without Citus: msp_is_distributed() answers false" "$(q mspbill_s_demo -c "SELECT msp_is_distributed('mspbill.logons')")" "f"

citus_fresh_db mspbill_d_demo
out=$(q mspbill_d_demo -c "SELECT msp_distribute()" 2>&1)
tap_check "without btree_gist: msp_distribute() refuses, with a hint" \
	"$(grep -c 'ERROR:  msp_distribute() needs the extension btree_gist' <<<"$out")/$(grep -c 'HINT:  CREATE EXTENSION btree_gist' <<<"$out")" "1/1"
q mspbill_d_demo -c "CREATE EXTENSION btree_gist" \
	-c "DO \$\$BEGIN CREATE ROLE citus_owner_test LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END\$\$"

out=$(q mspbill_d_demo -c "GRANT USAGE ON SCHEMA mspbill TO citus_owner_test" -c "GRANT EXECUTE ON FUNCTION msp_distribute(integer) TO citus_owner_test" \
	-c "SET ROLE citus_owner_test" -c "SELECT msp_distribute()" 2>&1)
tap_check "as a non-superuser: msp_distribute() refuses" "$(grep -c 'must be run by a superuser' <<<"$out")" "1"
out=$("$BINDIR/psql" -X -q -At -h "$CITUS_HOST" -p $((CITUS_PORT + 1)) -U postgres -d mspbill_d_demo \
	-c "SELECT mspbill.msp_distribute()" 2>&1)
tap_check "on a worker: msp_distribute() refuses" "$(grep -c 'runs on the Citus coordinator only' <<<"$out")" "1"
tap_check "nothing was distributed by the refusals" \
	"$(q mspbill_d_demo -c "SELECT count(*) FROM pg_dist_partition")" "0"

# --- the demo, loaded on one node, then distributed -------------------------
load_demo mspbill_s_demo
load_demo mspbill_d_demo
dist=$(q mspbill_d_demo -c "SELECT msp_distribute()" 2>&1 | tail -1)
tap_check "msp_distribute() on the demo" "$dist" "8 reference tables, 43 distributed tables, 13 delegated functions"
tap_check "again: nothing left to do (idempotent)" "$(q mspbill_d_demo -c "SELECT msp_distribute()" 2>&1 | tail -1)" \
	"0 reference tables, 0 distributed tables, 13 delegated functions"
tap_check "every table of the schema is a Citus table, co-located by client_id" \
	"$(q mspbill_d_demo -c "SELECT count(*) FILTER (WHERE p.partmethod = 'n') || '/' || count(*) FILTER (WHERE p.partmethod = 'h') || '/' || count(DISTINCT p.colocationid) FILTER (WHERE p.partmethod = 'h') || '/' || count(*) FILTER (WHERE c.oid IS NOT NULL AND p.logicalrelid IS NULL)
		FROM pg_class c FULL JOIN pg_dist_partition p ON p.logicalrelid = c.oid
		WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relkind IN ('r', 'p')")" "8/44/1/0"
tap_check "no unsafe Citus setting is on" \
	"$(q mspbill_d_demo -c "SELECT current_setting('citus.enable_unsafe_triggers') || current_setting('citus.allow_nested_distributed_execution')")" "offoff"
tap_check "the demo's rows all reached the shards" \
	"$(q mspbill_d_demo -c "SELECT (SELECT count(*) FROM logons) || '/' || (SELECT count(*) FROM accounts) || '/' || (SELECT count(*) FROM cost_pools)")" \
	"$(q mspbill_s_demo -c "SELECT (SELECT count(*) FROM logons) || '/' || (SELECT count(*) FROM accounts) || '/' || (SELECT count(*) FROM cost_pools)")"

# Everything mspbill says about each client, as one text per function
# (ids that the database numbers are left out: each node numbers its own).
report() {
	local db=$1 periods=$2
	q "$db" <<SQL
CREATE TEMP TABLE rp AS $periods;
SELECT 'invoice', md5(string_agg(x::text, ';' ORDER BY x.client_id)) FROM rp, LATERAL msp_invoice(rp.client_id, rp.period) x;
SELECT 'lines', md5(string_agg(rp.client_id || ':' || x::text, ';' ORDER BY rp.client_id, x.line_no)) FROM rp, LATERAL msp_invoice_lines(rp.client_id, rp.period) x;
SELECT 'billable users', md5(string_agg(rp.client_id || ':' || x::text, ';' ORDER BY rp.client_id)) FROM rp, LATERAL msp_billable_users(rp.client_id, rp.period) x;
SELECT 'cost allocation', md5(string_agg(rp.client_id || ':' || x::text, ';' ORDER BY rp.client_id)) FROM rp, LATERAL msp_cost_allocation(rp.client_id, rp.period) x;
SELECT 'models', md5(string_agg(rp.client_id || ':' || x::text, ';' ORDER BY rp.client_id)) FROM rp, LATERAL msp_compare_models(rp.client_id, rp.period) x;
SELECT 'data quality', md5(string_agg(rp.client_id || ':' || x::text, ';' ORDER BY rp.client_id, x::text)) FROM rp, LATERAL msp_data_quality(rp.client_id, rp.period) x;
SELECT 'hipaa', md5(string_agg(x::text, ';' ORDER BY x.client_id)) FROM rp, LATERAL msp_pii_audit_summary(rp.client_id, rp.period) x;
SELECT 'rows', count(*) FROM rp, LATERAL msp_billable_users(rp.client_id, rp.period) x;
SQL
}
compare_reports() {
	local what=$1 s=$2 d=$3 name
	for name in invoice lines 'billable users' 'cost allocation' models 'data quality' hipaa; do
		tap_check "$what: $name identical on Citus and on one node" \
			"$(grep "^$name|" <<<"$d")" "$(grep "^$name|" <<<"$s")"
	done
}
demo_periods="SELECT client_id, msp_period(client_id) AS period FROM clients"
s=$(report mspbill_s_demo "$demo_periods")
d=$(report mspbill_d_demo "$demo_periods")
compare_reports demo "$s" "$d"
tap_check "demo: the invoices are the README's (498.00 and 942.00)" \
	"$(q mspbill_d_demo -c "SELECT string_agg((msp_invoice(client_id)).total::text, ' ' ORDER BY client_id) FROM clients")" "498.00 942.00"

# --- plans ------------------------------------------------------------------
plan=$(q mspbill_d_demo -c "EXPLAIN (COSTS OFF) SELECT mspbill.msp_invoice(1)")
tap_check "msp_invoice(client) is delegated: one task on the worker holding the client" \
	"$(grep -c 'Task Count: 1' <<<"$plan")/$(grep -c 'Node: host=.* port=' <<<"$plan")" "1/1"
plan=$(q mspbill_d_demo -c "EXPLAIN (COSTS OFF) SELECT * FROM mspbill.msp_billable_users(2)")
tap_check "msp_billable_users(client) is delegated too (set-returning, in FROM)" \
	"$(grep -c 'Task Count: 1' <<<"$plan")/$(grep -c 'Function Scan on msp_billable_users' <<<"$plan")" "1/1"
plan=$(q mspbill_d_demo -c "EXPLAIN (VERBOSE, COSTS OFF) SELECT l.client_id, distinct_count(a.person_id) FROM logons l JOIN accounts a USING (client_id, account_id) GROUP BY 1")
tap_check "per-client distinct_count over logons and accounts runs on the workers (one task per shard, joined there)" \
	"$(grep -c 'Task Count: 32' <<<"$plan")/$(grep -c 'Query: SELECT .*mspbill.distinct_count(.*) .* GROUP BY' <<<"$plan")" "1/1"
plan=$(q mspbill_d_demo -c "EXPLAIN (VERBOSE, COSTS OFF) SELECT cardinality(userset_union(s)) FROM (SELECT l.client_id, userset_agg(a.person_id) s FROM logons l JOIN accounts a USING (client_id, account_id) GROUP BY 1) x")
tap_check "cross-client rollup: one partial union per shard (worker_partial_agg), combined on the coordinator" \
	"$(grep -c 'worker_partial_agg(.mspbill.userset_union' <<<"$plan")/$(grep -c 'coord_combine_agg' <<<"$plan")" "1/1"
plan=$(q mspbill_d_demo -c "EXPLAIN (COSTS OFF) SELECT count(*) FROM logons l JOIN accounts a ON a.client_id = 1 AND a.account_id = l.account_id WHERE l.client_id = 1")
tap_check "a per-client statement filtered by client_id on every table is a one-shard (router) plan" \
	"$(grep -c 'Task Count: 1$' <<<"$plan")" "1"

# --- sister clients: read on the client's own node -----------------------------
w=$(q mspbill_d_demo -c "SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = get_shard_id_for_distribution_column('mspbill.contracts', 2)")
remote=$("$BINDIR/psql" -X -q -At -h "$CITUS_HOST" -p "$w" -U postgres -d mspbill_d_demo -c "SET citus.log_remote_commands = on" \
	-c "SET client_min_messages = log" -c "SELECT (mspbill.msp_compute_invoice(2)).total" 2>&1)
tap_check "an invoice of a client no sister's people are billed to reads no other node (no remote command)" \
	"$(grep -c 'issuing' <<<"$remote")/$(grep -c '^942.00$' <<<"$remote")" "0/1"
tap_check "the sister pair the demo's people name was recorded before distributing" \
	"$(q mspbill_d_demo -c "SELECT string_agg(client_id || '>' || bill_to_client_id, ',') FROM sister_clients")" "2>1"
out=$(q mspbill_d_demo -c "INSERT INTO people (client_id, person_id, pseudonym, bill_to_client_id) VALUES (1, 999, 'undeclared', 2)" 2>&1)
tap_check "on Citus a person may name a payer only once the pair is declared (foreign key)" \
	"$(grep -c 'violates foreign key constraint "people_sister_client_declared' <<<"$out")" "1"

# --- the month's batch: msp_invoices() on the workers, per shard ---------------
tap_check "demo: msp_invoices() on Citus = on one node" \
	"$(q mspbill_d_demo -c "SELECT md5(string_agg(i::text, ';')) FROM msp_invoices() i")" \
	"$(q mspbill_s_demo -c "SELECT md5(string_agg(i::text, ';')) FROM msp_invoices() i")"

# --- the random clients, loaded after distributing ----------------------------
single_db mspbill_s_model
citus_fresh_db mspbill_d_model
q mspbill_d_model -c "CREATE EXTENSION btree_gist" -c "SELECT msp_distribute()" >/dev/null 2>&1
load_model mspbill_s_model
load_model mspbill_d_model
tap_check "model: the same rows on both (logons, people, sister clients' people)" \
	"$(q mspbill_d_model -c "SELECT (SELECT count(*) FROM logons) || '/' || (SELECT count(*) FROM people) || '/' || (SELECT count(*) FROM people WHERE bill_to_client_id <> client_id)")" \
	"$(q mspbill_s_model -c "SELECT (SELECT count(*) FROM logons) || '/' || (SELECT count(*) FROM people) || '/' || (SELECT count(*) FROM people WHERE bill_to_client_id <> client_id)")"
model_periods="SELECT client_id, period FROM model_periods"
s=$(report mspbill_s_model "$model_periods")
d=$(report mspbill_d_model "$model_periods")
compare_reports "model ($MODEL_CLIENTS clients)" "$s" "$d"
tap_check "model: some people are billed (the comparison is not empty)" "$([ "$(grep '^rows|' <<<"$s" | cut -d'|' -f2)" -gt 20 ] && echo yes)" "yes"

# --- the batch over every client of one month (contract lines, sisters, ...) --
BATCH_CLIENTS=${BATCH_CLIENTS:-120}
single_db mspbill_s_batch
citus_fresh_db mspbill_d_batch
q mspbill_d_batch -c "CREATE EXTENSION btree_gist" -c "SELECT msp_distribute()" >/dev/null 2>&1
load_model mspbill_s_batch "$BATCH_CLIENTS" 18 2026-03-01
load_model mspbill_d_batch "$BATCH_CLIENTS" 18 2026-03-01
batch="SELECT md5(string_agg(i::text, ';')) || ' ' || count(*) FROM msp_invoices('[2026-03-01,2026-04-01)') i"
s=$(q mspbill_s_batch -c "$batch")
tap_check "batch: $BATCH_CLIENTS clients' invoices of March 2026 on one node (every client priced)" "${s#* }" "$BATCH_CLIENTS"
tap_check "batch: msp_invoices() on the workers = on one node, to the cent" "$(q mspbill_d_batch -c "$batch")" "$s"
tap_check "batch: = msp_invoice per client on the coordinator" \
	"$(q mspbill_d_batch -c "SELECT md5(string_agg(msp_invoice(client_id, '[2026-03-01,2026-04-01)')::text, ';' ORDER BY client_id)) || ' ' || count(*) FROM clients")" "$s"
# timings, best of three (reported, never asserted: make bench territory)
best() { local db=$1 sql=$2 i t b=""; for i in 1 2 3; do
	t=$(q "$db" -c '\timing on' -c "$sql" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p')
	if [ -z "$b" ] || awk "BEGIN{exit !($t < $b)}"; then b=$t; fi; done; echo "$b"; }
# one session each, warm: a delegated call reuses the coordinator's
# connection to the worker, as a month-end script does
best_in_session() { local db=$1 sql=$2; { echo '\timing on'; for i in 1 2 3 4 5 6 7 8 9 10; do echo "$sql;"; done; } |
	q "$db" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | sort -n | head -1; }
echo "# timing: msp_compute_invoice(2) (demo, best of 10 in one session): one node $(best_in_session mspbill_s_demo "SELECT msp_compute_invoice(2)") ms, Citus delegated $(best_in_session mspbill_d_demo "SELECT msp_compute_invoice(2)") ms"
echo "# timing: $BATCH_CLIENTS invoices (best of 3): one node msp_invoices $(best mspbill_s_batch "SELECT count(*) FROM msp_invoices('[2026-03-01,2026-04-01)')") ms; Citus msp_invoices $(best mspbill_d_batch "SELECT count(*) FROM msp_invoices('[2026-03-01,2026-04-01)')") ms, msp_invoice per client over clients $(best mspbill_d_batch "SELECT count(msp_invoice(client_id, '[2026-03-01,2026-04-01)')) FROM clients") ms"
rollup="SELECT cardinality(userset_union(s)) FROM (SELECT l.client_id, userset_agg(a.person_id) s FROM logons l JOIN accounts a USING (client_id, account_id) GROUP BY 1) x"
echo "# timing: cross-client rollup over $BATCH_CLIENTS clients' logons (best of 3): one node $(best mspbill_s_batch "$rollup") ms, Citus $(best mspbill_d_batch "$rollup") ms"

# --- month end: finalize, late data, drift, adjustment ------------------------
month_end() {
	q "$1" <<'SQL'
-- one top-level call per client, as a month-end script makes them: on
-- Citus each is delegated to the worker that holds the client
SELECT format('SELECT msp_finalize_invoice(%s, %L, %L)', client_id, msp_period(client_id),
			  '{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[])
  FROM clients ORDER BY 1 \gexec
-- late data: a support call for every client's first person, and one
-- client's logons of its first account lost
-- (periods first: on Citus no per-client function runs inside a query on
-- a distributed table, only over clients, a reference table)
CREATE TEMP TABLE mp AS SELECT client_id, msp_period(client_id) AS period FROM clients;
-- a person nobody knew of, who called the desk in the month (the
-- hospital bills per user: its invoice drifts by one user)
INSERT INTO people (client_id, pseudonym) VALUES (1, 'late1');
INSERT INTO support_contacts (client_id, person_id, at, channel)
SELECT 1, p.person_id, lower(mp.period)::timestamp AT TIME ZONE 'UTC' + interval '40 hours', 'phone'
  FROM people p JOIN mp ON mp.client_id = p.client_id WHERE p.client_id = 1 AND p.pseudonym = 'late1';
INSERT INTO support_contacts (client_id, person_id, at, channel)
SELECT p.client_id, min(p.person_id), lower(mp.period)::timestamp AT TIME ZONE 'UTC' + interval '36 hours', 'phone'
  FROM people p JOIN mp ON mp.client_id = p.client_id
 WHERE NOT p.is_technician AND NOT p.do_not_bill AND p.bill_to_client_id IS NULL GROUP BY p.client_id, mp.period;
DELETE FROM logons WHERE client_id = 2 AND account_id = (SELECT min(account_id) FROM accounts WHERE client_id = 2 AND kind = 'individual');
SELECT format('SELECT msp_issue_adjustment(%s, %L, %L)', c.client_id, msp_period(c.client_id), 'late data')
  FROM clients c WHERE EXISTS (SELECT 1 FROM msp_invoice_drift(c.client_id) d WHERE d.difference <> 0) ORDER BY 1 \gexec
SQL
}
lifecycle() {
	q "$1" <<'SQL'
SELECT 'invoices', md5(string_agg(concat_ws('|', i.client_id, i.kind, i.period, o.period, i.apply_period, i.reason, i.model, i.users, i.seats, i.devices, i.subtotal, i.total, i.currency, i.evidence, i.overrides), ';'
		ORDER BY i.client_id, i.kind, i.period))
  FROM invoices i LEFT JOIN invoices o ON o.client_id = i.client_id AND o.invoice_id = i.adjusts_invoice_id;
SELECT 'items', md5(string_agg(concat_ws('|', i.client_id, i.kind, it.line_no, it.contract_id, it.description, it.quantity, it.unit_price, it.amount, it.basis), ';'
		ORDER BY i.client_id, i.kind, it.line_no))
  FROM invoices i JOIN invoice_items it ON it.client_id = i.client_id AND it.invoice_id = i.invoice_id;
SELECT 'drift', md5(string_agg(c.client_id || ':' || d::text, ';' ORDER BY c.client_id, d.contract_id, d.basis)) FROM clients c, LATERAL msp_invoice_drift(c.client_id) d;
SELECT 'audit', string_agg(a.action || '=' || a.n, ',' ORDER BY a.action) FROM (SELECT action, count(*) n FROM audit_log GROUP BY 1) a;
SELECT 'stored', md5(string_agg(x::text, ';' ORDER BY x.client_id)) FROM clients c, LATERAL msp_invoice(c.client_id) x;
SELECT 'adjustments', count(*) FROM invoices WHERE kind = 'adjustment';
SQL
}
month_end mspbill_s_demo >/dev/null 2>&1
out=$(month_end mspbill_d_demo 2>&1)
tap_check "month end on Citus: finalize and adjust without an error" "$(grep -c ERROR <<<"$out")" "0"
s=$(lifecycle mspbill_s_demo)
d=$(lifecycle mspbill_d_demo)
for name in invoices items drift audit stored; do
	tap_check "month end: $name identical on Citus and on one node" "$(grep "^$name|" <<<"$d")" "$(grep "^$name|" <<<"$s")"
done
tap_check "month end: as many adjustments, and some (the late data drifted)" \
	"$(grep '^adjustments|' <<<"$d" | cut -d'|' -f2 | grep -v '^0$')" "$(grep '^adjustments|' <<<"$s" | cut -d'|' -f2)"
tap_check "month end on Citus: invoice numbers 1..N without a gap or duplicate across the workers" \
	"$(q mspbill_d_demo -c "SELECT count(DISTINCT invoice_number) || ' ' || max(invoice_number) FROM invoice_documents")" \
	"$(q mspbill_s_demo -c "SELECT count(*) || ' ' || max(invoice_number) FROM invoice_documents")"
tap_check "ids written on the workers are unique cluster-wide (invoices, audit entries)" \
	"$(q mspbill_d_demo -c "SELECT (SELECT count(DISTINCT invoice_id) = count(*) FROM invoices) AND (SELECT count(DISTINCT entry_id) = count(*) FROM audit_log) AND (SELECT count(DISTINCT invoice_id >> 48) > 1 FROM invoices)")" "t"
exit 0
