-- The invoice of every case, pinned to the cent (derived by hand in the
-- comments here and in ../demo/clinics.sql), and every refusal.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
SELECT plan(112);

-- Case 1, the hospital: 9 users (Dr. Gray of the dental office included: the
-- hospital pays for her) x 42.00 + 4 OR seats x 30.00 = 498.00
SELECT is((msp_invoice(1)).total, 498.00, 'hospital total');
SELECT is((msp_invoice(1)).users, 9, 'hospital: 9 billable users');
SELECT is((msp_invoice(1)).seats, 4, 'hospital: 4 operating-room seats');
SELECT is((SELECT sum(amount) FROM msp_invoice_lines(1)), (msp_invoice(1)).total, 'hospital lines add up to the total');
SELECT results_eq($$SELECT quantity, unit_price, amount FROM msp_invoice_lines(1) ORDER BY line_no$$,
                  $$VALUES (9::numeric, 42.00, 378.00), (4, 30.00, 120.00)$$, 'hospital lines');
SELECT results_eq($$SELECT pseudonym FROM msp_billable_users(1) ORDER BY 1$$,
                  $$VALUES ('c1'), ('c2'), ('c3'), ('c4'), ('gray'), ('n1'), ('n2'), ('n3'), ('r1')$$,
                  'billable: nurses, clinicians with mail, the receptionist who called, the sister client''s doctor');
SELECT is((SELECT rule FROM msp_billable_users(1) WHERE pseudonym = 'r1'), 'support', 'support contact alone is sufficient');
SELECT is((SELECT rule FROM msp_billable_users(1) WHERE pseudonym = 'n1'), 'logon+support', 'evidence names both rules');
SELECT is((SELECT accounts FROM msp_billable_users(1) WHERE pseudonym = 'n1'),
          ARRAY['STOLAF\nurse1', 'n1@stolaf.example'], 'one person with two accounts is counted once');
SELECT ok(NOT EXISTS (SELECT 1 FROM msp_billable_users(1) WHERE pseudonym IN ('c5', 'c6', 't1')),
          'room-only clinicians and the MSP technician are not billed');

-- Case 2, the dental office: cost-plus 20% over 785.00 of pools = 942.00
SELECT is((msp_invoice(2)).total, 942.00, 'dental total (cost-plus)');
SELECT is((SELECT sum(amount) FROM msp_invoice_lines(2)), 942.00, 'dental lines add up');
SELECT results_eq($$SELECT pseudonym FROM msp_billable_users(2) ORDER BY 1$$,
                  $$VALUES ('dentist'), ('front1'), ('front2'), ('hygienist')$$,
                  'web-mail staff count once each; the sister client''s doctor and the technician do not');
SELECT is((msp_invoice(2)).seats, 0, 'the shared front-desk PC is not billed again');
SELECT results_eq($$SELECT model, total FROM msp_compare_models(2)$$,
                  $$VALUES ('per_user', 600.00), ('per_device', 760.00), ('per_seat', 100.00),
                           ('cost_plus', 942.00), ('per_user_plus_support', 960.00)$$,
                  'models side by side: 4 x 150, 8 x 95, 5 licence seats x 20, cost-plus, 600 + 300 x 1.2');
SELECT is((SELECT break_even_users FROM msp_compare_models(2) WHERE model = 'per_device'), 5.07,
          'per-device pays the same as per-user at 760 / 150 = 5.07 users');
SELECT is((SELECT per_user FROM msp_compare_models(2) WHERE model = 'per_user_plus_support'), 240.00,
          'strict per-user price lifted by support: 960 / 4');
SELECT is((SELECT count(*) FROM (SELECT pool_id, sum(share) s FROM msp_cost_allocation(2) GROUP BY pool_id) a
             JOIN cost_pools p ON p.client_id = 2 AND p.pool_id = a.pool_id WHERE a.s <> p.amount), 0::bigint,
          'every cost pool is allocated to the cent');
SELECT results_eq($$SELECT share FROM msp_cost_allocation(2) WHERE pool_id = 4 ORDER BY unit$$,
                  $$VALUES (10.63), (10.63), (10.63), (10.63), (10.62), (10.62), (10.62), (10.62)$$,
                  'hardware 85.00 over 8 desktops: four get the extra cent');
SELECT is((SELECT count(*) FROM msp_cost_allocation(2) WHERE pool_id = 5), 4::bigint, 'support spreads over the 4 users');

-- shared accounts billed by peak concurrency: an overlapping second session in OR1
UPDATE contracts SET shared_billing = 'peak' WHERE client_id = 1;
INSERT INTO logons (client_id, account_id, device_id, at, ended)
SELECT 1, 1, 1, l.at + interval '1 hour', l.ended + interval '1 hour'
  FROM logons l WHERE l.client_id = 1 AND l.account_id = 1 ORDER BY l.at LIMIT 1;
SELECT is((msp_invoice(1)).total, 378.00 + 5 * 30.00, 'peak: OR1 needs 2 seats, the others 1 (5 x 30.00)');
-- attributed: OR sessions bill the clinicians who signed into the EMR inside them, no seats
UPDATE contracts SET shared_billing = 'attribute' WHERE client_id = 1;
SELECT is((msp_invoice(1)).users, 11, 'attribute: c5 and c6 become billable through their EMR logins');
SELECT is((msp_invoice(1)).total, 462.00, 'attribute: 11 users x 42.00, no seats');
SELECT is((SELECT rule FROM msp_billable_users(1) WHERE pseudonym = 'c5'), 'shared-attributed', 'c5 counted by attribution');
UPDATE contracts SET shared_billing = 'seat' WHERE client_id = 1;

