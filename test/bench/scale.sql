-- The scale dataset (BENCH_ONLY=scale make bench, test/bench/scale.sh): an
-- MSP's quarter, August to October 2026, generated in the database with
-- set-based SQL from a fixed seed.  psql variable scale (default 1) scales
-- people, devices and so logons; the clients are always 2,000.
-- At scale 1: 2,000 clients of skewed size (the largest ~13,000 people,
-- the smallest 2), ~200k people, ~20k devices (desktops and shared rooms),
-- ~400k accounts and ~27M logons, with the demo clinics' mix:
--   - Windows logons of individual accounts at their own desktop (90% of
--     people each workday), Microsoft 365 sign-ins (60% of people), EMR
--     logins (application realm, 30% of people: clinicians, twice a day,
--     in a shared room), shared room accounts (three sessions per room per
--     workday), a machine account per desktop (SERVICE, every workday),
--     MSP technicians (rarely), people who leave or join mid-quarter
--     (active ranges), a few who are not billed, sister clients (every
--     50th client: a fifth of its people are billed to the client before
--     it), support contacts (2% of Windows logons also call the desk);
--   - contracts: per user (70%, a fifth of them tiered, volume or
--     graduated), per device, per seat (with licence counts), cost-plus
--     and per user plus support (with cost pools, some spanning the
--     quarter); minimum fees and quantities; shared rooms billed as seats,
--     by peak or not at all; 10% of clients change contract on 1 September
--     and 20% on 16 October (two segments in the month measured);
--   - what month-end must refuse or survive: 20 clients with an unmapped
--     account (refused: unmapped_account), 8 with a desktop silent since
--     mid-October (refused: device_silent), 4 with a cost pool in euros
--     and 2 with a gap between contracts in October (failed).
-- The raw comparison reads the same rules: people's presence logons in
-- the os and m365 realms, technicians and do-not-bill people left out,
-- sister clients' people counted by the client that pays (same time zone).
-- All logon times are 06:00-16:00 local (US zones), so a local day never
-- crosses a UTC month boundary and each month's logons are one partition.
\set ON_ERROR_STOP 1
\if :{?scale}
\else
\set scale 1
\endif
SET search_path = public;
SET client_min_messages = warning;
SELECT setseed(0.2110);
DROP SCHEMA IF EXISTS scale CASCADE;
CREATE SCHEMA scale;

CREATE TABLE scale.clients AS
SELECT c::bigint AS client_id, 'Clinic ' || c AS name,
	   (ARRAY['America/Chicago', 'America/New_York', 'America/Denver', 'America/Los_Angeles'])[1 + ((c + 1) / 2) % 4] AS time_zone,
	   greatest(2, round(200000 * :scale * power(c + 3, -1.2) / 2.8))::integer AS size
  FROM generate_series(1, 2000) c;

-- contracts: one from January, or two when the client changed mid-quarter
CREATE TABLE scale.contracts AS
WITH c AS (
	SELECT client_id, random() AS r_model, random() AS r_change, random() AS r_min, random() AS r_shared,
		   random() AS r_tier, (35 + floor(random() * 26))::numeric AS price
	  FROM scale.clients),
k AS (
	SELECT c.*, CASE WHEN r_model < 0.70 THEN 'per_user' WHEN r_model < 0.80 THEN 'per_device'
					 WHEN r_model < 0.85 THEN 'per_seat' WHEN r_model < 0.95 THEN 'cost_plus'
					 ELSE 'per_user_plus_support' END AS model,
		   CASE WHEN r_change < 0.10 THEN date '2026-09-01' WHEN r_change < 0.30 THEN date '2026-10-16' END AS change_day
	  FROM c)
SELECT k.client_id, 1::bigint AS contract_id,
	   daterange('2026-01-01', coalesce(k.change_day, CASE WHEN k.client_id % 1000 = 17 THEN date '2026-10-10' END)) AS effective,
	   k.model, k.price AS price_per_user, round(k.price * 0.8, 2) AS price_per_device, round(k.price * 0.6, 2) AS price_per_seat,
	   CASE WHEN k.model IN ('cost_plus', 'per_user_plus_support') THEN 0.15 ELSE 0 END AS markup,
	   CASE WHEN k.r_min < 0.15 THEN 500 ELSE 0 END AS minimum_fee,
	   CASE WHEN k.r_min >= 0.15 AND k.r_min < 0.30 THEN 10 ELSE 0 END AS minimum_quantity,
	   CASE WHEN k.r_tier < 0.5 THEN 'volume' ELSE 'graduated' END AS tier_mode,
	   CASE WHEN k.r_shared < 0.70 THEN 'seat' WHEN k.r_shared < 0.85 THEN 'peak' ELSE 'none' END AS shared_billing,
	   k.model = 'per_user' AND k.r_tier < 0.2 AS tiered
  FROM k
