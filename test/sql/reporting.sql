-- Reporting: the rollups kept incrementally equal a full rebuild and an
-- independent recomputation (random data), concurrent refreshes and loads
-- lose nothing, the KPI views give the functions' figures, and a BI role
-- reads its own clients only.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
CREATE EXTENSION dblink;
SELECT plan(75);
SET client_min_messages = warning;

-- rows of the rollups, as text, for comparing two states
CREATE FUNCTION pg_temp.rollup_rows() RETURNS SETOF text LANGUAGE sql AS $$
	SELECT 'd ' || d::text FROM mspbill.daily_activity d
	UNION ALL SELECT 'p ' || p::text FROM mspbill.period_invoices p
	UNION ALL SELECT 'f ' || f::text FROM mspbill.pii_findings f
$$;
CREATE FUNCTION pg_temp.differs_from_rebuild() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	CREATE TEMP TABLE kept AS SELECT * FROM pg_temp.rollup_rows() r;
	PERFORM mspbill.msp_rebuild_rollups();
	SELECT count(*) INTO n FROM ((SELECT * FROM kept EXCEPT ALL SELECT * FROM pg_temp.rollup_rows())
								 UNION ALL (SELECT * FROM pg_temp.rollup_rows() EXCEPT ALL SELECT * FROM kept)) x;
	DROP TABLE kept;
	RETURN n;
END
$$;
-- the daily rollup recomputed independently: plain GROUP BY and COUNT(DISTINCT)
CREATE FUNCTION pg_temp.daily_mismatches() RETURNS bigint LANGUAGE sql AS $$
	WITH ref AS (
		SELECT l.client_id, msp_local_day(l.at, c.time_zone) AS day,
			   count(DISTINCT a.person_id) FILTER (WHERE l.presence AND a.kind = 'individual' AND NOT a.is_machine) AS people,
			   count(DISTINCT l.device_id) AS devices,
			   count(*) FILTER (WHERE l.presence AND a.kind = 'shared' AND NOT a.is_machine) AS shared_sessions,
			   count(*) AS logons
		  FROM mspbill.logons l JOIN mspbill.clients c USING (client_id)
		  JOIN mspbill.accounts a USING (client_id, account_id)
		 GROUP BY 1, 2)
	SELECT count(*) FROM ref r FULL JOIN mspbill.daily_activity d USING (client_id, day)
	 WHERE r.people IS DISTINCT FROM cardinality(d.people) OR r.devices IS DISTINCT FROM cardinality(d.devices)
		OR r.shared_sessions IS DISTINCT FROM d.shared_sessions OR r.logons IS DISTINCT FROM d.logons
$$;

-- 1. the demo: loading marked the days, a refresh computes the invoices
SELECT ok((SELECT count(*) FROM rollup_dirty) > 0, 'loading the demo exports marked its days dirty');
SELECT is((SELECT (days, periods)::text FROM msp_refresh_rollups()),
          (SELECT (count(DISTINCT (l.client_id, msp_local_day(l.at, c.time_zone))), 2)::text
             FROM logons l JOIN clients c USING (client_id)),
          'a refresh recomputes every day with logons and the 2 months');
SELECT is((SELECT count(*) FROM rollup_dirty), 0::bigint, 'and consumes the marks');
SELECT is((SELECT (days, periods)::text FROM msp_refresh_rollups()), '(0,0)', 'a second refresh has nothing to do');
SELECT results_eq($$SELECT client_id, users, seats, devices, subtotal, total, status FROM period_invoices ORDER BY 1$$,
                  $$SELECT i.client_id, i.users, i.seats, i.devices, i.subtotal, i.total, 'preview'::text
                      FROM clients c, msp_invoice(c.client_id) i ORDER BY 1$$,
                  'the month''s invoice figures equal msp_invoice()');
SELECT is((SELECT userset_to_array(billable) FROM period_invoices WHERE client_id = 1),
          (SELECT array_agg(person_id ORDER BY person_id) FROM msp_billable_users(1) WHERE home_client_id = 1),
          'the billable people are msp_billable_users(): the client''s own by id');
