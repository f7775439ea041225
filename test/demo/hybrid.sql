-- Case 3 (make demo): Harbor Law Group, a hybrid agreement of contract
-- lines: 42.00 per user + 95.00 per server + backup at 0.10 per GB (the
-- month's peak) + a 150.00 monthly fee, 10% off the first year (the
-- contract began 90 days before the demo month).  5 people log on, 2 of its
-- 8 devices are servers, backup peaks at 1,240 GB on the last day:
--   5 x 42.00 = 210.00, 2 x 95.00 = 190.00, 1240 x 0.10 = 124.00, 150.00
--   = 674.00, less 10% on each line (21.00 + 19.00 + 12.40 + 15.00) = 606.60.
-- Run after clinics.sql (it uses demo_period and pg_temp.local).
INSERT INTO clients (client_id, name, currency, time_zone) VALUES (3, 'Harbor Law Group', 'USD', 'America/Chicago');
INSERT INTO contracts (client_id, contract_id, effective, model)
SELECT 3, 1, daterange(first_day - 90, NULL), 'lines' FROM demo_period;
INSERT INTO contract_lines (client_id, contract_id, line_no, description, source, device_kind, meter, unit_price,
							discount_percent, discount_period)
SELECT 3, 1, l.line_no, l.description, l.source, l.device_kind, l.meter, l.unit_price,
	   10, daterange(first_day - 90, first_day - 90 + 365)
  FROM demo_period, (VALUES (1, 'Managed users', 'users', NULL, NULL, 42.00),
							(2, 'Servers', 'devices', 'server', NULL, 95.00),
							(3, 'Backup (GB)', 'meter', NULL, 'backup_gb', 0.10),
							(4, 'Monthly service fee', 'fixed', NULL, NULL, 150.00))
	   l(line_no, description, source, device_kind, meter, unit_price);
INSERT INTO devices (client_id, device_id, name, kind)
SELECT 3, d, CASE WHEN d <= 2 THEN 'LAW-SRV' || d ELSE 'LAW-PC' || d END,
	   CASE WHEN d <= 2 THEN 'server' ELSE 'desktop' END
  FROM generate_series(1, 8) d;
INSERT INTO people (client_id, person_id, pseudonym)
SELECT 3, p, 'lawyer' || p FROM generate_series(1, 5) p;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id)
SELECT 3, p, 'm365', 'lawyer' || p || '@harbor.example', 'individual', p FROM generate_series(1, 5) p;
INSERT INTO logons (client_id, account_id, at, source)
SELECT 3, p, pg_temp.local(day, '09:00', 'America/Chicago') + make_interval(mins => p), 'demo'
  FROM demo_days, generate_series(1, 5) p;
-- the nightly backup report: 1,000 GB growing 8 GB a day (1,240 GB by the
-- 31st day), as a file of day,gb rows loaded like any client's
INSERT INTO meter_readings (client_id, meter, day, quantity, source)
SELECT 3, 'backup_gb', d::date, 1000 + 8 * (d::date - first_day + 1 - (next_month - first_day - 30)), 'backup-report.csv'
  FROM demo_period, generate_series(first_day, next_month - 1, interval '1 day') d;
-- its invoices: 6% sales tax, Net 15, the firm's purchase order
INSERT INTO invoice_terms (client_id, tax_rate, tax_name, po_reference, payment_terms_days)
VALUES (3, 0.06, 'Sales Tax 6%', 'HLG-7731', 15);
SELECT setval(pg_get_serial_sequence('mspbill.clients', 'client_id'), 3);
SELECT setval(pg_get_serial_sequence('mspbill.devices', 'device_id'), (SELECT max(device_id) FROM devices));
SELECT setval(pg_get_serial_sequence('mspbill.people', 'person_id'), (SELECT max(person_id) FROM people));
SELECT setval(pg_get_serial_sequence('mspbill.accounts', 'account_id'), (SELECT max(account_id) FROM accounts));
ANALYZE;
