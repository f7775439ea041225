-- Old months detached from logons without changing any invoice: the demo
-- clinics get a second month (the demo month's logons a month earlier, in
-- a partition of its own), which is finalized and rolled up, then its
-- partition is detached.  Finalized invoices are stored, the other month
-- prices from its own logons and a refresh leaves the rollups alone; a
-- rebuild reads the logons, so the month is attached again before one.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
SELECT plan(9);

CREATE TEMP TABLE months AS
SELECT daterange((lower(msp_period(1)) - interval '1 month')::date, lower(msp_period(1))) AS old, msp_period(1) AS cur;
SELECT msp_add_logon_partitions((SELECT lower(old) FROM months), 1) \g /dev/null
CREATE TEMP TABLE old_part AS SELECT format('mspbill.logons_%s', to_char(lower(old), 'YYYY_MM')) AS name FROM months;
INSERT INTO logons (client_id, account_id, device_id, at, ended, presence, source, source_event_id, session_key)
SELECT client_id, account_id, device_id, at - interval '1 month', ended - interval '1 month', presence, source,
       'old:' || source_event_id, session_key
  FROM logons;
SELECT ok((SELECT count(*) FROM logons WHERE tableoid = (SELECT name FROM old_part)::regclass) > 0,
          'the old month has logons in its own partition');
SELECT msp_finalize_invoice(c, (SELECT old FROM months), '{device_silent,day_without_logons,unmapped_account,logon_outside_contract}')
  FROM (VALUES (1), (2)) v(c) \g /dev/null
SELECT msp_refresh_rollups() \g /dev/null
CREATE TEMP TABLE before AS
SELECT (SELECT array_agg(i.total ORDER BY i.client_id) FROM invoices i WHERE i.kind = 'invoice') AS stored,
       ARRAY[(msp_invoice(1, (SELECT cur FROM months))).total, (msp_invoice(2, (SELECT cur FROM months))).total] AS current,
       (SELECT array_agg(ROW(p.client_id, p.period, p.status, p.users, p.seats, p.devices, p.total, p.drift)::text ORDER BY p.client_id, p.period)
          FROM period_invoices p) AS periods,
       (SELECT array_agg(ROW(d.client_id, d.day, d.logons)::text ORDER BY d.client_id, d.day) FROM daily_activity d) AS days;
SELECT ok((SELECT cardinality(periods) >= 4 FROM before), 'both months of both clients are rolled up');

-- detach (the extension's owner or a superuser), then dump and drop at leisure
SELECT format('ALTER TABLE mspbill.logons DETACH PARTITION %s', name) FROM old_part \gexec
SELECT is((SELECT count(*) FROM logons WHERE at >= (SELECT lower(old) FROM months)::timestamptz + interval '2 days'
             AND at < (SELECT upper(old) FROM months)::timestamptz - interval '2 days'), 0::bigint,
          'the old month''s logons are gone from logons');
SELECT is((SELECT array_agg(i.total ORDER BY i.client_id) FROM invoices i WHERE i.kind = 'invoice'), (SELECT stored FROM before),
          'the finalized invoices of the old month are unchanged');
SELECT is(ARRAY[(msp_invoice(1, (SELECT cur FROM months))).total, (msp_invoice(2, (SELECT cur FROM months))).total],
          (SELECT current FROM before), 'the current month prices as before');
SELECT msp_refresh_rollups() \g /dev/null
SELECT is((SELECT array_agg(ROW(p.client_id, p.period, p.status, p.users, p.seats, p.devices, p.total, p.drift)::text ORDER BY p.client_id, p.period)
             FROM period_invoices p), (SELECT periods FROM before), 'a refresh leaves every monthly rollup as it was');
SELECT is((SELECT array_agg(ROW(d.client_id, d.day, d.logons)::text ORDER BY d.client_id, d.day) FROM daily_activity d),
          (SELECT days FROM before), 'and every daily rollup (the old month''s summary)');
-- a rebuild reads the logons: without the old month it would lose its days
SELECT msp_rebuild_rollups() \g /dev/null
SELECT isnt((SELECT array_agg(ROW(d.client_id, d.day, d.logons)::text ORDER BY d.client_id, d.day) FROM daily_activity d),
            (SELECT days FROM before), 'a rebuild without the old month loses its daily rollups');
SELECT format('ALTER TABLE mspbill.logons ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)', name,
              lower(old)::timestamptz, upper(old)::timestamptz) FROM old_part, months \gexec
SELECT msp_rebuild_rollups() \g /dev/null
SELECT is((SELECT array_agg(ROW(d.client_id, d.day, d.logons)::text ORDER BY d.client_id, d.day) FROM daily_activity d),
          (SELECT days FROM before), 'attached again, a rebuild gives them back');

SELECT * FROM finish();