SELECT is((SELECT sister_billable FROM period_invoices WHERE client_id = 1),
          (SELECT jsonb_agg(jsonb_build_object('home_client_id', home_client_id, 'person_id', person_id, 'pseudonym', pseudonym)
                            ORDER BY home_client_id, person_id)
             FROM msp_billable_users(1) WHERE home_client_id <> 1),
          'and the sister clients'' people it pays for, with their home client');
SELECT is((SELECT cardinality(billable)::integer + jsonb_array_length(sister_billable) FROM period_invoices WHERE client_id = 1),
          (msp_invoice(1)).users, 'together they are the invoice''s 9 users');
SELECT is(pg_temp.daily_mismatches(), 0::bigint, 'daily rows equal COUNT(DISTINCT) over the logons');
SELECT is(pg_temp.differs_from_rebuild(), 0::bigint, 'the refreshed rollups equal a full rebuild');

-- 2. the KPI views against the functions they summarize
SELECT results_eq($$SELECT client_id, revenue, pool_cost, margin FROM kpi_margin ORDER BY 1$$,
                  $$VALUES (1::bigint, 498.00, 0::numeric, 498.00), (2, 942.00, 785.00, 157.00)$$,
                  'margin: revenue minus the cost pools (the hospital''s 498.00 bills Dr. Gray of the dental office too)');
SELECT results_eq($$SELECT margin_pct, margin_per_user FROM kpi_margin WHERE client_id = 2$$,
                  $$VALUES (16.7, 39.25)$$, 'the dental office: margin 16.7 %, 39.25 per user');
SELECT results_eq($$SELECT DISTINCT revenue, cost, margin FROM kpi_margin_per_user WHERE client_id = 2$$,
                  $$VALUES (235.50, 196.25, 39.25)$$, 'each of its 4 users: 235.50 revenue, 196.25 cost');
SELECT results_eq($$SELECT seats_held, people_active, billable_users, utilization FROM kpi_license_utilization WHERE client_id = 1$$,
                  $$VALUES (6, 10, 9, 1.5000)$$, 'the hospital: 6 seats, 10 of its people active, 9 billed (Dr. Gray too), utilization 1.5000');
SELECT results_eq($$SELECT home_client_id, pseudonym FROM kpi_margin_per_user WHERE client_id = 1 AND home_client_id <> 1$$,
                  $$VALUES (2::bigint, 'gray'::text)$$, 'Dr. Gray, billed to the hospital, has her share of its margin');
SELECT is((SELECT count(*)::integer FROM kpi_margin_per_user WHERE client_id = 1), (msp_invoice(1)).users,
          'one margin row per person the invoice counts');
SELECT results_eq($$SELECT client_id, sum(revenue), sum(cost), sum(margin) FROM kpi_margin_per_user GROUP BY 1 ORDER BY 1$$,
                  $$SELECT client_id, revenue, pool_cost + licence_cost, margin FROM kpi_margin ORDER BY 1$$,
                  'margin per user adds up to the client''s margin to the cent');
SELECT results_eq($$SELECT client_id, gate, subject, detail FROM kpi_data_quality ORDER BY 1, 2, 3$$,
                  $$SELECT c.client_id, q.gate, q.subject, q.detail FROM clients c, msp_data_quality(c.client_id) q ORDER BY 1, 2, 3$$,
                  'open data-quality findings are msp_data_quality() of the months not finalized');
SELECT is((SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relname LIKE 'kpi\_%' AND a.atttypid = 'userset'::regtype),
          0::bigint, 'no KPI view has a userset column (BI tools get bigint[] and counts)');
SELECT is((SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relkind = 'v'
              AND (c.relname LIKE 'kpi\_%' OR c.relname = 'reporting_clients')
              AND NOT coalesce(c.reloptions, '{}') @> '{security_barrier=true}'),
          0::bigint, 'every KPI view is a security barrier');

