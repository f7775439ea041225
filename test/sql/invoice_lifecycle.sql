-- Finalization, late data, adjustments, license reconciliation and the
-- data-quality gates, on the demo clinics.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
CREATE EXTENSION dblink;
SELECT plan(58);

-- gates on the demo data: the hospital's front-desk PC never logged on
SELECT results_eq($$SELECT gate, subject FROM msp_data_quality(1)$$,
                  $$VALUES ('device_silent', 'FRONT-WS')$$, 'the hospital has one silent device');
SELECT throws_ok($$SELECT msp_finalize_invoice(1)$$, '23514',
                 'data-quality gates failed for client 1 in ' || msp_period(1)::text || ': device_silent',
                 'finalization refuses while a gate fails');
SELECT throws_ok($$SELECT msp_finalize_invoice(1, NULL, '{device_silnet}')$$, '22023', NULL, 'a misspelt override is refused');
SELECT ok(msp_finalize_invoice(1, NULL, '{device_silent}') > 0, 'finalized with an explicit override');
SELECT is(msp_finalize_invoice(1, NULL, '{device_silent}'),
          (SELECT invoice_id FROM invoices WHERE client_id = 1 AND kind = 'invoice'), 'finalizing again returns the same invoice');
SELECT is((SELECT count(*) FROM invoices WHERE client_id = 1), 1::bigint, 'one invoice, not two');
SELECT is((SELECT overrides FROM invoices WHERE client_id = 1), '{device_silent}', 'the override is stored with the invoice');
SELECT is((SELECT array_agg(action ORDER BY entry_id) FROM audit_log WHERE client_id = 1), '{finalize,override}',
          'the audit trail records the finalization and the override');
SELECT is((SELECT actor FROM audit_log WHERE client_id = 1 AND action = 'override'), session_user, 'and who did it');
SELECT is((SELECT jsonb_array_length(evidence) FROM invoices WHERE client_id = 1), 9, 'the evidence lists the 9 people billed');
SELECT is((SELECT sum(amount) FROM invoice_items WHERE client_id = 1), 498.00, 'the stored lines add up');

-- two sessions finalize the dental office at the same moment: one invoice
\o /dev/null
SELECT dblink_connect('a', format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
                                  current_setting('port'), current_database(), current_user));
SELECT dblink_connect('b', format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
                                  current_setting('port'), current_database(), current_user));
SELECT dblink_send_query('a', 'SELECT mspbill.msp_finalize_invoice(2, NULL, ''{device_silent}'')');
SELECT dblink_send_query('b', 'SELECT mspbill.msp_finalize_invoice(2, NULL, ''{device_silent}'')');
\o
CREATE TEMP TABLE concurrent_ids AS
SELECT (SELECT id FROM dblink_get_result('a') AS r(id bigint)) AS a, (SELECT id FROM dblink_get_result('b') AS r(id bigint)) AS b;
SELECT ok((SELECT a IS NOT NULL AND b IS NOT NULL AND a = b FROM concurrent_ids),
          'two concurrent sessions get the same invoice id (both non-NULL)');
\o /dev/null
SELECT dblink_disconnect('a'), dblink_disconnect('b');
\o
SELECT is((SELECT count(*) FROM invoices WHERE client_id = 2), 1::bigint, 'and only one invoice exists');

-- late data: a new nurse's logon arrives after finalization
INSERT INTO people (client_id, person_id, pseudonym) VALUES (1, 4, 'n4');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (1, 11, 'os', 'STOLAF\nurse4', 'individual', 4);
INSERT INTO logons (client_id, account_id, device_id, at) SELECT 1, 11, 5, lower(msp_period(1)) + interval '10 days 14 hours';
SELECT is((msp_invoice(1)).total, 498.00, 'the finalized invoice does not change');
SELECT is((SELECT count(*) FROM msp_invoice_lines(1)), 2::bigint, 'nor do its lines');
SELECT is((msp_compute_invoice(1)).total, 540.00, 'today''s data would bill one more user');
SELECT results_eq($$SELECT basis, billed, current, difference FROM msp_invoice_drift(1) WHERE difference <> 0$$,
                  $$VALUES ('user', 378.00, 420.00, 42.00)$$, 'drift shows the user line, line by line');
