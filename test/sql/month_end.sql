-- Month-end as one call (CALL msp_finalize_period): every client in its own
-- transaction, refusals and failures recorded without stopping or undoing
-- the others, progress visible from another session while it runs, reruns
-- that finalize nothing twice, bad input refused before anything is
-- written, and who may run it.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
SET client_min_messages = warning;
CREATE EXTENSION dblink;
SELECT plan(64);
SELECT msp_install_roles() \g /dev/null

-- Beside the demo clinics (1, 2: refused, FRONT-WS and DENTAL-PC5..8 are
-- silent), six small clients that log on every day of the month: 10, 11,
-- 14, 15 are clean; 12 has a gap between its contracts and 13 a cost pool
-- in another currency, so that pricing fails for them between clean ones.
-- 22 has no contract in the period at all.
SELECT lower(msp_period(1)) AS p0, upper(msp_period(1)) AS p1, msp_period(1) AS p \gset
INSERT INTO clients (client_id, name, time_zone)
SELECT c, 'Small client ' || c, 'America/Chicago' FROM unnest('{10,11,12,13,14,15,22}'::bigint[]) c;
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
SELECT c, 1, daterange(:'p0'::date - 62, CASE WHEN c = 12 THEN :'p0'::date + 10 END), 'per_user', 10.00 + c
  FROM unnest('{10,11,12,13,14,15}'::bigint[]) c;
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
VALUES (12, 2, daterange(:'p0'::date + 12, NULL), 'per_user', 30.00),
	   (22, 1, daterange(:'p0'::date - 400, :'p0'::date - 100), 'per_user', 5.00);
INSERT INTO cost_pools (client_id, category, description, amount, currency, period)
VALUES (13, 'licensing', 'licences bought in euros', 100, 'EUR', daterange(:'p0'::date, :'p1'::date));
INSERT INTO devices (client_id, device_id, name) SELECT c, 1, 'PC-' || c FROM unnest('{10,11,12,13,14,15}'::bigint[]) c;
INSERT INTO people (client_id, person_id, pseudonym)
SELECT c, p, 'u' || p FROM unnest('{10,11,12,13,14,15}'::bigint[]) c, generate_series(1, c - 8) p;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id)
SELECT client_id, person_id, 'os', 'SMALL\u' || person_id, 'individual', person_id FROM people WHERE client_id >= 10;
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT a.client_id, a.account_id, 1, (d + time '09:00') AT TIME ZONE 'America/Chicago' + a.account_id * interval '1 minute'
  FROM accounts a, generate_series(:'p0'::date, :'p1'::date - 1, interval '1 day') d WHERE a.client_id >= 10;

-- bad input is refused before anything is recorded
SELECT throws_ok($$CALL msp_finalize_period(NULL)$$, '22023', NULL, 'a NULL period is refused');
SELECT throws_ok(format('CALL msp_finalize_period(%L)', daterange(:'p0'::date + 4, :'p1'::date + 4)), '22023',
                 format('billing period %s is not a calendar month', daterange(:'p0'::date + 4, :'p1'::date + 4)),
                 'a period that is not a calendar month is refused');
SELECT throws_ok($$CALL msp_finalize_period(daterange('2026-01-01', NULL))$$, '22023', NULL, 'an unbounded period is refused');
SELECT throws_ok(format('CALL msp_finalize_period(%L, %L)', :'p', '{device_silnet}'), '22023',
                 'unknown data-quality gate device_silnet', 'a misspelt override is refused once, not per client');
SELECT throws_ok(format('CALL msp_finalize_period(%L, %L)', :'p', '{period_not_over}'), '22023',
                 'the gate period_not_over cannot be overridden', 'period_not_over cannot be overridden');
-- throws_ok runs the CALL inside its own transaction, as a caller's BEGIN would
SELECT throws_ok(format('CALL msp_finalize_period(%L)', :'p'), '2D000', NULL,
                 'inside a transaction block the first COMMIT is refused');
SELECT is((SELECT count(*) FROM finalize_runs), 0::bigint, 'and none of those attempts left a run behind');

