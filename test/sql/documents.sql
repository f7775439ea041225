-- Invoice documents on the demo clinics: numbers, dates, terms, PO
-- reference, tax per line and per invoice (with a property test of the
-- rounding), explanations and their evidence, exports' refusals, PSA
-- syncs, and who may do what (as the roles).
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
SET client_min_messages = warning;
SELECT plan(69);

-- terms: a client without a row gets the table's own defaults
INSERT INTO clients (client_id, name) VALUES (90, 'Defaults Probe');
INSERT INTO invoice_terms (client_id) VALUES (90);
SELECT is(to_jsonb(msp_invoice_terms(90)) - 'client_id',
          (SELECT to_jsonb(t) - 'client_id' FROM invoice_terms t WHERE client_id = 90),
          'msp_invoice_terms'' defaults are the columns'' defaults');
DELETE FROM invoice_terms WHERE client_id = 90;
SELECT is((msp_invoice_terms(90)).payment_terms_days, 30, 'and without a row the defaults apply');
DELETE FROM clients WHERE client_id = 90;

-- the hospital: 8.25% per invoice, PO, 30 days; the dental office: 7% per
-- line, support cost exempt, 14 days
INSERT INTO invoice_terms (client_id, tax_rate, tax_name, po_reference) VALUES (1, 0.0825, 'Sales Tax 8.25%', 'PO-2291');
INSERT INTO invoice_terms (client_id, tax_rate, tax_name, tax_rounding, payment_terms_days)
VALUES (2, 0.07, 'Sales Tax 7%', 'line', 14);
INSERT INTO tax_rates VALUES (2, 'cost', 0, 'Tax Exempt');
SELECT throws_ok($$INSERT INTO invoice_terms (client_id, tax_rate) VALUES (99, 0.1)$$, '23503', NULL, 'terms of an unknown client are refused');
SELECT throws_ok($$UPDATE invoice_terms SET tax_rate = 1.5 WHERE client_id = 1$$, '23514', NULL, 'a tax rate above 100% is refused');
SELECT throws_ok($$UPDATE invoice_terms SET tax_rounding = 'cent' WHERE client_id = 1$$, '23514', NULL, 'an unknown rounding is refused');
SELECT throws_ok($$UPDATE invoice_terms SET payment_terms_days = -1 WHERE client_id = 1$$, '23514', NULL, 'negative terms are refused');

-- preview: dated today in the client's zone, no number
SELECT results_eq($$SELECT status, invoice_number, invoice_date, due_date, payment_terms, po_reference, net_amount, tax, amount_due
                      FROM msp_invoice_document(1)$$,
                  $$SELECT 'preview', NULL::text, (now() AT TIME ZONE 'America/Chicago')::date,
                           (now() AT TIME ZONE 'America/Chicago')::date + 30, 'Net 30', 'PO-2291', 498.00, 41.09, 539.09$$,
                  'the hospital''s preview: today, Net 30, PO, 8.25% of 498.00 rounded once = 41.09');
SELECT results_eq($$SELECT line_no, tax FROM msp_document_lines(1)$$, $$VALUES (1, 31.19), (2, 9.90)$$,
                  'per invoice: line taxes carry the running rounding (378.00 -> 31.19, 498.00 -> 41.09 in all)');
SELECT is((SELECT sum(tax) FROM msp_document_lines(1)), (SELECT tax FROM msp_invoice_document(1)),
          'line taxes add up to the invoice''s tax');
SELECT results_eq($$SELECT tax_name, tax_rate, taxable, tax FROM msp_invoice_taxes(1)$$,
                  $$VALUES ('Sales Tax 8.25%', 0.0825, 498.00, 41.09)$$, 'one tax line for the hospital');

-- the dental office: its cost lines are exempt (tax_rates), nothing else
SELECT results_eq($$SELECT tax_name, tax_rate, taxable, tax FROM msp_invoice_taxes(2)$$,
                  $$VALUES ('Tax Exempt', 0::numeric, 942.00, 0.00)$$, 'the dental office''s lines fall under the cost rate');
DELETE FROM tax_rates WHERE client_id = 2;
SELECT results_eq($$SELECT amount, tax FROM msp_document_lines(2) ORDER BY line_no$$,
                  $$VALUES (120.00, 8.40), (216.00, 15.12), (144.00, 10.08), (102.00, 7.14), (360.00, 25.20)$$,
                  'without it, 7% per line, each line rounded');