SELECT results_eq($$SELECT quantity, amount FROM msp_reconcile_licenses(1) WHERE category = 'unbilled_users'$$,
                  $$VALUES (1::numeric, 42.00)$$, 'before the adjustment: one active person not billed, 42.00 at stake');
SELECT ok(msp_issue_adjustment(1, msp_period(1), 'late logon from the EMR export') > 0, 'an adjustment is issued');
SELECT is((SELECT i.total + a.total FROM invoices i JOIN invoices a ON a.adjusts_invoice_id = i.invoice_id AND a.client_id = i.client_id
            WHERE i.client_id = 1 AND i.kind = 'invoice'), (msp_compute_invoice(1)).total,
          'invoice plus adjustment equals the recomputed figure to the cent');
SELECT is((SELECT sum(difference) FROM msp_invoice_drift(1)), 0.00, 'no drift is left');
SELECT throws_ok($$SELECT msp_issue_adjustment(1, msp_period(1), 'again')$$, 'P0002', NULL, 'nothing left to adjust');
SELECT throws_ok($$SELECT msp_issue_adjustment(1, msp_period(1), '')$$, '22023', NULL, 'an adjustment needs a reason');
SELECT is((SELECT amount FROM msp_invoice_lines(1, daterange(upper(msp_period(1)), (upper(msp_period(1)) + interval '1 month')::date))
            WHERE basis = 'adjustment'), 42.00, 'the next invoice carries the adjustment as a line');
SELECT is((SELECT substring(description FROM '^Adjustment [0-9]+ to invoice (\S+) for ')
             FROM msp_invoice_lines(1, daterange(upper(msp_period(1)), (upper(msp_period(1)) + interval '1 month')::date))
            WHERE basis = 'adjustment'),
          (SELECT d.invoice_number FROM invoice_documents d JOIN invoices i USING (client_id, invoice_id)
            WHERE i.client_id = 1 AND i.kind = 'invoice'),
          'the adjustment line names the invoice by the number the client holds');
SELECT is((SELECT array_agg(action ORDER BY entry_id) FROM audit_log WHERE client_id = 1), '{finalize,override,adjust}',
          'the adjustment is in the audit trail');

-- reconciliation: 10 people active (Dr. Gray of the dental office included),
-- 6 Microsoft 365 seats held, all billed once the adjustment is issued
SELECT results_eq($$SELECT category, coalesce(subject, sku), quantity FROM msp_reconcile_licenses(1) ORDER BY 1, 2$$,
                  $$VALUES ('active_unlicensed', 'n2', 1::numeric), ('active_unlicensed', 'n3', 1), ('active_unlicensed', 'n4', 1),
                           ('active_unlicensed', 'r1', 1), ('seat_shortfall', NULL, 4),
                           ('seats_held', 'Microsoft 365 Business Standard', 6)$$,
                  'hospital: four people without a licence, four seats short, nobody unbilled after the adjustment');
SELECT is((SELECT note FROM msp_reconcile_licenses(1) WHERE category = 'seats_held'),
          '6 seats held; 10 people active; 10 users billed.', 'the adjustment''s people count as billed');
SELECT results_eq($$SELECT category, coalesce(subject, sku) FROM msp_reconcile_licenses(2) ORDER BY 1, 2$$,
                  $$VALUES ('seats_held', 'Microsoft 365 Business Standard')$$, 'dental: 5 seats, 4 active, all licensed');
