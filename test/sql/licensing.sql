-- Licensing loaders: each export format from test/fixtures/licensing (with
-- malformed, duplicate and out-of-order records), loaded as mspbill_billing
-- without superuser, loaded twice; then the reconciliation with money.
\set ECHO none
\pset pager off
\set QUIET on
SET search_path = public, mspbill;
SELECT plan(56);
SELECT msp_install_roles() \g /dev/null
INSERT INTO clients (client_id, name, time_zone) VALUES (1, 'Clinic', 'America/New_York'), (2, 'Lab', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES
	(1, 1, '[2025-01-01,)', 'per_user', 40), (2, 1, '[2025-01-01,)', 'per_user', 40);
INSERT INTO people (client_id, person_id, pseudonym) VALUES (1, 1, 'alice'), (1, 2, 'ben'), (1, 3, 'reception');
INSERT INTO partner_companies VALUES (1, 'pax8', 'Clinic'), (2, 'pax8', 'Lab'), (2, 'pax8', 'c0ffee00-0000-0000-0000-000000000001'),
	(1, 'connectwise', 'Clinic'), (2, 'connectwise', 'Lab');
DROP ROLE IF EXISTS lic_loader;
CREATE ROLE lic_loader LOGIN IN ROLE mspbill_billing;
SET ROLE lic_loader;
SET mspbill.client_id = 1;

-- Graph: a pretty-printed subscribedSkus response and users as JSON lines
\copy m365_graph_staging (raw) FROM '../fixtures/licensing/graph_subscribed_skus.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
\copy m365_graph_staging (raw) FROM '../fixtures/licensing/graph_users.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_m365_graph(1, '2026-01-31')$$, $$VALUES (6::bigint, 1::bigint, 1::bigint, 5::bigint)$$,
                  'graph as mspbill_billing: 2 SKUs and 4 licences held loaded, 1 duplicate user, 1 unlicensed skipped, 5 rejected');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE source = 'graph' ORDER BY line_no$$,
                  $$VALUES ('invalid prepaidUnits.enabled'), ('neither a subscribedSku nor a user'), ('no userPrincipalName'),
                           ('assignedLicenses without skuId'), ('not valid JSON')$$, 'each graph reject says why');
SELECT results_eq($$SELECT product, enabled, consumed FROM m365_sku_counts WHERE client_id = 1 ORDER BY product$$,
                  $$VALUES ('Exchange Online (Plan 1)', 2, 1), ('Microsoft 365 Business Standard', 6, 4)$$,
                  'a saved Graph response reads: seats held and consumed per SKU, named by product');
SELECT results_eq($$SELECT a.label, x.product, x.account_enabled FROM m365_license_assignments x
                     JOIN account_labels a USING (client_id, account_id) WHERE x.as_of = '2026-01-31' ORDER BY a.account_id, x.product$$,
                  $$VALUES ('m365 account 1', 'Microsoft 365 Business Standard', true),
                           ('m365 account 2', 'Exchange Online (Plan 1)', true), ('m365 account 2', 'Microsoft 365 Business Standard', true),
                           ('m365 account 3', 'Microsoft 365 Business Standard', false)$$,
                  'users'' licences, one account per UPN whatever its case; the billing role sees labels, not names');
\copy m365_graph_staging (raw) FROM '../fixtures/licensing/graph_users.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
\copy m365_graph_staging (raw) FROM '../fixtures/licensing/graph_subscribed_skus.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_m365_graph(1, '2026-01-31')$$, $$VALUES (0::bigint, 7::bigint)$$,
                  'graph loaded again, in the other order: nothing new');
SELECT is((SELECT count(*) FROM m365_license_assignments WHERE client_id = 1), 4::bigint, 'still four licences held');
RESET ROLE;
SELECT is((SELECT count(*) FROM m365_graph_staging), 0::bigint, 'the graph stage is emptied (which the billing role may not read)');
SET ROLE lic_loader;

-- admin center Active users CSV: BOM, quoted commas and a line break in a field
\copy m365_users_csv_staging (raw) FROM '../fixtures/licensing/m365_active_users.csv' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_m365_users_csv(1, '2026-02-01')$$, $$VALUES (5::bigint, 1::bigint, 1::bigint, 2::bigint)$$,
                  'admin CSV: 5 licences held, 1 duplicate row, 1 unlicensed skipped, 2 rejected');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE source = 'm365_admin' ORDER BY line_no$$,
                  $$VALUES ('no User principal name'), ('not valid CSV')$$, 'each admin CSV reject says why');
