#!/usr/bin/env bash
# The scale rows of the benchmark (BENCH_ONLY=scale make bench): October
# 2026's invoices for 2,000 clients and their month-end, on the quarter of
# test/bench/scale.sql, side by side with the raw per-client
# COUNT(DISTINCT) over the same month, in one run.  Prints Markdown rows.
# The dataset lives in its own database (mspbill_bench_scale) and is built
# once: rebuilt when scale.sql or BENCH_SCALE changes; when only the
# extension changed, its logon partitions (schema scale, indexes and all)
# are detached, the extension recreated, the small tables copied back and
# the partitions attached again.  BENCH_SCALE (default 1) scales people,
# devices and logons; the clients stay 2,000.
. "$(dirname "$0")/../bin/common.sh"
find_pg
[ "${BENCH_BUILT:-}" = 1 ] || build_install
cluster_start
DB=mspbill_bench_scale
SCALE=${BENCH_SCALE:-1}
RUNS=${BENCH_RUNS:-3}
OCT="'[2026-10-01,2026-11-01)'"
sb() { psql_q -d "$DB" "$@"; }
version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$TOP/mspbill.control")
gen_md5=$( (cat "$TOP/test/bench/scale.sql"; echo "scale=$SCALE") | md5sum | cut -c1-32)
ext_md5=$(md5sum <"$TOP/mspbill--$version.sql" | cut -c1-32)

