-- Loaders: fixture exports in each source's format (with malformed and
-- duplicate records), loaded twice; and the real Windows export in
-- ../shared/fixtures/windows-security/, read in place.
\set ECHO none
\pset pager off
\set QUIET on
SET search_path = public, mspbill;
\set fixture_zip '../../../shared/fixtures/windows-security/purplesharp_ad_playbook_I.zip'
\set have_fixture `test -f ../../../shared/fixtures/windows-security/purplesharp_ad_playbook_I.zip && echo 1 || echo 0`
SELECT plan(28);

INSERT INTO clients (client_id, name, time_zone) VALUES (1, 'Clinic', 'America/New_York'), (2, 'Lab', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
VALUES (1, 1, '[2025-01-01,)', 'per_user', 10), (2, 1, '[2020-01-01,)', 'per_user', 10);

-- Windows Security events, NXLog JSON lines (raw lines: no COPY escapes)
SET mspbill.client_id = 1;
\copy windows_event_staging (raw) FROM '../fixtures/windows_nxlog.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_windows_events(1)$$, $$VALUES (3::bigint, 1::bigint, 2::bigint, 7::bigint, 3::bigint)$$,
                  'windows: 3 loaded, 1 duplicate, 2 sessions closed, 7 skipped, 3 rejected');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE source = 'windows' ORDER BY line_no$$,
                  $$VALUES ('not valid JSON'), ('no TargetUserName'), ('invalid @timestamp')$$, 'each reject says why');
SELECT ok((SELECT raw FROM load_rejects WHERE reason = 'not valid JSON') LIKE '%"broken', 'and keeps the raw record');
SELECT results_eq($$SELECT name, kind FROM accounts WHERE client_id = 1 AND realm = 'os' ORDER BY name$$,
                  $$VALUES ('CLINIC\alice', 'unknown'), ('CLINIC\bob', 'unknown')$$,
                  'domain\user, FQDN and UPN forms resolve to one account each; machine and service identities are not created');
SELECT is((SELECT count(*) FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.name = 'CLINIC\alice'), 2::bigint,
          'interactive and unlock logons count');
SELECT is((SELECT ended FROM logons WHERE client_id = 1 AND session_key = 'WS1:0x100'), '2026-01-05 22:00Z'::timestamptz,
          '4634 closes the session with the same logon id');
SELECT is((SELECT ended FROM logons WHERE client_id = 1 AND session_key = 'WS2:0x200'), '2026-01-05 21:00Z'::timestamptz,
          '4647 closes a remote interactive session');
SELECT results_eq($$SELECT name FROM devices WHERE client_id = 1 ORDER BY name$$, $$VALUES ('WS1'), ('WS2')$$,
                  'devices come from host names');
\copy windows_event_staging (raw) FROM '../fixtures/windows_nxlog.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_windows_events(1)$$, $$VALUES (0::bigint, 4::bigint)$$,
                  'loading the same export again adds nothing');
SELECT is((SELECT count(*) FROM logons WHERE client_id = 1), 3::bigint, 'still three logons');
SELECT is((SELECT count(*) FROM windows_event_staging), 0::bigint, 'the stage is emptied');

-- Entra ID sign-ins, Graph JSON lines
\copy entra_signin_staging (raw) FROM '../fixtures/entra_signins.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_entra_signins(1)$$, $$VALUES (2::bigint, 1::bigint, 2::bigint, 2::bigint)$$,
                  'entra: 2 loaded, 1 duplicate, 2 skipped (failed, non-interactive), 2 rejected');
SELECT results_eq($$SELECT name FROM accounts WHERE client_id = 1 AND realm = 'm365' ORDER BY name$$,
                  $$VALUES ('alice@clinic.example'), ('bob@clinic.example')$$, 'UPNs are accounts, case-folded');
SELECT is((SELECT count(*) FROM devices WHERE client_id = 1 AND name = 'HOME-LAPTOP'), 0::bigint,
          'sign-ins do not invent devices');

-- EMR access audit, CSV
\copy emr_audit_staging (user_name, workstation, event_time, action, event_id) FROM '../fixtures/emr_audit.csv' WITH (FORMAT csv, HEADER)
SELECT results_eq($$SELECT * FROM msp_load_emr_audit(1)$$, $$VALUES (3::bigint, 1::bigint, 2::bigint)$$,
                  'emr: 3 loaded, 1 duplicate, 2 rejected');
SELECT is((SELECT min(l.at) FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.name = 'dr.smith'),
          '2026-01-05 08:05:00 America/New_York'::timestamptz, 'times without a zone are the client''s local time');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE source = 'emr' ORDER BY line_no$$,
                  $$VALUES ('no user'), ('invalid time')$$, 'emr rejects say why');
SELECT results_eq($$SELECT name, realm, application FROM accounts WHERE client_id = 1 AND realm = 'app' ORDER BY name$$,
                  $$VALUES ('dr.jones', 'app', 'EMR'), ('dr.smith', 'app', 'EMR')$$, 'EMR logins are application accounts');

-- loaded accounts are unmapped until the MSP maps them: finalization would refuse
SELECT is((SELECT count(*) FROM msp_data_quality(1, '[2026-01-01,2026-02-01)') WHERE gate = 'unmapped_account'), 6::bigint,
          'every loaded account waits to be mapped');
INSERT INTO people (client_id, person_id, pseudonym) VALUES (1, 1, 'alice');
UPDATE accounts SET kind = 'individual', person_id = 1 WHERE client_id = 1 AND name IN ('CLINIC\alice', 'alice@clinic.example');
SELECT results_eq($$SELECT pseudonym, days_active, accounts FROM msp_billable_users(1, '[2026-01-01,2026-02-01)')$$,
                  $$VALUES ('alice', 1, ARRAY['CLINIC\alice', 'alice@clinic.example'])$$,
                  'once mapped, Windows and Entra logons bill one person');

SELECT throws_ok($$SELECT * FROM msp_load_emr_audit(99)$$, 'P0002', 'unknown client 99', 'a load for an unknown client is refused');

-- the real export: 25,993 NXLog records of all channels
\if :have_fixture
SET mspbill.client_id = 2;
\copy windows_event_staging (raw) FROM PROGRAM 'unzip -p ../../../shared/fixtures/windows-security/purplesharp_ad_playbook_I.zip' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT is((SELECT count(*) FROM windows_event_staging WHERE client_id = 2), 25993::bigint, 'real export: 25,993 records staged');
CREATE TEMP TABLE real_load AS SELECT * FROM msp_load_windows_events(2, 'purplesharp');
SELECT is((SELECT loaded FROM real_load), 0::bigint, 'real export: no presence logon (network, machine or anonymous, or failed)');
SELECT is((SELECT rejected FROM real_load), 0::bigint, 'real export: nothing rejected');
SELECT is((SELECT skipped + paired FROM real_load), 25993::bigint, 'real export: every record skipped cleanly');
SELECT is((SELECT count(*) FROM accounts WHERE client_id = 2), 0::bigint, 'real export: no account created');
SELECT is((SELECT count(*) FROM msp_billable_users(2, '[2020-10-01,2020-11-01)')), 0::bigint, 'real export: no billable person');
SELECT ok(true, 'real export read in place from ' || :'fixture_zip');
\else
SELECT skip('the shared Windows fixture is absent: ../shared/fixtures/windows-security/ (real-export checks skipped)', 7);
\endif

SELECT * FROM finish();
