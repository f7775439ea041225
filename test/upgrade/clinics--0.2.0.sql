-- Two demo clients with a month of generated logons: the last full month in
-- each client's time zone, so that SELECT msp_invoice(client_id) bills it.
-- The logons arrive as real exports do (NXLog JSON, Graph JSON, EMR CSV
-- rows) and go through mspbill's loaders.
-- Deterministic: "random" minutes come from hashes of names and days.
-- Used by the demo (make demo) and by test/sql/invoice_cases.sql, which
-- pins the invoices derived by hand below.

-- Case 1: St. Olaf Hospital.  Four operating rooms share one Windows account
-- each (OR1..OR4); clinicians sign into the EMR individually inside them.
-- Billable users (contract: per user 42.00, shared seat 30.00):
--   nurses n1..n3           own Windows logons          3
--   clinicians c1..c4       own Microsoft 365 sign-ins  4
--   clinicians c5, c6       only OR rooms + EMR         0 (covered by the room seats)
--   receptionist r1         support calls only          1 (support is sufficient)
--   technician t1           MSP staff                   0
--   WS01$ / SYSTEM          machine and service         0
--   Dr. Gray (gray)         the dental office's person,  1 (the hospital pays
--                           bill_to_client_id = 1          for her: her own
--                                                          Windows logons there)
--   => 9 users x 42.00 = 378.00; 4 OR seats x 30.00 = 120.00; total 498.00
-- Case 2: Maple Family Dental.  8 desktops, 4 users; two front-desk staff
-- share the FRONTDESK PC and use only web mail.  Cost pools 785.00 in all,
-- billed cost-plus 20%: 120.00 + 216.00 + 144.00 + 102.00 + 360.00 = 942.00.
-- Side by side: per user 4 x 150.00 = 600.00, per device 8 x 95.00 =
-- 760.00, per user lifted by support 600.00 + 360.00 = 960.00.
-- Dr. Gray works at the dental office, but the hospital pays for her
-- (bill_to_client_id): she is on the hospital's invoice, not the dental one.

SET search_path = public, mspbill;

INSERT INTO clients (client_id, name, currency, time_zone) VALUES
	(1, 'St. Olaf Hospital', 'USD', 'America/Chicago'),
	(2, 'Maple Family Dental', 'USD', 'America/Chicago');

-- the period the demo bills: the last full month in the clients' zone
CREATE TEMP TABLE demo_period AS
	SELECT lower(msp_period(1)) AS first_day, upper(msp_period(1)) AS next_month;

INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, price_per_device,
					   price_per_seat, markup, shared_billing)
SELECT 1, 1, daterange(first_day - 365, NULL), 'per_user', 42.00, NULL, 30.00, 0, 'seat' FROM demo_period
UNION ALL
SELECT 2, 1, daterange(first_day - 365, NULL), 'cost_plus', 150.00, 95.00, 20.00, 0.20, 'none' FROM demo_period;

INSERT INTO devices (client_id, device_id, name, kind) VALUES
	(1, 1, 'OR1', 'room'), (1, 2, 'OR2', 'room'), (1, 3, 'OR3', 'room'), (1, 4, 'OR4', 'room'),
	(1, 5, 'NURSE-WS1', 'desktop'), (1, 6, 'NURSE-WS2', 'desktop'), (1, 7, 'FRONT-WS', 'desktop');
INSERT INTO devices (client_id, device_id, name, kind)
SELECT 2, d, 'DENTAL-PC' || d, 'desktop' FROM generate_series(1, 8) d;

INSERT INTO people (client_id, person_id, pseudonym, is_technician, bill_to_client_id) VALUES
	(1, 1, 'n1', false, NULL), (1, 2, 'n2', false, NULL), (1, 3, 'n3', false, NULL),
	(1, 11, 'c1', false, NULL), (1, 12, 'c2', false, NULL), (1, 13, 'c3', false, NULL),
	(1, 14, 'c4', false, NULL), (1, 15, 'c5', false, NULL), (1, 16, 'c6', false, NULL),
	(1, 21, 'r1', false, NULL), (1, 31, 't1', true, NULL),
	(2, 1, 'dentist', false, NULL), (2, 2, 'hygienist', false, NULL),
	(2, 3, 'front1', false, NULL), (2, 4, 'front2', false, NULL),
	(2, 5, 'gray', false, 1), (2, 31, 't1', true, NULL);

