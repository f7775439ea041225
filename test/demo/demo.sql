-- make demo: two clinics, their invoices, and the numbers behind them.
\set ON_ERROR_STOP on
\pset pager off
\pset footer off
\i clinics.sql
SET search_path = public, mspbill;

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
\echo '== Counting users straight from the logons (exact, parallel, C aggregates)'
SELECT c.name, distinct_count(a.person_id) AS people_with_logons,
       cardinality(userset_agg(a.person_id)) AS same_as_a_set
  FROM logons l JOIN accounts a USING (client_id, account_id) JOIN clients c USING (client_id)
 WHERE a.kind = 'individual'
 GROUP BY c.name ORDER BY c.name;

\echo
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
