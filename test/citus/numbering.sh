#!/usr/bin/env bash
# The MSP-wide invoice number series on Citus: invoice_numbering is a
# reference table, whose row each finalization locks until it commits
# (Citus serializes the writers of a reference table across nodes).  Four
# sessions finalize 48 clients at once on the coordinator, top-level
# calls delegated to the worker holding each client, a third of them in
# transactions that roll back after taking a number (those run on the
# coordinator); afterwards the committed invoices hold exactly the numbers
# 1..N, the rolled-back clients finalized again continue the series, and
# every node's copy of the counter agrees.  Needs the cluster of
# test/bin/citus; prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
eval "$(bash "$TOP/test/bin/citus" env)"
DB=mspbill_citus_numbering
work="$TOP/test/out/citus_numbering"
rm -rf "$work"; mkdir -p "$work"
q() { PGOPTIONS="-c search_path=public,mspbill -c client_min_messages=warning" \
	"$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$CITUS_HOST" -p "$CITUS_PORT" -U postgres -d "$DB" "$@"; }
echo "1..8"

citus_fresh_db "$DB"
q -c "CREATE EXTENSION btree_gist" -c "SELECT msp_distribute()" >/dev/null
q -c "INSERT INTO clients (client_id, name) SELECT g, 'Client ' || g FROM generate_series(1, 48) g" \
  -c "INSERT INTO contracts (client_id, effective, model, price_per_user, minimum_fee)
      SELECT client_id, daterange('2020-01-01', NULL), 'per_user', 10, 100 FROM clients"
tap_check "invoice_numbering is a reference table" \
	"$(q -c "SELECT partmethod FROM pg_dist_partition WHERE logicalrelid = 'mspbill.invoice_numbering'::regclass")" "n"
gates="'{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'"
for w in 0 1 2 3; do
	{
		for c in $(seq $((w + 1)) 4 48); do
			if [ $((c % 3)) -eq 0 ]; then
				echo "BEGIN; SELECT mspbill.msp_finalize_invoice($c, NULL, $gates); SELECT pg_sleep(0.05); ROLLBACK;"
			else
				echo "SELECT mspbill.msp_finalize_invoice($c, NULL, $gates);"
			fi
		done
	} >"$work/worker$w.sql"
	q -f "$work/worker$w.sql" >"$work/worker$w.log" 2>&1 &
done
wait
tap_check "every session ran without an error" "$(cat "$work"/worker*.log | grep -c ERROR)" "0"
tap_check "32 invoices committed, on both workers (ids from each node's range)" \
	"$(q -c "SELECT count(*) || ' ' || count(DISTINCT invoice_id >> 48) FROM invoices")" "32 2"
tap_check "their numbers are 1..32, no gap, no duplicate" \
	"$(q -c "SELECT count(DISTINCT invoice_number) || ' ' || min(invoice_number) || ' ' || max(invoice_number)
	          FROM invoice_documents")/$(q -c "SELECT count(*) FROM generate_series(1, 32) n
	          WHERE msp_invoice_number_text('INV-', n, 6) NOT IN (SELECT invoice_number FROM invoice_documents)")" "32 INV-000001 INV-000032/0"
tap_check "every node's copy of the counter stands at the last committed number" \
	"$(q -c "SELECT string_agg(DISTINCT result, ',') || ' ' || count(*) FROM run_command_on_all_nodes('SELECT last_number FROM mspbill.invoice_numbering')")" "32 3"
for w in 0 1; do
	for c in $(seq $((3 + w * 3)) 6 48); do echo "SELECT mspbill.msp_finalize_invoice($c, NULL, $gates);"; done >"$work/again$w.sql"
	q -f "$work/again$w.sql" >"$work/again$w.log" 2>&1 &
done
wait
tap_check "the rolled-back clients, finalized again, take 33..48" \
	"$(q -c "SELECT count(DISTINCT invoice_number) || ' ' || min(invoice_number) || ' ' || max(invoice_number)
	          FROM invoice_documents WHERE client_id % 3 = 0")" "16 INV-000033 INV-000048"
tap_check "48 invoices, 48 numbers in all" \
	"$(q -c "SELECT count(*) || ' ' || count(DISTINCT invoice_number) || ' ' || max(invoice_number) FROM invoice_documents")" "48 48 INV-000048"
tap_check "every invoice has its document, every line its line document" \
	"$(q -c "SELECT (SELECT count(*) FROM invoices i JOIN invoice_documents d USING (client_id, invoice_id)) || ' ' || (SELECT count(*) FROM invoice_line_documents) || ' ' || (SELECT count(*) FROM invoice_items)")" "48 96 96"
exit 0