SELECT results_eq($$SELECT x.product, count(*)::integer, count(*) FILTER (WHERE NOT x.account_enabled)::integer
                     FROM m365_license_assignments x WHERE x.as_of = '2026-02-01' GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('Exchange Online (Plan 1)', 1, 0), ('Microsoft 365 Business Standard', 4, 1)$$,
                  'licences split on +, display names are products, Block credential is a disabled account');
\copy m365_users_csv_staging (raw) FROM '../fixtures/licensing/m365_active_users.csv' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_m365_users_csv(1, '2026-02-01')$$, $$VALUES (0::bigint, 6::bigint)$$,
                  'admin CSV loaded twice = once');

-- activity report: optional presence, a realm of its own
\copy m365_activity_staging (raw) FROM '../fixtures/licensing/m365_activity.csv' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_m365_activity(1)$$, $$VALUES (4::bigint, 3::bigint, 2::bigint, 2::bigint)$$,
                  'activity: 4 product-days, 3 duplicates, deleted and idle skipped, 2 rejected');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE source = 'm365_activity' ORDER BY line_no$$,
                  $$VALUES ('invalid Last Activity Date'), ('invalid Last Activity Date')$$, 'a date that is none and a special word are rejected');
\copy m365_activity_staging (raw) FROM '../fixtures/licensing/m365_activity.csv' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_m365_activity(1)$$, $$VALUES (0::bigint, 7::bigint)$$, 'activity loaded twice = once');
-- a record whose logon cannot be written (here a check added for the
-- test) is rejected alone: the activity loader's own insert fails, and
-- the shared last step finds the record
RESET ROLE;
BEGIN;
ALTER TABLE logons ADD CONSTRAINT test_refuse_dave CHECK (source_event_id IS DISTINCT FROM 'dave@clinic.example|exchange|2026-01-21');
SET LOCAL ROLE lic_loader;
INSERT INTO m365_activity_staging (raw) VALUES
	('Report Refresh Date,User Principal Name,Is Deleted,Exchange Last Activity Date'),
	('2026-01-31,carol@clinic.example,False,2026-01-20'),
	('2026-01-31,dave@clinic.example,False,2026-01-21');
SELECT results_eq($$SELECT loaded, duplicate, rejected FROM msp_load_m365_activity(1)$$, $$VALUES (1::bigint, 0::bigint, 1::bigint)$$,
                  'a logon that cannot be written rejects its record alone; the others load');
SELECT results_eq($$SELECT reason ~ '^unloadable record: .*test_refuse_dave' FROM load_rejects WHERE source = 'm365_activity' ORDER BY line_no DESC LIMIT 1$$,
                  $$VALUES (true)$$, 'and the reject says why');
ROLLBACK;
SET ROLE lic_loader;
SET mspbill.client_id = 1;
RESET ROLE;
SELECT results_eq($$SELECT l.at FROM logons l JOIN accounts a USING (client_id, account_id)
                     WHERE a.realm = 'm365_activity' AND a.name = 'alice@clinic.example' AND l.source_event_id LIKE '%|exchange|%'$$,
                  $$VALUES ('2026-01-30 17:00:00+00'::timestamptz)$$,
                  'an activity day is noon in the client''s zone (New York: 17:00 UTC), whatever the session''s');
UPDATE accounts SET kind = 'individual', person_id = 1 WHERE client_id = 1 AND name = 'alice@clinic.example' AND realm = 'm365';
UPDATE accounts SET kind = 'individual', person_id = 2 WHERE client_id = 1 AND name = 'ben@clinic.example' AND realm = 'm365';
UPDATE accounts SET kind = 'shared' WHERE client_id = 1 AND name = 'or1@clinic.example';
UPDATE accounts SET kind = 'individual', person_id = 1 WHERE client_id = 1 AND name = 'alice@clinic.example' AND realm = 'm365_activity';
SELECT is((SELECT count(*) FROM msp_billable_users(1, '[2026-01-01,2026-02-01)')), 0::bigint,
          'activity is no presence by default');