UNION ALL
-- the new contract: 10% dearer, the same model; after a gap for the
-- clients that must fail on it
SELECT k.client_id, 2, daterange(CASE WHEN k.client_id % 1000 = 17 THEN date '2026-10-13' ELSE k.change_day END, NULL),
	   k.model, round(k.price * 1.1, 2), round(k.price * 0.88, 2), round(k.price * 0.66, 2),
	   CASE WHEN k.model IN ('cost_plus', 'per_user_plus_support') THEN 0.20 ELSE 0 END,
	   CASE WHEN k.r_min < 0.15 THEN 600 ELSE 0 END, CASE WHEN k.r_min >= 0.15 AND k.r_min < 0.30 THEN 12 ELSE 0 END,
	   CASE WHEN k.r_tier < 0.5 THEN 'volume' ELSE 'graduated' END,
	   CASE WHEN k.r_shared < 0.70 THEN 'seat' WHEN k.r_shared < 0.85 THEN 'peak' ELSE 'none' END,
	   k.model = 'per_user' AND k.r_tier < 0.2
  FROM k WHERE k.change_day IS NOT NULL OR k.client_id % 1000 = 17;
CREATE TABLE scale.contract_tiers AS
SELECT k.client_id, k.contract_id, t.from_quantity, round(k.price_per_user * t.f, 2) AS unit_price
  FROM scale.contracts k, (VALUES (51::numeric, 0.9), (201, 0.8)) t(from_quantity, f)
 WHERE k.tiered;

-- people: the last one or two of each client are MSP technicians
CREATE TABLE scale.people AS
SELECT c.client_id, p::bigint AS person_id, 'p' || p AS pseudonym,
	   p > c.size - CASE WHEN c.size >= 20 THEN 2 ELSE 1 END AS is_technician,
	   random() < 0.005 AS do_not_bill,
	   CASE WHEN c.client_id % 50 = 0 AND random() < 0.2 THEN c.client_id - 1 END AS bill_to_client_id,
	   CASE WHEN x.r < 0.04 THEN daterange('2026-01-01', date '2026-08-15' + (x.r * 1700)::integer)
			WHEN x.r < 0.07 THEN daterange(date '2026-08-10' + ((x.r - 0.04) * 2300)::integer, NULL) END AS active,
	   random() < 0.6 AS has_m365, random() < 0.3 AS clinician,
	   1 + p % greatest(1, c.size / 12) AS desktop
  FROM scale.clients c, generate_series(1, c.size) p, LATERAL (SELECT random() + p * 0 AS r) x;
-- desktops (one per 12 people), shared rooms (one per 50 people, 30+)
CREATE TABLE scale.devices AS
SELECT c.client_id, d::bigint AS device_id, 'PC' || d AS name, 'desktop' AS kind
  FROM scale.clients c, generate_series(1, greatest(1, c.size / 12)) d
UNION ALL
SELECT c.client_id, 100000 + r, 'ROOM' || r, 'room'
  FROM scale.clients c, generate_series(1, c.size / 50) r WHERE c.size >= 30;

CREATE TABLE scale.accounts AS
SELECT client_id, person_id AS account_id, 'os' AS realm, 'CLINIC\u' || person_id AS name, 'individual' AS kind,
	   person_id, NULL::text AS application
  FROM scale.people
UNION ALL
SELECT client_id, 1000000 + person_id, 'm365', 'u' || person_id || '@clinic' || client_id || '.example', 'individual', person_id, NULL
  FROM scale.people WHERE has_m365
UNION ALL
SELECT client_id, 2000000 + person_id, 'app', 'emr.u' || person_id, 'individual', person_id, 'EMR'
  FROM scale.people WHERE clinician