-- money in the currency's minor unit, whatever the scale of the seat's cost
UPDATE license_counts SET unit_cost = 11 WHERE client_id = 1;
SELECT results_eq($$SELECT category, amount::text FROM msp_reconcile_licenses(1) WHERE category <> 'active_unlicensed' ORDER BY 1$$,
                  $$VALUES ('seat_shortfall', '44.00'), ('seats_held', '66.00')$$,
                  'reconciliation amounts are in cents: 6 seats at 11 are 66.00, 4 short 44.00');
UPDATE license_counts SET unit_cost = NULL WHERE client_id = 1;

-- credits: the late logon turns out to be a test account's and is removed;
-- the drift is now -42.00 and the note a credit
DELETE FROM logons WHERE client_id = 1 AND account_id = 11;
SELECT results_eq($$SELECT basis, difference FROM msp_invoice_drift(1) WHERE difference <> 0$$,
                  $$VALUES ('user', -42.00)$$, 'removing data shows as negative drift');
SELECT ok(msp_issue_adjustment(1, msp_period(1), 'test account removed') > 0, 'a credit note is issued');
SELECT is((SELECT total FROM invoices WHERE client_id = 1 AND kind = 'adjustment' AND reason = 'test account removed'), -42.00,
          'the credit is negative');
SELECT results_eq($$SELECT amount FROM msp_invoice_lines(1, daterange(upper(msp_period(1)), (upper(msp_period(1)) + interval '1 month')::date))
                     WHERE basis = 'adjustment' ORDER BY line_no$$,
                  $$VALUES (42.00), (-42.00)$$, 'the next invoice carries the debit and the credit');
SELECT is((SELECT sum(total) FROM invoices WHERE client_id = 1 AND period = msp_period(1)), (msp_compute_invoice(1)).total,
          'invoice plus both notes equals the recomputed figure');

-- finalized records are facts for everyone but a superuser
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_clerk') THEN
    CREATE ROLE mspbill_test_clerk;
  END IF;
END $$;
SET client_min_messages = warning;
SELECT msp_install_roles() AS roles_ready \gset
RESET client_min_messages;
GRANT mspbill_billing TO mspbill_test_clerk;   -- sees every client's rows
GRANT USAGE ON SCHEMA mspbill TO mspbill_test_clerk;
GRANT SELECT, UPDATE, DELETE, TRUNCATE ON mspbill.invoices, mspbill.invoice_items, mspbill.audit_log TO mspbill_test_clerk;
SET ROLE mspbill_test_clerk;
SELECT throws_ok($$UPDATE mspbill.invoices SET total = 0 WHERE client_id = 1$$, '42501', 'finalized billing records cannot be changed', 'UPDATE refused');
SELECT throws_ok($$DELETE FROM mspbill.invoice_items WHERE client_id = 1$$, '42501', NULL, 'DELETE refused');
SELECT throws_ok($$TRUNCATE mspbill.audit_log$$, '42501', NULL, 'TRUNCATE refused');
RESET ROLE;
SELECT lives_ok($$UPDATE mspbill.invoices SET reason = reason WHERE client_id = 1$$, 'a superuser may');
REVOKE ALL ON mspbill.invoices, mspbill.invoice_items, mspbill.audit_log FROM mspbill_test_clerk;
REVOKE USAGE ON SCHEMA mspbill FROM mspbill_test_clerk;
DROP OWNED BY mspbill_test_clerk;
DROP ROLE mspbill_test_clerk;