-- tiers on the hospital's 9 users, the second tier from the 5th unit:
-- volume 9 x 40.00; graduated 4 x 42.00 + 5 x 40.00
INSERT INTO contract_tiers VALUES (1, 1, 0, 42.00), (1, 1, 5, 40.00);
SELECT is((msp_invoice(1)).total, 360.00 + 120.00, 'volume tiers: every user at the reached tier');
UPDATE contracts SET tier_mode = 'graduated' WHERE client_id = 1;
SELECT is((msp_invoice(1)).total, 368.00 + 120.00, 'graduated tiers: each band at its own price');
DELETE FROM contract_tiers WHERE client_id = 1;
-- a minimum fee tops the dental invoice up to 1000.00
UPDATE contracts SET minimum_fee = 1000 WHERE client_id = 2;
SELECT is((msp_invoice(2)).total, 1000.00, 'minimum fee');
SELECT is((SELECT amount FROM msp_invoice_lines(2) WHERE basis = 'minimum'), 58.00, 'top-up line of 1000 - 942');
SELECT is((msp_invoice(2)).subtotal, 942.00, 'subtotal before the top-up');
UPDATE contracts SET minimum_fee = 0 WHERE client_id = 2;

-- Case 3: a contract change and proration inside January 2026 (31 days).
--   contract 1 to Jan 15: per device 100.00; D1..D3 for 15 days, D4 only from Jan 17
--     => 3 x 15/31 x 100.00 = 145.16
--   contract 2 from Jan 16: per user 60.00; p2 (active from Jan 11) logs on Jan 20,
--   p1 only on Jan 5 => p2 for 16/31 => 60.00 x 16/31 = 30.97
--   total 176.13
INSERT INTO clients (client_id, name, time_zone) VALUES (3, 'Proration Ltd', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_device)
  VALUES (3, 1, '[2025-01-01,2026-01-16)', 'per_device', 100.00);
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
  VALUES (3, 2, '[2026-01-16,)', 'per_user', 60.00);
INSERT INTO devices (client_id, device_id, name, active) VALUES
  (3, 1, 'D1', NULL), (3, 2, 'D2', NULL), (3, 3, 'D3', NULL), (3, 4, 'D4', '[2026-01-17,)');
INSERT INTO people (client_id, person_id, pseudonym, active) VALUES (3, 1, 'p1', NULL), (3, 2, 'p2', '[2026-01-11,)');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES
  (3, 1, 'os', 'p1', 'individual', 1), (3, 2, 'os', 'p2', 'individual', 2);
INSERT INTO logons (client_id, account_id, at) VALUES (3, 1, '2026-01-05 09:00Z'), (3, 2, '2026-01-20 09:00Z');
SELECT results_eq($$SELECT contract_id, amount FROM msp_invoice_lines(3, '[2026-01-01,2026-02-01)') ORDER BY line_no$$,
                  $$VALUES (1::bigint, 145.16), (2::bigint, 30.97)$$, 'one line per contract segment, prorated by days');
SELECT is((msp_invoice(3, '[2026-01-01,2026-02-01)')).total, 176.13, 'prorated total');
SELECT is((msp_invoice(3, '[2026-01-01,2026-02-01)')).model, 'per_device+per_user', 'both models named');

-- refusals: never a wrong invoice
SELECT throws_ok($$SELECT msp_invoice(99)$$, 'P0002', 'unknown client 99', 'unknown client');
SELECT throws_ok($$SELECT * FROM msp_cost_allocation(99)$$, 'P0002', 'unknown client 99', 'unknown client, cost allocation');
SELECT throws_ok($$SELECT msp_invoice(1, daterange(current_date + 40, current_date + 70))$$, '22023', NULL, 'period in the future');
SELECT throws_ok($$SELECT msp_invoice(1, 'empty')$$, '22023', NULL, 'empty period');
SELECT throws_ok($$SELECT msp_invoice(1, '[2026-01-01,)')$$, '22023', NULL, 'unbounded period');
INSERT INTO clients (client_id, name) VALUES (4, 'Gap Inc');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES
  (4, 1, '[2025-01-01,2026-01-10)', 'per_user', 10), (4, 2, '[2026-01-12,)', 'per_user', 10);
SELECT throws_ok($$SELECT msp_invoice(4, '[2026-01-01,2026-02-01)')$$, '22000',
                 'contract gap for client 4 from 2026-01-10 to 2026-01-12', 'contract gap');
SELECT throws_ok($$SELECT msp_invoice(4, '[2024-01-01,2024-02-01)')$$, 'P0002', NULL, 'no contract in effect');
SELECT throws_ok($$INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
                   VALUES (4, 3, '[2026-03-01,2026-04-01)', 'per_user', 10)$$, '23P01', NULL, 'overlapping contracts');
INSERT INTO cost_pools VALUES (2, 9, 'other', 'Foreign invoice', 10, 'EUR', (SELECT msp_period(2)), 'device');
SELECT throws_ok($$SELECT msp_invoice(2)$$, '22000', 'cost pool currency does not match client 2 currency USD', 'currency mismatch');
DELETE FROM cost_pools WHERE client_id = 2 AND pool_id = 9;
SELECT throws_ok($$INSERT INTO clients (client_id, name, time_zone) VALUES (5, 'Nowhere', 'Mars/Olympus')$$,
                 '23514', NULL, 'unknown time zone');
