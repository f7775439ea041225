-- Contract lines: every amount derived by hand in the comments (January
-- 2026, 31 days, UTC), discounts that start or end inside the month, 100%
-- and larger-than-the-line discounts, zero quantities, half cents, a
-- mid-month change from a model to lines, every refusal (the table's and
-- the proposed lines' alike), and the loading role's meter readings.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
\i ../demo/hybrid.sql
SET client_min_messages = warning;
SELECT plan(57);

-- The demo's hybrid agreement (derived in ../demo/hybrid.sql): 606.60
SELECT results_eq($$SELECT description, quantity, unit_price, amount FROM msp_invoice_lines(3)$$,
	$$VALUES ('Managed users: 5', 5::numeric, 42.00, 210.00), ('Managed users: 10% off', 1, -21.00, -21.00),
			 ('Servers: 2', 2, 95.00, 190.00), ('Servers: 10% off', 1, -19.00, -19.00),
			 ('Backup (GB): 1240', 1240, 0.10, 124.00), ('Backup (GB): 10% off', 1, -12.40, -12.40),
			 ('Monthly service fee', 1, 150.00, 150.00), ('Monthly service fee: 10% off', 1, -15.00, -15.00)$$,
	'demo: Harbor Law Group''s lines');
SELECT results_eq($$SELECT model, users, devices, subtotal, total FROM msp_invoice(3)$$,
	$$VALUES ('lines', 5, 8, 606.60, 606.60)$$, 'demo: Harbor Law Group''s invoice');
SELECT results_eq($$SELECT pricing, sum(amount) FROM msp_compare_lines(3, '[{"line_no": 1, "description": "Managed users", "source": "users", "unit_price": 42.00}, {"line_no": 2, "description": "Servers", "source": "devices", "device_kind": "server", "unit_price": 120.00}, {"line_no": 3, "description": "Backup", "source": "fixed", "unit_price": 100.00}, {"line_no": 4, "description": "Monthly service fee", "source": "fixed", "unit_price": 150.00}]') GROUP BY 1 ORDER BY 1$$,
	$$VALUES ('current', 606.60), ('proposed', 700.00)$$, 'demo: the proposal of the README, 210 + 240 + 100 + 150');

CREATE TEMP VIEW jan AS SELECT daterange('2026-01-01', '2026-02-01') AS p;

-- Client 50, a hybrid agreement: 42.00 per user + 95.00 per server + backup
-- at 0.10 per GB (the month's peak) + 150.00 a month, 10% off the first year.
INSERT INTO clients (client_id, name, time_zone) VALUES (50, 'Harbor Law', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model) VALUES (50, 1, '[2025-06-01,)', 'lines');
INSERT INTO contract_lines (client_id, contract_id, line_no, description, source, device_kind, meter, unit_price,
							discount_percent, discount_period) VALUES
	(50, 1, 1, 'Managed users', 'users', NULL, NULL, 42.00, 10, '[2025-06-01,2026-06-01)'),
	(50, 1, 2, 'Servers', 'devices', 'server', NULL, 95.00, 10, '[2025-06-01,2026-06-01)'),
	(50, 1, 3, 'Backup (GB)', 'meter', NULL, 'backup_gb', 0.10, 10, '[2025-06-01,2026-06-01)'),
	(50, 1, 4, 'Service fee', 'fixed', NULL, NULL, 150.00, 10, '[2025-06-01,2026-06-01)');
INSERT INTO devices (client_id, device_id, name, kind) VALUES
	(50, 1, 'SRV1', 'server'), (50, 2, 'SRV2', 'server'), (50, 3, 'PC1', 'desktop'), (50, 4, 'PC2', 'desktop'),
	(50, 5, 'PC3', 'desktop');
INSERT INTO people (client_id, person_id, pseudonym) VALUES (50, 1, 'a'), (50, 2, 'b'), (50, 3, 'c');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES
	(50, 1, 'os', 'LAW\a', 'individual', 1), (50, 2, 'os', 'LAW\b', 'individual', 2), (50, 3, 'os', 'LAW\c', 'individual', 3);
-- a and b log on in January, c only in December
INSERT INTO logons (client_id, account_id, at) VALUES
	(50, 1, '2026-01-05 09:00+00'), (50, 2, '2026-01-20 09:00+00'), (50, 3, '2025-12-20 09:00+00');
-- backup GB: the peak inside January is 250.5 (December's 900 and
-- February's 5000 are other months)
INSERT INTO meter_readings (client_id, meter, day, quantity) VALUES
	(50, 'backup_gb', '2025-12-31', 900), (50, 'backup_gb', '2026-01-01', 100), (50, 'backup_gb', '2026-01-15', 250.5),
	(50, 'backup_gb', '2026-01-31', 200), (50, 'backup_gb', '2026-02-01', 5000);

-- 2 users x 42.00 = 84.00, less 8.40; 2 servers x 95.00 = 190.00, less
-- 19.00; 250.5 GB x 0.10 = 25.05, less 2.505 = 2.51 (half a cent rounds
-- away from zero); 150.00 less 15.00.  449.05 - 44.91 = 404.14.
SELECT results_eq($$SELECT description, quantity, unit_price, amount, basis FROM msp_invoice_lines(50, (SELECT p FROM jan))$$,
	$$VALUES ('Managed users: 2', 2::numeric, 42.00, 84.00, 'user'), ('Managed users: 10% off', 1, -8.40, -8.40, 'discount'),
			 ('Servers: 2', 2, 95.00, 190.00, 'device'), ('Servers: 10% off', 1, -19.00, -19.00, 'discount'),
			 ('Backup (GB): 250.5', 250.5, 0.10, 25.05, 'meter'), ('Backup (GB): 10% off', 1, -2.51, -2.51, 'discount'),
			 ('Service fee', 1, 150.00, 150.00, 'fixed'), ('Service fee: 10% off', 1, -15.00, -15.00, 'discount')$$,
	'hybrid agreement: each line, then its discount');
SELECT results_eq($$SELECT model, users, devices, subtotal, total FROM msp_compute_invoice(50, (SELECT p FROM jan))$$,
	$$VALUES ('lines', 2, 5, 404.14, 404.14)$$, 'hybrid agreement: 404.14, model lines');
SELECT is((SELECT sum(amount) FROM msp_invoice_lines(50, (SELECT p FROM jan))), (msp_compute_invoice(50, (SELECT p FROM jan))).total,
	'the lines add up to the total');
-- a discount is taxed at the rate of the line it discounts: servers at
-- 20%, the rest exempt; 20% of 190.00 - 19.00 = 171.00 is 34.20
INSERT INTO tax_rates VALUES (50, 'device', 0.20, 'VAT 20%');
SELECT results_eq($$SELECT description, tax_rate, tax FROM msp_document_lines(50, (SELECT p FROM jan)) WHERE tax <> 0$$,
	$$VALUES ('Servers: 2', 0.20, 38.00), ('Servers: 10% off', 0.20, -3.80)$$, 'the servers'' discount takes the servers'' rate');
SELECT results_eq($$SELECT tax_name, taxable, tax FROM msp_invoice_taxes(50, (SELECT p FROM jan))$$,
	$$VALUES ('Tax Exempt', 233.14, 0.00), ('VAT 20%', 171.00, 34.20)$$, 'tax lines: 20% of the discounted servers, 34.20');
DELETE FROM tax_rates WHERE client_id = 50;
SELECT results_eq($$SELECT line_no, source, unit_price, discount_percent FROM msp_effective_lines(50, 1)$$,
	$$VALUES (1, 'users', 42.00, 10::numeric), (2, 'devices', 95.00, 10), (3, 'meter', 0.10, 10), (4, 'fixed', 150.00, 10)$$,
	'a contract of lines shows its own lines');

-- Discount ranges inside the month.  Ending on January 10 (10 of 31 days):
-- 84.00 x 10% x 10/31 = 2.7097 -> 2.71, named with its days.
UPDATE contract_lines SET discount_period = '[2025-06-01,2026-01-11)' WHERE client_id = 50 AND line_no = 1;
SELECT results_eq($$SELECT description, amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE basis = 'discount' AND description LIKE 'Managed%'$$,
	$$VALUES ('Managed users: 10% off (2026-01-01 to 2026-01-10)', -2.71)$$, 'a discount ending mid-month: its days only');
-- Starting January 21 (11 days): 150.00 x 10% x 11/31 = 5.3226 -> 5.32
UPDATE contract_lines SET discount_period = '[2026-01-21,)' WHERE client_id = 50 AND line_no = 4;
SELECT is((SELECT amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Service fee: 10%'), -5.32,
	'a discount starting mid-month: 11 of 31 days');
-- A discount that ended before the month is no line at all
UPDATE contract_lines SET discount_period = '[2025-06-01,2026-01-01)' WHERE client_id = 50 AND line_no = 2;
SELECT is((SELECT count(*) FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Servers: 10%'), 0::bigint,
	'a discount over before the month: no discount line');
-- 100%: the line nets to zero
UPDATE contract_lines SET discount_percent = 100, discount_period = NULL WHERE client_id = 50 AND line_no = 4;
SELECT is((SELECT sum(amount) FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Service fee%'), 0.00,
	'100% off: the fee and its discount net to 0.00');
-- An amount larger than the line: never more than the line (190.00)
UPDATE contract_lines SET discount_percent = NULL, discount_amount = 500, discount_period = NULL WHERE client_id = 50 AND line_no = 2;
SELECT results_eq($$SELECT description, amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Servers%'$$,
	$$VALUES ('Servers: 2', 190.00), ('Servers: 500 off', -190.00)$$, 'a discount larger than the line stops at the line');
-- An amount a month, prorated: 20.00 from January 17 (15 days) = 9.6774 -> 9.68
UPDATE contract_lines SET discount_amount = 20, discount_period = '[2026-01-17,2026-03-01)' WHERE client_id = 50 AND line_no = 2;
SELECT is((SELECT amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Servers: 20 off%'), -9.68,
	'an amount off for part of the month is prorated by its days');
-- ... and whole without proration
UPDATE contract_lines SET prorate = false WHERE client_id = 50 AND line_no = 2;
SELECT is((SELECT amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Servers: 20 off%'), -20.00,
	'without proration the month''s amount is taken whole');
UPDATE contract_lines SET prorate = true, discount_amount = NULL, discount_percent = 10, discount_period = '[2025-06-01,2026-06-01)'
 WHERE client_id = 50 AND line_no IN (1, 2, 4);

-- Zero quantities: a meter without readings and a kind of device the client
-- has none of bill zero lines, and a discount of nothing is no line
INSERT INTO contract_lines (client_id, contract_id, line_no, description, source, device_kind, meter, unit_price, discount_percent) VALUES
	(50, 1, 5, 'Archive (GB)', 'meter', NULL, 'archive_gb', 0.02, 50), (50, 1, 6, 'Laptops', 'devices', 'laptop', NULL, 30.00, 50);
SELECT results_eq($$SELECT description, quantity, amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description ~ '^(Archive|Laptops)'$$,
	$$VALUES ('Archive (GB): 0', 0::numeric, 0.00), ('Laptops: 0', 0, 0.00)$$, 'zero quantities are zero lines, without discount lines');
DELETE FROM contract_lines WHERE client_id = 50 AND line_no IN (5, 6);

-- Half cents: a fixed fee of 0.125 bills 0.13; 10% off is 0.0125 -> 0.01
INSERT INTO contract_lines (client_id, contract_id, line_no, description, source, unit_price, discount_percent)
	VALUES (50, 1, 7, 'Half cent', 'fixed', 0.125, 10);
SELECT results_eq($$SELECT amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Half cent%'$$,
	$$VALUES (0.13), (-0.01)$$, 'half a cent rounds away from zero, line and discount each once');
DELETE FROM contract_lines WHERE client_id = 50 AND line_no = 7;

-- Meter rules: the last reading on or before the segment's last day
-- (200 -> 20.00, less 2.00); the sum of the month's readings (550.5 ->
-- 55.05), never prorated
UPDATE contract_lines SET meter_rule = 'last' WHERE client_id = 50 AND line_no = 3;
SELECT is((SELECT amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE basis = 'meter'), 20.00, 'meter rule last: 200 GB');
UPDATE contract_lines SET meter_rule = 'sum' WHERE client_id = 50 AND line_no = 3;
SELECT is((SELECT amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE basis = 'meter'), 55.05, 'meter rule sum: 550.5 GB');
-- a minimum quantity raises the meter: 300 GB at 0.10
UPDATE contract_lines SET meter_rule = 'peak', minimum_quantity = 300 WHERE client_id = 50 AND line_no = 3;
SELECT results_eq($$SELECT description, amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE basis = 'meter'$$,
	$$VALUES ('Backup (GB): 250.5, minimum 300', 30.00)$$, 'minimum quantity of a meter line');
UPDATE contract_lines SET minimum_quantity = 0 WHERE client_id = 50 AND line_no = 3;
-- a line's minimum fee tops it up before its discount: 84.00 -> 100.00, 10% off 10.00
UPDATE contract_lines SET minimum_fee = 100 WHERE client_id = 50 AND line_no = 1;
SELECT results_eq($$SELECT description, amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Managed%'$$,
	$$VALUES ('Managed users: 2', 84.00), ('Managed users: minimum fee top-up', 16.00), ('Managed users: 10% off', -10.00)$$,
	'a line''s minimum fee, then its discount');
UPDATE contract_lines SET minimum_fee = 0 WHERE client_id = 50 AND line_no = 1;
-- per-line graduated tiers: the first server at 95.00, the second at 80.00
INSERT INTO contract_line_tiers VALUES (50, 1, 2, 1, 95.00), (50, 1, 2, 2, 80.00);
UPDATE contract_lines SET tier_mode = 'graduated' WHERE client_id = 50 AND line_no = 2;
SELECT results_eq($$SELECT description, quantity, unit_price, amount FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Servers%'$$,
	$$VALUES ('Servers: 2, units 1 to 1', 1::numeric, 95.00, 95.00), ('Servers: 2, units 2 to 2', 1, 80.00, 80.00),
			 ('Servers: 10% off', 1, -17.50, -17.50)$$, 'graduated line tiers, one discount for the line');
UPDATE contract_lines SET tier_mode = 'volume' WHERE client_id = 50 AND line_no = 2;
SELECT is((SELECT sum(amount) FROM msp_invoice_lines(50, (SELECT p FROM jan)) WHERE description LIKE 'Servers%'), 144.00,
	'volume line tiers: both servers at 80.00, less 10%');
DELETE FROM contract_line_tiers WHERE client_id = 50;
-- the contract's own minimum fee still tops up the segment, after discounts
UPDATE contracts SET minimum_fee = 1000 WHERE client_id = 50;
SELECT results_eq($$SELECT subtotal, total FROM msp_compute_invoice(50, (SELECT p FROM jan))$$,
	$$VALUES (404.14, 1000.00)$$, 'the contract''s minimum fee tops up a lines contract');
UPDATE contracts SET minimum_fee = 0 WHERE client_id = 50;

-- Client 51: per device (100.00) to January 15, then lines from January 16
-- (devices at 100.00 and a fixed 50.00).  3 devices x 15/31 x 100.00 =
-- 145.16; 3 x 16/31 x 100.00 = 154.84; 50.00 x 16/31 = 25.81.
INSERT INTO clients (client_id, name, time_zone) VALUES (51, 'Change of terms', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_device) VALUES
	(51, 1, '[2025-01-01,2026-01-16)', 'per_device', 100.00), (51, 2, '[2026-01-16,)', 'lines', NULL);
INSERT INTO contract_lines (client_id, contract_id, line_no, description, source, unit_price) VALUES
	(51, 2, 1, 'Devices', 'devices', 100.00), (51, 2, 2, 'Fee', 'fixed', 50.00);
INSERT INTO devices (client_id, device_id, name) VALUES (51, 1, 'A'), (51, 2, 'B'), (51, 3, 'C');
SELECT results_eq($$SELECT contract_id, description, amount FROM msp_invoice_lines(51, (SELECT p FROM jan))$$,
	$$VALUES (1::bigint, 'Devices: 3 managed (2026-01-01 to 2026-01-15)', 145.16),
			 (2, 'Devices: 3 (2026-01-16 to 2026-01-31)', 154.84), (2, 'Fee (2026-01-16 to 2026-01-31)', 25.81)$$,
	'mid-month change from a model to lines: each segment by its own terms');
SELECT results_eq($$SELECT model, total FROM msp_compute_invoice(51, (SELECT p FROM jan))$$,
	$$VALUES ('per_device+lines', 325.81)$$, 'the invoice names both');
SELECT results_eq($$SELECT model, total FROM msp_compare_models(51, (SELECT p FROM jan)) WHERE model = 'per_device'$$,
	$$VALUES ('per_device', 145.16)$$, 'msp_compare_models still prices the models (a lines segment has no per-device price)');
SELECT results_eq($$SELECT source, unit_price FROM msp_effective_lines(51, 1)$$, $$VALUES ('devices', 100.00)$$,
	'a model contract shows the preset its model stands for');

-- Comparing proposed lines on the same data: 3 devices at 90.00 the whole
-- month = 270.00 against today's 325.81
SELECT results_eq($$SELECT pricing, sum(amount) FROM msp_compare_lines(51, '[{"line_no": 1, "description": "Devices", "source": "devices", "unit_price": 90}]', (SELECT p FROM jan)) GROUP BY 1 ORDER BY 1$$,
	$$VALUES ('current', 325.81), ('proposed', 270.00)$$, 'msp_compare_lines: current against proposed');
-- a contract's own lines, proposed, bill what it bills
SELECT results_eq($$SELECT pricing, sum(amount) FROM msp_compare_lines(50, (SELECT jsonb_agg(to_jsonb(e)) FROM msp_effective_lines(50, 1) e), (SELECT p FROM jan)) GROUP BY 1 ORDER BY 1$$,
	$$VALUES ('current', 404.14), ('proposed', 404.14)$$, 'a contract''s own lines, proposed, bill the same');

-- Refusals.  Lines only on a contract of lines; tiers only on lines that count units.
SELECT throws_like($$INSERT INTO contract_lines (client_id, contract_id, line_no, description, source, unit_price) VALUES (51, 1, 1, 'X', 'fixed', 1)$$,
	'contract 1 of client 51 is priced by model per_device, not by lines', 'lines on a model contract are refused');
SELECT throws_like($$INSERT INTO contract_line_tiers VALUES (51, 2, 2, 1, 10)$$,
	'line 2 of contract 2 of client 51 has no units to tier', 'tiers on a fixed fee are refused');
SELECT throws_ok($$INSERT INTO contracts (client_id, contract_id, effective, model) VALUES (51, 9, '[2030-01-01,)', 'bundle')$$,
	'23514', NULL, 'an unknown model is refused');

-- Each bad line refused by the table and, as a proposed line, by name alike
CREATE TEMP TABLE bad_lines (rule text, line jsonb);
INSERT INTO bad_lines VALUES
	('unit_price_required', '{"source": "users"}'),
	('cost_pool_has_markup_not_price', '{"source": "cost_pool", "unit_price": 5}'),
	('markup_only_for_cost_pool', '{"source": "users", "unit_price": 5, "markup": 0.2}'),
	('device_kind_only_for_devices', '{"source": "users", "unit_price": 5, "device_kind": "server"}'),
	('device_kind_known', '{"source": "devices", "unit_price": 5, "device_kind": "toaster"}'),
	('sku_only_for_licenses', '{"source": "devices", "unit_price": 5, "sku": "M365"}'),
	('pool_category_only_for_cost_pool', '{"source": "fixed", "unit_price": 5, "pool_category": "backup"}'),
	('meter_required', '{"source": "meter", "unit_price": 5}'),
	('minimum_quantity_needs_units', '{"source": "fixed", "unit_price": 5, "minimum_quantity": 2}'),
	('one_discount', '{"source": "fixed", "unit_price": 5, "discount_percent": 10, "discount_amount": 1}'),
	('discount_period_needs_discount', '{"source": "fixed", "unit_price": 5, "discount_period": "[2026-01-01,)"}'),
	('discount_percent_range', '{"source": "fixed", "unit_price": 5, "discount_percent": 101}'),
	('discount_amount_positive', '{"source": "fixed", "unit_price": 5, "discount_amount": 0}'),
	('discount_period_has_start', '{"source": "fixed", "unit_price": 5, "discount_percent": 5, "discount_period": "(,2026-01-01)"}'),
	('unit_price_not_negative', '{"source": "fixed", "unit_price": -5}'),
	('source_known', '{"source": "gigawatts", "unit_price": 5}');
CREATE FUNCTION pg_temp.table_refusal(line jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
	INSERT INTO mspbill.contract_lines SELECT * FROM jsonb_populate_record(NULL::mspbill.contract_lines,
		'{"client_id": 50, "contract_id": 1, "line_no": 99, "description": "bad", "markup": 0, "tier_mode": "volume",
		  "minimum_quantity": 0, "minimum_fee": 0, "prorate": true, "meter_rule": "peak"}'::jsonb || line);
	RETURN 'accepted';
EXCEPTION WHEN check_violation THEN
	GET STACKED DIAGNOSTICS r = CONSTRAINT_NAME;
	RETURN r;
END $$;
CREATE FUNCTION pg_temp.proposed_refusal(line jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
	PERFORM mspbill.msp_compare_lines(51, jsonb_build_array('{"line_no": 1, "description": "bad"}'::jsonb || line), '[2026-01-01,2026-02-01)');
	RETURN 'accepted';
EXCEPTION WHEN check_violation THEN
	GET STACKED DIAGNOSTICS r = MESSAGE_TEXT;
	RETURN substring(r FROM '"(.*)"');
END $$;
SELECT is(ARRAY(SELECT pg_temp.table_refusal(line) FROM bad_lines ORDER BY rule),
		  ARRAY(SELECT 'contract_lines_' || rule FROM bad_lines ORDER BY rule), 'the table refuses every bad line by the constraint named for it');
SELECT is(ARRAY(SELECT pg_temp.proposed_refusal(line) FROM bad_lines ORDER BY rule),
		  ARRAY(SELECT 'contract_lines_' || rule FROM bad_lines ORDER BY rule), 'a proposed line is refused by the same name');
SELECT is(pg_temp.proposed_refusal('{"source": "fixed", "unit_price": 5}'), 'accepted', 'and a good proposed line passes');
SELECT throws_ok($$SELECT * FROM msp_compare_lines(51, '[{"line_no": 1, "description": "a", "source": "fixed", "unit_price": 1}, {"line_no": 1, "description": "b", "source": "fixed", "unit_price": 1}]', '[2026-01-01,2026-02-01)')$$,
	'23514', 'proposed line 1 violates "contract_lines_line_no_unique"', 'two proposed lines with one number are refused');
SELECT throws_ok($$SELECT * FROM msp_compare_lines(51, '[{"line_no": 1, "description": "a", "source": "users", "unit_price": 1, "tier_from": [1, 5], "tier_price": [2]}]', '[2026-01-01,2026-02-01)')$$,
	'23514', 'proposed line 1 violates "contract_lines_tiers_paired"', 'tiers without a price each are refused');
SELECT throws_ok($$SELECT * FROM msp_compare_lines(51, '{"line_no": 1}', '[2026-01-01,2026-02-01)')$$,
	'22023', 'proposed lines must be a non-empty JSON array', 'proposed lines that are not an array are refused');
SELECT throws_ok($$SELECT * FROM msp_compare_lines(51, '[]', '[2026-01-01,2026-02-01)')$$,
	'22023', 'proposed lines must be a non-empty JSON array', 'no proposed line at all is refused');
SELECT throws_ok($$SELECT * FROM msp_compare_lines(51, '[{"line_no": 1, "description": "a", "source": "fixed", "unit_price": "lots"}]', '[2026-01-01,2026-02-01)')$$,
	'22P02', NULL, 'a price that is not a number is refused');
SELECT is((SELECT count(*) FROM contract_lines WHERE line_no = 99), 0::bigint, 'nothing half-written');

-- A contract of lines without lines bills nothing (but its minimum fee)
INSERT INTO clients (client_id, name, time_zone) VALUES (52, 'No lines yet', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model, minimum_fee) VALUES (52, 1, '[2025-01-01,)', 'lines', 31.00);
SELECT results_eq($$SELECT description, amount, basis FROM msp_invoice_lines(52, (SELECT p FROM jan))$$,
	$$VALUES ('Minimum monthly fee top-up', 31.00, 'minimum')$$, 'a contract of lines without lines: only the minimum fee');
-- deleting a contract deletes its lines and their tiers
INSERT INTO contract_lines (client_id, contract_id, line_no, description, source, unit_price) VALUES (52, 1, 1, 'U', 'users', 1);
INSERT INTO contract_line_tiers VALUES (52, 1, 1, 5, 0.5);
DELETE FROM contracts WHERE client_id = 52;
SELECT is((SELECT count(*) FROM contract_lines WHERE client_id = 52) + (SELECT count(*) FROM contract_line_tiers WHERE client_id = 52),
	0::bigint, 'a contract''s lines and tiers go with it');

-- Roles: the loading role loads meter readings without superuser (COPY
-- into a temporary table, then INSERT ... ON CONFLICT: COPY FROM cannot
-- write a table with row-level security), loading twice changes nothing,
-- a corrected file replaces; a BI role sees its own clients' lines only.
SELECT is(msp_install_roles() IS NOT NULL, true, 'roles installed');
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_lines_bi') THEN CREATE ROLE mspbill_test_lines_bi LOGIN; END IF;
END $$;
GRANT mspbill_bi TO mspbill_test_lines_bi;
INSERT INTO bi_client_access VALUES ('mspbill_test_lines_bi', 51);
SET ROLE mspbill_billing;
CREATE TEMP TABLE backup_file (day date, gb numeric);
COPY backup_file FROM STDIN (FORMAT csv);
2026-01-10,300
2026-01-11,310.25
\.
CREATE FUNCTION pg_temp.load_backup() RETURNS bigint LANGUAGE sql AS $$
	INSERT INTO mspbill.meter_readings (client_id, meter, day, quantity, source)
	SELECT 50, 'backup_gb', day, gb, 'nightly.csv' FROM backup_file
	ON CONFLICT (client_id, meter, day) DO UPDATE SET quantity = EXCLUDED.quantity, source = EXCLUDED.source;
	SELECT count(*) FROM mspbill.meter_readings WHERE client_id = 50;
$$;
SELECT is(pg_temp.load_backup(), 7::bigint, 'the loading role loads a file of readings');
SELECT is(pg_temp.load_backup(), 7::bigint, 'loading it twice adds nothing');
UPDATE backup_file SET gb = 280 WHERE day = '2026-01-11';
SELECT is(pg_temp.load_backup(), 7::bigint, 'a corrected file adds nothing either ...');
SELECT is((SELECT quantity FROM mspbill.meter_readings WHERE client_id = 50 AND day = '2026-01-11'), 280::numeric,
	'... and replaces the day''s reading');
SELECT is((SELECT amount FROM mspbill.msp_invoice_lines(50, '[2026-01-01,2026-02-01)') WHERE basis = 'meter'), 30.00,
	'the new peak (300 GB) is billed');
SELECT throws_ok($$INSERT INTO mspbill.meter_readings (client_id, meter, day, quantity) VALUES (50, 'backup_gb', '2026-01-12', -1)$$,
	'23514', NULL, 'a negative reading is refused');
RESET ROLE;
SET ROLE mspbill_test_lines_bi;
SELECT is((SELECT array_agg(DISTINCT client_id) FROM mspbill.contract_lines), ARRAY[51::bigint], 'BI sees its own client''s lines only');
SELECT is((SELECT count(*) FROM mspbill.meter_readings), 0::bigint, 'and no other client''s meter readings');
SELECT throws_ok($$INSERT INTO mspbill.contract_lines (client_id, contract_id, line_no, description, source, unit_price) VALUES (51, 2, 5, 'x', 'fixed', 1)$$,
	'42501', NULL, 'BI may not write lines');
SELECT throws_ok($$SELECT * FROM mspbill.msp_compare_lines(50, '[{"line_no": 1, "description": "a", "source": "fixed", "unit_price": 1}]', '[2026-01-01,2026-02-01)')$$,
	'P0002', 'unknown client 50', 'another client''s comparison is unknown client');
RESET ROLE;

-- the demo's hybrid agreement, finalized: a numbered invoice with its tax
-- (6% of 606.60 = 36.396) and due date (Net 15), as make demo shows it
SELECT msp_finalize_invoice(3, NULL, '{device_silent}') \g /dev/null
SELECT results_eq($$SELECT invoice_number ~ '^INV-[0-9]{6}$', due_date - invoice_date, po_reference, net_amount, tax, amount_due
	                  FROM msp_invoice_document(3)$$,
	$$VALUES (true, 15, 'HLG-7731'::text, 606.60, 36.40, 643.00)$$,
	'the demo''s hybrid agreement finalized: numbered, 6% tax, due in 15 days, with its PO');

SELECT * FROM finish();