UNION ALL
SELECT client_id, 3000000 + device_id, 'os', name, 'shared', NULL, NULL FROM scale.devices WHERE kind = 'room'
UNION ALL
SELECT client_id, 4000000 + device_id, 'os', name || '$', 'service', NULL, NULL FROM scale.devices WHERE kind = 'desktop'
UNION ALL
SELECT client_id, 5000000, 'os', 'OLD-ADMIN', 'unknown', NULL, NULL FROM scale.clients WHERE client_id % 100 = 7;

CREATE TABLE scale.cost_pools AS
SELECT k.client_id, row_number() OVER (PARTITION BY k.client_id ORDER BY p.category) AS pool_id, p.category,
	   initcap(p.category) || ' for the quarter' AS description,
	   round(((20 + random() * 80) * c.size)::numeric, 2) AS amount,
	   CASE WHEN k.client_id % 500 = 11 AND p.category = 'licensing' THEN 'EUR' ELSE 'USD' END AS currency,
	   p.period, p.basis
  FROM (SELECT DISTINCT client_id FROM scale.contracts WHERE model IN ('cost_plus', 'per_user_plus_support')
		UNION SELECT client_id FROM scale.clients WHERE client_id % 500 = 11) k
  JOIN scale.clients c USING (client_id),
	   (VALUES ('licensing', daterange('2026-08-01', '2026-11-01'), 'user'),
			   ('backup', daterange('2026-10-01', '2026-11-01'), 'device'),
			   ('support', daterange('2026-09-15', '2026-10-15'), 'user')) p(category, period, basis);
CREATE TABLE scale.license_counts AS
SELECT k.client_id, 'M365-BP' AS sku, (count(*) FILTER (WHERE p.has_m365) + x.slack)::integer AS seats,
	   12.50 AS unit_cost, 'pax8' AS source, d.as_of
  FROM (SELECT DISTINCT client_id FROM scale.contracts WHERE model = 'per_seat') k
  JOIN scale.people p USING (client_id),
	   (VALUES (date '2026-07-25', 3), (date '2026-09-20', 1)) d(as_of, slack),
	   LATERAL (SELECT d.slack AS slack) x
 GROUP BY k.client_id, d.as_of, x.slack;

-- the logons, month by month, into standalone tables shaped like
-- mspbill.logons (attached as its partitions by scale.sh)
CREATE FUNCTION scale.fill_month(m0 date) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	part text := format('scale.logons_%s', to_char(m0, 'YYYY_MM'));
	m1 date := (m0 + interval '1 month')::date;
	n bigint;