UPDATE contracts SET count_realms = '{os,m365,m365_activity}' WHERE client_id = 1;
SELECT results_eq($$SELECT pseudonym, days_active FROM msp_billable_users(1, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('alice', 2)$$, 'with m365_activity in count_realms, activity days bill (two distinct days)');
UPDATE contracts SET count_realms = '{os,m365}' WHERE client_id = 1;
SET ROLE lic_loader;

-- Pax8: the portal CSV for the clinic, the API JSON for the lab
\copy pax8_staging (raw) FROM '../fixtures/licensing/pax8_subscriptions.csv' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_pax8_subscriptions(1, '2026-01-31')$$, $$VALUES (4::bigint, 1::bigint, 1::bigint, 4::bigint)$$,
                  'pax8 CSV: 4 subscriptions, 1 duplicate, the lab''s row skipped, 4 rejected');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE source = 'pax8' ORDER BY line_no$$,
                  $$VALUES ('unknown Pax8 company Riverside Vet'), ('invalid quantity'), ('invalid start or end date'), ('no product')$$,
                  'an unknown company is reported, not dropped; bad quantities and dates say why');
SELECT results_eq($$SELECT sku, seats, unit_cost FROM license_counts WHERE client_id = 1 AND source = 'pax8' ORDER BY sku$$,
                  $$VALUES ('Exchange Online (Plan 1)', 2, 3.60), ('Microsoft 365 Business Standard', 6, 11.10)$$,
                  'Active subscriptions become seats, the cost their weighted mean (4 x 11.25 + 2 x 10.80 = 6 x 11.10); the cancelled one does not count');
\copy pax8_staging (raw) FROM '../fixtures/licensing/pax8_subscriptions.csv' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_pax8_subscriptions(1, '2026-01-31')$$, $$VALUES (0::bigint, 5::bigint)$$,
                  'pax8 CSV loaded twice = once');
SELECT is((SELECT sum(seats) FROM license_counts WHERE client_id = 1), 8::bigint, 'and the seats are not doubled');
-- a corrected export of the same day: sub-1 bought up to 5, sub-3 as
-- before, sub-8 new; the day's rows take the correction, the rest stays
-- (rolled back: the reconciliation below reads the first export)
BEGIN;
INSERT INTO pax8_staging (raw) VALUES
	('Company,Product,Subscription Id,Quantity,Partner Cost,Price,Billing Term,Status,Start Date,End Date'),
	('Clinic,Microsoft 365 Business Standard,sub-1,5,$11.25,$15.00,Monthly,Active,2025-01-05,'),
	('Clinic,Exchange Online (Plan 1),sub-3,2,3.60,5.00,Monthly,Active,2025-01-05,'),
	('Clinic,Exchange Online (Plan 1),sub-8,1,3.60,5.00,Monthly,Active,2026-01-20,');
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_pax8_subscriptions(1, '2026-01-31')$$, $$VALUES (2::bigint, 1::bigint)$$,
                  'a corrected export of the day: the changed and the new subscription load, the unchanged one is a duplicate');
SELECT results_eq($$SELECT subscription_id, quantity FROM pax8_subscriptions WHERE client_id = 1 AND as_of = '2026-01-31' ORDER BY 1$$,
                  $$VALUES ('sub-1', 5), ('sub-2', 2), ('sub-3', 2), ('sub-4', 3), ('sub-8', 1)$$,
                  'the day''s subscriptions take the correction');
SELECT results_eq($$SELECT sku, seats FROM license_counts WHERE client_id = 1 AND source = 'pax8' ORDER BY sku$$,
                  $$VALUES ('Exchange Online (Plan 1)', 3), ('Microsoft 365 Business Standard', 7)$$,
                  'and so do the day''s seats');
ROLLBACK;
SET mspbill.client_id = 2;
\copy pax8_staging (raw) FROM '../fixtures/licensing/pax8_subscriptions.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_pax8_subscriptions(2, '2026-01-31')$$, $$VALUES (1::bigint, 0::bigint, 0::bigint, 2::bigint)$$,
                  'pax8 API JSON (a page envelope): 1 loaded by company id, an unknown company and a negative quantity rejected');
SELECT results_eq($$SELECT sku, seats, unit_cost FROM license_counts WHERE client_id = 2$$,
                  $$VALUES ('prod-bs-0001', 5, 11.25)$$, 'an unmapped Pax8 product id is its own product');
INSERT INTO pax8_staging (raw) VALUES
	('{"id": "no-quantity", "companyId": "c0ffee00-0000-0000-0000-000000000001", "productId": "prod-bs-0001", "status": "Active"}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_pax8_subscriptions(2, '2026-01-31')$$, $$VALUES (0::bigint, 1::bigint)$$,
                  'a subscription without a quantity is rejected as such, not a failed load');