-- each gate fires on data built to break it and stays silent on clean data
INSERT INTO clients (client_id, name, time_zone) VALUES (7, 'Clean Clinic', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES (7, 1, '[2025-01-01,)', 'per_user', 10);
INSERT INTO devices (client_id, device_id, name) VALUES (7, 1, 'PC1');
INSERT INTO people (client_id, person_id, pseudonym) VALUES (7, 1, 'p1');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (7, 1, 'os', 'p1', 'individual', 1);
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT 7, 1, 1, d + interval '9 hours' FROM generate_series(timestamptz '2026-01-01', '2026-01-31', '1 day') d;
SELECT is((SELECT count(*) FROM msp_data_quality(7, '[2026-01-01,2026-02-01)')), 0::bigint, 'clean data: no findings');
SELECT results_eq($$SELECT gate FROM msp_data_quality(7, daterange(date_trunc('month', now())::date, (date_trunc('month', now()) + interval '1 month')::date)) WHERE gate = 'period_not_over'$$,
                  $$VALUES ('period_not_over')$$, 'the current month is not over');
-- the current month cannot be finalized, override or not
CREATE FUNCTION pg_temp.refusal(sql text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE s text; h text;
BEGIN
  EXECUTE sql;
  RETURN NULL;
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, h = PG_EXCEPTION_HINT;
  RETURN s || ' ' || h;
END $f$;
SELECT throws_ok(format('SELECT msp_finalize_invoice(7, %L, %L)', daterange(date_trunc('month', now())::date, (date_trunc('month', now()) + interval '1 month')::date),
                        '{period_not_over,device_silent,day_without_logons,unmapped_account,logon_outside_contract}'),
                 '22023', 'the gate period_not_over cannot be overridden', 'period_not_over cannot be overridden');
SELECT throws_ok(format('SELECT msp_finalize_invoice(7, %L, %L)', daterange(date_trunc('month', now())::date, (date_trunc('month', now()) + interval '1 month')::date),
                        '{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'),
                 '55000', NULL, 'the current month is refused outright, whatever else is overridden');
SELECT is(pg_temp.refusal(format('SELECT msp_finalize_invoice(7, %L)', daterange(date_trunc('month', now())::date, (date_trunc('month', now()) + interval '1 month')::date))),
          format('55000 Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(7, %L);',
                 (date_trunc('month', now()) + interval '1 month')::date, daterange(date_trunc('month', now())::date, (date_trunc('month', now()) + interval '1 month')::date)),
          'its hint says when, and suggests no override');
DELETE FROM logons WHERE client_id = 7 AND at >= '2026-01-26' AND at < '2026-02-01';
INSERT INTO accounts (client_id, account_id, realm, name, kind) VALUES (7, 2, 'os', 'CLINIC\guest', 'unknown');
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (7, 2, 1, '2026-01-05 10:00Z');
UPDATE contracts SET effective = '[2026-01-03,)' WHERE client_id = 7;
SELECT results_eq($$SELECT gate, subject FROM msp_data_quality(7, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('device_silent', 'PC1'),
                           ('day_without_logons', '2026-01-26'), ('day_without_logons', '2026-01-27'),
                           ('day_without_logons', '2026-01-28'), ('day_without_logons', '2026-01-29'),
                           ('day_without_logons', '2026-01-30'),
                           ('unmapped_account', 'CLINIC\guest'),
                           ('logon_outside_contract', '2026-01-01'), ('logon_outside_contract', '2026-01-02')$$,
                  'broken data: silent device, empty weekdays, unmapped account, logons outside the contract');
SELECT throws_ok($$SELECT msp_finalize_invoice(7, '[2026-01-01,2026-02-01)')$$, '23514', NULL, 'and finalization refuses');

-- the refusal's hint is a statement that runs as written (issue 14 item 12)
CREATE FUNCTION pg_temp.refusal_hint(sql text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE h text;
BEGIN
  EXECUTE sql;
  RETURN NULL;
EXCEPTION WHEN check_violation THEN
  GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
  RETURN h;
END $f$;
SELECT is(pg_temp.refusal_hint($$SELECT msp_finalize_invoice(7, '[2026-01-01,2026-02-01)')$$),
          'Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(7, ''[2026-01-01,2026-02-01)'', ''{day_without_logons,device_silent,logon_outside_contract,unmapped_account}'');',
          'the hint names the exact call');
SELECT ok(pg_temp.refusal_hint($$SELECT msp_finalize_invoice(7, '[2026-01-01,2026-02-01)')$$) LIKE '%SELECT mspbill.msp_finalize_invoice(%', 'the hint holds a call');
SELECT is(pg_temp.refusal_hint($$SELECT msp_finalize_invoice(7, '[2026-01-01,2026-02-01)', '{device_silent,unmapped_account}')$$),
          'Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(7, ''[2026-01-01,2026-02-01)'', ''{day_without_logons,device_silent,logon_outside_contract,unmapped_account}'');',
          'with some gates overridden already, the hint still names them: the whole call');
SELECT lives_ok(substring(pg_temp.refusal_hint($$SELECT msp_finalize_invoice(7, '[2026-01-01,2026-02-01)')$$) FROM 'SELECT mspbill\.msp_finalize_invoice\(.*\);'),
                'the call in the hint, pasted, finalizes');
SELECT is((SELECT count(*) FROM invoices WHERE client_id = 7 AND kind = 'invoice'), 1::bigint, 'and stores the invoice');

-- finalized quantities keep the scale they were shown with (item 10)
INSERT INTO clients (client_id, name, time_zone) VALUES (8, 'Scale Clinic', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES (8, 1, '[2026-01-11,)', 'per_user', 10);
INSERT INTO people (client_id, person_id, pseudonym) VALUES (8, 1, 'p1');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (8, 1, 'os', 'p1', 'individual', 1);
INSERT INTO logons (client_id, account_id, at) VALUES (8, 1, '2026-01-20 10:00Z');
CREATE TEMP TABLE preview_lines AS SELECT * FROM msp_invoice_lines(8, '[2026-01-01,2026-02-01)');
SELECT ok(msp_finalize_invoice(8, '[2026-01-01,2026-02-01)', '{day_without_logons}') > 0, 'a prorated invoice is finalized');
SELECT results_eq($$SELECT quantity::text, amount FROM msp_invoice_lines(8, '[2026-01-01,2026-02-01)')$$,
                  $$SELECT quantity::text, amount FROM preview_lines$$, 'stored quantities print as previewed');
SELECT is((SELECT quantity::text FROM preview_lines), '0.6774', 'four decimals: 21/31 of a user');

-- the invoice and its audit entries are stamped by the clock when the
-- finalization runs, not when its transaction began
DO $$
BEGIN
  CREATE TEMP TABLE fin_clock AS SELECT now() AS started;
  PERFORM pg_sleep(0.3);
  PERFORM msp_finalize_invoice(8, '[2026-02-01,2026-03-01)', '{day_without_logons,device_silent}');
END $$;
SELECT ok((SELECT i.finalized_at >= c.started + interval '0.3 seconds' FROM invoices i, fin_clock c
            WHERE i.client_id = 8 AND i.period = '[2026-02-01,2026-03-01)'),
          'finalized_at is the time of the finalization, after a sleep in the same transaction');
SELECT is((SELECT count(*) FROM audit_log a JOIN invoices i USING (client_id, invoice_id)
            WHERE i.client_id = 8 AND i.period = '[2026-02-01,2026-03-01)' AND a.at = i.finalized_at), 2::bigint,
          'its finalize and override audit entries carry the same stamp');

-- no two finalized invoices of a client overlap, whoever inserts them (item 5)
SELECT throws_ok($$INSERT INTO invoices (client_id, kind, period, total, currency)
                   VALUES (8, 'invoice', '[2026-01-05,2026-01-20)', 0, 'USD')$$, '23P01', NULL,
                 'an overlapping finalized invoice is refused by the table itself');
SELECT throws_ok($$SELECT msp_finalize_invoice(8, '[2026-01-05,2026-02-05)')$$, '22023', NULL,
                 'a period that is not a calendar month cannot be finalized');

SELECT * FROM finish();
