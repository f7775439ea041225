#!/usr/bin/env bash
# The exports as files, re-read by a real CSV parser (Python's csv module)
# and JSON parser: psql \copy writes Xero's and QuickBooks Online's CSV and
# the JSON documents of the demo month, with client names full of commas,
# quotes, a line break and non-ASCII letters; every line, tax and total
# read back must equal the stored invoice to the cent, and every
# quantity times unit price must give its line amount as an importer
# computes it.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
DB=mspbill_test_exports
work="$TOP/test/out/exports"
rm -rf "$work"; mkdir -p "$work"
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
fresh_demo_db "$DB" || exit 1
q -c "UPDATE clients SET name = E'St. Olaf \"Main\", Hospital\nEast Wing' WHERE client_id = 1" \
  -c "UPDATE clients SET name = 'Maple Family Dental, Zürich & Søn' WHERE client_id = 2" \
  -c "INSERT INTO invoice_terms (client_id, tax_rate, tax_name, po_reference) VALUES (1, 0.0825, 'Sales Tax 8.25%', 'PO \"7\", rev. 2')" \
  -c "INSERT INTO invoice_terms (client_id, tax_rate, tax_name, tax_rounding, payment_terms_days) VALUES (2, 0.0725, 'Sales Tax 7.25%', 'line', 0)" \
  -c "INSERT INTO export_codes VALUES ('user', '4010', 'Managed users'), ('seat', '4020', 'Shared seats')" \
  -c "SELECT msp_finalize_invoice(1, NULL, '{device_silent}'), msp_finalize_invoice(2, NULL, '{device_silent}')" >"$work/setup.log" 2>&1
period=$(q -c "SELECT msp_period(1)")
q -c "\\copy (SELECT * FROM msp_export_xero('$period')) TO '$work/xero.csv' WITH (FORMAT csv, HEADER)" \
  -c "\\copy (SELECT * FROM msp_export_quickbooks('$period')) TO '$work/quickbooks.csv' WITH (FORMAT csv, HEADER)" >>"$work/setup.log" 2>&1
q -c "SELECT document FROM msp_export_json('$period')" >"$work/invoices.jsonl" 2>>"$work/setup.log"
# what the database stored, to compare against
q -c "SELECT json_agg(json_build_object('number', d.invoice_number, 'name', c.name, 'date', d.invoice_date, 'due', d.due_date,
                      'terms', d.payment_terms_days, 'po', coalesce(d.po_reference, ''), 'total', i.total::text, 'tax', d.tax::text,
                      'lines', (SELECT count(*) FROM invoice_items it WHERE it.client_id = i.client_id AND it.invoice_id = i.invoice_id)))
                 FROM invoices i JOIN invoice_documents d USING (client_id, invoice_id) JOIN clients c USING (client_id)
                WHERE i.period = '$period'" -o "$work/stored.json" 2>>"$work/setup.log"
py=/usr/bin/python3
[ -x "$py" ] || py=python3
"$py" - "$work" <<'PY'
import csv, json, sys
from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal, ROUND_HALF_UP

work = sys.argv[1]
n = 0
def check(name, got, want):
    global n
    n += 1
    if got == want:
        print("ok %d - %s" % (n, name))
    else:
        print("not ok %d - %s" % (n, name))
        print("# got  %r\n# want %r" % (got, want))

def cents(x):
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)

stored = {}
for r in json.load(open(work + "/stored.json", encoding="utf-8")):
    stored[r["number"]] = dict(name=r["name"], date=date.fromisoformat(r["date"]), due=date.fromisoformat(r["due"]),
                               terms=r["terms"], po=r["po"], total=Decimal(r["total"]), tax=Decimal(r["tax"]), lines=r["lines"])
print("1..25")
check("two invoices were stored", sorted(stored), ["INV-000001", "INV-000002"])

# Xero
with open(work + "/xero.csv", newline="", encoding="utf-8") as f:
    xero = list(csv.DictReader(f))
check("Xero: the header is the template's columns",
      list(xero[0].keys()), ["ContactName", "InvoiceNumber", "Reference", "InvoiceDate", "DueDate", "InventoryItemCode",
                             "Description", "Quantity", "UnitAmount", "LineAmount", "AccountCode", "TaxType", "TaxAmount", "Currency"])
by = defaultdict(list)
for r in xero:
    by[r["InvoiceNumber"]].append(r)
check("Xero: one row per stored line", {k: len(v) for k, v in by.items()}, {k: v["lines"] for k, v in stored.items()})
check("Xero: contact names read back exactly (commas, quotes, line break, accents)",
      {k: {r["ContactName"] for r in v} for k, v in by.items()}, {k: {v["name"]} for k, v in stored.items()})
check("Xero: line amounts add up to each invoice's total",
      {k: sum(Decimal(r["LineAmount"]) for r in v) for k, v in by.items()}, {k: v["total"] for k, v in stored.items()})
check("Xero: quantity x unit amount gives every line amount, as Xero computes it",
      [r["LineAmount"] for r in xero if cents(Decimal(r["Quantity"]) * Decimal(r["UnitAmount"])) != Decimal(r["LineAmount"])], [])