SELECT throws_ok($$INSERT INTO accounts (client_id, account_id, realm, name, kind) VALUES (1, 999, 'os', 'bob', 'individual')$$,
                 '23514', NULL, 'an individual account needs a person');
SELECT ok((SELECT is_machine FROM accounts WHERE client_id = 1 AND name = 'WS01$'), 'machine accounts are recognised');
SELECT is(msp_add_logon_partitions('2030-01-15', 2), 2, 'monthly logon partitions');

-- ===== issue 14: every contract set-up, one client each (UTC unless said) =====
-- (1) sister clients: Dr. Gray (dental office's person) is on the hospital's invoice
SELECT results_eq($$SELECT home_client_id, rule FROM msp_billable_users(1) WHERE pseudonym = 'gray'$$,
                  $$VALUES (2::bigint, 'logon')$$, 'sister client: Dr. Gray is billed to the hospital, from her own client''s logons');
SELECT is((SELECT count(*) FROM msp_billable_users(2) WHERE pseudonym = 'gray'), 0::bigint, 'and not to her own client');

-- (2) minimum quantity, prorated: April has 30 days; a contract from the
-- 11th covers 20; 2 users, minimum 5 at 10.00 => 5 x 20/30 x 10.00 = 33.33
INSERT INTO clients (client_id, name) VALUES (10, 'Min Qty');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, minimum_quantity)
  VALUES (10, 1, '[2026-04-11,)', 'per_user', 10.00, 5);
INSERT INTO people (client_id, person_id, pseudonym) VALUES (10, 1, 'p1'), (10, 2, 'p2');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES
  (10, 1, 'os', 'p1', 'individual', 1), (10, 2, 'os', 'p2', 'individual', 2);
INSERT INTO logons (client_id, account_id, at) VALUES (10, 1, '2026-04-20 09:00Z'), (10, 2, '2026-04-20 09:00Z');
SELECT results_eq($$SELECT quantity, unit_price, amount FROM msp_invoice_lines(10, '[2026-04-01,2026-05-01)')$$,
                  $$VALUES (3.3333, 10.00, 33.33)$$, 'minimum quantity is prorated by the days the contract covers');
-- two back-to-back contracts: the minimum once, 25.00 + 25.00
INSERT INTO clients (client_id, name) VALUES (11, 'Min Twice');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, minimum_quantity) VALUES
  (11, 1, '[2026-01-01,2026-04-16)', 'per_user', 10.00, 5), (11, 2, '[2026-04-16,)', 'per_user', 10.00, 5);
SELECT is((msp_invoice(11, '[2026-04-01,2026-05-01)')).total, 50.00, 'two contracts in one month bill the minimum once');

-- (3)(15) volume tiers from 1: no users prices 0.00, not NULL; half a user
-- (15 of 30 days) at the tier's 13.79 = 6.895 -> 6.90, and the line shows 13.79
INSERT INTO clients (client_id, name) VALUES (12, 'Tiers From One');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES (12, 1, '[2026-01-01,)', 'per_user', 42.00);
INSERT INTO contract_tiers VALUES (12, 1, 1, 13.79);
SELECT results_eq($$SELECT quantity, unit_price, amount FROM msp_invoice_lines(12, '[2026-03-01,2026-04-01)')$$,
                  $$VALUES (0::numeric, 13.79, 0.00)$$, 'no users: a zero line, not NULL');
SELECT is((msp_invoice(12, '[2026-03-01,2026-04-01)')).total, 0.00, 'and a zero total');
SELECT is((SELECT total FROM msp_compare_models(12, '[2026-03-01,2026-04-01)') WHERE model = 'per_user'), 0.00,
          'and a zero per-user figure in the comparison');
INSERT INTO people (client_id, person_id, pseudonym, active) VALUES (12, 1, 'half', '[2026-04-01,2026-04-16)');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (12, 1, 'os', 'half', 'individual', 1);
INSERT INTO logons (client_id, account_id, at) VALUES (12, 1, '2026-04-02 09:00Z');
SELECT results_eq($$SELECT quantity, unit_price, amount FROM msp_invoice_lines(12, '[2026-04-01,2026-05-01)')$$,
                  $$VALUES (0.5, 13.79, 6.90)$$, 'a prorated half user at the tier price; the line shows the price it charges');
-- graduated from 1 with 3 users: units 1-2 at 10.00, unit 3 at 8.00 = 28.00, one line per band
INSERT INTO clients (client_id, name) VALUES (13, 'Graduated');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, tier_mode)
  VALUES (13, 1, '[2026-01-01,)', 'per_user', 99.00, 'graduated');