-- progress from another session: client 11 waits on the finalization lock
-- (held here), so the run stops after client 10 with that client committed
SELECT daterange((:'p0'::date - interval '1 month')::date, :'p0'::date) AS prev \gset
\o /dev/null
SELECT pg_advisory_lock(hashtext('mspbill.finalize'), hashtext('11' || :'prev'));
SELECT dblink_connect('runner', format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
                                      current_setting('port'), current_database(), current_user));
SELECT dblink_send_query('runner', format('CALL mspbill.msp_finalize_period(%L, only_clients => ''{10,11}'')', :'prev'));
\o
CREATE FUNCTION pg_temp.wait_done(want bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	FOR i IN 1..300 LOOP
		SELECT max(done) INTO n FROM mspbill.finalize_progress;
		EXIT WHEN n >= want;
		PERFORM pg_sleep(0.1);
	END LOOP;
	RETURN n;
END
$$;
SELECT is(pg_temp.wait_done(1), 1::bigint, 'another session sees the first client done while the run waits on the second');
SELECT results_eq($$SELECT state, clients, done FROM finalize_progress$$, $$VALUES ('running', 2, 1::bigint)$$,
                  'finalize_progress: running, 1 of 2 clients done');
SELECT is((SELECT outcome FROM finalize_run_clients WHERE client_id = 10), 'refused',
          'client 10''s outcome is committed already (the month before has no logons: refused)');
\o /dev/null
SELECT pg_advisory_unlock(hashtext('mspbill.finalize'), hashtext('11' || :'prev'));
\o
SELECT results_eq($$SELECT run_id = (SELECT max(run_id) FROM finalize_runs), finalized, already, refused, failed
                      FROM dblink_get_result('runner') AS r(run_id bigint, finalized integer, already integer, refused integer, failed integer)$$,
                  $$VALUES (true, 0, 0, 2, 0)$$, 'the run then goes on to the end and reports both clients');
SELECT results_eq($$SELECT state, done FROM finalize_progress$$, $$VALUES ('finished', 2::bigint)$$, 'and is finished');
\o /dev/null
SELECT dblink_disconnect('runner');
\o

-- the month-end of the period: every client with a contract in it
CALL msp_finalize_period(:'p') \gset first_
SELECT is(format('%s %s %s %s', :first_finalized, :first_already_finalized, :first_refused, :first_failed), '4 0 2 2',
          'the call returns 4 finalized, 0 already finalized, 2 refused, 2 failed');
SELECT results_eq(format($$SELECT client_id, outcome FROM finalize_run_clients WHERE run_id = %s ORDER BY client_id$$, :first_run_id),
                  $$VALUES (1::bigint, 'refused'), (2, 'refused'), (10, 'finalized'), (11, 'finalized'), (12, 'failed'),
                           (13, 'failed'), (14, 'finalized'), (15, 'finalized')$$,
                  'one outcome per client with a contract in the period (22 has none and is not taken)');
SELECT results_eq($$SELECT client_id FROM invoices WHERE kind = 'invoice' ORDER BY 1$$,
                  $$VALUES (10::bigint), (11), (14), (15)$$,
                  'the failures of 12 and 13 neither stopped 14 and 15 nor undid 10 and 11');
SELECT is((SELECT count(*) FROM invoices i WHERE i.kind = 'invoice' AND i.total <> (msp_compute_invoice(i.client_id, i.period)).total),
          0::bigint, 'each stored invoice is the invoice its client computes');
SELECT is((SELECT count(*) FROM invoices i
            WHERE i.total <> (SELECT sum(amount) FROM invoice_items it WHERE it.client_id = i.client_id AND it.invoice_id = i.invoice_id)),
          0::bigint, 'and its stored lines add up to it');
SELECT results_eq(format($$SELECT r.client_id, r.invoice_id, r.total FROM finalize_run_clients r WHERE r.run_id = %s AND r.outcome = 'finalized' ORDER BY 1$$, :first_run_id),
                  $$SELECT client_id, invoice_id, total FROM invoices WHERE kind = 'invoice' ORDER BY 1$$,
                  'the run records each invoice id and total');
SELECT results_eq(format($$SELECT client_id, sqlstate, message FROM finalize_run_clients WHERE run_id = %s AND outcome = 'failed' ORDER BY 1$$, :first_run_id),
                  format($$VALUES (12::bigint, '22000'::char(5), 'contract gap for client 12 from %s to %s'),
                                  (13, '22000', 'cost pool currency does not match client 13 currency USD')$$,
                         :'p0'::date + 10, :'p0'::date + 12),
                  'a failure is recorded with its SQLSTATE and message');
SELECT results_eq(format($$SELECT client_id, gates, sqlstate FROM finalize_run_clients WHERE run_id = %s AND outcome = 'refused' ORDER BY 1$$, :first_run_id),
                  $$VALUES (1::bigint, '{device_silent}'::text[], '23514'::char(5)), (2, '{device_silent}', '23514')$$,
                  'a refusal is recorded with the gates that refused it');
SELECT is((SELECT hint FROM finalize_run_clients WHERE run_id = :first_run_id AND client_id = 1),
          format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(1, %L, ''{device_silent}'');', :'p'),
          'and with the exact call that finalizes it anyway');
SELECT is((SELECT count(*) FROM finalize_run_clients WHERE run_id = :first_run_id AND outcome IN ('refused', 'failed')
              AND (invoice_id IS NOT NULL OR total IS NOT NULL)), 0::bigint, 'refused and failed clients have no invoice');
SELECT results_eq(format($$SELECT state, clients, done, finalized, already_finalized, refused, failed, finalized_total FROM finalize_progress WHERE run_id = %s$$, :first_run_id),
                  $$SELECT 'finished', 8, 8::bigint, 4::bigint, 0::bigint, 2::bigint, 2::bigint, sum(total) FROM invoices WHERE kind = 'invoice'$$,
                  'finalize_progress sums the run up');
SELECT is((SELECT count(*) FROM audit_log WHERE action = 'finalize'), 4::bigint, 'one audit entry per finalized invoice');
SELECT is((SELECT count(DISTINCT finalized_at) FROM invoices), 4::bigint, 'each stamped when it was finalized');
-- the people of every client were counted once, at the start of the run,
-- and used (nothing changed since), evidence as msp_billable_users gives it
SELECT results_eq(format($$SELECT client_id, people_from FROM finalize_run_clients WHERE run_id = %s AND outcome = 'finalized' ORDER BY 1$$, :first_run_id),
                  $$VALUES (10::bigint, 'batch'), (11, 'batch'), (14, 'batch'), (15, 'batch')$$,
                  'each finalized client was priced from the people counted for every client at the start');
SET mspbill.pseudonymous = on;
SELECT is((SELECT count(*) FROM invoices i
            WHERE i.kind = 'invoice' AND i.evidence <> (SELECT coalesce(jsonb_agg(to_jsonb(u)), '[]')
                                                         FROM msp_billable_users(i.client_id, i.period) u)),
          0::bigint, 'the stored evidence is msp_billable_users'' rows, pseudonymous, as a single invoice stores them');
RESET mspbill.pseudonymous;
SELECT is((SELECT count(*) FROM finalize_run_people WHERE run_id = :first_run_id), 0::bigint,
          'the run''s counted people are dropped when it ends');

-- rerun: nothing is finalized twice
CREATE TEMP TABLE before_rerun AS SELECT client_id, invoice_id, total FROM invoices;
CALL msp_finalize_period(:'p') \gset second_
SELECT is(format('%s %s %s %s', :second_finalized, :second_already_finalized, :second_refused, :second_failed), '0 4 2 2',
          'a second run finalizes nothing and reports the 4 as already finalized');
SELECT results_eq($$SELECT client_id, invoice_id, total FROM invoices ORDER BY 1$$,
                  $$SELECT client_id, invoice_id, total FROM before_rerun ORDER BY 1$$, 'the invoices are the same rows');
SELECT is((SELECT count(*) FROM audit_log), 4::bigint, 'and the audit log has no new entry');
SELECT results_eq(format($$SELECT client_id, invoice_id FROM finalize_run_clients WHERE run_id = %s AND outcome = 'already_finalized' ORDER BY 1$$, :second_run_id),
                  $$SELECT client_id, invoice_id FROM before_rerun ORDER BY 1$$, 'already finalized: with the invoice that was');

-- a rerun for the refused ones with an override, and clients named by hand
CALL msp_finalize_period(:'p', '{device_silent}', '{2,1,1,NULL}') \gset third_
SELECT is(format('%s %s %s %s', :third_finalized, :third_already_finalized, :third_refused, :third_failed), '2 0 0 0',
          'the refused clients rerun with an override are finalized');
SELECT results_eq($$SELECT client_id, overrides FROM invoices WHERE client_id IN (1, 2) ORDER BY 1$$,
                  $$VALUES (1::bigint, '{device_silent}'::text[]), (2, '{device_silent}')$$, 'with the override stored');
SELECT is((SELECT client_ids FROM finalize_runs WHERE run_id = :third_run_id), '{1,2}'::bigint[],
          'only_clients: each named client once, NULL left out');
CALL msp_finalize_period(:'p', only_clients => '{22,999}') \gset fourth_
SELECT results_eq(format($$SELECT client_id, outcome, sqlstate, message FROM finalize_run_clients WHERE run_id = %s ORDER BY 1$$, :fourth_run_id),
                  format($$VALUES (22::bigint, 'failed', 'P0002'::char(5), 'client 22 has no contract in effect for %s'),
                                  (999, 'failed', 'P0002', 'unknown client 999')$$, :'p'),
                  'a client named without a contract, and one that does not exist, fail with the reason');
SELECT is((SELECT count(*) FROM finalize_runs WHERE finished_at IS NULL), 0::bigint, 'every run finished');
-- a month that has not ended: every client refused, none finalized
SELECT daterange(date_trunc('month', now())::date, (date_trunc('month', now()) + interval '1 month')::date) AS cur \gset
CALL msp_finalize_period(:'cur', only_clients => '{10}') \gset fifth_
SELECT results_eq(format($$SELECT outcome, gates, sqlstate FROM finalize_run_clients WHERE run_id = %s$$, :fifth_run_id),
                  $$VALUES ('refused', '{period_not_over}'::text[], '55000'::char(5))$$, 'the current month is refused: period_not_over');

-- roles: admin and billing run month-end; BI, PII and report roles cannot
DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY '{mend_billing,mend_bi,mend_pii,mend_report}'::text[] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I LOGIN', r);
		END IF;
	END LOOP;
END
$$;
GRANT mspbill_billing TO mend_billing;
GRANT mspbill_bi TO mend_bi;
GRANT mspbill_pii TO mend_pii;
GRANT mspbill_report TO mend_report;
INSERT INTO bi_client_access VALUES ('mend_bi', 10), ('mend_pii', 10), ('mend_report', 10);
SELECT is(ARRAY(SELECT format('%s may %s', r, f) FROM unnest('{mend_bi,mend_pii,mend_report}'::name[]) r,
                unnest(ARRAY['mspbill.msp_finalize_run_begin(daterange,text[],bigint[])', 'mspbill.msp_finalize_run_client(bigint,bigint,boolean)',
                             'mspbill.msp_finalize_run_end(bigint)']) f
                 WHERE has_function_privilege(r, f, 'EXECUTE')
                UNION ALL
                SELECT format('%s may read %s', r, t) FROM unnest('{mend_bi,mend_pii,mend_report}'::name[]) r,
                       unnest('{mspbill.finalize_runs,mspbill.finalize_run_clients,mspbill.finalize_progress}'::text[]) t
                 WHERE has_table_privilege(r, t, 'SELECT')),
          '{}'::text[], 'BI, PII and report roles may neither run month-end nor read its runs');
SELECT is(ARRAY(SELECT format('%s may %s %s', r, p, t) FROM unnest('{mspbill_admin,mspbill_billing,mspbill_bi,mspbill_pii,mspbill_report}'::name[]) r,
                unnest('{mspbill.finalize_runs,mspbill.finalize_run_clients}'::text[]) t, unnest('{INSERT,UPDATE,DELETE,TRUNCATE}'::text[]) p
                 WHERE has_table_privilege(r, t, p)),
          '{}'::text[], 'nobody writes the run records but the month-end functions');
SELECT is(ARRAY(SELECT format('%s may %s', r, p) FROM unnest('{mspbill_admin,mspbill_billing,mspbill_bi,mspbill_pii,mspbill_report}'::name[]) r,
                unnest('{SELECT,INSERT,UPDATE,DELETE,TRUNCATE}'::text[]) p
                 WHERE has_table_privilege(r, 'mspbill.finalize_run_people', p)
                UNION ALL
                SELECT format('%s may run %s', r, f) FROM unnest('{mspbill_admin,mspbill_billing,mspbill_bi,mspbill_pii,mspbill_report}'::name[]) r,
                       unnest(ARRAY['mspbill.msp_finalize_run_prepare(bigint)',
                                     'mspbill.msp_finalize_invoice_with(bigint,daterange,text[],jsonb,jsonb)']) f
                 WHERE has_function_privilege(r, f, 'EXECUTE')),
          '{}'::text[], 'nobody reads or writes the people a run counted, nor prices an invoice from people of their own');
SET SESSION AUTHORIZATION mend_bi;
SELECT throws_ok(format('CALL mspbill.msp_finalize_period(%L)', :'p'), '42501', NULL, 'BI: CALL is refused');
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION mend_report;
SELECT throws_ok(format('CALL mspbill.msp_finalize_period(%L)', :'p'), '42501', NULL, 'report: CALL is refused');
RESET SESSION AUTHORIZATION;
-- an open run of the superuser's (begun, not yet run)
SELECT msp_finalize_run_begin(:'p', '{}', '{10,11}') AS open_run \gset
SET SESSION AUTHORIZATION mend_billing;
CALL mspbill.msp_finalize_period(:'p', only_clients => '{10,14}') \gset billing_
SELECT is(format('%s %s', :billing_already_finalized, :billing_finalized), '2 0', 'billing: month-end runs (already finalized: 2)');
SELECT is((SELECT started_by FROM mspbill.finalize_runs WHERE run_id = :billing_run_id), 'mend_billing'::name,
          'the run names the login that started it');
SELECT is((SELECT count(*) FROM mspbill.finalize_progress), (SELECT count(*) FROM mspbill.finalize_runs),
          'billing reads the progress of every run');
SELECT throws_ok(format('SELECT mspbill.msp_finalize_run_client(10, %s)', :open_run), '22023',
                 format('client 10 is not pending in an open month-end run %s of yours', :open_run),
                 'billing cannot record outcomes in another login''s run');
SELECT throws_ok(format('SELECT mspbill.msp_finalize_run_end(%s)', :open_run), '22023', NULL,
                 'nor end it');
SELECT throws_ok(format('SELECT mspbill.msp_finalize_run_client(12, %s)', :billing_run_id), '22023', NULL,
                 'nor add a client to a finished run of its own');
SELECT throws_ok(format($$INSERT INTO mspbill.finalize_run_clients (client_id, run_id, outcome) VALUES (10, %s, 'refused')$$, :open_run),
                 '42501', NULL, 'nor write the run records directly');
SELECT throws_ok($$UPDATE mspbill.finalize_runs SET finished_at = now()$$, '42501', NULL, 'nor mark runs finished by hand');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT count(*) FROM finalize_run_clients WHERE run_id = :open_run), 0::bigint, 'the open run has nothing of theirs');
SELECT is((msp_finalize_run_client(11, :open_run)), 'already_finalized', 'its owner records a client in it');
SELECT throws_ok(format('SELECT msp_finalize_run_client(12, %s)', :open_run), '22023', NULL,
                 'but not one the run does not take');