-- accounts: OS logons, EMR logins (application realm) and Microsoft 365
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id, application) VALUES
	(1, 1, 'os', 'OR1', 'shared', NULL, NULL), (1, 2, 'os', 'OR2', 'shared', NULL, NULL),
	(1, 3, 'os', 'OR3', 'shared', NULL, NULL), (1, 4, 'os', 'OR4', 'shared', NULL, NULL),
	(1, 5, 'os', 'STOLAF\nurse1', 'individual', 1, NULL),
	(1, 6, 'os', 'STOLAF\nurse2', 'individual', 2, NULL),
	(1, 7, 'os', 'STOLAF\nurse3', 'individual', 3, NULL),
	(1, 8, 'os', 'STOLAF\msptech', 'individual', 31, NULL),
	(1, 9, 'os', 'WS01$', 'service', NULL, NULL),
	(1, 10, 'os', 'SYSTEM', 'service', NULL, NULL);
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id, application)
SELECT 1, 100 + p.person_id, 'app', 'emr.' || p.pseudonym, 'individual', p.person_id, 'EMR'
  FROM people p WHERE p.client_id = 1 AND p.pseudonym LIKE 'c%';
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id, application)
SELECT 1, 200 + p.person_id, 'm365', p.pseudonym || '@stolaf.example', 'individual', p.person_id, NULL
  FROM people p WHERE p.client_id = 1 AND p.pseudonym IN ('c1', 'c2', 'c3', 'c4', 'n1');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id, application) VALUES
	(2, 1, 'os', 'MAPLE\dentist', 'individual', 1, NULL),
	(2, 2, 'os', 'MAPLE\hygienist', 'individual', 2, NULL),
	(2, 3, 'os', 'FRONTDESK', 'shared', NULL, NULL),
	(2, 4, 'm365', 'dentist@maple.example', 'individual', 1, NULL),
	(2, 5, 'm365', 'hygienist@maple.example', 'individual', 2, NULL),
	(2, 6, 'm365', 'front1@maple.example', 'individual', 3, NULL),
	(2, 7, 'm365', 'front2@maple.example', 'individual', 4, NULL),
	(2, 8, 'os', 'MAPLE\gray', 'individual', 5, NULL),
	(2, 9, 'os', 'MAPLE\msptech', 'individual', 31, NULL),
	(2, 10, 'os', 'DENTAL-PC1$', 'service', NULL, NULL);

-- A month of workdays.  minutes(key) is a stable pseudo-random offset.
CREATE TEMP TABLE demo_days AS
	SELECT d::date AS day FROM demo_period, generate_series(first_day, next_month - 1, interval '1 day') d
	 WHERE extract(isodow FROM d) < 6;
CREATE FUNCTION pg_temp.minutes(key text, spread integer) RETURNS interval
	LANGUAGE sql IMMUTABLE RETURN make_interval(mins => abs(hashtext(key)) % spread);
CREATE FUNCTION pg_temp.local(day date, hhmm text, zone text) RETURNS timestamptz
	LANGUAGE sql IMMUTABLE RETURN (day + hhmm::time) AT TIME ZONE zone;

