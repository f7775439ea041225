#!/usr/bin/env bash
# Loader rows of the benchmark, runnable alone (BENCH_ONLY=loader make
# bench) in a database of their own: streams where every event produces or
# closes a logon (fixed, generated in the database), each loaded after a
# first batch of the same shape so that the indexes are not empty; where
# the time goes (the same load without each index, without the foreign
# keys, without the rollup trigger); bytes per logon row, heap and each
# index.  Prints Markdown rows.
. "$(dirname "$0")/../bin/common.sh"
find_pg
[ "${BENCH_BUILT:-}" = 1 ] || build_install
cluster_start
DB=mspbill_bench_loader
N=${BENCH_LOADER_EVENTS:-200000}
lb() { psql_q -d "$DB" "$@"; }
wall_ms() { # wall time of the last statement (psql \timing)
	lb -At -c "SET search_path = public, mspbill" -c '\timing on' "$@" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | tail -1
}

PGOPTIONS='-c client_min_messages=warning' psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
lb -c "CREATE EXTENSION mspbill" >/dev/null
lb >/dev/null <<'SQL'
SET search_path = public, mspbill;
INSERT INTO clients (client_id, name, time_zone) SELECT c, 'Loader client ' || c, 'America/Chicago' FROM generate_series(1, 40) c;
SELECT msp_add_logon_partitions('2026-01-01', 12);
-- Windows: batch b of n events for client c: n/2 interactive logons (types
-- 2, 10 and 11, 300 hosts, 5000 users) each followed by the 4634 that
-- closes it, every event its own RecordNumber
CREATE FUNCTION bench_windows(c bigint, b integer, n integer) RETURNS void LANGUAGE sql AS $f$
	INSERT INTO mspbill.windows_event_staging (client_id, raw)
	SELECT c, json_build_object('@timestamp', to_char(timestamp '2026-01-01' + b * interval '20 days' + (i / 2) * interval '5 seconds'
	                                                 + (i % 2) * interval '40 minutes' + interval '7 seconds', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
	           'EventTime', to_char(timestamp '2026-01-01' + b * interval '20 days' + (i / 2) * interval '5 seconds'
	                                                 + (i % 2) * interval '40 minutes', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
	           'Hostname', 'WS' || (i / 2 % 300) || '.corp.example', 'EventID', CASE WHEN i % 2 = 0 THEN 4624 ELSE 4634 END,
	           'RecordNumber', b::bigint * n + i, 'TargetUserName', 'user' || (i / 2 % 5000), 'TargetDomainName', 'CORP',
	           'TargetLogonId', '0x' || to_hex(b::bigint * n + i / 2 * 2), 'LogonType', (ARRAY['2', '10', '11'])[i / 2 % 3 + 1],
	           'Channel', 'Security', 'SubjectUserName', '-', 'IpAddress', '-', 'ProcessName', 'C:\Windows\System32\svchost.exe')::text
	  FROM generate_series(0, n - 1) i;
$f$;
-- Entra: n successful interactive sign-ins, 5000 users
CREATE FUNCTION bench_entra(c bigint, b integer, n integer) RETURNS void LANGUAGE sql AS $f$
	INSERT INTO mspbill.entra_signin_staging (client_id, raw)
	SELECT c, json_build_object('id', md5(b || ':' || i), 'createdDateTime',
	           to_char(timestamp '2026-01-01' + b * interval '20 days' + i * interval '5 seconds', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
	           'userPrincipalName', 'user' || (i % 5000) || '@corp.example', 'appDisplayName', 'Office 365 Exchange Online',
	           'isInteractive', true, 'status', json_build_object('errorCode', 0),
	           'deviceDetail', json_build_object('displayName', 'WS' || (i % 300), 'operatingSystem', 'Windows10'))::text
	  FROM generate_series(0, n - 1) i;
$f$;
-- EMR: n audit rows, 5000 users on 300 workstations, local times
CREATE FUNCTION bench_emr(c bigint, b integer, n integer) RETURNS void LANGUAGE sql AS $f$
	INSERT INTO mspbill.emr_audit_staging (client_id, user_name, workstation, event_time, action, event_id)
	SELECT c, 'dr' || (i % 5000), 'WS' || (i % 300),
	       to_char(timestamp '2026-01-01' + b * interval '20 days' + i * interval '5 seconds', 'YYYY-MM-DD HH24:MI:SS'), 'LOGIN', b || ':' || i
	  FROM generate_series(0, n - 1) i;
$f$;
SQL

# one source's load of batch 2 after batch 1 for a fresh client; prints
# "ms loaded other" (the loader's counts, checked by the caller)
timed_load() { # $1 source (windows, entra, emr), $2 client, $3 setup SQL run before the timed load
	local src=$1 client=$2 setup=${3:-SELECT 1} fn out
	case $src in windows) fn=msp_load_windows_events ;; entra) fn=msp_load_entra_signins ;; emr) fn=msp_load_emr_audit ;; esac
	lb -q -c "SET search_path = public, mspbill" -c "SELECT bench_$src($client, 1, $N)" -c "SELECT * FROM $fn($client)" \
		-c "SELECT bench_$src($client, 2, $N)" -c "VACUUM ANALYZE mspbill.logons" >/dev/null
	out=$(lb -At -F' ' -c "SET search_path = public, mspbill" -c "$setup" -c '\timing on' -c "SELECT * FROM $fn($client)")
	echo "$(echo "$out" | sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | tail -1) $(echo "$out" | grep -E '^[0-9]+( [0-9]+)+$' | tail -1)"
}
rate() { awk "BEGIN{printf \"%.0f\", $N / ($1 / 1000)}"; }