INSERT INTO contract_tiers VALUES (13, 1, 1, 10.00), (13, 1, 3, 8.00);
INSERT INTO people (client_id, person_id, pseudonym) SELECT 13, i, 'p' || i FROM generate_series(1, 3) i;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) SELECT 13, i, 'os', 'p' || i, 'individual', i FROM generate_series(1, 3) i;
INSERT INTO logons (client_id, account_id, at) SELECT 13, i, '2026-01-05 09:00Z' FROM generate_series(1, 3) i;
SELECT results_eq($$SELECT description, quantity, unit_price, amount FROM msp_invoice_lines(13, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('Users: 3 billable, units 1 to 2', 2::numeric, 10.00, 20.00),
                           ('Users: 3 billable, units 3 to 3', 1, 8.00, 8.00)$$,
                  'graduated from 1 with 3 users bills 3 units, one line per band');
-- units below a lowest tier that starts above 1 cost the flat price
UPDATE contracts SET price_per_user = 12.00 WHERE client_id = 13;
DELETE FROM contract_tiers WHERE client_id = 13 AND from_quantity = 1;
SELECT results_eq($$SELECT quantity, unit_price, amount FROM msp_invoice_lines(13, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES (2::numeric, 12.00, 24.00), (1, 8.00, 8.00)$$, 'graduated: units 1-2 below the first tier at the flat price');
UPDATE contracts SET tier_mode = 'volume' WHERE client_id = 13;
SELECT results_eq($$SELECT quantity, unit_price, amount FROM msp_invoice_lines(13, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES (3::numeric, 8.00, 24.00)$$, 'volume: 3 users reach the tier from the 3rd unit');
DELETE FROM logons WHERE client_id = 13 AND account_id = 3;
SELECT results_eq($$SELECT quantity, unit_price, amount FROM msp_invoice_lines(13, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES (2::numeric, 12.00, 24.00)$$, 'volume: 2 users, one unit short of the tier, at the flat price');
-- the tier of a quantity raised to the minimum: 2 users, minimum 3 -> the tier from 3
UPDATE contracts SET minimum_quantity = 3 WHERE client_id = 13;
SELECT results_eq($$SELECT description, quantity, unit_price, amount FROM msp_invoice_lines(13, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('Users: 2 billable, minimum 3', 3::numeric, 8.00, 24.00)$$, 'a quantity raised to the minimum uses the tier of the minimum');

-- (4) tier chosen by the real count: 8 users from the 16th of April (15 of
-- 30 days) reach the tier from 5 (30.00): 8 x 1/2 x 30.00 = 120.00, half of 240.00
INSERT INTO clients (client_id, name) VALUES (14, 'Half Month');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES (14, 1, '[2026-04-16,)', 'per_user', 50.00);
INSERT INTO contract_tiers VALUES (14, 1, 1, 50.00), (14, 1, 5, 30.00);
INSERT INTO people (client_id, person_id, pseudonym) SELECT 14, i, 'p' || i FROM generate_series(1, 8) i;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) SELECT 14, i, 'os', 'p' || i, 'individual', i FROM generate_series(1, 8) i;
INSERT INTO logons (client_id, account_id, at) SELECT 14, i, '2026-04-20 09:00Z' FROM generate_series(1, 8) i;
SELECT results_eq($$SELECT quantity, unit_price, amount FROM msp_invoice_lines(14, '[2026-04-01,2026-05-01)')$$,
                  $$VALUES (4::numeric, 30.00, 120.00)$$, 'the tier is chosen by the 8 users; proration scales the amount');

-- (5) only calendar months are billing periods
SELECT throws_ok($$SELECT msp_invoice(14, '[2026-04-05,2026-04-20)')$$, '22023',
                 'billing period [2026-04-05,2026-04-20) is not a calendar month', 'half a month is refused');
SELECT throws_ok($$SELECT msp_invoice(14, '[2026-03-01,2026-05-01)')$$, '22023', NULL, 'two months are refused');
SELECT throws_ok($$SELECT msp_finalize_invoice(14, '[2026-03-15,2026-04-15)')$$, '22023', NULL, 'and cannot be finalized');

-- (6) users = distinct people, seats = billed seats: p1 in the first
-- contract, p2 and p3 in the second; peak seats ROOM1 2 + ROOM2 1
INSERT INTO clients (client_id, name) VALUES (15, 'Two Contracts');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, price_per_seat, shared_billing) VALUES
  (15, 1, '[2025-01-01,2026-01-16)', 'per_user', 10.00, 5.00, 'peak'), (15, 2, '[2026-01-16,)', 'per_user', 12.00, 5.00, 'peak');
INSERT INTO devices (client_id, device_id, name) VALUES (15, 1, 'R1'), (15, 2, 'R2');
INSERT INTO people (client_id, person_id, pseudonym) SELECT 15, i, 'p' || i FROM generate_series(1, 3) i;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) SELECT 15, i, 'os', 'p' || i, 'individual', i FROM generate_series(1, 3) i;
INSERT INTO accounts (client_id, account_id, realm, name, kind) VALUES (15, 11, 'os', 'ROOM1', 'shared'), (15, 12, 'os', 'ROOM2', 'shared');
INSERT INTO logons (client_id, account_id, device_id, at, ended) VALUES
  (15, 1, NULL, '2026-01-05 09:00Z', NULL), (15, 2, NULL, '2026-01-20 09:00Z', NULL), (15, 3, NULL, '2026-01-20 09:00Z', NULL),
  (15, 11, 1, '2026-01-20 10:00Z', '2026-01-20 12:00Z'), (15, 11, 1, '2026-01-20 11:00Z', '2026-01-20 13:00Z'),
  (15, 12, 2, '2026-01-21 10:00Z', '2026-01-21 11:00Z');
SELECT results_eq($$SELECT users, seats FROM msp_invoice(15, '[2026-01-01,2026-02-01)')$$, $$VALUES (3, 3)$$,
                  'invoice: 3 distinct people over two contracts, 3 peak seats on 2 shared accounts');
SELECT is((SELECT quantity FROM msp_invoice_lines(15, '[2026-01-01,2026-02-01)') WHERE basis = 'seat'), 1.5484,
          'the seat line bills 3 seats for 16 of 31 days');
-- count_realms applies to shared accounts: under {m365} the rooms are not seats
UPDATE contracts SET count_realms = '{m365}' WHERE client_id = 15;
SELECT results_eq($$SELECT users, seats FROM msp_invoice(15, '[2026-01-01,2026-02-01)')$$, $$VALUES (0, 0)$$,
                  'a room in realm os is not a seat when only m365 counts');
UPDATE contracts SET count_realms = '{os,m365}' WHERE client_id = 15;
-- default_session: ROOM2 gets a second, open session 30 minutes after the first
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (15, 12, 2, '2026-01-22 10:00Z'), (15, 12, 2, '2026-01-22 10:30Z');
SELECT is((msp_invoice(15, '[2026-01-01,2026-02-01)')).seats, 4, 'open sessions last default_session (1 hour): ROOM2 peaks at 2');
UPDATE contracts SET default_session = '20 minutes' WHERE client_id = 15;
SELECT is((msp_invoice(15, '[2026-01-01,2026-02-01)')).seats, 3, 'with 20 minutes they do not overlap');

-- (7)(8) a quarterly pool of 100.00 bills exactly 100.00 over its months
-- (July 33.70, August 33.69, September 32.61: largest remainder by days);
-- a user-basis pool nobody carries still appears in the allocation
INSERT INTO clients (client_id, name) VALUES (16, 'Quarterly');
INSERT INTO contracts (client_id, contract_id, effective, model, markup) VALUES (16, 1, '[2026-01-01,)', 'cost_plus', 0);
INSERT INTO cost_pools VALUES (16, 1, 'backup', 'Quarterly backup', 100.00, 'USD', '[2026-07-01,2026-10-01)', 'device'),
                              (16, 2, 'support', 'Help desk', 53.75, 'USD', '[2026-07-01,2026-08-01)', 'user');
SELECT results_eq($$SELECT (msp_invoice(16, daterange(m, (m + interval '1 month')::date))).total
                      FROM unnest('{2026-07-01,2026-08-01,2026-09-01}'::date[]) m$$,
                  $$VALUES (87.45), (33.69), (32.61)$$, 'each month of the pool, July with the support pool');
SELECT is((SELECT sum(amount) FROM unnest('{2026-07-01,2026-08-01,2026-09-01}'::date[]) m,
                  msp_invoice_lines(16, daterange(m, (m + interval '1 month')::date)) l WHERE l.description LIKE 'Backup%'),
          100.00, 'the months of a quarterly pool sum to the pool exactly');
SELECT results_eq($$SELECT pool_id, basis, unit, share FROM msp_cost_allocation(16, '[2026-07-01,2026-08-01)')$$,
                  $$VALUES (1::bigint, 'device', NULL::text, 33.70), (2, 'user', NULL, 53.75)$$,
                  'pools with no unit to carry them appear whole, with their basis');

-- (9) a device found by a loader is billable from the day it was first seen
INSERT INTO clients (client_id, name, time_zone) VALUES (17, 'Loaded Devices', 'America/Chicago');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_device) VALUES (17, 1, '[2025-01-01,)', 'per_device', 10.00);
SET mspbill.client_id = 17;
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "2026-03-16T03:00:00.000Z", "Hostname": "NEWPC.example", "EventID": 4624, "RecordNumber": 1, "TargetUserName": "amy", "TargetDomainName": "EX", "TargetLogonId": "0x1", "LogonType": "2"}');
SELECT is((SELECT loaded FROM msp_load_windows_events(17)), 1::bigint, 'the export is loaded');
RESET mspbill.client_id;
SELECT is((SELECT active FROM devices WHERE client_id = 17), '[2026-03-15,)'::daterange,
          'first seen on March 15 in Chicago (03:00 UTC on the 16th)');