-- licences: a Microsoft 365 account nobody used is a seat to reclaim, priced like msp_reconcile_licenses
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (1, 215, 'm365', 'c5@stolaf.example', 'individual', 15);
UPDATE license_counts SET unit_cost = 12.50 WHERE client_id = 1;
SELECT results_eq($$SELECT seats_to_reclaim, reclaim_value, seat_shortfall FROM kpi_license_utilization WHERE client_id = 1$$,
                  $$SELECT (SELECT count(*)::integer FROM msp_reconcile_licenses(1) WHERE category = 'licensed_inactive'),
                           (SELECT sum(amount) FROM msp_reconcile_licenses(1) WHERE category = 'licensed_inactive'),
                           (SELECT coalesce(sum(quantity), 0)::integer FROM msp_reconcile_licenses(1) WHERE category = 'seat_shortfall')$$,
                  'seats to reclaim and the shortfall agree with msp_reconcile_licenses()');
SELECT results_eq($$SELECT seats_to_reclaim, reclaim_value, licence_cost FROM kpi_license_utilization WHERE client_id = 1$$,
                  $$VALUES (1, 12.50, 75.00)$$, 'one seat (12.50) to reclaim; 6 seats cost 75.00');
SELECT is((SELECT margin FROM kpi_margin WHERE client_id = 1), 423.00, 'licence costs lower the margin: 498.00 - 75.00');
-- a change no trigger sees (a cost pool) shows once its days are marked
UPDATE cost_pools SET amount = amount + 10 WHERE client_id = 2 AND pool_id = 1;
SELECT msp_refresh_rollups() IS NOT NULL AS refreshed \gset
SELECT is((SELECT total FROM period_invoices WHERE client_id = 2), 942.00, 'a changed cost pool is not seen before it is marked');
SELECT ok(msp_mark_rollups_dirty(2, msp_period(2)) >= 28, 'msp_mark_rollups_dirty marks the month''s days');
SELECT msp_refresh_rollups() IS NOT NULL AS refreshed \gset
SELECT results_eq($$SELECT total FROM period_invoices WHERE client_id = 2$$, $$SELECT (msp_invoice(2)).total$$,
                  'after the refresh the month is repriced: 942.00 + 12.00');
SELECT is((SELECT total FROM period_invoices WHERE client_id = 2), 954.00, 'and it is 954.00');
UPDATE cost_pools SET amount = amount - 10 WHERE client_id = 2 AND pool_id = 1;
SELECT msp_mark_rollups_dirty(2, msp_period(2)) IS NOT NULL AS marked \gset
SELECT msp_refresh_rollups() IS NOT NULL AS refreshed \gset

-- 3. late data: a month before, and who joined and left
INSERT INTO people (client_id, person_id, pseudonym) VALUES (1, 41, 'x1');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (1, 41, 'os', 'STOLAF\x1', 'individual', 41);
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT 1, a, 5, ((first_day - 10) + time '09:00') AT TIME ZONE 'America/Chicago'
  FROM demo_period, (VALUES (5), (6), (41)) x(a);
SELECT is((SELECT count(*) FROM rollup_dirty), 1::bigint, 'three late logons on one day mark one pair');
SELECT is((SELECT (days, periods)::text FROM msp_refresh_rollups()), '(1,1)', 'the refresh recomputes that day and its month only');
SELECT results_eq($$SELECT billable_users, previous_billable_users, change, joined, departed
                      FROM kpi_billable_users WHERE client_id = 1 AND month = (SELECT first_day FROM demo_period)$$,
                  $$VALUES (9, 3, 6, ARRAY['c1','c2','c3','c4','gray (client 2)','n3','r1'], ARRAY['x1'])$$,
                  'billable users, the change from last month, who joined (Dr. Gray of the dental office too) and who left');
SELECT results_eq($$SELECT joined_count, left_count, joined_count - left_count = change FROM kpi_billable_users
                      WHERE client_id = 1 AND month = (SELECT first_day FROM demo_period)$$,
                  $$VALUES (7, 1, true)$$, 'joined and left are counted on the set they list: 7 - 1 = the change of 6');
SELECT results_eq($$SELECT billable_users, change, joined FROM kpi_billable_users
                      WHERE client_id = 1 AND month = (SELECT (first_day - interval '1 month')::date FROM demo_period)$$,
                  $$VALUES (3, NULL::integer, NULL::text[])$$, 'a first month: 3 billable, no change (NULL, not everyone joined)');

