-- Privacy and tenancy with real roles: client-scoped BI, the PII boundary,
-- a search_path hijack that changes nothing, and the HIPAA shared-logon audit.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
CREATE EXTENSION dblink;
SELECT plan(35);

SET client_min_messages = warning;
SELECT is(msp_install_roles(), 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready', 'roles installed');
SELECT is(msp_install_roles(), 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready', 'and again (idempotent)');
INSERT INTO person_identities VALUES (1, 1, 'Nora Nurse', 'nora@stolaf.example');
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_bi1') THEN CREATE ROLE mspbill_test_bi1 LOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_pii') THEN CREATE ROLE mspbill_test_pii LOGIN; END IF;
END $$;
GRANT mspbill_bi TO mspbill_test_bi1;
GRANT mspbill_bi, mspbill_pii TO mspbill_test_pii;
INSERT INTO bi_client_access VALUES ('mspbill_test_bi1', 1), ('mspbill_test_pii', 1);

-- a BI login mapped to the hospital
SET ROLE mspbill_test_bi1;
SELECT is((SELECT array_agg(client_id) FROM mspbill.clients), ARRAY[1::bigint], 'BI sees its own client only');
SELECT is((SELECT count(DISTINCT client_id) FROM mspbill.logons), 1::bigint, 'and only its client''s logons');
SELECT is((SELECT count(*) FROM mspbill.cost_pools), 0::bigint, 'no other client''s cost pools');
-- A preview: 456.00, not the 498.00 billing roles see and the invoice
-- carries once finalized.  Row-level security hides the dental office's
-- Dr. Gray, whom the hospital pays for, from this role, and opening her
-- logons to the paying client's readers would show them more than the
-- invoice's evidence does (README: a BI role's preview leaves out sister
-- clients' people).  The finalized figure is asserted below.
SELECT is((mspbill.msp_invoice(1)).total, 456.00, 'BI can read its client''s invoice');
SELECT throws_ok($$SELECT mspbill.msp_invoice(2)$$, 'P0002', 'unknown client 2', 'another client''s invoice is an error, not an empty answer');
SELECT is((SELECT accounts FROM mspbill.msp_billable_users(1) WHERE pseudonym = 'n2'), ARRAY['os account 6'],
          'account names are pseudonymous without the PII role');
SELECT throws_ok($$SELECT name FROM mspbill.accounts$$, '42501', NULL, 'real account names: permission denied');
SELECT throws_ok($$SELECT * FROM mspbill.person_identities$$, '42501', NULL, 'real names: permission denied');
SELECT throws_ok($$SELECT * FROM mspbill.load_rejects$$, '42501', NULL, 'raw records: permission denied');
SELECT throws_ok($$SELECT * FROM mspbill.audit_log$$, '42501', NULL, 'audit log: permission denied');
SELECT is((SELECT array_agg(role_name::text) FROM mspbill.bi_client_access), ARRAY['mspbill_test_bi1'],
          'BI reads its own client mappings only, not mspbill_test_pii''s');
SELECT throws_ok($$INSERT INTO mspbill.logons (client_id, account_id, at) VALUES (1, 5, now())$$, '42501', NULL, 'BI cannot write');
SELECT throws_ok($$SELECT mspbill.msp_finalize_invoice(1, NULL, '{device_silent}')$$, '42501', NULL, 'BI cannot finalize');
RESET ROLE;

-- a BI login that also holds the PII role
SET ROLE mspbill_test_pii;
SELECT is((SELECT accounts FROM mspbill.msp_billable_users(1) WHERE pseudonym = 'n2'), ARRAY['STOLAF\nurse2'],
          'the PII role sees real account names');
SELECT is((SELECT full_name FROM mspbill.person_identities WHERE person_id = 1), 'Nora Nurse', 'and real names');
RESET ROLE;

-- msp_visible_clients keeps to the caller's roles by itself, not only
-- because bi_client_access's policy hides other roles' rows: with that
-- policy off, a mapping of another role's to client 2 still stays hidden
INSERT INTO bi_client_access VALUES ('mspbill_test_pii', 2);
ALTER TABLE bi_client_access DISABLE ROW LEVEL SECURITY;
SET ROLE mspbill_test_bi1;
SELECT is(mspbill.msp_visible_clients(), ARRAY[1::bigint],
          'msp_visible_clients: the clients of the caller''s roles only, even with bi_client_access''s policy off');
RESET ROLE;
ALTER TABLE bi_client_access ENABLE ROW LEVEL SECURITY;
DELETE FROM bi_client_access WHERE role_name = 'mspbill_test_pii' AND client_id = 2;

-- a separate login, as a BI tool connects
SELECT is((SELECT n FROM dblink(format('host=%s port=%s dbname=%s user=mspbill_test_bi1',
                                      current_setting('unix_socket_directories'), current_setting('port'), current_database()),
                                'SELECT count(*) FROM mspbill.clients') AS t(n bigint)), 1::bigint,
          'a separate BI login sees one client');
SELECT is((SELECT t FROM dblink(format('host=%s port=%s dbname=%s user=mspbill_test_bi1',
                                      current_setting('unix_socket_directories'), current_setting('port'), current_database()),
                                'SELECT (mspbill.msp_invoice(1)).total') AS r(t numeric)), 456.00,
          'and reads its invoice');

-- a search_path hijack: look-alikes in public, public first on the path
CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
CREATE FUNCTION public.upper(text) RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
CREATE FUNCTION public.msp_period(bigint, daterange) RETURNS daterange LANGUAGE sql AS $$ SELECT 'empty'::daterange $$;
CREATE FUNCTION public.msp_round(numeric, numeric) RETURNS numeric LANGUAGE sql AS $$ SELECT 0::numeric $$;
CREATE FUNCTION public.cardinality(mspbill.userset) RETURNS bigint LANGUAGE sql AS $$ SELECT 0::bigint $$;
CREATE FUNCTION public.evil_eq(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_eq);
SET search_path = public, mspbill, pg_catalog;
SELECT is((mspbill.msp_invoice(1)).total, 498.00, 'hijack: the invoice is unchanged');
SELECT is((SELECT count(*) FROM mspbill.msp_billable_users(1)), 9::bigint, 'hijack: the billable users are unchanged');
SELECT is((SELECT sum(amount) FROM mspbill.msp_invoice_lines(2)), 942.00, 'hijack: the lines are unchanged');
SELECT is((SELECT count(*) FROM mspbill.msp_data_quality(1)), 1::bigint, 'hijack: the gates are unchanged');
SET ROLE mspbill_test_bi1;
SELECT throws_ok($$SELECT name FROM mspbill.accounts$$, '42501', NULL, 'hijack: privileges are unchanged');
RESET ROLE;
SET search_path = public, mspbill;
DROP OPERATOR public.= (text, text);
DROP FUNCTION public.lower(text), public.upper(text), public.msp_period(bigint, daterange), public.msp_round(numeric, numeric),
              public.cardinality(mspbill.userset), public.evil_eq(text, text);

-- the sealed report role runs as the owner, so its preview is the invoice
-- billing sees, Dr. Gray included
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mspbill_test_report') THEN CREATE ROLE mspbill_test_report LOGIN; END IF;
END $$;
GRANT mspbill_report TO mspbill_test_report;
INSERT INTO bi_client_access VALUES ('mspbill_test_report', 1);
SELECT is((SELECT t FROM dblink(format('host=%s port=%s dbname=%s user=mspbill_test_report',
                                      current_setting('unix_socket_directories'), current_setting('port'), current_database()),
                                'SELECT total FROM mspbill.msp_report_invoice(1)') AS r(t numeric)), 498.00,
          'the sealed report role previews 498.00, Dr. Gray included');
-- once finalized, a BI reader of the hospital reads the invoice it is sent
SELECT msp_finalize_invoice(1, NULL, '{device_silent}') \g /dev/null
SET ROLE mspbill_test_bi1;
SELECT is((mspbill.msp_invoice(1)).total, 498.00, 'finalized: BI reads the invoice its client is sent, 498.00');
SELECT is((SELECT count(*) FROM mspbill.invoices i, jsonb_array_elements(i.evidence) e WHERE i.client_id = 1), 9::bigint,
          'with the evidence of all 9 people billed');
SELECT is(ARRAY(SELECT e->>'pseudonym' FROM mspbill.invoices i, jsonb_array_elements(i.evidence) e
                 WHERE i.client_id = 1 AND (e->>'home_client_id')::bigint = 2),
          ARRAY['gray'], 'Dr. Gray among them, by pseudonym, with the dental office as her client');
RESET ROLE;

-- HIPAA: the demo hospital is compliant (every OR session has individual EMR logins)
INSERT INTO applications VALUES (1, 'EMR', true);
SELECT is((SELECT count(*) FROM msp_pii_audit(1)), 0::bigint, 'compliant hospital: no finding');
-- plant three violations: OR3's morning sessions on the first three workdays used a shared EMR login
INSERT INTO accounts (client_id, account_id, realm, name, kind, application) VALUES (1, 300, 'app', 'emr.or3', 'shared', 'EMR');
CREATE TEMP TABLE planted AS
  SELECT l.at, l.ended FROM logons l WHERE l.client_id = 1 AND l.account_id = 3
   ORDER BY l.at LIMIT 6;
DELETE FROM planted WHERE extract(hour FROM at AT TIME ZONE 'America/Chicago') <> 8;
DELETE FROM logons l USING planted p
 WHERE l.client_id = 1 AND l.device_id = 3 AND l.account_id BETWEEN 111 AND 116
   AND l.at BETWEEN p.at AND p.ended;
INSERT INTO logons (client_id, account_id, device_id, at) SELECT 1, 300, 3, at + interval '5 minutes' FROM planted;
SELECT is((SELECT count(*) FROM msp_pii_audit(1)), 3::bigint, 'every planted violation is found');
SELECT ok((SELECT bool_and(device = 'OR3' AND account = 'OR3' AND application = 'EMR') FROM msp_pii_audit(1)),
          'and only those: OR3, its shared account, the EMR');
SELECT results_eq($$SELECT violating_sessions, devices, applications FROM msp_pii_audit_summary(1)$$,
                  $$VALUES (3::bigint, 1::bigint, ARRAY['EMR'])$$, 'the summary counts them');
-- a shared session written twice (by hand: no event id, so nothing stops
-- it) is two sessions, each with its own uses: sessions are told apart by
-- row, not by device, account and time (logons has no row id since 0.3.0)
INSERT INTO logons (client_id, account_id, device_id, at, ended, presence)
SELECT l.client_id, l.account_id, l.device_id, l.at, l.ended, l.presence FROM logons l
 WHERE l.client_id = 1 AND l.account_id = 3 AND l.at = (SELECT min(at) FROM planted);
SELECT is((SELECT count(*) FROM msp_pii_audit(1)), 4::bigint, 'a session written twice is two findings');
SELECT is((SELECT array_agg(uses ORDER BY session_start) FROM msp_pii_audit(1)), ARRAY[1, 1, 1, 1],
          'each with its own one use of the EMR (not the pair''s two)');

DROP OWNED BY mspbill_test_bi1, mspbill_test_pii, mspbill_test_report;
DROP ROLE mspbill_test_bi1, mspbill_test_pii, mspbill_test_report;
SELECT * FROM finish();