INSERT INTO tax_rates VALUES (2, 'cost', 0, 'Tax Exempt');

-- rounding, property: random lines (credits included), both modes, three
-- minor units; per invoice the tax is the rounded tax of the sum, per
-- line the sum of rounded taxes, and every line within a minor unit
SELECT setseed(0.2026);
CREATE TEMP TABLE tax_cases AS
SELECT c AS case_no, (ARRAY[0.01, 1, 0.05])[1 + c % 3] AS minor, (ARRAY['line', 'invoice'])[1 + c % 2] AS rounding,
       round((random() * 0.3)::numeric, 4) AS rate,
       ARRAY(SELECT (n, NULL, 'x', 1, NULL, round(((random() - 0.2) * 5000)::numeric, 2),
                     (ARRAY['user', 'seat', 'cost'])[1 + (random() * 2.99)::int])::invoice_line
               FROM generate_series(1, 1 + (c * 7919) % 13) n WHERE c > 0) AS lines
  FROM generate_series(1, 300) c;
INSERT INTO clients (client_id, name, minor_unit) SELECT 1000 + case_no, 'tax case ' || case_no, minor FROM tax_cases;
INSERT INTO invoice_terms (client_id, tax_rate, tax_name, tax_rounding)
SELECT 1000 + case_no, rate, 'T', rounding FROM tax_cases;
-- a second rate for seats in every third case
INSERT INTO tax_rates SELECT 1000 + case_no, 'seat', 0.05, 'S' FROM tax_cases WHERE case_no % 3 = 0;
CREATE TEMP TABLE tax_out AS
SELECT tc.case_no, tc.minor, tc.rounding, l.amount, l.basis, t.tax_name, t.tax_rate, t.tax
  FROM tax_cases tc, unnest(tc.lines) l, msp_tax_lines(1000 + tc.case_no, tc.lines) t
 WHERE t.line_no = l.line_no;
SELECT is((SELECT count(*) FROM tax_out), (SELECT sum(cardinality(lines)) FROM tax_cases), 'a tax for every line');
SELECT is((SELECT count(*) FROM tax_out WHERE tax % minor <> 0), 0::bigint, 'every tax is a whole number of minor units');
SELECT is((SELECT count(*) FROM tax_out WHERE abs(tax - amount * tax_rate) >= minor), 0::bigint,
          'every line''s tax is within one minor unit of its exact tax');
SELECT is((SELECT count(*) FROM (SELECT case_no, tax_name, tax_rate, minor, sum(amount) AS s, sum(tax) AS t FROM tax_out
                                  WHERE rounding = 'invoice' GROUP BY 1, 2, 3, 4) g
            WHERE t <> msp_round(s * tax_rate, minor)), 0::bigint,
          'per invoice: each rate''s tax is its sum''s tax rounded once');
SELECT is((SELECT count(*) FROM tax_out WHERE rounding = 'line' AND tax <> msp_round(amount * tax_rate, minor)), 0::bigint,
          'per line: each line''s own tax rounded');
SELECT is((SELECT count(*) FROM tax_out WHERE (basis = 'seat' AND case_no % 3 = 0) <> (tax_name = 'S')), 0::bigint,
          'a kind''s own rate applies to its lines only');
SELECT results_eq($$SELECT count(*) FILTER (WHERE amount < 0) > 100, count(DISTINCT rounding), count(DISTINCT minor) FROM tax_out$$,
                  $$VALUES (true, 2::bigint, 3::bigint)$$, 'the cases held credits, both modes and three minor units');
DELETE FROM tax_rates WHERE client_id > 1000;
DELETE FROM invoice_terms WHERE client_id > 1000;
DELETE FROM clients WHERE client_id > 1000;

-- explanations, from the demo's evidence
SELECT is((SELECT explanation FROM msp_document_lines(1) WHERE basis = 'user'),
          '9 people logged on at least 1 day or called support (1 only called support; 1 is a person of Maple Family Dental, paid for by this client); 1 technician is not billed',
          'the user line says how 9 was reached, and who is not billed');
SELECT is((SELECT explanation FROM msp_document_lines(1) WHERE basis = 'seat'),
          'rooms OR1-OR4 are billed as 4 shared seats, one each however many people used it', 'the seat line names the rooms');
SELECT is((SELECT array_agg(e->>'pseudonym' ORDER BY e->>'pseudonym') FROM msp_document_lines(1) l, jsonb_array_elements(l.evidence) e
            WHERE l.basis = 'user'),
          (SELECT array_agg(pseudonym ORDER BY pseudonym) FROM msp_billable_users(1)), 'the evidence lists the billed people by pseudonym');