BEGIN
	EXECUTE format('CREATE TABLE %s (LIKE mspbill.logons INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
	-- the partition bound as a constraint: attaching skips its scan
	EXECUTE format('ALTER TABLE %s ADD CONSTRAINT scale_bound CHECK (at IS NOT NULL AND at >= %L AND at < %L)',
				   part, m0::text || ' 00:00+00', m1::text || ' 00:00+00');
	DROP TABLE IF EXISTS pg_temp.days, pg_temp.here;
	CREATE TEMP TABLE days AS
		SELECT d::date AS day FROM generate_series(m0, m1 - 1, interval '1 day') d WHERE extract(isodow FROM d) < 6;
	-- who is there each workday, and when they arrive (local 06:00-10:00)
	CREATE TEMP TABLE here AS
		SELECT p.client_id, p.person_id, p.has_m365, p.clinician, p.desktop, c.time_zone,
			   (d.day + time '06:00' + random() * interval '4 hours') AT TIME ZONE c.time_zone AS t
		  FROM days d
		  JOIN scale.people p ON p.active IS NULL OR p.active @> d.day
		  JOIN scale.clients c USING (client_id)
		 WHERE random() < CASE WHEN p.is_technician THEN 0.1 ELSE 0.9 END
		   -- the people of a desktop that falls silent stop with it
		   AND NOT (p.client_id % 250 = 3 AND p.desktop = 1 AND d.day >= date '2026-10-16');
	EXECUTE format($q$
		INSERT INTO %1$s (client_id, account_id, device_id, at, ended, presence, source)
		SELECT client_id, person_id, desktop, t, t + interval '8 hours', true, 'windows' FROM here
		UNION ALL
		SELECT client_id, 1000000 + person_id, NULL, t + random() * interval '5 hours', NULL, true, 'entra'
		  FROM here WHERE has_m365
		UNION ALL
		SELECT h.client_id, 2000000 + h.person_id, 100000 + 1 + h.person_id %% (c.size / 50),
			   h.t + e.k * interval '2 hours' + random() * interval '50 minutes', NULL, true, 'emr'
		  FROM here h JOIN scale.clients c USING (client_id), (VALUES (0), (1)) e(k)
		 WHERE h.clinician AND c.size >= 50$q$, part);
	-- rooms: three shared sessions a workday; desktops: the machine account
	-- (the silent ones stop on 16 October); unmapped accounts
	EXECUTE format($q$
		INSERT INTO %1$s (client_id, account_id, device_id, at, ended, presence, source)
		SELECT v.client_id, 3000000 + v.device_id, v.device_id, s.t, s.t + interval '3 hours', true, 'windows'
		  FROM days d, scale.devices v JOIN scale.clients c USING (client_id),
			   LATERAL (VALUES ((d.day + time '07:00' + random() * interval '30 minutes') AT TIME ZONE c.time_zone),
							   ((d.day + time '10:30' + random() * interval '30 minutes') AT TIME ZONE c.time_zone),
							   ((d.day + time '14:00' + random() * interval '30 minutes') AT TIME ZONE c.time_zone)) s(t)
		 WHERE v.kind = 'room'
		UNION ALL
		SELECT v.client_id, 4000000 + v.device_id, v.device_id,
			   (d.day + time '06:00' + random() * interval '20 minutes') AT TIME ZONE c.time_zone, NULL, false, 'windows'
		  FROM days d, scale.devices v JOIN scale.clients c USING (client_id)
		 WHERE v.kind = 'desktop'
		   AND NOT (v.client_id %% 250 = 3 AND v.device_id = 1 AND d.day >= date '2026-10-16')
		UNION ALL
		SELECT c.client_id, 5000000, NULL,
			   (d.day + time '11:00') AT TIME ZONE c.time_zone, NULL, true, 'windows'
		  FROM days d, scale.clients c WHERE c.client_id %% 100 = 7$q$, part);
	EXECUTE format('SELECT count(*) FROM %s', part) INTO n;
	RETURN n;
END
$$;
SELECT scale.fill_month('2026-08-01'), scale.fill_month('2026-09-01'), scale.fill_month('2026-10-01');

-- support contacts: 2% of the Windows logons of people also call the desk
CREATE TABLE scale.support_contacts AS
SELECT l.client_id, row_number() OVER (ORDER BY l.at, l.client_id, l.account_id) AS contact_id, l.account_id AS person_id, l.at
  FROM (SELECT * FROM scale.logons_2026_08 UNION ALL SELECT * FROM scale.logons_2026_09
		UNION ALL SELECT * FROM scale.logons_2026_10) l
 WHERE l.account_id < 1000000 AND l.source = 'windows' AND l.presence AND random() < 0.02;

-- October's billable presence as a flat table (payer, person key), for the
-- raw COUNT(DISTINCT) the invoices are compared with
CREATE TABLE scale.october_flat AS
SELECT coalesce(p.bill_to_client_id, p.client_id) AS client_id, p.client_id * 1000000 + p.person_id AS person_key
  FROM scale.logons_2026_10 l
  JOIN scale.accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
  JOIN scale.people p ON p.client_id = a.client_id AND p.person_id = a.person_id
  JOIN scale.clients c ON c.client_id = coalesce(p.bill_to_client_id, p.client_id)
 WHERE l.presence AND a.kind = 'individual' AND a.realm IN ('os', 'm365') AND NOT p.is_technician AND NOT p.do_not_bill
   AND l.at >= '2026-10-01'::timestamp AT TIME ZONE c.time_zone AND l.at < '2026-11-01'::timestamp AT TIME ZONE c.time_zone;
-- the clients whose pricing fails by design (left out of the invoice row)
CREATE TABLE scale.defects AS
SELECT client_id, 'cost pool in EUR' AS defect FROM scale.clients WHERE client_id % 500 = 11
UNION ALL SELECT client_id, 'contract gap in October' FROM scale.clients WHERE client_id % 1000 = 17;
ANALYZE;