-- PSA tickets
SET mspbill.client_id = 1;
\copy psa_ticket_staging (raw) FROM '../fixtures/licensing/psa_connectwise.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_psa_tickets(1, 'connectwise')$$, $$VALUES (3::bigint, 1::bigint, 1::bigint, 2::bigint, 2::bigint)$$,
                  'connectwise: 3 tickets, a repeated id, the lab''s skipped, 2 rejected, 2 contacts unknown');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE source = 'connectwise' ORDER BY reason$$,
                  $$VALUES ('invalid date entered'), ('no date entered')$$, 'ticket rejects say why, one bad date rejects only its ticket');
SELECT results_eq($$SELECT p.pseudonym, s.channel FROM support_contacts s JOIN people p USING (client_id, person_id) ORDER BY s.at$$,
                  $$VALUES ('alice', 'phone')$$, 'a contact e-mail that is a Microsoft 365 UPN becomes a support contact, with the ticket''s source');
SELECT results_eq($$SELECT contact, tickets FROM psa_unknown_contacts ORDER BY contact$$,
                  $$VALUES ('connectwise contact of ticket 1002', 1), ('connectwise contact of ticket 1003', 1)$$,
                  'unknown contacts are reported, not dropped (without the e-mail to the billing role)');
INSERT INTO psa_contacts VALUES (1, 'connectwise', 'frontdesk@gmail.example', 3);
SELECT is(msp_match_psa_tickets(1), 1::bigint, 'a mapping by e-mail matches the waiting ticket');
\copy psa_ticket_staging (raw) FROM '../fixtures/licensing/psa_autotask.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_psa_tickets(1, 'autotask')$$, $$VALUES (2::bigint, 0::bigint, 0::bigint, 2::bigint, 2::bigint)$$,
                  'autotask (items envelope): 2 tickets, no id and no date rejected, both contacts unknown until mapped');
INSERT INTO psa_contacts VALUES (1, 'autotask', '77', 2);
SELECT is(msp_match_psa_tickets(1), 1::bigint, 'a mapping by contact id matches the waiting ticket');
\copy psa_ticket_staging (raw) FROM '../fixtures/licensing/psa_halo.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
-- HaloPSA is 'halopsa' everywhere (as in psa_mappings); the loader also
-- takes 'halo', the same tickets
SELECT throws_ok($$INSERT INTO psa_contacts VALUES (1, 'halo', '401', 1)$$, '23514', NULL, 'a contact of PSA ''halo'' is refused: one spelling');
INSERT INTO psa_contacts VALUES (1, 'halopsa', '401', 1);
SELECT results_eq($$SELECT * FROM msp_load_psa_tickets(1, 'halopsa')$$, $$VALUES (2::bigint, 0::bigint, 0::bigint, 0::bigint, 1::bigint)$$,
                  'halopsa (tickets envelope): user_id mapped by hand, one unknown');
\copy psa_ticket_staging (raw) FROM '../fixtures/licensing/psa_halo.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_psa_tickets(1, 'halo')$$, $$VALUES (0::bigint, 2::bigint)$$,
                  'loaded again under the alias ''halo'': the same tickets, once');
SELECT is((SELECT array_agg(DISTINCT psa) FROM psa_tickets WHERE client_id = 1 AND psa LIKE 'halo%'), '{halopsa}',
          'stored under ''halopsa''');
BEGIN;
SELECT lives_ok($$INSERT INTO partner_companies VALUES (1, 'halopsa', 'Clinic')$$, 'partner_companies takes ''halopsa'' as well');
ROLLBACK;
SELECT is((SELECT count(*) FROM support_contacts WHERE client_id = 1), 4::bigint, 'each matched ticket is one support contact');
SELECT throws_ok($$SELECT msp_load_psa_tickets(1, 'servicenow')$$, '22023', NULL, 'an unknown PSA is refused');