-- finalizing marks the month; late data after that shows as drift
SELECT msp_finalize_invoice(1, NULL, '{device_silent}') IS NOT NULL AS finalized \gset
SELECT ok((SELECT count(*) FROM rollup_dirty WHERE client_id = 1 AND day = (SELECT first_day FROM demo_period)) = 1,
          'finalizing marks the month');
SELECT msp_refresh_rollups() IS NOT NULL AS refreshed \gset
SELECT results_eq($$SELECT status, total, drift FROM period_invoices WHERE client_id = 1 AND period = msp_period(1)$$,
                  $$VALUES ('finalized'::text, 498.00, 0.00)$$, 'the month is finalized, no drift');
SELECT is((SELECT count(*) FROM kpi_data_quality WHERE client_id = 1 AND month = lower(msp_period(1))), 0::bigint,
          'a finalized month has no open findings');
SELECT ok((SELECT count(*) FROM kpi_data_quality WHERE client_id = 1 AND month < lower(msp_period(1))) > 0,
          'the month before, not finalized, still shows its findings');
INSERT INTO people (client_id, person_id, pseudonym) VALUES (1, 42, 'late');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (1, 42, 'os', 'STOLAF\late', 'individual', 42);
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT 1, 42, 5, ((first_day + 14) + time '10:00') AT TIME ZONE 'America/Chicago' FROM demo_period;
SELECT msp_refresh_rollups() IS NOT NULL AS refreshed \gset
SELECT results_eq($$SELECT status, total, drift FROM period_invoices WHERE client_id = 1 AND period = msp_period(1)$$,
                  $$SELECT 'finalized'::text, 498.00, (SELECT sum(difference) FROM msp_invoice_drift(1))$$,
                  'a late logon: still 498.00 billed, drift +42.00 as msp_invoice_drift() says');
SELECT is((SELECT drift FROM period_invoices WHERE client_id = 1 AND period = msp_period(1)), 42.00, 'drift is +42.00');

-- HIPAA: plant shared EMR logins in OR3 sessions (as the privacy suite does)
INSERT INTO applications VALUES (1, 'EMR', true);
INSERT INTO accounts (client_id, account_id, realm, name, kind, application) VALUES (1, 300, 'app', 'emr.or3', 'shared', 'EMR');
CREATE TEMP TABLE planted AS
  SELECT l.at, l.ended FROM logons l WHERE l.client_id = 1 AND l.account_id = 3 ORDER BY l.at LIMIT 6;
DELETE FROM planted WHERE extract(hour FROM at AT TIME ZONE 'America/Chicago') <> 8;
DELETE FROM logons l USING planted p
 WHERE l.client_id = 1 AND l.device_id = 3 AND l.account_id BETWEEN 111 AND 116 AND l.at BETWEEN p.at AND p.ended;
INSERT INTO logons (client_id, account_id, device_id, at) SELECT 1, 300, 3, at + interval '5 minutes' FROM planted;
SELECT msp_refresh_rollups() IS NOT NULL AS refreshed \gset
SELECT is((SELECT sum(violating_sessions) FROM kpi_hipaa_findings WHERE client_id = 1)::bigint,
          (SELECT count(*) FROM msp_pii_audit(1)), 'HIPAA findings over time add up to msp_pii_audit()');
SELECT is((SELECT count(*) FROM kpi_hipaa_findings WHERE violating_sessions > 0), 3::bigint, 'three days with a violation');
SELECT is(pg_temp.differs_from_rebuild(), 0::bigint, 'after late data, finalization, deletions: refresh = rebuild');
SELECT is(pg_temp.daily_mismatches(), 0::bigint, 'and daily rows = COUNT(DISTINCT)');

-- 4. property test: random clients (time zones with DST, one without a
--    contract), accounts of every kind, logons inserted, updated and deleted
--    in random batches with refreshes in between; then refresh = rebuild
SELECT setseed(0.18);
INSERT INTO clients (client_id, name, time_zone)
SELECT 100 + i, 'Random ' || i, (ARRAY['UTC', 'America/Chicago', 'Europe/Berlin', 'Australia/Lord_Howe', 'Asia/Kolkata'])[1 + i % 5]
  FROM generate_series(0, 5) i;
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, price_per_seat, shared_billing, min_active_days)
SELECT client_id, 1, daterange(date '2025-01-01', NULL), 'per_user', 10.00 + client_id % 7, 5.00,
       (ARRAY['seat', 'peak', 'none'])[1 + client_id % 3], 1 + (client_id % 2)::int
  FROM clients WHERE client_id BETWEEN 100 AND 104;