SELECT lives_ok(format('SELECT msp_finalize_run_end(%s)', :open_run), 'and ends it');

-- data that changes between the count at the start of a run and a client's
-- own transaction: 16's data does not change (its counted people are
-- tampered with here, as only a superuser may, to show that they are what
-- its invoice is priced from); 17 gains a person who logged on, added
-- after the count, so its people are counted again in its transaction
INSERT INTO clients (client_id, name, time_zone) VALUES (16, 'Small client 16', 'America/Chicago'),
                                                         (17, 'Small client 17', 'America/Chicago'),
                                                         (18, 'Small client 18', 'America/Chicago');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
SELECT c, 1, daterange(:'p0'::date - 62, NULL), 'per_user', 10.00 FROM unnest('{16,17,18}'::bigint[]) c;
INSERT INTO devices (client_id, device_id, name) SELECT c, 1, 'PC-' || c FROM unnest('{16,17,18}'::bigint[]) c;
INSERT INTO people (client_id, person_id, pseudonym) SELECT c, p, 'u' || p FROM unnest('{16,17,18}'::bigint[]) c, generate_series(1, 3) p;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id)
SELECT client_id, person_id, 'os', 'SMALL\u' || person_id, 'individual', person_id FROM people WHERE client_id IN (16, 17, 18);
INSERT INTO logons (client_id, account_id, device_id, at)
SELECT a.client_id, a.account_id, 1, (d + time '09:00') AT TIME ZONE 'America/Chicago' + a.account_id * interval '1 minute'
  FROM accounts a, generate_series(:'p0'::date, :'p1'::date - 1, interval '1 day') d WHERE a.client_id IN (16, 17, 18);