SELECT is((msp_invoice(17, '[2026-02-01,2026-03-01)')).total, 0.00, 'not billed for the month before it appeared');
SELECT is((msp_invoice(17, '[2026-03-01,2026-04-01)')).total, 5.48, 'prorated in its first month: 17/31 x 10.00');

-- (14) licence seats are prorated: 29 seats held, contract to January 18 => 29 x 18/31 x 10.00
INSERT INTO clients (client_id, name) VALUES (18, 'Licences');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_seat) VALUES (18, 1, '[2025-01-01,2026-01-19)', 'per_seat', 10.00);
INSERT INTO license_counts (client_id, sku, seats, source, as_of) VALUES (18, 'M365', 29, 'pax8', '2025-12-01');
SELECT results_eq($$SELECT quantity, amount FROM msp_invoice_lines(18, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES (16.8387, 168.39)$$, 'licence seats are prorated by the days the contract covers');
-- "held": the latest count on or before the last day; on one day, the first source by name
INSERT INTO license_counts (client_id, sku, seats, source, as_of) VALUES
  (18, 'M365', 31, 'pax8', '2026-01-18'), (18, 'M365', 30, 'manual', '2026-01-18'), (18, 'M365', 99, 'pax8', '2026-01-19');
SELECT is((SELECT description FROM msp_invoice_lines(18, '[2026-01-01,2026-02-01)')), 'License seats held: 30 (2026-01-01 to 2026-01-18)',
          'the count of the contract''s last day, manual before pax8');
-- the minimum quantity lifts licence seats too: 30 held, minimum 40 => 40 x 18/31 x 10.00
UPDATE contracts SET minimum_quantity = 40 WHERE client_id = 18;
SELECT results_eq($$SELECT description, amount FROM msp_invoice_lines(18, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('License seats held: 30, minimum 40 (2026-01-01 to 2026-01-18)', 232.26)$$,
                  'minimum_quantity 40 lifts 30 licence seats to 40, prorated');
UPDATE contracts SET minimum_quantity = 0 WHERE client_id = 18;

-- (16) per_device with no devices bills nothing
INSERT INTO clients (client_id, name) VALUES (19, 'No Devices');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_device) VALUES (19, 1, '[2025-01-01,)', 'per_device', 95.00);
SELECT results_eq($$SELECT quantity, amount FROM msp_invoice_lines(19, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES (0::numeric, 0.00)$$, 'per device with no devices: 0 devices, 0.00');
-- and the minimum quantity lifts devices: none managed, minimum 2 => 2 x 95.00
UPDATE contracts SET minimum_quantity = 2 WHERE client_id = 19;
SELECT results_eq($$SELECT description, quantity, amount FROM msp_invoice_lines(19, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('Devices: 0 managed, minimum 2', 2::numeric, 190.00)$$,
                  'minimum_quantity 2 lifts 0 devices to 2');
UPDATE contracts SET minimum_quantity = 0 WHERE client_id = 19;

-- rules: minimum fee without proration is not prorated; with it, it is
INSERT INTO clients (client_id, name) VALUES (20, 'Minimum Fee');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, minimum_fee, prorate)
  VALUES (20, 1, '[2026-01-17,)', 'per_user', 10.00, 100.00, false);
SELECT is((msp_invoice(20, '[2026-01-01,2026-02-01)')).total, 100.00, 'prorate = false: the whole minimum fee');
UPDATE contracts SET prorate = true WHERE client_id = 20;
SELECT is((msp_invoice(20, '[2026-01-01,2026-02-01)')).total, 48.39, 'prorate = true: 15/31 of it');
SELECT results_eq($$SELECT subtotal, total FROM msp_invoice(20, '[2026-01-01,2026-02-01)')$$, $$VALUES (0.00, 48.39)$$,
                  'the subtotal leaves out the minimum-fee top-up');

-- rules: cost-plus rounds per pool line (10.01 x 1.5 = 15.015 -> 15.02, twice)
INSERT INTO clients (client_id, name) VALUES (21, 'Per Pool');
INSERT INTO contracts (client_id, contract_id, effective, model, markup) VALUES (21, 1, '[2025-01-01,)', 'cost_plus', 0.5);
INSERT INTO cost_pools VALUES (21, 1, 'backup', 'A', 10.01, 'USD', '[2026-01-01,2026-02-01)', 'device'),
                              (21, 2, 'server', 'B', 10.01, 'USD', '[2026-01-01,2026-02-01)', 'device');
SELECT is((msp_invoice(21, '[2026-01-01,2026-02-01)')).total, 30.04, 'cost-plus rounds each pool''s line');

-- rules: logons outside a person's active range do not count; the sister
-- client's person is judged in the payer's zone and by its policy
INSERT INTO clients (client_id, name, time_zone) VALUES (22, 'Payer', 'UTC'), (23, 'Sister', 'Pacific/Auckland');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES
  (22, 1, '[2025-01-01,)', 'per_user', 10.00), (23, 1, '[2025-01-01,)', 'per_user', 10.00);
INSERT INTO people (client_id, person_id, pseudonym, active, bill_to_client_id) VALUES
  (22, 1, 'late', '[2026-01-15,)', NULL), (23, 1, 'kiwi', NULL, 22);
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES
  (22, 1, 'os', 'late', 'individual', 1), (23, 1, 'os', 'kiwi', 'individual', 1);
INSERT INTO logons (client_id, account_id, at) VALUES (22, 1, '2026-01-05 09:00Z'), (23, 1, '2026-01-31 20:00Z');
SELECT results_eq($$SELECT pseudonym, home_client_id FROM msp_billable_users(22, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('kiwi', 23::bigint)$$,
                  'a logon before the person''s active range does not count; the sister''s logon (February 1 in Auckland) is January in the payer''s zone');
SELECT is((SELECT count(*) FROM msp_billable_users(23, '[2026-01-01,2026-02-01)')), 0::bigint, 'the sister client does not bill her');
UPDATE contracts SET count_realms = '{m365}' WHERE client_id = 22;
SELECT is((SELECT count(*) FROM msp_billable_users(22, '[2026-01-01,2026-02-01)')), 0::bigint,
          'the payer''s policy applies: its realms leave out her Windows logon');

-- rules: attribution window, inclusive, across the session; min_active_days over attributed days
INSERT INTO clients (client_id, name) VALUES (24, 'Attribution');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, shared_billing, attribution_window, min_active_days)
  VALUES (24, 1, '[2025-01-01,)', 'per_user', 10.00, 'attribute', '15 minutes', 1);
INSERT INTO devices (client_id, device_id, name) VALUES (24, 1, 'OR1');
INSERT INTO people (client_id, person_id, pseudonym) VALUES (24, 1, 'doc');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id, application) VALUES
  (24, 1, 'os', 'OR1', 'shared', NULL, NULL), (24, 2, 'app', 'doc', 'individual', 1, 'EMR');
INSERT INTO logons (client_id, account_id, device_id, at, ended) VALUES
  (24, 1, 1, '2026-01-05 10:00Z', '2026-01-05 11:00Z'), (24, 2, 1, '2026-01-05 11:15Z', NULL);
SELECT is((SELECT rule FROM msp_billable_users(24, '[2026-01-01,2026-02-01)')), 'shared-attributed',
          'an EMR login 15 minutes after the session ends is attributed (window inclusive)');
UPDATE logons SET at = '2026-01-05 11:15:01Z' WHERE client_id = 24 AND account_id = 2;
SELECT is((SELECT count(*) FROM msp_billable_users(24, '[2026-01-01,2026-02-01)')), 0::bigint, 'one second later it is not');
UPDATE logons SET at = '2026-01-05 09:45Z' WHERE client_id = 24 AND account_id = 2;
SELECT is((SELECT count(*) FROM msp_billable_users(24, '[2026-01-01,2026-02-01)')), 1::bigint, 'nor 15 minutes before it starts');
-- two days needed: an EMR login outside any shared session does not add a day (app is not a counted realm)
UPDATE contracts SET min_active_days = 2 WHERE client_id = 24;
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (24, 2, NULL, '2026-01-06 09:00Z');
SELECT is((SELECT count(*) FROM msp_billable_users(24, '[2026-01-01,2026-02-01)')), 0::bigint,
          'min_active_days 2: one attributed day and one plain EMR login are one day');
INSERT INTO logons (client_id, account_id, device_id, at, ended) VALUES
  (24, 1, 1, '2026-01-07 10:00Z', '2026-01-07 11:00Z'), (24, 2, 1, '2026-01-07 10:30Z', NULL);
SELECT results_eq($$SELECT rule, days_active FROM msp_billable_users(24, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('shared-attributed', 2)$$, 'two attributed days are two days');

-- rules: a price change mid-month is two sets of lines, each with its dates
SELECT results_eq($$SELECT description, unit_price FROM msp_invoice_lines(15, '[2026-01-01,2026-02-01)') WHERE basis = 'user'$$,
                  $$VALUES ('Users: 1 billable (2026-01-01 to 2026-01-15)', 10.00), ('Users: 2 billable (2026-01-16 to 2026-01-31)', 12.00)$$,
                  'a price change mid-month: one line per contract, with its days');

-- ===== disagreements the independent model found (test/model), kept =====
-- a multi-month support pool under per_user_plus_support: each month bills
-- its own part (62.00 over Jan-Mar by days: 21.36, 19.29, 21.35), not January's
INSERT INTO clients (client_id, name) VALUES (25, 'Model Case Pools');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, markup)
  VALUES (25, 1, '[2025-01-01,)', 'per_user_plus_support', 10.00, 0);
INSERT INTO cost_pools VALUES (25, 1, 'support', 'Help desk', 62.00, 'USD', '[2026-01-01,2026-04-01)', 'user');
SELECT results_eq($$SELECT (SELECT amount FROM msp_invoice_lines(25, daterange(m, (m + interval '1 month')::date)) WHERE basis = 'cost')
                      FROM unnest('{2026-01-01,2026-02-01,2026-03-01}'::date[]) m$$,
                  $$VALUES (21.36), (19.29), (21.35)$$, 'model case: the support line bills the month''s part of the pool');
-- an exact half cent rounds up: 174.21 x 25/30 = 145.175 -> 145.18 (a
-- fraction computed first, 0.8333..., made it 145.17)
INSERT INTO clients (client_id, name) VALUES (26, 'Model Case Half Cent');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, minimum_fee)
  VALUES (26, 1, '[2025-01-01,2026-04-26)', 'per_user', 10.00, 174.21);