INSERT INTO devices (client_id, device_id, name) SELECT c, d, 'PC' || d FROM generate_series(100, 105) c, generate_series(1, 6) d;
INSERT INTO people (client_id, person_id, pseudonym) SELECT c, p, 'p' || p FROM generate_series(100, 105) c, generate_series(1, 25) p;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id, application)
SELECT c, a, (ARRAY['os', 'm365', 'os', 'app'])[1 + a % 4],
       CASE WHEN a % 17 = 0 THEN 'PC' || a || '$' ELSE 'acct' || a END,
       CASE WHEN a <= 25 THEN 'individual' WHEN a <= 29 THEN 'shared' WHEN a <= 31 THEN 'service' ELSE 'unknown' END,
       CASE WHEN a <= 25 THEN a END, CASE WHEN a % 4 = 3 THEN 'EMR' END
  FROM generate_series(100, 105) c, generate_series(1, 33) a;
CREATE TEMP TABLE batches AS SELECT b FROM generate_series(1, 8) b;
DO $$
DECLARE
	b integer;
BEGIN
	FOR b IN 1..8 LOOP
		INSERT INTO mspbill.logons (client_id, account_id, device_id, at, ended, presence)
		SELECT c, 1 + floor(random() * 33)::int, CASE WHEN random() < 0.9 THEN 1 + floor(random() * 6)::int END,
			   t, CASE WHEN random() < 0.5 THEN t + random() * interval '5 hours' END, random() < 0.85
		  FROM (SELECT 100 + floor(random() * 6)::int AS c,
					   date_trunc('month', now()) - interval '2 months' + random() * interval '92 days' AS t
				  FROM generate_series(1, 300)) x;
		IF b % 3 = 0 THEN
			DELETE FROM mspbill.logons WHERE client_id >= 100 AND random() < 0.05;
			UPDATE mspbill.logons SET at = at + interval '20 hours', ended = ended + interval '20 hours'
			 WHERE client_id >= 100 AND random() < 0.05;
		END IF;
		IF b % 2 = 0 THEN
			PERFORM mspbill.msp_refresh_rollups();
		END IF;
	END LOOP;
END
$$;
SELECT msp_refresh_rollups() IS NOT NULL AS refreshed \gset
SELECT ok((SELECT count(*) FROM daily_activity WHERE client_id >= 100) > 300, 'random data: hundreds of client-days');
SELECT ok((SELECT count(*) FROM period_invoices WHERE client_id >= 100 AND status = 'unpriced') > 0,
          'a client without a contract, and a month not begun, are kept as unpriced');
SELECT is((SELECT count(*) FROM period_invoices p WHERE p.client_id BETWEEN 100 AND 104 AND p.status = 'preview'
              AND (p.total, p.users, p.seats) IS DISTINCT FROM
                  (SELECT (i.total, i.users, i.seats) FROM msp_invoice(p.client_id, p.period) i)),
          0::bigint, 'random data: every month''s figures equal msp_invoice()');
SELECT is(pg_temp.daily_mismatches(), 0::bigint, 'random data: daily rows = COUNT(DISTINCT) over the logons');
SELECT is((SELECT count(*) FROM (
             SELECT client_id, date_trunc('month', day)::date AS month, cardinality(userset_union(people)) AS n
               FROM daily_activity GROUP BY 1, 2) r
           FULL JOIN (
             SELECT l.client_id, date_trunc('month', msp_local_day(l.at, c.time_zone))::date AS month,
                    count(DISTINCT a.person_id) FILTER (WHERE l.presence AND a.kind = 'individual' AND NOT a.is_machine) AS n
               FROM logons l JOIN clients c USING (client_id) JOIN accounts a USING (client_id, account_id)
              GROUP BY 1, 2) x USING (client_id, month)
          WHERE r.n IS DISTINCT FROM x.n), 0::bigint,
          'random data: monthly active people from the daily rollup = COUNT(DISTINCT) over the logons');