-- The month's sessions, then written out as the exports an MSP really has
-- (Windows Security events as NXLog JSON, Entra ID sign-ins as Graph JSON,
-- the EMR's access audit as CSV rows) and loaded by mspbill's loaders.
CREATE TEMP TABLE demo_sessions (client_id bigint, source text, account text, host text,
								 at timestamptz, ended timestamptz, logon_type text);
-- hospital: nurses and machine/service logons on the nurse workstations
INSERT INTO demo_sessions
SELECT 1, 'windows', a.name, CASE a.account_id % 2 WHEN 1 THEN 'NURSE-WS2' ELSE 'NURSE-WS1' END,
	   pg_temp.local(day, '07:00', 'America/Chicago') + pg_temp.minutes(a.name || day, 45),
	   pg_temp.local(day, '15:00', 'America/Chicago') + pg_temp.minutes(day || a.name, 60),
	   CASE WHEN a.kind = 'service' THEN '5' ELSE '2' END
  FROM demo_days, accounts a WHERE a.client_id = 1 AND a.account_id IN (5, 6, 7, 9, 10);
-- the technician fixes a workstation twice
INSERT INTO demo_sessions
SELECT 1, 'windows', 'STOLAF\msptech', 'NURSE-WS2', pg_temp.local(day, '12:00', 'America/Chicago'),
	   pg_temp.local(day, '12:40', 'America/Chicago'), '10'
  FROM (SELECT day FROM demo_days ORDER BY day LIMIT 2) d;
-- operating rooms: two sessions a day per room, each clinician signing into the EMR inside
INSERT INTO demo_sessions
SELECT 1, 'windows', 'OR' || room, 'OR' || room, pg_temp.local(day, s.start, 'America/Chicago'),
	   pg_temp.local(day, s.start, 'America/Chicago') + interval '3 hours', '2'
  FROM demo_days, generate_series(1, 4) room, (VALUES ('08:00'), ('13:00')) s(start);
INSERT INTO demo_sessions
SELECT 1, 'emr', 'emr.c' || (((room + extract(day FROM day)::int + (s.start = '13:00')::int) % 6) + 1), 'OR' || room,
	   pg_temp.local(day, s.start, 'America/Chicago') + pg_temp.minutes(room || s.start || day, 20), NULL, NULL
  FROM demo_days, generate_series(1, 4) room, (VALUES ('08:00'), ('13:00')) s(start);
-- Microsoft 365 sign-ins of the clinicians who have mail, and of nurse n1
INSERT INTO demo_sessions
SELECT 1, 'entra', a.name, NULL, pg_temp.local(day, '18:00', 'America/Chicago') + pg_temp.minutes(a.name || day, 120), NULL, NULL
  FROM demo_days, accounts a WHERE a.client_id = 1 AND a.realm = 'm365';
-- dental office: two own desktops, the shared front-desk PC, web mail for everyone
INSERT INTO demo_sessions
SELECT 2, 'windows', a.name,
	   'DENTAL-PC' || CASE a.account_id WHEN 1 THEN 1 WHEN 2 THEN 2 WHEN 3 THEN 3 WHEN 8 THEN 4 ELSE 1 END,
	   pg_temp.local(day, '08:00', 'America/Chicago') + pg_temp.minutes(a.name || day, 30),
	   pg_temp.local(day, '17:00', 'America/Chicago'), CASE WHEN a.kind = 'service' THEN '5' ELSE '2' END
  FROM demo_days, accounts a WHERE a.client_id = 2 AND a.realm = 'os' AND a.account_id <> 9;
INSERT INTO demo_sessions
SELECT 2, 'entra', a.name, NULL, pg_temp.local(day, '08:30', 'America/Chicago') + pg_temp.minutes(a.name || day, 300), NULL, NULL
  FROM demo_days, accounts a WHERE a.client_id = 2 AND a.realm = 'm365';
INSERT INTO demo_sessions
SELECT 2, 'windows', 'MAPLE\msptech', 'DENTAL-PC5', pg_temp.local(first_day + 2, '12:00', 'America/Chicago'),
	   pg_temp.local(first_day + 2, '12:30', 'America/Chicago'), '10' FROM demo_period;

-- the exports: a 4624 logon and a 4634 logoff per Windows session ...
CREATE TEMP TABLE demo_numbered AS SELECT row_number() OVER (ORDER BY client_id, at, account) AS n, * FROM demo_sessions;
INSERT INTO windows_event_staging (client_id, raw)
SELECT client_id, json_build_object(
		   '@timestamp', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
		   'Hostname', host || CASE client_id WHEN 1 THEN '.stolaf.local' ELSE '.maple.local' END,
		   'EventID', event_id, 'RecordNumber', n * 2 + (event_id = 4634)::int,
		   'TargetUserName', CASE WHEN position('\' IN account) > 0 THEN split_part(account, '\', 2) ELSE account END,
		   'TargetDomainName', CASE WHEN position('\' IN account) > 0 THEN split_part(account, '\', 1) ELSE '' END,
		   'TargetLogonId', '0x' || to_hex(n), 'LogonType', logon_type, 'Channel', 'Security')::text
  FROM demo_numbered,
	   LATERAL (VALUES (4624, at), (4634, ended)) e(event_id, t)
 WHERE source = 'windows' AND t IS NOT NULL;
-- ... a Graph signIn object per Microsoft 365 sign-in ...
INSERT INTO entra_signin_staging (client_id, raw)
SELECT client_id, json_build_object('id', 'signin-' || n, 'createdDateTime', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
									'userPrincipalName', account, 'isInteractive', true,
									'status', json_build_object('errorCode', 0))::text
  FROM demo_numbered WHERE source = 'entra';
-- ... and an EMR audit row (local time, as EMRs write it) per EMR login
INSERT INTO emr_audit_staging (client_id, user_name, workstation, event_time, action, event_id)
SELECT client_id, account, host, (at AT TIME ZONE 'America/Chicago')::text, 'LOGIN', 'emr-' || n
  FROM demo_numbered WHERE source = 'emr';

CREATE TEMP TABLE demo_loads AS
SELECT 'St. Olaf Windows events' AS export, w.loaded, w.duplicate, w.skipped, w.rejected FROM msp_load_windows_events(1) w
UNION ALL SELECT 'St. Olaf Entra ID sign-ins', e.loaded, e.duplicate, e.skipped, e.rejected FROM msp_load_entra_signins(1) e
UNION ALL SELECT 'St. Olaf EMR audit', m.loaded, m.duplicate, 0, m.rejected FROM msp_load_emr_audit(1) m
UNION ALL SELECT 'Maple Windows events', w.loaded, w.duplicate, w.skipped, w.rejected FROM msp_load_windows_events(2) w
UNION ALL SELECT 'Maple Entra ID sign-ins', e.loaded, e.duplicate, e.skipped, e.rejected FROM msp_load_entra_signins(2) e;

-- the receptionist never logs on, but calls the desk
INSERT INTO support_contacts (client_id, contact_id, person_id, at, channel)
SELECT 1, 1, 21, pg_temp.local(first_day + 3, '10:15', 'America/Chicago'), 'phone' FROM demo_period
UNION ALL
SELECT 1, 2, 1, pg_temp.local(first_day + 8, '09:30', 'America/Chicago'), 'email' FROM demo_period;

INSERT INTO cost_pools (client_id, pool_id, category, description, amount, currency, period, basis)
SELECT 2, p.id, p.category, p.description, p.amount, 'USD', daterange(first_day, next_month), p.basis
  FROM demo_period, (VALUES
	(1, 'licensing', 'Windows and security licences on 8 PCs', 100.00, 'device'),
	(2, 'backup', 'Backup and disaster recovery (BDR)', 180.00, 'device'),
	(3, 'server', 'Practice-management server', 120.00, 'device'),
	(4, 'hardware', 'Hardware maintenance', 85.00, 'device'),
	(5, 'support', 'Help-desk support', 300.00, 'user')) p(id, category, description, amount, basis);

INSERT INTO license_counts (client_id, sku, seats, source, as_of)
SELECT 1, 'Microsoft 365 Business Standard', 6, 'pax8', first_day FROM demo_period
UNION ALL
SELECT 2, 'Microsoft 365 Business Standard', 5, 'pax8', first_day FROM demo_period;

ANALYZE;

-- The ids above were chosen by hand: move each identity sequence past them,
-- so that rows added later without an id get new ones (README: "Ids").
DO $$
BEGIN
	PERFORM setval(pg_get_serial_sequence('mspbill.clients', 'client_id'), max(client_id)) FROM clients;
	PERFORM setval(pg_get_serial_sequence('mspbill.contracts', 'contract_id'), max(contract_id)) FROM contracts;
	PERFORM setval(pg_get_serial_sequence('mspbill.devices', 'device_id'), max(device_id)) FROM devices;
	PERFORM setval(pg_get_serial_sequence('mspbill.people', 'person_id'), max(person_id)) FROM people;
	PERFORM setval(pg_get_serial_sequence('mspbill.accounts', 'account_id'), max(account_id)) FROM accounts;
	PERFORM setval(pg_get_serial_sequence('mspbill.support_contacts', 'contact_id'), max(contact_id)) FROM support_contacts;
	PERFORM setval(pg_get_serial_sequence('mspbill.cost_pools', 'pool_id'), max(pool_id)) FROM cost_pools;
END
$$;