SELECT is(msp_name_ranges('{OR3,OR1,OR2,OR4,LAB,PC7,PC9,OR01}'), 'LAB, OR1-OR4, OR01, PC7, PC9', 'runs of three or more become ranges');
SELECT is(msp_name_ranges('{}'), NULL, 'no names, no text');
UPDATE contracts SET support_rule = 'none', min_active_days = 2 WHERE client_id = 1;
SELECT alike((SELECT explanation FROM msp_document_lines(1) WHERE basis = 'user'), '8 people logged on at least 2 days (1 is%',
            'the sentence follows the contract''s policy');
UPDATE contracts SET support_rule = 'sufficient', min_active_days = 1 WHERE client_id = 1;

-- the period not over: the error names today in the client's zone
CREATE TEMP TABLE caught (detail text);
DO $$
DECLARE d text;
BEGIN
	PERFORM msp_finalize_invoice(1, daterange(date_trunc('month', now() AT TIME ZONE 'America/Chicago')::date,
											  (date_trunc('month', now() AT TIME ZONE 'America/Chicago') + interval '1 month')::date));
EXCEPTION WHEN object_not_in_prerequisite_state THEN
	GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
	INSERT INTO caught VALUES (d);
END $$;
SELECT is((SELECT detail FROM caught),
          format('The period ends on %s; today is %s in the client''s time zone.',
                 (date_trunc('month', now() AT TIME ZONE 'America/Chicago') + interval '1 month - 1 day')::date,
                 (now() AT TIME ZONE 'America/Chicago')::date),
          'finalizing the current month: the detail names the last day and today');

-- a credit's tax rounds as its debit's, half a cent away from zero
SELECT results_eq($$SELECT line_no, tax FROM msp_tax_lines(2, ARRAY[(1, NULL, 'a', 1, 0.50, 0.50, 'fixed'),
                                                                    (2, NULL, 'b', 1, -0.50, -0.50, 'fixed')]::invoice_line[])$$,
                  $$VALUES (1, 0.04), (2, -0.04)$$, 'per line: 7% of 0.50 is 0.04, of -0.50 is -0.04');
SELECT results_eq($$SELECT tax FROM msp_tax_lines(1, ARRAY[(1, NULL, 'b', 1, -6.00, -6.00, 'fixed')]::invoice_line[])$$,
                  $$VALUES (-0.50)$$, 'per invoice: 8.25% of -6.00 (-0.495) is -0.50, as 0.495 is 0.50');

-- kinds of lines: only those an invoice has (a discount is taxed as its line)
SELECT throws_ok($$INSERT INTO tax_rates VALUES (1, 'bogus', 0.1, 'X')$$, '23514', NULL, 'a tax rate for an unknown kind is refused');
SELECT throws_ok($$INSERT INTO tax_rates VALUES (1, 'discount', 0.1, 'X')$$, '23514', NULL,
                 'and for discounts, which take their line''s rate');
SELECT throws_ok($$INSERT INTO psa_mappings (client_id, psa, basis, psa_agreement, psa_item) VALUES (1, 'halopsa', 'bogus', '1', '1')$$,
                 '23514', NULL, 'a PSA mapping of an unknown kind is refused');

-- the number series: free to choose before its first number
BEGIN;
INSERT INTO invoice_numbering (series, prefix, digits) VALUES ('invoice', 'INV-1', 1);
SELECT lives_ok($$UPDATE invoice_numbering SET prefix = 'INV-', digits = 6$$, 'before the first number the prefix may change');
ROLLBACK;

-- numbering: finalize both; then a rolled-back finalization gives its
-- number back
SELECT ok(msp_finalize_invoice(1, NULL, '{device_silent}') > 0, 'the hospital is finalized');
BEGIN;
SELECT msp_finalize_invoice(2, NULL, '{device_silent}') \g /dev/null
SELECT is((SELECT invoice_number FROM invoice_documents WHERE client_id = 2), 'INV-000002', 'inside a transaction the dental office would be 2');
ROLLBACK;
-- once a number is given, prefix and digits stay: INV-1 + 4 would print
-- INV-14 as INV- + 14 does
SELECT throws_ok($$UPDATE invoice_numbering SET prefix = 'INV-1', digits = 1$$, '55000',
                 'the invoice number series cannot change its prefix or digits', 'after the first number the prefix is fixed');