SELECT is((SELECT count(*) FROM (
             SELECT client_id, cardinality(userset_at_least(people, 3)) AS n
               FROM daily_activity WHERE day >= date_trunc('month', now()) - interval '1 month' AND day < date_trunc('month', now())
              GROUP BY 1) r
           FULL JOIN (
             SELECT client_id, count(*) AS n FROM (
               SELECT l.client_id, a.person_id
                 FROM logons l JOIN clients c USING (client_id) JOIN accounts a USING (client_id, account_id)
                WHERE l.presence AND a.kind = 'individual' AND NOT a.is_machine
                  AND msp_local_day(l.at, c.time_zone) >= date_trunc('month', now()) - interval '1 month'
                  AND msp_local_day(l.at, c.time_zone) < date_trunc('month', now())
                GROUP BY 1, 2 HAVING count(DISTINCT msp_local_day(l.at, c.time_zone)) >= 3) p
              GROUP BY 1) x USING (client_id)
          WHERE coalesce(r.n, 0) <> coalesce(x.n, 0)), 0::bigint,
          'random data: people active on at least 3 days of a month, from the daily rollup = from the logons');
SELECT is(pg_temp.differs_from_rebuild(), 0::bigint, 'random data: the incrementally kept rollups equal a full rebuild');

-- 5. concurrency: a load still open keeps its mark; two refreshes at once
\o /dev/null
SELECT dblink_connect('load', format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
                                     current_setting('port'), current_database(), current_user));
SELECT dblink_connect('r1', format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
                                   current_setting('port'), current_database(), current_user));
SELECT dblink_connect('r2', format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
                                   current_setting('port'), current_database(), current_user));
SELECT dblink_exec('load', 'BEGIN');
SELECT dblink_exec('load', 'INSERT INTO mspbill.logons (client_id, account_id, device_id, at) VALUES (101, 1, 1, date_trunc(''month'', now()) - interval ''20 days'')');
\o
SELECT is((SELECT (days, periods)::text FROM msp_refresh_rollups()), '(0,0)', 'a refresh does not take the pair of a load still open');
\o /dev/null
SELECT dblink_exec('load', 'COMMIT');
\o
SELECT is((SELECT count(*) FROM rollup_dirty), 1::bigint, 'after the load commits its mark is there');
-- a pair already marked, written again by an open load: the refresh leaves it
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (102, 2, 1, date_trunc('month', now()) - interval '21 days');
\o /dev/null
SELECT dblink_exec('load', 'BEGIN');
SELECT dblink_exec('load', 'INSERT INTO mspbill.logons (client_id, account_id, device_id, at) VALUES (102, 3, 1, date_trunc(''month'', now()) - interval ''21 days'' + interval ''1 minute'')');
\o
SET statement_timeout = '5s';
SELECT lives_ok($$INSERT INTO logons (client_id, account_id, device_id, at)
                  VALUES (102, 4, 1, date_trunc('month', now()) - interval '21 days' + interval '2 minutes')$$,
                'another load of the same day does not wait for the open one');
RESET statement_timeout;
SELECT is((SELECT days FROM msp_refresh_rollups()), 2, 'a refresh takes the committed marks (both days)');
\o /dev/null
SELECT dblink_exec('load', 'COMMIT');
\o
SELECT is((SELECT count(*) FROM rollup_dirty WHERE client_id = 102), 1::bigint, 'the pair an open load rewrote is still marked');
UPDATE logons SET presence = NOT presence WHERE client_id >= 100 AND (account_id + extract(minute FROM at)::bigint) % 7 = 0;
\o /dev/null
SELECT dblink_send_query('r1', 'SELECT mspbill.msp_refresh_rollups()');
SELECT dblink_send_query('r2', 'SELECT mspbill.msp_refresh_rollups()');
\o
SELECT is((SELECT count(*) FROM (SELECT * FROM dblink_get_result('r1') AS r(x text)
                                 UNION ALL SELECT * FROM dblink_get_result('r2') AS r(x text)) x), 2::bigint,
          'two refreshes at once both finish');