check("Xero: tax amounts add up to each invoice's tax",
      {k: sum(Decimal(r["TaxAmount"]) for r in v) for k, v in by.items()}, {k: v["tax"] for k, v in stored.items()})
check("Xero: dates are DD/MM/YYYY and are the invoice's",
      {k: {(datetime.strptime(r["InvoiceDate"], "%d/%m/%Y").date(), datetime.strptime(r["DueDate"], "%d/%m/%Y").date()) for r in v} for k, v in by.items()},
      {k: {(v["date"], v["due"])} for k, v in stored.items()})
check("Xero: the PO reference is the Reference", {k: {r["Reference"] for r in v} for k, v in by.items()}, {k: {v["po"]} for k, v in stored.items()})
check("Xero: account codes from export_codes, 200 otherwise",
      sorted({(r["Description"].split(":")[0], r["AccountCode"]) for r in xero if r["InvoiceNumber"] == "INV-000001"}),
      [("Shared seats", "4020"), ("Users", "4010")])

# QuickBooks Online
with open(work + "/quickbooks.csv", newline="", encoding="utf-8") as f:
    qbo = list(csv.DictReader(f))
check("QuickBooks: the header is the import's columns",
      list(qbo[0].keys()), ["InvoiceNo", "Customer", "InvoiceDate", "DueDate", "Terms", "Memo", "Item(Product/Service)",
                            "ItemDescription", "ItemQuantity", "ItemRate", "ItemAmount", "ItemTaxCode", "ItemTaxAmount",
                            "Currency", "Service Date"])
by = defaultdict(list)
for r in qbo:
    by[r["InvoiceNo"]].append(r)
check("QuickBooks: one row per stored line", {k: len(v) for k, v in by.items()}, {k: v["lines"] for k, v in stored.items()})
check("QuickBooks: customers read back exactly", {k: {r["Customer"] for r in v} for k, v in by.items()}, {k: {v["name"]} for k, v in stored.items()})
check("QuickBooks: item amounts add up to each invoice's total",
      {k: sum(Decimal(r["ItemAmount"]) for r in v) for k, v in by.items()}, {k: v["total"] for k, v in stored.items()})
check("QuickBooks: quantity x rate gives every item amount",
      [r["ItemAmount"] for r in qbo if cents(Decimal(r["ItemQuantity"]) * Decimal(r["ItemRate"])) != Decimal(r["ItemAmount"])], [])
check("QuickBooks: item taxes add up to each invoice's tax",
      {k: sum(Decimal(r["ItemTaxAmount"]) for r in v) for k, v in by.items()}, {k: v["tax"] for k, v in stored.items()})
check("QuickBooks: dates are MM/DD/YYYY and are the invoice's",
      {k: {(datetime.strptime(r["InvoiceDate"], "%m/%d/%Y").date(), datetime.strptime(r["DueDate"], "%m/%d/%Y").date()) for r in v} for k, v in by.items()},
      {k: {(v["date"], v["due"])} for k, v in stored.items()})
check("QuickBooks: terms as QuickBooks names them", {k: {r["Terms"] for r in v} for k, v in by.items()},
      {k: {"Due on receipt" if v["terms"] == 0 else "Net %d" % v["terms"]} for k, v in stored.items()})

# JSON
docs = [json.loads(line, parse_float=Decimal) for line in open(work + "/invoices.jsonl", encoding="utf-8") if line.strip()]
by = {d["invoice_number"]: d for d in docs}
check("JSON: one document per invoice, with the client's name", {k: d["client"]["name"] for k, d in by.items()}, {k: v["name"] for k, v in stored.items()})
check("JSON: lines add up to the net amount, which is the invoice's total",
      {k: (sum(Decimal(l["amount"]) for l in d["lines"]), Decimal(d["net_amount"])) for k, d in by.items()},
      {k: (v["total"], v["total"]) for k, v in stored.items()})
check("JSON: line taxes and tax lines add up to the tax",
      {k: (sum(Decimal(l["tax"]["amount"]) for l in d["lines"]), sum(Decimal(t["tax"]) for t in d["taxes"]), Decimal(d["tax"])) for k, d in by.items()},
      {k: (v["tax"], v["tax"], v["tax"]) for k, v in stored.items()})
check("JSON: amount due is net plus tax", {k: Decimal(d["amount_due"]) for k, d in by.items()}, {k: v["total"] + v["tax"] for k, v in stored.items()})
check("JSON: dates and terms are the invoice's",
      {k: (d["invoice_date"], d["due_date"], d["po_reference"] or "") for k, d in by.items()},
      {k: (v["date"].isoformat(), v["due"].isoformat(), v["po"]) for k, v in stored.items()})
check("JSON: every line explains itself", [l["line_no"] for d in docs for l in d["lines"] if not l["explanation"]], [])
check("JSON: the evidence summary counts the people in the user line's evidence",
      by["INV-000001"]["evidence_summary"]["people_billed"],
      len([e for l in by["INV-000001"]["lines"] if l["kind"] == "user" for e in l["evidence"]]))
PY
drop_db "$DB"