-- reconciliation: reception called (support is sufficient), alice and ben billable by support
RESET ROLE;
INSERT INTO license_policies (client_id, contract_id, licensed_rooms) VALUES (1, 1, true);
INSERT INTO accounts (client_id, account_id, realm, name, kind) VALUES (1, 100, 'os', 'CLINIC\OR2', 'shared');
INSERT INTO logons (client_id, account_id, at) VALUES (1, 100, '2026-01-12 14:00Z');
SET ROLE lic_loader;
SELECT results_eq($$SELECT category, sku, subject, quantity, amount FROM msp_license_gaps(1, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('seats_unassigned', 'Exchange Online (Plan 1)', NULL, 1::numeric, 3.60),
                           ('seats_unassigned', 'Microsoft 365 Business Standard', NULL, 3, 33.30),
                           ('assigned_inactive', 'Exchange Online (Plan 1)', 'm365 account 2', 1, 3.60),
                           ('assigned_inactive', 'Microsoft 365 Business Standard', 'm365 account 2', 1, 11.10),
                           ('assigned_inactive', 'Microsoft 365 Business Standard', 'm365 account 3', 1, 11.10),
                           ('active_without_seat', 'Microsoft 365 Business Standard', 'ben', 1, 11.10),
                           ('active_without_seat', 'Microsoft 365 Business Standard', 'reception', 1, 11.10),
                           ('room_unlicensed', 'Microsoft 365 Business Standard', 'CLINIC\OR2', 1, 11.10)$$,
                  'January: gaps by name and product as of the January snapshot, each priced at the unit cost');
SELECT results_eq($$SELECT seats_bought, seats_assigned, people_active, rooms_in_use, licences_needed, users_billed,
                           unassigned_cost, assigned_inactive_cost, active_without_seat_cost, advice
                      FROM msp_license_sync(1, '[2026-01-01,2026-02-01)') WHERE product = 'Microsoft 365 Business Standard'$$,
                  $$VALUES (6, 3, 3, 1, 4, 3, 33.30, 22.20, 33.30,
                            'Pax8 bills you for 6 Microsoft 365 Business Standard seats; 3 are assigned; 3 people were active and 1 rooms in use; 3 are billed: cancel 2 seats (22.20 USD), reclaim 2 (m365 account 2, m365 account 3), assign 3, bill as is.')$$,
                  'the sync answers with money and what to do');
SELECT results_eq($$SELECT category, subject FROM msp_license_gaps(1, '[2026-02-01,2026-03-01)') WHERE category LIKE 'room%'$$,
                  $$VALUES ('room_licence_unused', 'or1@clinic.example')$$,
                  'February (the admin center snapshot): the room licence on OR1, unused, is named; OR2 is not in use');
SELECT is((SELECT sum(amount) FROM msp_license_gaps(1, '[2026-01-01,2026-02-01)')),
          (SELECT sum(unassigned_cost + assigned_inactive_cost + coalesce(active_without_seat_cost, 0)) FROM msp_license_sync(1, '[2026-01-01,2026-02-01)')),
          'the sync''s money adds up to the gaps'' to the cent');
SELECT results_eq($$SELECT category FROM msp_reconcile_licenses(1, '[2026-01-01,2026-02-01)') WHERE category IN ('active_unlicensed', 'licensed_inactive')$$,
                  $$SELECT NULL::text WHERE false$$, 'with a snapshot, msp_reconcile_licenses names seats instead of accounts');
SELECT is((SELECT count(*) FROM msp_reconcile_licenses(1, '[2026-01-01,2026-02-01)') WHERE category IN ('seats_unassigned', 'room_unlicensed')), 3::bigint,
          'and carries the gaps');
SELECT is((SELECT count(*) FROM msp_license_gaps(2, '[2026-01-01,2026-02-01)')), 0::bigint, 'no snapshot, no gaps');

-- the boundaries: nobody but the loading roles runs the loaders or reads the stages
RESET ROLE;
SELECT ok(NOT has_function_privilege('mspbill_bi', 'msp_load_pax8_subscriptions(bigint, date, text)', 'EXECUTE')
          AND NOT has_function_privilege('public', 'msp_match_psa_tickets(bigint)', 'EXECUTE'), 'BI and PUBLIC may not load or match');
SELECT ok(NOT has_table_privilege('mspbill_billing', 'pax8_staging', 'SELECT')
          AND NOT has_column_privilege('mspbill_billing', 'psa_tickets', 'contact', 'SELECT'),
          'the billing role may not read staged records nor ticket contacts');
SET ROLE lic_loader;
SELECT throws_ok($$SELECT * FROM msp_load_m365_graph(99)$$, 'P0002', NULL, 'an unknown client is refused');
SELECT throws_ok($$SELECT * FROM msp_load_m365_graph(1, '4000-01-01')$$, '22023', 'snapshot day 4000-01-01 is out of range',
                 'a snapshot day years ahead is refused');
SELECT throws_ok($$SELECT * FROM msp_load_pax8_subscriptions(1, '1900-01-01')$$, '22023', 'snapshot day 1900-01-01 is out of range',
                 'and one before 1990');
RESET ROLE;
SELECT * FROM finish();
DROP ROLE lic_loader;