SELECT is(pg_temp.differs_from_rebuild(), 0::bigint, 'and together they equal a full rebuild');
-- person ids are per client: a dental-office person billed to the hospital
-- whose id is also x1's (41, billed the month before) stays a second person,
-- and her logon marks the hospital's day too
INSERT INTO people (client_id, person_id, pseudonym, bill_to_client_id) VALUES (2, 41, 'twin', 1);
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (2, 241, 'os', 'MAPLE\twin', 'individual', 41);
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT 2, 241, 1, ((first_day - 10) + time '11:00') AT TIME ZONE 'America/Chicago' FROM demo_period;
SELECT is((SELECT array_agg(client_id ORDER BY client_id) FROM rollup_dirty), ARRAY[1, 2]::bigint[],
          'a sister person''s logon marks her own client''s day and the paying client''s');
SELECT msp_refresh_rollups() IS NOT NULL AS refreshed \gset
SELECT results_eq($$SELECT billable_users, cardinality(billable_person_ids), joined_count - left_count = change
                      FROM kpi_billable_users WHERE client_id = 1 AND month = (SELECT (first_day - interval '1 month')::date FROM demo_period)$$,
                  $$VALUES ((msp_invoice(1, (SELECT daterange((first_day - interval '1 month')::date, first_day) FROM demo_period))).users, 3, NULL::boolean)$$,
                  'the month before: the twin is a fourth billed user, apart from the 3 own people');
SELECT is(ARRAY(SELECT format('%s/%s %s', home_client_id, person_id, pseudonym) FROM kpi_margin_per_user
                 WHERE client_id = 1 AND month = (SELECT (first_day - interval '1 month')::date FROM demo_period) ORDER BY 1),
          ARRAY['1/1 n1', '1/2 n2', '1/41 x1', '2/41 twin'], 'and both people numbered 41 have their share of the margin');
SELECT is(pg_temp.differs_from_rebuild(), 0::bigint, 'refresh = rebuild with a sister person');

\o /dev/null
SELECT dblink_disconnect('load'), dblink_disconnect('r1'), dblink_disconnect('r2');
\o