SELECT is((msp_invoice(26, '[2026-04-01,2026-05-01)')).total, 145.18, 'model case: an exact half cent of a prorated minimum fee rounds up');

-- ===== issue 15: each policy option, with a case that changes when it breaks =====
-- a: Windows logons on 2 days; b: support call only; c: 1 logon day and a
-- call; d: do-not-bill; e: technician; f: logon on 1 day in realm app only
INSERT INTO clients (client_id, name) VALUES (27, 'Policies');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
  VALUES (27, 1, '[2025-01-01,)', 'per_user', 10.00);
INSERT INTO people (client_id, person_id, pseudonym, do_not_bill, is_technician) VALUES
  (27, 1, 'a', false, false), (27, 2, 'b', false, false), (27, 3, 'c', false, false),
  (27, 4, 'd', true, false), (27, 5, 'e', false, true), (27, 6, 'f', false, false);
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id, application) VALUES
  (27, 1, 'os', 'a', 'individual', 1, NULL), (27, 3, 'os', 'c', 'individual', 3, NULL),
  (27, 4, 'os', 'd', 'individual', 4, NULL), (27, 5, 'os', 'e', 'individual', 5, NULL),
  (27, 6, 'app', 'f', 'individual', 6, 'EMR');
INSERT INTO logons (client_id, account_id, at) VALUES
  (27, 1, '2026-01-05 09:00Z'), (27, 1, '2026-01-06 09:00Z'), (27, 3, '2026-01-05 09:00Z'),
  (27, 4, '2026-01-05 09:00Z'), (27, 5, '2026-01-05 09:00Z'), (27, 6, '2026-01-05 09:00Z');
