-- make demo: two clinics, their invoices, and the numbers behind them.
\set ON_ERROR_STOP on
\pset pager off
\pset footer off
\i clinics.sql
SET search_path = public, mspbill;
\i hybrid.sql

\echo
\echo '== A month of logons, loaded from the exports (Windows events, Entra ID sign-ins, EMR audit)'
SELECT * FROM demo_loads;

\echo
\echo '== St. Olaf Hospital: shared operating-room logons, individual EMR logins'
SELECT * FROM msp_invoice(1);
SELECT line_no, description, quantity, unit_price, amount FROM msp_invoice_lines(1);
\echo 'Who is billable, and why (the evidence for any disputed line); gray is the dental office''s'
\echo 'doctor whom the hospital pays for (bill_to_client_id), billed here from her own logons:'
SELECT pseudonym, c.name AS of_client, rule, days_active, support_contacts, accounts
  FROM msp_billable_users(1) u JOIN clients c ON c.client_id = u.home_client_id;

\echo 'Licences: seats held vs people active vs billed:'
SELECT category, coalesce(subject, sku) AS subject, quantity, note FROM msp_reconcile_licenses(1);
\echo 'What would block finalizing this month:'
SELECT * FROM msp_data_quality(1);

\echo
\echo '== Maple Family Dental: 8 desktops, 4 users, service cost spread to the cent'
SELECT * FROM msp_invoice(2);
SELECT line_no, description, amount FROM msp_invoice_lines(2);
\echo 'The same month under every pricing model:'
SELECT * FROM msp_compare_models(2);
\echo 'Backup/BDR and support spread across devices and users with allocate():'
SELECT pool_id, category, unit, share FROM msp_cost_allocation(2) WHERE pool_id IN (4, 5);

\echo
\echo '== Harbor Law Group: a hybrid agreement of contract lines (per user, per server, backup GB, a fixed fee, 10% off the first year)'
SELECT line_no, description, source, device_kind, meter, unit_price, discount_percent, discount_period FROM msp_effective_lines(3, 1);
SELECT * FROM msp_invoice(3);
SELECT line_no, description, quantity, unit_price, amount FROM msp_invoice_lines(3);
\echo 'The same month if servers were 120.00 and backup a flat 100.00, without the discount (msp_compare_lines):'
SELECT pricing, sum(amount) AS total FROM msp_compare_lines(3, '[
  {"line_no": 1, "description": "Managed users", "source": "users", "unit_price": 42.00},
  {"line_no": 2, "description": "Servers", "source": "devices", "device_kind": "server", "unit_price": 120.00},
  {"line_no": 3, "description": "Backup", "source": "fixed", "unit_price": 100.00},
  {"line_no": 4, "description": "Monthly service fee", "source": "fixed", "unit_price": 150.00}]') GROUP BY 1 ORDER BY 1;

\echo
\echo '== Counting users straight from the logons (exact, parallel, C aggregates)'
SELECT c.name, distinct_count(a.person_id) AS people_with_logons,
       cardinality(userset_agg(a.person_id)) AS same_as_a_set
  FROM logons l JOIN accounts a USING (client_id, account_id) JOIN clients c USING (client_id)
 WHERE a.kind = 'individual'
 GROUP BY c.name ORDER BY c.name;

\echo
\echo '== Invoice documents: the hospital taxed 8.25% per invoice with a PO, Net 30; then finalized and numbered'
INSERT INTO invoice_terms (client_id, tax_rate, tax_name, po_reference, payment_terms_days)
VALUES (1, 0.0825, 'Sales Tax 8.25%', 'PO-2291', 30),
       (2, 0.0725, 'Sales Tax 7.25%', NULL, 14);
UPDATE invoice_terms SET tax_rounding = 'line' WHERE client_id = 2;
INSERT INTO tax_rates VALUES (2, 'cost', 0, 'Tax Exempt');
\echo 'The PSA: the hospital''s users and seats are ConnectWise agreement additions; synced before a late logon arrives ...'
INSERT INTO psa_mappings (client_id, psa, basis, psa_agreement, psa_item)
VALUES (1, 'connectwise', 'user', '1042', 'MSP-USER'), (1, 'connectwise', 'seat', '1042', 'MSP-SEAT');
SELECT psa_object, psa_item, quantity, previous_quantity, change FROM msp_psa_sync(1);
-- a late EMR export brings a fourth nurse, before the month is finalized
INSERT INTO people (client_id, person_id, pseudonym) VALUES (1, 4, 'n4');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (1, 11, 'os', 'STOLAF\nurse4', 'individual', 4);
INSERT INTO logons (client_id, account_id, device_id, at) SELECT 1, 11, 5, lower(msp_period(1)) + interval '10 days 14 hours';
\echo '... and after it: only the change needs entering in the PSA'
SELECT psa_object, psa_item, quantity, previous_quantity, change FROM msp_psa_sync(1);
SELECT msp_finalize_invoice(1, NULL, '{device_silent}') AS hospital, msp_finalize_invoice(2, NULL, '{device_silent}') AS dental;
SELECT * FROM msp_invoice_document(1);
SELECT line_no, description, amount, tax, explanation FROM msp_document_lines(1);
SELECT * FROM msp_invoice_taxes(1);
\echo 'The evidence behind the user line, by pseudonym:'
SELECT e->>'pseudonym' AS pseudonym, e->>'rule' AS rule, e->>'days_active' AS days_active
  FROM msp_document_lines(1) l, jsonb_array_elements(l.evidence) e WHERE l.basis = 'user';

\echo
\echo '== The month''s exports (\copy ... TO ''file.csv'' WITH (FORMAT csv, HEADER) writes the file)'
\echo 'Xero:'
\copy (SELECT * FROM msp_export_xero(msp_period(1))) TO STDOUT WITH (FORMAT csv, HEADER)
\echo 'QuickBooks Online:'
\copy (SELECT * FROM msp_export_quickbooks(msp_period(1))) TO STDOUT WITH (FORMAT csv, HEADER)
\echo 'JSON (the dental office''s, abridged to its head and first line):'
SELECT jsonb_pretty(document - 'lines' - 'evidence_summary' || jsonb_build_object('lines', jsonb_path_query_array(document, '$.lines[0]')))
  FROM msp_export_json(msp_period(1)) WHERE client_id = 2;

\echo '== The daily licence sync: Graph, Pax8 and PSA exports loaded next to the logons'
\i licensing.sql
SELECT * FROM demo_sync_loads;
SELECT source, reason FROM load_rejects WHERE source IN ('graph', 'pax8', 'connectwise') ORDER BY source, line_no;
SELECT * FROM psa_unknown_contacts;
\echo 'St. Olaf, per product: bought, assigned, needed, billed, and what to do:'
SELECT product, seats_bought, seats_assigned, people_active, rooms_in_use, licences_needed, users_billed, unit_cost
  FROM msp_license_sync(1);
SELECT advice FROM msp_license_sync(1);
\echo 'Each gap by name, with its money:'
SELECT category, subject, amount FROM msp_license_gaps(1);