SELECT throws_ok($$UPDATE invoice_numbering SET digits = 4$$, '55000', NULL, 'and so are the digits');
SELECT throws_ok($$UPDATE invoice_numbering SET last_number = 0$$, '55000', NULL, 'and the counter is never set back, even by its owner');
SELECT lives_ok($$UPDATE invoice_numbering SET prefix = prefix$$, 'an update that changes nothing passes');
SELECT ok(msp_finalize_invoice(2, NULL, '{device_silent}') > 0, 'the dental office is finalized after the rollback');
SELECT results_eq($$SELECT client_id, invoice_number FROM invoice_documents ORDER BY 1$$,
                  $$VALUES (1::bigint, 'INV-000001'), (2, 'INV-000002')$$, 'numbers 1 and 2: the rolled-back 2 came back');
SELECT results_eq($$SELECT status, invoice_number, invoice_date, due_date, payment_terms, po_reference, net_amount, tax, amount_due
                      FROM msp_invoice_document(1)$$,
                  $$SELECT 'finalized', 'INV-000001', (now() AT TIME ZONE 'America/Chicago')::date,
                           (now() AT TIME ZONE 'America/Chicago')::date + 30, 'Net 30', 'PO-2291', 498.00, 41.09, 539.09$$,
                  'the finalized document is what the preview said');
UPDATE invoice_terms SET tax_rate = 0.2, po_reference = 'PO-NEW', payment_terms_days = 5 WHERE client_id = 1;
SELECT results_eq($$SELECT po_reference, tax, payment_terms FROM msp_invoice_document(1)$$, $$VALUES ('PO-2291', 41.09, 'Net 30')$$,
                  'later changes of terms do not rewrite the finalized document');
SELECT is((SELECT last_number FROM invoice_numbering), 2::bigint, 'the counter stands at the last number given');
SELECT throws_ok($$SELECT * FROM msp_export_xero(1, daterange('2020-01-01', '2020-02-01'))$$, 'P0002', NULL,
                 'exporting a period that was not finalized says so');
-- exports of every client read one calendar month
SELECT throws_ok($$SELECT * FROM msp_export_xero(NULL::daterange)$$, '22023', 'export period NULL is not a calendar month',
                 'an export of every client without a period is refused');
SELECT throws_ok($$SELECT * FROM msp_export_quickbooks(daterange('2026-01-01', '2026-04-01'))$$, '22023', NULL,
                 'so is a quarter');
SELECT throws_ok($$SELECT * FROM msp_export_json(daterange('2026-01-01', '2027-01-01'))$$, '22023', NULL, 'and a year');
SELECT throws_ok($$SELECT * FROM msp_export_json(daterange('2026-01-02', '2026-02-02'))$$, '22023', NULL,
                 'and a month''s length not starting on the 1st');
SELECT is((SELECT count(*) FROM msp_export_json(msp_period(1))), 2::bigint, 'a calendar month exports both invoices');

-- PSA: map, sync, late data, sync again
INSERT INTO psa_mappings (client_id, psa, basis, psa_agreement, psa_item) VALUES
	(1, 'connectwise', 'user', '1042', 'MS-USER'), (1, 'connectwise', 'seat', '1042', 'MS-SEAT'),
	(2, 'autotask', 'cost', '29684', '311');
SELECT throws_ok($$INSERT INTO psa_mappings (client_id, psa, basis, psa_agreement, psa_item) VALUES (1, 'kaseya', 'user', '1', '1')$$,
                 '23514', NULL, 'an unknown PSA is refused');
SELECT results_eq($$SELECT psa_item, quantity, previous_quantity, change FROM msp_psa_sync(1, msp_period(1))$$,
                  $$VALUES ('MS-SEAT', 4::numeric, NULL::numeric, 4::numeric), ('MS-USER', 9, NULL, 9)$$, 'the first sync sets 9 users and 4 seats');
SELECT results_eq($$SELECT psa_item, quantity, previous_quantity, change FROM msp_psa_quantities(1, msp_period(1))$$,
                  $$VALUES ('MS-SEAT', 4::numeric, 4::numeric, 0::numeric), ('MS-USER', 9, 9, 0)$$, 'after it, nothing to change');