INSERT INTO support_contacts (client_id, contact_id, person_id, at) VALUES
  (27, 1, 2, '2026-01-07 10:00Z'), (27, 2, 3, '2026-01-07 11:00Z'), (27, 3, 4, '2026-01-07 12:00Z');
CREATE FUNCTION pg_temp.billed(client bigint) RETURNS text LANGUAGE sql AS $f$
  SELECT string_agg(pseudonym || ':' || rule, ' ' ORDER BY pseudonym) FROM mspbill.msp_billable_users(client, '[2026-01-01,2026-02-01)') $f$;
SELECT is(pg_temp.billed(27), 'a:logon b:support c:logon+support',
          'support_rule sufficient: a call alone bills; do-not-bill and technicians never; app logons not counted by default');
UPDATE contracts SET support_rule = 'required' WHERE client_id = 27;
SELECT is(pg_temp.billed(27), 'c:logon+support', 'support_rule required: logon and call both needed');
UPDATE contracts SET support_rule = 'none' WHERE client_id = 27;
SELECT is(pg_temp.billed(27), 'a:logon c:logon', 'support_rule none: calls ignored');
UPDATE contracts SET min_active_days = 2 WHERE client_id = 27;
SELECT is(pg_temp.billed(27), 'a:logon', 'min_active_days 2: one day is not enough, two are');
UPDATE contracts SET min_active_days = 1, count_realms = '{app}' WHERE client_id = 27;
SELECT is(pg_temp.billed(27), 'f:logon', 'count_realms {app}: only application logons count');
UPDATE contracts SET count_realms = '{os,m365}', support_rule = 'sufficient' WHERE client_id = 27;
UPDATE people SET do_not_bill = false WHERE client_id = 27 AND pseudonym = 'd';
SELECT is(pg_temp.billed(27), 'a:logon b:support c:logon+support d:logon+support', 'do_not_bill cleared: d is billed');
UPDATE people SET bill_to_client_id = 26 WHERE client_id = 27 AND pseudonym = 'd';
SELECT is(pg_temp.billed(27), 'a:logon b:support c:logon+support', 'billed to a sister client: gone from this invoice');
SELECT is(pg_temp.billed(26), 'd:logon+support', 'and on the sister''s (its contract in force there to April 25)');
-- minimum quantity: 3 users, minimum 4 bills 4; minimum 3 bills 3; minimum 2 bills 3
UPDATE contracts SET minimum_quantity = 4 WHERE client_id = 27;
SELECT is((SELECT quantity FROM msp_invoice_lines(27, '[2026-01-01,2026-02-01)')), 4::numeric, 'minimum 4 lifts 3 users to 4');
UPDATE contracts SET minimum_quantity = 2 WHERE client_id = 27;
SELECT is((SELECT quantity FROM msp_invoice_lines(27, '[2026-01-01,2026-02-01)')), 3::numeric, 'minimum 2 leaves 3 users alone');
UPDATE contracts SET minimum_quantity = 0 WHERE client_id = 27;
-- tier boundaries, one unit either side: volume tier from 3 users at 8.00 (flat 10.00)
INSERT INTO contract_tiers VALUES (27, 1, 3, 8.00);
SELECT is((SELECT unit_price FROM msp_invoice_lines(27, '[2026-01-01,2026-02-01)')), 8.00, '3 users: on the tier''s first unit');
UPDATE contract_tiers SET from_quantity = 4 WHERE client_id = 27;
SELECT is((SELECT unit_price FROM msp_invoice_lines(27, '[2026-01-01,2026-02-01)')), 10.00, '3 users: one short of a tier from 4');
UPDATE contract_tiers SET from_quantity = 2 WHERE client_id = 27;
SELECT is((SELECT unit_price FROM msp_invoice_lines(27, '[2026-01-01,2026-02-01)')), 8.00, '3 users: one past a tier from 2');
UPDATE contracts SET tier_mode = 'graduated' WHERE client_id = 27;
SELECT results_eq($$SELECT quantity, unit_price FROM msp_invoice_lines(27, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES (1::numeric, 10.00), (2, 8.00)$$, 'graduated from 2: unit 1 flat, units 2-3 at the tier');

-- rules: a payer whose month is two per-seat contracts and whose only user
-- is a sister client's person (the shape of the 11 scale-benchmark clients
-- whose invoices counted one user fewer than the raw count: the benchmark
-- had bulk-loaded people with the trigger that notes sister clients off)
INSERT INTO clients (client_id, name, time_zone) VALUES (28, 'Two Seat Contracts', 'America/Chicago'),
                                                         (29, 'Its Sister', 'America/Chicago');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_seat) VALUES
  (28, 1, '[2026-01-01,2026-10-16)', 'per_seat', 30.00), (28, 2, '[2026-10-16,)', 'per_seat', 33.00);
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES
  (29, 1, '[2026-01-01,)', 'per_user', 40.00);
