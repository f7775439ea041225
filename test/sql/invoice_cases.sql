-- The invoice of every case, pinned to the cent (derived by hand in the
-- comments here and in ../demo/clinics.sql), and every refusal.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
SELECT plan(45);

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

SELECT * FROM finish();