read -r ms counts <<<"$(timed_load windows 1)"
set -- $counts
[ "$1" = $((N / 2)) ] && [ "$3" = $((N / 2)) ] || die "windows load: expected $((N / 2)) loaded and paired, got $counts"
win_ms=$ms
printf '| msp_load_windows_events, %sk events (every one a logon or the logoff closing it) | %.0f ms | | %s events/s |\n' $((N / 1000)) "$ms" "$(rate "$ms")"
read -r ms counts <<<"$(timed_load entra 2)"
set -- $counts
[ "$1" = "$N" ] || die "entra load: expected $N loaded, got $counts"
printf '| msp_load_entra_signins, %sk sign-ins (all loaded) | %.0f ms | | %s events/s |\n' $((N / 1000)) "$ms" "$(rate "$ms")"
read -r ms counts <<<"$(timed_load emr 3)"
set -- $counts
[ "$1" = "$N" ] || die "emr load: expected $N loaded, got $counts"
printf '| msp_load_emr_audit, %sk rows (all loaded) | %.0f ms | | %s events/s |\n' $((N / 1000)) "$ms" "$(rate "$ms")"

# the same Windows batch loaded again: every event a duplicate
lb -q -c "SELECT bench_windows(1, 2, $N)" >/dev/null
ms=$(wall_ms -c "SELECT * FROM msp_load_windows_events(1)")
client=3
printf '| msp_load_windows_events, the same %sk events again (all duplicates) | %.0f ms | | %s events/s |\n' $((N / 1000)) "$ms" "$(rate "$ms")"

# bytes per logon row, heap (toast included) and each index, over the
# leaf partitions given
bytes_rows() { # $1 label, $2 SQL array of the partitions, $3 SQL counting their rows
	lb -At -F' ' -c "VACUUM ANALYZE mspbill.logons" -c "$(logon_bytes_sql "$2" "$3")" | while read -r what bytes; do
		case $what in
		rows) printf '|   over %s %s | | | |\n' "$bytes" "$1" ;;
		total) printf '| bytes per logon row (%s), heap and indexes | %s | | |\n' "$1" "$bytes" ;;
		*) printf '|   of which %s | %s | | |\n' "$what" "$bytes" ;;
		esac
	done
}
# (before the rows below, whose rolled-back loads leave dead index entries)
bytes_rows "rows the loaders wrote" "ARRAY(SELECT relid::text FROM pg_partition_tree('mspbill.logons') WHERE isleaf)" \
	"SELECT count(*) AS n FROM mspbill.logons"
# where the time goes: batch 2 of a fresh client (the table already holds
# the loads above) without one thing at a time, in a transaction rolled
# back so that the next row has it again
without() { # label, SQL that removes the thing
	local ms
	client=$((client + 1))
	lb -q -c "SELECT bench_windows($client, 2, $N)" -c "ANALYZE mspbill.windows_event_staging" >/dev/null
	ms=$(lb -At -c "BEGIN" -c "$2" -c '\timing on' -c "SELECT * FROM mspbill.msp_load_windows_events($client)" -c '\timing off' -c "ROLLBACK" |
		sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' | tail -1)
	lb -q -c "SELECT * FROM mspbill.msp_discard_staged($client)" >/dev/null
	printf '| windows load without %s | %.0f ms | | %s events/s |\n' "$1" "$ms" "$(rate "$ms")"
}
without "nothing (the same load, for comparison)" "SELECT 1"
for idx in $(lb -At -c "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'mspbill.logons'::regclass ORDER BY 1"); do
	without "index $idx" "DROP INDEX mspbill.$idx"
done
without "the foreign keys" "ALTER TABLE mspbill.logons DROP CONSTRAINT logons_client_id_account_id_fkey; ALTER TABLE mspbill.logons DROP CONSTRAINT logons_client_id_device_id_fkey"
without "the rollup trigger" "ALTER TABLE mspbill.logons DISABLE TRIGGER mark_rollups_insert; ALTER TABLE mspbill.logons DISABLE TRIGGER mark_rollups_update"
# (the duplicate check needs logons_source_event_key, see its row)
without "the three other indexes, the foreign keys and the trigger" "DROP INDEX mspbill.logons_client_at_idx, mspbill.logons_account_idx, mspbill.logons_session_idx; ALTER TABLE mspbill.logons DROP CONSTRAINT logons_client_id_account_id_fkey; ALTER TABLE mspbill.logons DROP CONSTRAINT logons_client_id_device_id_fkey; ALTER TABLE mspbill.logons DISABLE TRIGGER mark_rollups_insert"

# and rows as the 10M benchmark stores them (client, account and time
# only, as billing.sql inserts them): 1M in a month of their own, 500
# clients of 200 accounts, in random order (fixed seed)
lb -q >/dev/null <<'SQL'
SET search_path = public, mspbill;
SELECT setseed(0.21);
INSERT INTO clients (client_id, name) SELECT c, 'Bench-shaped ' || c FROM generate_series(100, 599) c;
INSERT INTO accounts (client_id, account_id, realm, name, kind) SELECT c, 1000000 + c * 1000 + a, 'os', 'B\u' || a, 'unknown'
  FROM generate_series(100, 599) c, generate_series(1, 200) a;
SELECT msp_add_logon_partitions('2025-06-01', 1);
INSERT INTO logons (client_id, account_id, at)
SELECT c, 1000000 + c * 1000 + a, t FROM (
	SELECT 100 + floor(random() * 500)::int AS c, 1 + floor(random() * 200)::int AS a,
	       timestamptz '2025-06-01' + random() * interval '29 days' AS t
	  FROM generate_series(1, 1000000)) x ORDER BY random();
SQL
bytes_rows "rows shaped as the 10M benchmark's" "'{mspbill.logons_2025_06}'" "SELECT count(*) AS n FROM mspbill.logons_2025_06"