-- next month (a preview): nobody logged on yet
SELECT results_eq($$SELECT psa_item, quantity, change FROM msp_psa_sync(1, daterange(upper(msp_period(1)), (upper(msp_period(1)) + interval '1 month')::date))$$,
                  $$VALUES ('MS-SEAT', 0::numeric, -4::numeric), ('MS-USER', 0, -9)$$, 'a sync of the next month reports the changes from the last sync');
SELECT is((SELECT count(*) FROM psa_syncs WHERE client_id = 1), 4::bigint, 'each sync is stored, mapping by mapping');

-- the roles
SELECT msp_install_roles() \g /dev/null
DO $$ BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_docs_bi') THEN CREATE ROLE mspbill_test_docs_bi; END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_docs_billing') THEN CREATE ROLE mspbill_test_docs_billing; END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_docs_report') THEN CREATE ROLE mspbill_test_docs_report; END IF;
END $$;
GRANT mspbill_bi TO mspbill_test_docs_bi;
GRANT mspbill_billing TO mspbill_test_docs_billing;
GRANT mspbill_report TO mspbill_test_docs_report;
INSERT INTO bi_client_access VALUES ('mspbill_test_docs_bi', 2);
CREATE TEMP TABLE p AS SELECT msp_period(1) AS period;
GRANT SELECT ON p TO PUBLIC;
SET ROLE mspbill_test_docs_bi;
SELECT is((SELECT array_agg(DISTINCT "ContactName") FROM msp_export_xero((SELECT period FROM p))), '{Maple Family Dental}',
          'a BI role exports only its clients'' invoices');
SELECT is((SELECT array_agg(client_id) FROM msp_export_json((SELECT period FROM p))), '{2}', 'and only their JSON');
SELECT throws_ok($$SELECT * FROM msp_export_quickbooks(1, (SELECT period FROM p))$$, 'P0002', 'unknown client 1',
                 'another client''s export: the client is unknown to it');
SELECT throws_ok($$SELECT * FROM msp_psa_sync(2, (SELECT period FROM p))$$, '42501', NULL, 'a BI role may not sync the PSA');
SELECT throws_ok($$UPDATE invoice_numbering SET prefix = 'X-'$$, '42501', NULL, 'nor touch the number series');
SELECT is((SELECT count(*) FROM psa_syncs), 0::bigint, 'and it sees no other client''s syncs');
RESET ROLE;
SET ROLE mspbill_test_docs_billing;
SELECT is((SELECT count(DISTINCT "InvoiceNo") FROM msp_export_quickbooks((SELECT period FROM p))), 2::bigint, 'the billing role exports every client');
SELECT is((SELECT count(*) FROM msp_psa_sync(2, (SELECT period FROM p))), 1::bigint, 'and syncs the PSA');
SELECT throws_ok($$UPDATE invoice_numbering SET last_number = 0$$, '42501', NULL, 'but cannot set the counter back');
SELECT throws_ok($$UPDATE invoice_numbering SET prefix = 'X-'$$, '42501', NULL, 'nor change the series: only the admin does');
SELECT throws_ok($$INSERT INTO invoice_numbering (series) VALUES ('invoice') ON CONFLICT DO NOTHING$$, '42501', NULL,
                 'nor create it');
RESET ROLE;
-- even with the privilege, only a superuser changes what was stored
GRANT UPDATE ON psa_syncs, invoice_documents TO mspbill_test_docs_billing;
SET ROLE mspbill_test_docs_billing;
SELECT throws_ok($$UPDATE psa_syncs SET quantity = 1$$, '42501', 'finalized billing records cannot be changed', 'stored syncs cannot be changed');
SELECT throws_ok($$UPDATE invoice_documents SET po_reference = 'x'$$, '42501', 'finalized billing records cannot be changed',
                 'nor can a finalized document');
RESET ROLE;
REVOKE UPDATE ON psa_syncs, invoice_documents FROM mspbill_test_docs_billing;
SET ROLE mspbill_test_docs_billing;
SELECT throws_ok($$INSERT INTO psa_syncs (client_id, mapping_id, period, quantity) VALUES (1, 1, (SELECT period FROM p), 99)$$,
                 '42501', NULL, 'nor write sync history directly');
RESET ROLE;
SET ROLE mspbill_test_docs_report;
SELECT throws_ok($$SELECT * FROM msp_export_xero((SELECT period FROM p))$$, '42501', NULL, 'the sealed report role cannot export at all');
RESET ROLE;
DELETE FROM bi_client_access WHERE role_name = 'mspbill_test_docs_bi';

SELECT * FROM finish();