-- 6. tenancy: a BI role mapped to client 1
SELECT msp_install_roles() IS NOT NULL AS roles \gset
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_rbi') THEN CREATE ROLE mspbill_test_rbi LOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_rnone') THEN CREATE ROLE mspbill_test_rnone LOGIN; END IF;
END $$;
GRANT mspbill_bi TO mspbill_test_rbi, mspbill_test_rnone;
INSERT INTO bi_client_access VALUES ('mspbill_test_rbi', 1);
-- a leaky function a BI user could write, to see rows the barrier hides
CREATE TABLE public.leaked (v text);
GRANT INSERT, SELECT ON public.leaked TO PUBLIC;
CREATE FUNCTION public.leak(v text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS
$$ BEGIN INSERT INTO public.leaked VALUES (v); RETURN true; END $$;
-- the README's staff-only materialized view, granted anyway: it shows every client
CREATE MATERIALIZED VIEW staff_daily_people AS
SELECT l.client_id, msp_local_day(l.at, c.time_zone) AS day, userset_agg(a.person_id) AS people
  FROM logons l JOIN accounts a USING (client_id, account_id) JOIN clients c USING (client_id)
 WHERE a.kind = 'individual' AND l.presence
 GROUP BY 1, 2;
GRANT SELECT ON staff_daily_people TO mspbill_test_rbi;
GRANT USAGE ON SCHEMA public TO mspbill_test_rbi;
SET ROLE mspbill_test_rbi;
SELECT ok((SELECT count(DISTINCT client_id) FROM public.staff_daily_people) > 1,
          'a materialized view granted to the BI role shows it every client: no row-level security (never grant one)');
SELECT is((SELECT array_agg(DISTINCT client_id) FROM (
             SELECT client_id FROM mspbill.daily_activity UNION ALL SELECT client_id FROM mspbill.period_invoices
             UNION ALL SELECT client_id FROM mspbill.pii_findings UNION ALL SELECT client_id FROM mspbill.kpi_daily_activity
             UNION ALL SELECT client_id FROM mspbill.kpi_billable_users UNION ALL SELECT client_id FROM mspbill.kpi_license_utilization
             UNION ALL SELECT client_id FROM mspbill.kpi_margin UNION ALL SELECT client_id FROM mspbill.kpi_margin_per_user
             UNION ALL SELECT client_id FROM mspbill.kpi_hipaa_findings UNION ALL SELECT client_id FROM mspbill.kpi_data_quality) x),
          ARRAY[1::bigint], 'the BI role reads client 1 only, from every rollup and KPI view');
SELECT ok((SELECT count(*) FROM mspbill.kpi_margin m WHERE public.leak(m.client_name || ' ' || m.margin)) > 0
          AND (SELECT count(*) FROM mspbill.kpi_billable_users b WHERE public.leak(b.client_name)) > 0,
          'a leaky function in the query sees its own client''s rows');
SELECT is((SELECT count(*) FROM public.leaked WHERE v NOT LIKE 'St. Olaf%'), 0::bigint,
          'and never another client''s (security_barrier)');
SELECT throws_ok($$SELECT mspbill.msp_refresh_rollups()$$, '42501', 'permission denied for function msp_refresh_rollups',
                 'a BI role cannot refresh');
SELECT throws_ok($$SELECT mspbill.msp_mark_rollups_dirty(1, mspbill.msp_period(1))$$, '42501', 'permission denied for table rollup_dirty',
                 'nor mark days');
SELECT throws_ok($$INSERT INTO mspbill.period_invoices (client_id, period, status) VALUES (1, '[2020-01-01,2020-02-01)', 'preview')$$,
                 '42501', NULL, 'nor write a rollup');
RESET ROLE;
SET ROLE mspbill_test_rnone;
SELECT is((SELECT count(*) FROM mspbill.kpi_margin) + (SELECT count(*) FROM mspbill.period_invoices), 0::bigint,
          'a BI role mapped to no client reads nothing');
RESET ROLE;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_radmin') THEN CREATE ROLE mspbill_test_radmin; END IF;
END $$;
GRANT mspbill_admin TO mspbill_test_radmin;
SELECT msp_mark_rollups_dirty(1, msp_period(1)) IS NOT NULL AS marked \gset
SET ROLE mspbill_test_radmin;
SELECT lives_ok($$SELECT mspbill.msp_refresh_rollups()$$, 'a member of mspbill_admin refreshes (as cron would)');
RESET ROLE;
SELECT is((SELECT count(*) FROM rollup_dirty), 0::bigint, 'and consumed the marks');
SELECT throws_ok($$SELECT msp_mark_rollups_dirty(1, daterange(NULL, '2026-01-01'))$$, '22023', NULL,
                 'marking an unbounded range is refused');
SELECT throws_ok($$SELECT msp_mark_rollups_dirty(1, '[2026-10-01,infinity)')$$, '22023', 'days [2026-10-01,infinity) are empty or unbounded',
                 'marking up to infinity is refused at once');
SELECT throws_ok($$SELECT msp_mark_rollups_dirty(1, '[1980-01-01,2026-01-01)')$$, '22023', 'days [1980-01-01,2026-01-01) lie outside 1989-12-31 to 9999-12-31',
                 'marking days before 1990 is refused');
SET ROLE mspbill_test_radmin;
SELECT throws_ok($$INSERT INTO mspbill.rollup_dirty (client_id, day) VALUES (1, '300000-01-01')$$, '23514',
                 'new row for relation "rollup_dirty" violates check constraint "rollup_dirty_day_plausible"',
                 'a mark of an absurd day is refused by rollup_dirty_day_plausible');
INSERT INTO mspbill.rollup_dirty (client_id, day) VALUES (1, '9999-12-31'), (2, lower(mspbill.msp_period(2)));
SELECT lives_ok($$SELECT mspbill.msp_refresh_rollups()$$, 'the last plausible day refreshes');
RESET ROLE;

DROP FUNCTION public.leak(text);
DROP MATERIALIZED VIEW staff_daily_people;
DROP TABLE public.leaked;
DROP OWNED BY mspbill_test_rbi, mspbill_test_rnone, mspbill_test_radmin;
DROP ROLE mspbill_test_rbi, mspbill_test_rnone, mspbill_test_radmin;
SELECT * FROM finish();
