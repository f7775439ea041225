#!/usr/bin/env bash
# Crash safety: the server is killed (pg_ctl stop -m immediate) while one
# session is finalizing an invoice and another is bulk-loading logons.
# After restart: no half-written invoice, no committed row lost, and
# finalizing works.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
PGROOT=$(cluster_root)
DB=mspbill_test_crash
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "SET search_path = public, mspbill" "$@"; }
echo "1..7"

fresh_demo_db "$DB"
committed=$(q -c "SELECT count(*) FROM logons")

# session A finalizes and then waits inside its transaction; session B
# bulk-loads 200k logons in one transaction and waits too
q -c "BEGIN" -c "SELECT msp_finalize_invoice(1, NULL, '{device_silent}')" -c "SELECT pg_sleep(60)" -c "COMMIT" >/dev/null 2>&1 &
q -c "BEGIN" -c "INSERT INTO logons (client_id, account_id, device_id, at)
                 SELECT 1, 5, 5, lower(msp_period(1)) + i * interval '1 second' FROM generate_series(1, 200000) i" \
  -c "SELECT pg_sleep(60)" -c "COMMIT" >/dev/null 2>&1 &
for _ in $(seq 1 100); do
	waiting=$("$BINDIR/psql" -X -At -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB' AND query LIKE '%pg_sleep(60)%' AND state = 'active'")
	[ "$waiting" = 2 ] && break
	sleep 0.2
done
tap_check "both sessions are mid-transaction when the server dies" "$waiting" "2"
log_lines=$(wc -l <"$PGROOT/server.log")
as_owner "$BINDIR/pg_ctl" -D "$PGROOT/data" -m immediate -w stop >/dev/null
wait
as_owner "$BINDIR/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/server.log" -w -t 60 start >/dev/null
tap_check "the server ran crash recovery" "$(tail -n +"$((log_lines + 1))" "$PGROOT/server.log" | grep -c 'was not properly shut down\|was interrupted' | awk '{print ($1 > 0)}')" "1"

tap_check "no invoice from the killed finalization" "$(q -c "SELECT count(*) FROM invoices")" "0"
tap_check "no orphan invoice lines" "$(q -c "SELECT count(*) FROM invoice_items it WHERE NOT EXISTS (SELECT 1 FROM invoices i WHERE i.client_id = it.client_id AND i.invoice_id = it.invoice_id)")" "0"
tap_check "committed logons all there, the killed load's none" "$(q -c "SELECT count(*) FROM logons")" "$committed"
id=$(q -c "SELECT msp_finalize_invoice(1, NULL, '{device_silent}')")
tap_check "finalizing works after recovery" "$(q -c "SELECT total FROM invoices WHERE invoice_id = $id")" "498.00"
tap_check "its lines add up" "$(q -c "SELECT sum(amount) FROM invoice_items WHERE invoice_id = $id")" "498.00"

drop_db "$DB"
