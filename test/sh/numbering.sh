#!/usr/bin/env bash
# Invoice numbers under concurrent finalization: four sessions finalize 48
# clients at once, a third of them inside transactions that roll back
# after taking a number (and hold it a moment, so that others queue behind
# it).  Afterwards the committed invoices hold exactly the numbers 1..N:
# no gap, no duplicate; the rolled-back clients, finalized again, continue
# the series.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
DB=mspbill_test_numbering
work="$TOP/test/out/numbering"
rm -rf "$work"; mkdir -p "$work"
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
echo "1..7"

drop_db "$DB"
"$BINDIR/psql" -X -q -d postgres -c "CREATE DATABASE $DB"
q -c "CREATE EXTENSION mspbill" -c "ALTER DATABASE $DB SET search_path = public, mspbill"
# 48 clients, each with a contract and nothing logged: every gate but the
# month's end is overridden
q -c "INSERT INTO mspbill.clients (client_id, name) SELECT g, 'Client ' || g FROM generate_series(1, 48) g" \
  -c "INSERT INTO mspbill.contracts (client_id, effective, model, price_per_user, minimum_fee)
      SELECT client_id, daterange('2020-01-01', NULL), 'per_user', 10, 100 FROM mspbill.clients"
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
tap_check "32 invoices committed, 16 rolled back" "$(q -c "SELECT count(*) FROM mspbill.invoices")" "32"
tap_check "their numbers are 1..32, no gap, no duplicate" \
	"$(q -c "SELECT count(DISTINCT invoice_number) || ' ' || min(invoice_number) || ' ' || max(invoice_number)
	          || ' ' || (SELECT count(*) FROM generate_series(1, 32) n WHERE NOT EXISTS (
	                     SELECT 1 FROM mspbill.invoice_documents d WHERE d.invoice_number = mspbill.msp_invoice_number_text('INV-', n, 6)))
	          FROM mspbill.invoice_documents")" "32 INV-000001 INV-000032 0"
tap_check "the counter stands at the last committed number" "$(q -c "SELECT last_number FROM mspbill.invoice_numbering")" "32"
tap_check "every invoice has its document" \
	"$(q -c "SELECT count(*) FROM mspbill.invoices i JOIN mspbill.invoice_documents d USING (client_id, invoice_id)")" "32"
# the rolled-back ones again, concurrently: they continue the series
for w in 0 1; do
	for c in $(seq $((3 + w * 3)) 6 48); do echo "SELECT mspbill.msp_finalize_invoice($c, NULL, $gates);"; done >"$work/again$w.sql"
	q -f "$work/again$w.sql" >"$work/again$w.log" 2>&1 &
done
wait
tap_check "the rolled-back clients, finalized again, take 33..48" \
	"$(q -c "SELECT count(DISTINCT invoice_number) || ' ' || min(invoice_number) || ' ' || max(invoice_number)
	          FROM mspbill.invoice_documents WHERE client_id % 3 = 0")" "16 INV-000033 INV-000048"
tap_check "48 invoices, 48 numbers in all" \
	"$(q -c "SELECT count(*) || ' ' || count(DISTINCT invoice_number) || ' ' || max(invoice_number) FROM mspbill.invoice_documents")" "48 48 INV-000048"
drop_db "$DB"