SELECT msp_finalize_run_begin(:'p', '{}', '{16,17,18}') AS stale_run \gset
SELECT is((SELECT count(*) FROM finalize_run_people WHERE run_id = :stale_run), 3::bigint,
          'the people of the three clients are counted when the run begins');
UPDATE finalize_run_people SET people = '{}', evidence = '[]' WHERE run_id = :stale_run AND client_id = 16;
INSERT INTO people (client_id, person_id, pseudonym) VALUES (17, 4, 'late');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (17, 4, 'os', 'SMALL\late', 'individual', 4);
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (17, 4, 1, (:'p0'::date + time '12:00') AT TIME ZONE 'America/Chicago');
-- 18: a person marked not to bill after the count (the same rows, one changed)
UPDATE people SET do_not_bill = true WHERE client_id = 18 AND person_id = 1;
SELECT is(msp_finalize_run_client(16, :stale_run) || ' ' || msp_finalize_run_client(17, :stale_run), 'finalized finalized',
          'both are finalized, each in its own transaction');
SELECT is(msp_finalize_run_client(18, :stale_run), 'finalized', 'and the third');
SELECT results_eq(format($$SELECT client_id, people_from FROM finalize_run_clients WHERE run_id = %s ORDER BY 1$$, :stale_run),
                  $$VALUES (16::bigint, 'batch'), (17, 'recounted'), (18, 'recounted')$$,
                  'the unchanged client is priced from the count at the start, the changed ones (a row added, a row changed) counted again');
SELECT is((SELECT users FROM invoices WHERE client_id = 16 AND period = :'p'), 0,
          'the unchanged client''s invoice has the people counted at the start (here tampered with: none)');
SELECT results_eq($$SELECT users, total FROM invoices WHERE client_id = 17 AND period = $$ || quote_literal(:'p'),
                  $$SELECT users, total FROM msp_compute_invoice(17, $$ || quote_literal(:'p') || $$)$$,
                  'the changed client''s invoice is what its own transaction sees: the late person included');
SELECT is((SELECT users FROM invoices WHERE client_id = 17 AND period = :'p'), 4, 'four users, the late one among them');
SELECT is((SELECT users FROM invoices WHERE client_id = 18 AND period = :'p'), 2, 'two users: the one not to bill is left out');
SELECT lives_ok(format('SELECT msp_finalize_run_end(%s)', :stale_run), 'the run ends');

SELECT * FROM finish();