# the billing tables from the scale schema, and its logon tables attached
# as the partitions of mspbill.logons (their foreign keys are checked then)
load_billing() {
	PGOPTIONS='-c client_min_messages=warning' sb >/dev/null <<'SQL'
DROP EXTENSION IF EXISTS mspbill CASCADE;
CREATE EXTENSION mspbill;
BEGIN;
-- bulk copy without the rollup triggers; the keys are checked when the
-- logons are attached
SET session_replication_role = replica;
INSERT INTO mspbill.clients (client_id, name, time_zone) SELECT client_id, name, time_zone FROM scale.clients;
INSERT INTO mspbill.contracts (client_id, contract_id, effective, model, price_per_user, price_per_device, price_per_seat,
							   markup, minimum_fee, minimum_quantity, tier_mode, shared_billing)
SELECT client_id, contract_id, effective, model, price_per_user, price_per_device, price_per_seat, markup, minimum_fee,
	   minimum_quantity, tier_mode, shared_billing FROM scale.contracts;
INSERT INTO mspbill.contract_tiers (client_id, contract_id, from_quantity, unit_price)
SELECT client_id, contract_id, from_quantity, unit_price FROM scale.contract_tiers;
INSERT INTO mspbill.devices (client_id, device_id, name, kind) SELECT client_id, device_id, name, kind FROM scale.devices;
INSERT INTO mspbill.people (client_id, person_id, pseudonym, is_technician, do_not_bill, bill_to_client_id, active)
SELECT client_id, person_id, pseudonym, is_technician, do_not_bill, bill_to_client_id, active FROM scale.people;
-- the pairs people's trigger would have noted (it is off during this copy):
-- without them the payers' invoices missed their sister clients' people
INSERT INTO mspbill.sister_clients (client_id, bill_to_client_id)
SELECT DISTINCT client_id, bill_to_client_id FROM scale.people WHERE bill_to_client_id IS NOT NULL;
INSERT INTO mspbill.accounts (client_id, account_id, realm, name, kind, person_id, application)
SELECT client_id, account_id, realm, name, kind, person_id, application FROM scale.accounts;
INSERT INTO mspbill.cost_pools (client_id, pool_id, category, description, amount, currency, period, basis)
SELECT client_id, pool_id, category, description, amount, currency, period, basis FROM scale.cost_pools;
INSERT INTO mspbill.license_counts (client_id, sku, seats, unit_cost, source, as_of)
SELECT client_id, sku, seats, unit_cost, source, as_of FROM scale.license_counts;
INSERT INTO mspbill.support_contacts (client_id, contact_id, person_id, at)
SELECT client_id, contact_id, person_id, at FROM scale.support_contacts;
RESET session_replication_role;
ALTER TABLE mspbill.logons ATTACH PARTITION scale.logons_2026_08 FOR VALUES FROM ('2026-08-01 00:00+00') TO ('2026-09-01 00:00+00');
ALTER TABLE mspbill.logons ATTACH PARTITION scale.logons_2026_09 FOR VALUES FROM ('2026-09-01 00:00+00') TO ('2026-10-01 00:00+00');
ALTER TABLE mspbill.logons ATTACH PARTITION scale.logons_2026_10 FOR VALUES FROM ('2026-10-01 00:00+00') TO ('2026-11-01 00:00+00');
-- as msp_add_logon_partitions does (dropped with the extension's functions)
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY '{logons_2026_08,logons_2026_09,logons_2026_10}'::text[] LOOP
		EXECUTE format('ALTER TABLE scale.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('DROP POLICY IF EXISTS client_rows ON scale.%I', t);
		EXECUTE format('CREATE POLICY client_rows ON scale.%I USING ((SELECT mspbill.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT mspbill.msp_visible_clients()) AS bigint[])))', t);
	END LOOP;
END
$$;
COMMIT;
ANALYZE mspbill.clients, mspbill.contracts, mspbill.contract_tiers, mspbill.devices, mspbill.people, mspbill.accounts,
	mspbill.cost_pools, mspbill.license_counts, mspbill.support_contacts, mspbill.logons;
SQL
	sb -c "CREATE TABLE IF NOT EXISTS public.scale_meta (gen_md5 text, ext_md5 text)" \
		-c "TRUNCATE public.scale_meta" -c "INSERT INTO public.scale_meta VALUES ('$gen_md5', '$ext_md5')" >/dev/null
}

full_build() {
	echo "building the scale dataset (scale $SCALE: 2,000 clients, ~$(awk "BEGIN{print 200 * $SCALE}")k people, a quarter of logons)..." >&2
	PGOPTIONS='-c client_min_messages=warning' psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
	sb -c "CREATE EXTENSION mspbill" >/dev/null
	sb -v scale="$SCALE" -f "$TOP/test/bench/scale.sql" >/dev/null || die "scale.sql failed"
	load_billing || die "loading the scale dataset failed"
}

reinstall() {
	echo "the extension changed: recreating it on the kept scale dataset..." >&2
	sb >/dev/null <<'SQL' && load_billing
DO $$
DECLARE
	t regclass;
BEGIN
	FOR t IN SELECT i.inhrelid::regclass FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			  WHERE c.relnamespace = 'scale'::regnamespace AND c.relkind = 'r' LOOP
		EXECUTE format('ALTER TABLE mspbill.logons DETACH PARTITION %s', t);
	END LOOP;
END
$$;
SQL
}

t0=$(date +%s)
state=$(sb -Atc "SELECT gen_md5 || ' ' || ext_md5 FROM public.scale_meta" 2>/dev/null || true)
built="reused"
if [ "${state%% *}" != "$gen_md5" ]; then
	full_build; built="built in $(($(date +%s) - t0)) s"
elif [ "${state#* }" != "$ext_md5" ]; then
	if ! reinstall; then full_build; fi
	built="reused (extension recreated in $(($(date +%s) - t0)) s)"
fi
# what an earlier run finalized goes (as the superuser, whom the triggers let)
sb -c "TRUNCATE mspbill.finalize_run_people, mspbill.finalize_run_clients, mspbill.finalize_runs, mspbill.invoice_line_documents, mspbill.invoice_documents, mspbill.invoice_items, mspbill.invoices, mspbill.audit_log, mspbill.rollup_dirty" >/dev/null

SETUP="SET search_path = public, mspbill; SET max_parallel_workers_per_gather = 2; SET jit = off;"
wall_ms() { # wall time of the last statement of a session (psql \timing)
	PGOPTIONS='-c client_min_messages=warning' sb -At -c "$SETUP" -c '\timing on' "$@" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | tail -1
}
best_wall_ms() { # best of $RUNS sessions
	local best="" t i
	for ((i = 0; i < RUNS; i++)); do
		t=$(wall_ms "$@")
		[ -n "$t" ] || die "query failed: $*"
		if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
	done
	echo "$best"
}
ratio() { awk "BEGIN{printf(\"%.2f\", $1 / $2)}"; }

read -r clients people devices accounts logons oct_logons <<<"$(sb -At -F' ' -c "SELECT (SELECT count(*) FROM mspbill.clients),
	(SELECT count(*) FROM mspbill.people), (SELECT count(*) FROM mspbill.devices), (SELECT count(*) FROM mspbill.accounts),
	(SELECT count(*) FROM mspbill.logons), (SELECT count(*) FROM scale.logons_2026_10)")"
priceable=$(sb -Atc "SELECT count(*) FROM mspbill.clients WHERE client_id NOT IN (SELECT client_id FROM scale.defects)")

# the raw per-client count: from a flat table of October's billable
# presence (payer, person), and from mspbill.logons with the joins the
# rules need (each client's own month, in its time zone)
RAW_FLAT="SELECT client_id, count(DISTINCT person_key) AS users FROM scale.october_flat GROUP BY client_id"
RAW_JOIN="SELECT c.client_id, count(DISTINCT p.client_id * 1000000 + p.person_id) AS users
	FROM mspbill.logons l
	JOIN mspbill.accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
	JOIN mspbill.people p ON p.client_id = a.client_id AND p.person_id = a.person_id
	JOIN mspbill.clients c ON c.client_id = coalesce(p.bill_to_client_id, p.client_id)
	WHERE l.presence AND a.kind = 'individual' AND NOT a.is_machine AND a.realm IN ('os', 'm365')
	  AND NOT p.is_technician AND NOT p.do_not_bill
	  AND l.at >= '2026-10-01'::timestamp AT TIME ZONE c.time_zone AND l.at < '2026-11-01'::timestamp AT TIME ZONE c.time_zone
	  AND l.at >= '2026-09-30 00:00+00' AND l.at < '2026-11-02 00:00+00'
	GROUP BY c.client_id"
PGOPTIONS='-c client_min_messages=warning' sb -c "DROP TABLE IF EXISTS scale.raw_flat, scale.raw_join, scale.inv" >/dev/null
flat=$(best_wall_ms -c "DROP TABLE IF EXISTS scale.raw_flat" -c "CREATE TABLE scale.raw_flat AS $RAW_FLAT")
join=$(best_wall_ms -c "DROP TABLE IF EXISTS scale.raw_join" -c "CREATE TABLE scale.raw_join AS $RAW_JOIN")

# the invoices, every client's people in one set-based pass
# (msp_compute_invoices), with every function's time tracked (one run)
PGOPTIONS='-c client_min_messages=warning' sb -c "DROP TABLE IF EXISTS scale.inv_one" >/dev/null
sb -c "SELECT pg_stat_reset()" >/dev/null
inv=$(wall_ms -c "SET track_functions = 'all'" \
	-c "CREATE TABLE scale.inv AS SELECT i.* FROM msp_compute_invoices($OCT,
	     ARRAY(SELECT client_id FROM mspbill.clients WHERE client_id NOT IN (SELECT client_id FROM scale.defects))) i")
[ -n "$inv" ] || die "the invoices failed"
sleep 1
functions=$(sb -At -F' ' -c "SELECT funcname, calls, round(self_time), round(total_time) FROM pg_stat_user_functions
	WHERE schemaname = 'mspbill' ORDER BY self_time DESC LIMIT 8")
# and client by client (msp_compute_invoice), as before: the same invoices
# (BENCH_PER_CLIENT=no leaves this row out: minutes at BENCH_SCALE=1)
if [ "${BENCH_PER_CLIENT:-yes}" != no ]; then
	one=$(wall_ms -c "CREATE TABLE scale.inv_one AS SELECT i.* FROM mspbill.clients c, LATERAL msp_compute_invoice(c.client_id, $OCT) i
	     WHERE c.client_id NOT IN (SELECT client_id FROM scale.defects)")
	[ -n "$one" ] || die "the per-client invoices failed"
	same_one=$(sb -Atc "SELECT count(*) FROM scale.inv i FULL JOIN scale.inv_one o USING (client_id)
		WHERE i.client_id IS NULL OR o.client_id IS NULL OR (i.*)::text <> (o.*)::text")
fi
differ=$(sb -Atc "SELECT count(*) FROM scale.inv i FULL JOIN scale.raw_flat f USING (client_id) FULL JOIN scale.raw_join j USING (client_id)
	WHERE client_id NOT IN (SELECT client_id FROM scale.defects)
	  AND (coalesce(i.users, 0) <> coalesce(f.users, 0) OR coalesce(i.users, 0) <> coalesce(j.users, 0) OR i.client_id IS NULL)")
users=$(sb -Atc "SELECT sum(users) FROM scale.inv")

# month-end in a session of its own, whose memory high-water mark is read
# from /proc before it ends
hwm() { sed -nE 's/^VmHWM:\s+([0-9]+) kB/\1/p' "/proc/$1/status"; }
notices=$(mktemp)
coproc ME { psql_q -d "$DB" -At 2>"$notices"; }
echo "SELECT pg_backend_pid();" >&"${ME[1]}"; read -r pid <&"${ME[0]}"
base=$(hwm "$pid")
echo "\\timing on" >&"${ME[1]}"
echo "CALL mspbill.msp_finalize_period($OCT);" >&"${ME[1]}"
read -r summary <&"${ME[0]}"
read -r timing <&"${ME[0]}"
peak=$(hwm "$pid")
echo '\q' >&"${ME[1]}"; wait "$ME_PID" 2>/dev/null || true
me_ms=$(sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' <<<"$timing")
[ -n "$me_ms" ] || { cat "$notices" >&2; die "month-end failed: $summary"; }
rm -f "$notices"
IFS='|' read -r run fin already refused failed <<<"$summary"
why=$(sb -Atc "SELECT string_agg(format('%s %s', n, w), ', ' ORDER BY w) FROM (
	SELECT coalesce(array_to_string(gates, '+'), regexp_replace(message, '\s*(for )?client [0-9]+.*$', '')) AS w, count(*) AS n FROM mspbill.finalize_run_clients
	 WHERE run_id = $run AND outcome IN ('refused', 'failed') GROUP BY 1) x")
same=$(sb -Atc "SELECT count(*) FROM mspbill.invoices v JOIN scale.inv i USING (client_id) WHERE v.total <> i.total OR v.users <> i.users")

printf '| scale dataset: %s clients, %s people, %s devices, %s accounts, %s logons (Aug-Oct 2026; %s in October) | %s | | |\n' \
	"$clients" "$people" "$devices" "$accounts" "$logons" "$oct_logons" "$built"
printf '| invoices for October, all %s clients that can be priced (msp_compute_invoices) | %.0f ms | raw per-client COUNT(DISTINCT), flat table: %.0f ms | %sx |\n' \
	"$priceable" "$inv" "$flat" "$(ratio "$inv" "$flat")"
printf '| invoices for October, all %s clients that can be priced (msp_compute_invoices) | %.0f ms | raw per-client COUNT(DISTINCT) over mspbill.logons with the joins: %.0f ms | %sx |\n' \
	"$priceable" "$inv" "$join" "$(ratio "$inv" "$join")"
if [ "${BENCH_PER_CLIENT:-yes}" != no ]; then
	printf '| invoices for October, client by client (msp_compute_invoice) | %.0f ms | msp_compute_invoices: %.0f ms | %sx |\n' \
		"$one" "$inv" "$(ratio "$one" "$inv")"
	echo "|   every invoice identical, batch and client by client | $([ "$same_one" = 0 ] && echo yes || echo "NO: $same_one differ") | | |"
fi
echo "|   users identical to both COUNT(DISTINCT)s ($users users) | $([ "$differ" = 0 ] && echo yes || echo "NO: $differ clients differ") | | |"
printf '| month-end for October, all %s clients (CALL msp_finalize_period) | %.0f ms | the invoices above: %.0f ms | %sx |\n' \
	"$clients" "$me_ms" "$inv" "$(ratio "$me_ms" "$inv")"
echo "|   outcomes | $fin finalized, $already already finalized, $refused refused, $failed failed ($why) | | |"
echo "|   finalized invoices identical to the computed ones | $([ "$same" = 0 ] && echo yes || echo "NO: $same differ") | | |"
echo "|   people of the finalized clients | $(sb -Atc "SELECT coalesce(string_agg(format('%s %s', n, w), ', ' ORDER BY w), 'none') FROM (
	SELECT people_from AS w, count(*) AS n FROM mspbill.finalize_run_clients WHERE run_id = $run AND outcome = 'finalized' GROUP BY 1) x") (batch: counted for every client when the run began) | | |"
printf '| memory high-water mark of the month-end backend (VmHWM) | %.0f MB (%.0f MB at connection) | | |\n' \
	"$(awk "BEGIN{print $peak / 1024}")" "$(awk "BEGIN{print $base / 1024}")"
while read -r fn calls self total; do
	[ -n "$fn" ] || continue
	printf '| invoice time in %s (%s calls) | %s ms self | %s ms with what it calls | |\n' "$fn" "$calls" "$self" "$total"
done <<<"$functions"

# bytes per logon row of the scale dataset, heap (toast included) and each
# index, over its three months (logon_bytes_sql, as test/bench/loader.sh;
# the indexes were built when the months were attached, as a month loaded
# in time order packs them)
sb -At -F' ' -c "VACUUM ANALYZE mspbill.logons" -c "$(logon_bytes_sql "ARRAY(SELECT relid::text FROM pg_partition_tree('mspbill.logons') WHERE isleaf)" \
	"SELECT count(*) AS n FROM mspbill.logons")" | while read -r what bytes; do
	case $what in
	rows) printf '|   over the scale dataset'"'"'s %s logons | | | |\n' "$bytes" ;;
	total) printf '| bytes per logon row (scale dataset), heap and indexes | %s | at most 150 | |\n' "$bytes" ;;
	*) printf '|   of which %s | %s | | |\n' "$what" "$bytes" ;;
	esac
done