INSERT INTO people (client_id, person_id, pseudonym, is_technician, bill_to_client_id) VALUES
  (28, 1, 'tech', true, NULL), (29, 1, 'own', false, NULL), (29, 2, 'paid-by-28', false, 28);
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES
  (28, 1, 'os', 'tech', 'individual', 1), (29, 1, 'os', 'own', 'individual', 1),
  (29, 2, 'os', 'paid', 'individual', 2);
INSERT INTO logons (client_id, account_id, at) VALUES
  (28, 1, '2026-10-05 15:00Z'), (29, 1, '2026-10-06 15:00Z'), (29, 2, '2026-10-20 15:00Z');
SELECT is((SELECT count(*) FROM sister_clients WHERE client_id = 29 AND bill_to_client_id = 28), 1::bigint,
          'the person''s bill_to_client_id notes the pair of sister clients');
SELECT is((msp_invoice(28, '[2026-10-01,2026-11-01)')).users, 1,
          'two per-seat contracts in a month: the sister client''s person is the payer''s one user');
SELECT results_eq($$SELECT contract_id, pseudonym, home_client_id FROM msp_billable_users(28, '[2026-10-01,2026-11-01)')$$,
                  $$VALUES (2::bigint, 'paid-by-28', 29::bigint)$$,
                  'counted by the contract in force on her logon''s day, from her own client''s logons');
SELECT is((msp_invoice(29, '[2026-10-01,2026-11-01)')).users, 1, 'and not on her own client''s invoice');

SELECT * FROM finish();
