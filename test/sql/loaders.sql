-- Loaders: fixture exports in each source's format (with malformed and
-- duplicate records), loaded twice; every format branch and every class of
-- bad record; and the real Windows export in ../shared/fixtures/windows-security/
-- (beside the checkout, or beside its worktree directory), read in place.
\set ECHO none
\pset pager off
\set QUIET on
SET search_path = public, mspbill;
\set fixture_zip `for d in ../../../shared ../../../../shared; do f=$d/fixtures/windows-security/purplesharp_ad_playbook_I.zip; if [ -f $f ]; then echo $f; break; fi; done`
\set have_fixture `for d in ../../../shared ../../../../shared; do [ -f $d/fixtures/windows-security/purplesharp_ad_playbook_I.zip ] && { echo 1; exit; }; done; echo 0`
SELECT plan(156);

INSERT INTO clients (client_id, name, time_zone) VALUES (1, 'Clinic', 'America/New_York'), (2, 'Lab', 'UTC');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
VALUES (1, 1, '[2025-01-01,)', 'per_user', 10), (2, 1, '[2020-01-01,)', 'per_user', 10);

-- Windows Security events, NXLog JSON lines (raw lines: no COPY escapes)
SET mspbill.client_id = 1;
\copy windows_event_staging (raw) FROM '../fixtures/windows_nxlog.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_windows_events(1)$$, $$VALUES (3::bigint, 1::bigint, 2::bigint, 7::bigint, 3::bigint, 0::bigint)$$,
                  'windows: 3 loaded, 1 duplicate, 2 sessions closed, 7 skipped, 3 rejected');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE source = 'windows' ORDER BY line_no$$,
                  $$VALUES ('not valid JSON'), ('no TargetUserName'), ('invalid EventTime')$$, 'each reject says why (EventTime, the event''s own time, is the one read)');
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

-- Every format branch and every class of bad record, for a third client.
INSERT INTO clients (client_id, name, time_zone) VALUES (3, 'Lab', 'America/New_York');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user) VALUES (3, 1, '[2026-01-01,)', 'per_user', 10);
SET mspbill.client_id = 3;
INSERT INTO windows_event_staging (raw) VALUES
  -- 1 NXLog, cached interactive logon (type 11): presence
  ('{"@timestamp": "2026-02-02T08:00:00Z", "Hostname": "LAB1.lab.example", "EventID": 4624, "RecordNumber": 1, "TargetUserName": "carol", "TargetDomainName": "LAB", "TargetLogonId": "0x1", "LogonType": "11"}'),
  -- 2 Winlogbeat, interactive logon: every field under winlog.*
  ('{"@timestamp": "2026-02-02T09:00:00Z", "winlog": {"event_id": 4624, "computer_name": "LAB2.lab.example", "record_id": 7, "event_data": {"TargetUserName": "dave", "TargetDomainName": "LAB", "LogonType": "2", "TargetLogonId": "0x2"}}}'),
  -- 3 Winlogbeat logoff of that session
  ('{"@timestamp": "2026-02-02T10:00:00Z", "winlog": {"event_id": 4634, "computer_name": "LAB2.lab.example", "record_id": 8, "event_data": {"TargetUserName": "dave", "TargetDomainName": "LAB", "TargetLogonId": "0x2"}}}'),
  -- 4 NXLog with TimeCreated and no RecordNumber (keyed by its content), unlock (7)
  ('{"TimeCreated": "2026-02-02T11:00:00Z", "Hostname": "LAB1", "EventID": 4624, "TargetUserName": "erin", "TargetDomainName": "LAB", "LogonType": "7"}'),
  -- 5 an offset out of range
  ('{"@timestamp": "2026-02-02T08:00:00+99:00", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 5, "TargetUserName": "frank", "TargetDomainName": "LAB", "LogonType": "2"}'),
  -- 6 a zone nobody knows
  ('{"@timestamp": "2026-02-02 08:00:00 Mars/Olympus", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 6, "TargetUserName": "frank", "TargetDomainName": "LAB", "LogonType": "2"}'),
  -- 7 a huge number in a field nobody reads
  ('{"@timestamp": "2026-02-02T12:00:00Z", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 7, "TargetUserName": "gina", "TargetDomainName": "LAB", "LogonType": "2", "Size": 1e1000000}'),
  -- 8 a huge number inside winlog, which is parsed as jsonb
  ('{"@timestamp": "2026-02-02T12:00:00Z", "winlog": {"event_id": 4624, "computer_name": "LAB1", "record_id": 8, "event_data": {"TargetUserName": "hank", "LogonType": "2", "Big": 1e1000000}}}'),
  -- 9 nesting deeper than the stack
  ('{"@timestamp": "2026-02-02T12:00:00Z", "winlog": ' || repeat('[', 100000) || repeat(']', 100000) || '}'),
  -- 10 a time that is not an instant
  ('{"@timestamp": "infinity", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 10, "TargetUserName": "ivan", "TargetDomainName": "LAB", "LogonType": "2"}'),
  -- 11 a name too long for an index
  ('{"@timestamp": "2026-02-02T12:00:00Z", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 11, "TargetUserName": "' || repeat('x', 3000) || '", "TargetDomainName": "LAB", "LogonType": "2"}'),
  -- 12 a network logon (type 3): not presence
  ('{"@timestamp": "2026-02-02T12:00:00Z", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 12, "TargetUserName": "judy", "TargetDomainName": "LAB", "LogonType": "3"}');
SELECT results_eq($$SELECT loaded, duplicate, paired, skipped, rejected FROM msp_load_windows_events(3)$$,
                  $$VALUES (4::bigint, 0::bigint, 1::bigint, 1::bigint, 6::bigint)$$,
                  'windows formats: 4 loaded, 1 session closed, 1 skipped, 6 bad records rejected without stopping the load');
SELECT results_eq($$SELECT line_no - min(line_no) OVER () + 5, reason FROM load_rejects WHERE client_id = 3 AND source = 'windows' ORDER BY line_no$$,
                  $$SELECT * FROM (VALUES (5::bigint, 'invalid @timestamp'), (6, 'invalid @timestamp'), (8, 'unreadable record: value overflows numeric format'),
                                         (9, 'not valid JSON'), (10, 'invalid @timestamp: not a time'), (11, 'field too long')) v$$,
                  'each bad record is rejected with its reason');
SELECT is((SELECT at FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.client_id = 3 AND a.name = 'LAB\carol'),
          '2026-02-02 08:00Z'::timestamptz, 'a cached interactive logon (type 11) counts as presence');
SELECT is((SELECT d.name FROM logons l JOIN accounts a USING (client_id, account_id) JOIN devices d USING (client_id, device_id)
            WHERE a.client_id = 3 AND a.name = 'LAB\dave'), 'LAB2', 'Winlogbeat: TargetUserName, domain and host from winlog.*');
SELECT is((SELECT ended FROM logons WHERE client_id = 3 AND session_key = 'LAB2:0x2'), '2026-02-02 10:00Z'::timestamptz,
          'Winlogbeat: the logoff closes the session by winlog.event_data.TargetLogonId');
SELECT is((SELECT source_event_id FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.client_id = 3 AND a.name = 'LAB\dave'),
          'LAB2:7', 'Winlogbeat: the duplicate key is the host and winlog.record_id');
SELECT is((SELECT at FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.client_id = 3 AND a.name = 'LAB\erin'),
          '2026-02-02 11:00Z'::timestamptz, 'NXLog: TimeCreated when there is no @timestamp');
SELECT ok((SELECT source_event_id FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.client_id = 3 AND a.name = 'LAB\erin')
          ~ '^LAB1:[0-9a-f]{32}$', 'NXLog: a record without RecordNumber is keyed by its content');
SELECT is((SELECT count(*) FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.client_id = 3 AND a.name = 'LAB\gina'),
          1::bigint, 'a huge number in a field nobody reads does not matter');
SELECT is((SELECT count(*) FROM accounts WHERE client_id = 3 AND name = 'LAB\judy'), 0::bigint, 'a network logon (type 3) is skipped');
SELECT is((SELECT count(*) FROM windows_event_staging WHERE client_id = 3), 0::bigint, 'the stage is emptied, bad records too');
-- the logon types: each counting one, and one that does not
INSERT INTO windows_event_staging (raw)
SELECT format('{"@timestamp": "2026-02-03T08:00:00Z", "Hostname": "LAB9", "EventID": 4624, "RecordNumber": %s, "TargetUserName": "type%s", "TargetDomainName": "LAB", "LogonType": "%s"}', t, t, t)
  FROM unnest('{2,3,4,5,7,8,9,10,11}'::int[]) t;
SELECT results_eq($$SELECT loaded, skipped FROM msp_load_windows_events(3)$$, $$VALUES (4::bigint, 5::bigint)$$,
                  'four of nine logon types are presence');
SELECT results_eq($$SELECT name FROM accounts WHERE client_id = 3 AND name LIKE 'LAB\\type%' ORDER BY name$$,
                  $$VALUES ('LAB\type10'), ('LAB\type11'), ('LAB\type2'), ('LAB\type7')$$,
                  'presence: interactive (2), unlock (7), remote interactive (10) and cached interactive (11)');
SELECT is((SELECT count(*) FROM accounts WHERE client_id = 3 AND name ~ '^LAB\type(3|4|5|8|9)$'), 0::bigint,
          'network (3), batch (4), service (5), network cleartext (8) and new credentials (9) are not');
-- failed logons (4625) are skipped whatever they carry: one for a name
-- nobody typed right ('-'), one naming carol's open session on LAB1
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "2026-02-03T09:00:00Z", "Hostname": "LAB1", "EventID": 4625, "RecordNumber": 30, "TargetUserName": "-", "TargetDomainName": "LAB", "LogonType": "2"}'),
  ('{"@timestamp": "2026-02-03T09:05:00Z", "Hostname": "LAB1", "EventID": 4625, "RecordNumber": 31, "TargetUserName": "carol", "TargetDomainName": "LAB", "TargetLogonId": "0x1", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded, paired, skipped, rejected FROM msp_load_windows_events(3)$$,
                  $$VALUES (0::bigint, 0::bigint, 2::bigint, 0::bigint)$$,
                  'failed logons (4625) are skipped: not loaded, not rejected, no session closed');
SELECT is((SELECT ended FROM logons WHERE client_id = 3 AND session_key = 'LAB1:0x1'), NULL::timestamptz,
          'a failed logon naming an open session leaves it open');

INSERT INTO entra_signin_staging (raw) VALUES
  ('{"id": "e1", "createdDateTime": "2026-02-02T13:00:00Z", "userPrincipalName": "Carol@Lab.example", "isInteractive": true, "status": {"errorCode": 0}, "deviceDetail": {"displayName": "lab1"}}'),
  ('{"id": "e2", "createdDateTime": "2026-02-02T13:05:00Z", "userPrincipalName": "carol@lab.example", "isInteractive": true, "status": {"errorCode": 0}, "deviceDetail": {"displayName": "HOME"}, "x": ' || repeat('[', 100000) || repeat(']', 100000) || '}'),
  ('{"id": "e3", "createdDateTime": "2026-02-02T13:00:00+99:00", "userPrincipalName": "carol@lab.example", "isInteractive": true}'),
  ('{"id": "e4", "createdDateTime": "2026-02-02T13:00:00Z", "userPrincipalName": "' || repeat('y', 3000) || '@lab.example", "isInteractive": true}'),
  ('{"id": "e5", "createdDateTime": "2026-02-02T13:00:00Z", "userPrincipalName": "carol@lab.example", "big": 1e1000000}'),
  ('not json at all'),
  ('{"id": "e7", "createdDateTime": "2026-02-02T14:00:00Z", "userPrincipalName": "carol@lab.example", "isInteractive": false}'),
  ('{"id": "e8", "createdDateTime": "2026-02-02T14:00:00Z", "userPrincipalName": "carol@lab.example", "status": {"errorCode": 50126}}');
SELECT results_eq($$SELECT * FROM msp_load_entra_signins(3)$$, $$VALUES (2::bigint, 0::bigint, 2::bigint, 4::bigint)$$,
                  'entra: 2 loaded (one with a huge number in a field nobody reads, as for Windows), 2 skipped, 4 bad records rejected without stopping the load');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE client_id = 3 AND source = 'entra' ORDER BY line_no$$,
                  $$VALUES ('unreadable record: stack depth limit exceeded'), ('no valid createdDateTime'), ('field too long'),
                           ('not valid JSON')$$,
                  'entra: each with its reason (nesting too deep, a bad offset, a name too long, not JSON)');
SELECT is((SELECT d.name FROM logons l JOIN devices d USING (client_id, device_id) WHERE l.client_id = 3 AND l.source = 'entra'),
          'LAB1', 'entra: a sign-in is linked to a device of that name');

INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id, application) VALUES
  ('carol', 'LAB1', '2026-02-02 08:05:00z', 'LOGIN', 'm1', 'EMR'),
  ('carol', 'LAB1', '2026-02-02 09:00:00+99', 'LOGIN', 'm2', 'EMR'),
  ('carol', 'LAB1', '2026-02-02 10:00:00', 'LOGIN', NULL, 'EMR'),
  ('carol', 'LAB1', '2026-02-02 11:00:00 America/Chicago', 'LOGIN', 'm4', 'EMR'),
  ('carol', 'LAB1', '2026-02-02 12:00:00 Mars/Olympus', 'LOGIN', 'm5', 'EMR'),
  ('carol', 'LAB1', '2026-02-02 01:00:00 PM', 'LOGIN', 'm6', 'PACS'),
  ('carol', 'LAB1', 'infinity', 'LOGIN', 'm7', 'EMR'),
  ('carol', 'LAB1', '2026-02-02 11:30:00 PST', 'LOGIN', 'm8', 'EMR');
SELECT results_eq($$SELECT * FROM msp_load_emr_audit(3, NULL)$$, $$VALUES (5::bigint, 0::bigint, 3::bigint)$$,
                  'emr: 5 loaded, 3 bad times rejected without stopping the load');
SELECT results_eq($$SELECT source_event_id, at FROM logons WHERE client_id = 3 AND source = 'emr' AND source_event_id ~ '^m' ORDER BY 1$$,
                  $$VALUES ('m1', '2026-02-02 08:05Z'::timestamptz), ('m4', '2026-02-02 17:00Z'), ('m6', '2026-02-02 18:00Z'),
                           ('m8', '2026-02-02 19:30Z')$$,
                  'emr: a lowercase z is UTC, a zone name or abbreviation is that zone, a time without one (even with PM) is the client''s');
SELECT is((SELECT count(*) FROM logons WHERE client_id = 3 AND source = 'emr' AND source_event_id ~ '^[0-9a-f]{32}$'), 1::bigint,
          'emr: a row without an event id is keyed by its content');
SELECT is((SELECT application FROM accounts WHERE client_id = 3 AND realm = 'app' AND application = 'PACS'), 'PACS',
          'emr: the application comes from the staging column');
SELECT results_eq($$SELECT reason, count(*) FROM load_rejects WHERE client_id = 3 AND source = 'emr' GROUP BY 1$$,
                  $$VALUES ('invalid time', 2::bigint), ('invalid time: not a time', 1::bigint)$$, 'emr: an offset out of range, an unknown zone, infinity');
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES
  ('carol', 'LAB1', '2026-02-02 08:05:00z', 'LOGIN', 'm1'), ('carol', 'LAB1', '2026-02-02 10:00:00', 'LOGIN', NULL);
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_emr_audit(3, NULL)$$, $$VALUES (0::bigint, 2::bigint)$$,
                  'source => NULL keeps duplicate detection (the default source name)');
SELECT is((SELECT count(*) FROM logons WHERE client_id = 3 AND source IS NULL), 0::bigint, 'no logon without a source');

-- An extreme but valid time is a reject, not the end of the load: 4714 BC
-- overflowed the client's local day (devices) and the rollup marks, failed
-- the whole load and left the stage wedged.  Plausible is 1990-01-01 UTC up
-- to a day after now().
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES
  ('bad', 'EXAM1', '4714-11-24 00:00:00+00 BC', 'LOGIN', 'x1'), ('carol', 'LAB1', '2026-02-05 08:00:00', 'LOGIN', 'x2'),
  ('carol', 'LAB1', '1989-12-31 23:00:00Z', 'LOGIN', 'x3'), ('carol', 'LAB1', (now() + interval '2 days')::text, 'LOGIN', 'x4');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_emr_audit(3)$$, $$VALUES (1::bigint, 3::bigint)$$,
                  'emr: 4714 BC, before 1990 and two days ahead are rejected, the good row loads');
SELECT is((SELECT count(*) FROM load_rejects WHERE client_id = 3 AND source = 'emr'
            AND reason = 'invalid time: outside 1990-01-01 to a day after now'), 3::bigint, 'emr: out of range, with the reason');
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "4714-11-24T00:00:00Z BC", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 901, "TargetUserName": "bad", "TargetDomainName": "LAB", "LogonType": "2"}'),
  ('{"@timestamp": "2026-02-05T08:00:00Z", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 902, "TargetUserName": "carol", "TargetDomainName": "LAB", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_windows_events(3)$$, $$VALUES (1::bigint, 1::bigint)$$,
                  'windows: 4714 BC is rejected, the good event loads');
INSERT INTO entra_signin_staging (raw) VALUES
  ('{"id": "x1", "createdDateTime": "4714-11-24T00:00:00Z BC", "userPrincipalName": "bad@lab.example", "isInteractive": true}'),
  ('{"id": "x2", "createdDateTime": "2026-02-05T08:00:00Z", "userPrincipalName": "carol@lab.example", "isInteractive": true}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_entra_signins(3)$$, $$VALUES (1::bigint, 1::bigint)$$,
                  'entra: 4714 BC is rejected (it failed in the rollup trigger), the good sign-in loads');
SELECT results_eq($$SELECT source, reason FROM load_rejects WHERE client_id = 3 AND raw ~ '4714' ORDER BY source$$,
                  $$VALUES ('emr', 'invalid time: outside 1990-01-01 to a day after now'),
                           ('entra', 'no valid createdDateTime: outside 1990-01-01 to a day after now'),
                           ('windows', 'invalid @timestamp: outside 1990-01-01 to a day after now')$$,
                  'each source says why');
INSERT INTO clients (client_id, name, time_zone) VALUES (4, 'Tokyo', 'Asia/Tokyo');
SET mspbill.client_id = 4;
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES
  ('bad', 'T1', '294276-12-31 23:00:00+00', 'LOGIN', 't1'), ('aki', 'T1', '2026-02-05 08:00:00', 'LOGIN', 't2');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_emr_audit(4)$$, $$VALUES (1::bigint, 1::bigint)$$,
                  'emr: the last valid timestamptz, a day past the end in Tokyo, is rejected');
SELECT is((SELECT count(*) FROM emr_audit_staging), 0::bigint, 'no stage is left wedged');
SELECT results_eq($$SELECT loaded FROM msp_load_emr_audit(4)$$, $$VALUES (0::bigint)$$, 'and the next load runs');

-- The loaders read times the same whatever the session's settings.
SET DateStyle = 'ISO, DMY';
SET timezone_abbreviations = 'Australia';
SET TimeZone = 'Asia/Kolkata';
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES
  ('aki', 'T1', '5/10/2026 08:00', 'LOGIN', 's1'), ('aki', 'T1', '2026-02-02 08:00:00 EST', 'LOGIN', 's2');
SELECT results_eq($$SELECT loaded FROM msp_load_emr_audit(4)$$, $$VALUES (2::bigint)$$, 'loaded under DMY and Australian abbreviations');
RESET DateStyle;
RESET timezone_abbreviations;
RESET TimeZone;
SELECT results_eq($$SELECT source_event_id, at FROM logons WHERE client_id = 4 AND source_event_id ~ '^s' ORDER BY 1$$,
                  $$VALUES ('s1', '2026-05-10 08:00 Asia/Tokyo'::timestamptz), ('s2', '2026-02-02 13:00Z')$$,
                  'month/day/year and EST as US Eastern, whatever DateStyle and timezone_abbreviations say');
SET mspbill.client_id = 3;
SET TimeZone = 'Asia/Kolkata';
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "2026-02-06 08:00:00", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 903, "TargetUserName": "carol", "TargetDomainName": "LAB", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded FROM msp_load_windows_events(3)$$, $$VALUES (1::bigint)$$, 'windows: a time without a zone loads');
RESET TimeZone;
SELECT is((SELECT at FROM logons WHERE client_id = 3 AND source_event_id = 'LAB1:903'), '2026-02-06 08:00Z'::timestamptz,
          'windows: a time without a zone is UTC, whatever the session''s TimeZone');

-- The special inputs PostgreSQL reads as times are not times.
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES
  ('carol', 'LAB1', 'now', 'LOGIN', 'w1'), ('carol', 'LAB1', 'today', 'LOGIN', 'w2'), ('carol', 'LAB1', 'yesterday', 'LOGIN', 'w3'),
  ('carol', 'LAB1', 'tomorrow', 'LOGIN', 'w4'), ('carol', 'LAB1', 'epoch', 'LOGIN', 'w5'), ('carol', 'LAB1', 'today allballs', 'LOGIN', 'w6'),
  ('carol', 'LAB1', ' NOW ', 'LOGIN', 'w7');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_emr_audit(3)$$, $$VALUES (0::bigint, 7::bigint)$$,
                  'emr: now, today, yesterday, tomorrow, epoch, allballs are rejected');
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "now", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 904, "TargetUserName": "carol", "TargetDomainName": "LAB", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_windows_events(3)$$, $$VALUES (0::bigint, 1::bigint)$$, 'windows: now is rejected');
INSERT INTO entra_signin_staging (raw) VALUES
  ('{"id": "w8", "createdDateTime": "today", "userPrincipalName": "carol@lab.example", "isInteractive": true}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_entra_signins(3)$$, $$VALUES (0::bigint, 1::bigint)$$, 'entra: today is rejected');
SELECT results_eq($$SELECT reason, count(*) FROM load_rejects WHERE client_id = 3 AND reason LIKE '%not a time' GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('invalid @timestamp: not a time', 2::bigint), ('invalid time: not a time', 8::bigint),
                           ('no valid createdDateTime: not a time', 1::bigint)$$,
                  'each as "not a time", like infinity');

-- A user name of only white space is no user.
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES ('   ', 'LAB1', '2026-02-05 09:00:00', 'LOGIN', 'u1');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_emr_audit(3)$$, $$VALUES (0::bigint, 1::bigint)$$, 'emr: a user of spaces is rejected');
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "2026-02-05T09:00:00Z", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 905, "TargetUserName": "  ", "TargetDomainName": "LAB", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_windows_events(3)$$, $$VALUES (0::bigint, 1::bigint)$$, 'windows: a TargetUserName of spaces is rejected');
INSERT INTO entra_signin_staging (raw) VALUES
  ('{"id": "u2", "createdDateTime": "2026-02-05T09:00:00Z", "userPrincipalName": " \t ", "isInteractive": true}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_entra_signins(3)$$, $$VALUES (0::bigint, 1::bigint)$$, 'entra: a userPrincipalName of white space is rejected');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE client_id = 3 AND (raw ~ '(905|u1|u2)') ORDER BY source$$,
                  $$VALUES ('no user'), ('no userPrincipalName'), ('no TargetUserName')$$, 'as no user');
SELECT is((SELECT count(*) FROM accounts WHERE client_id = 3 AND btrim(name, E' \t\\') IN ('', 'LAB')), 0::bigint,
          'no account of white space');

-- The edges of the plausible range load in the farthest zones: the first
-- instant (local day 1989-12-31 at UTC-12) and a day ahead at UTC+14 mark
-- their days for the rollups without error.
INSERT INTO clients (client_id, name, time_zone) VALUES (5, 'West', 'Etc/GMT+12'), (6, 'East', 'Pacific/Kiritimati');
SET mspbill.client_id = 5;
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES ('w', 'W1', '1990-01-01 00:00:00Z', 'LOGIN', 'e1');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_emr_audit(5)$$, $$VALUES (1::bigint, 0::bigint)$$,
                  'the first plausible instant loads at UTC-12 (local day 1989-12-31)');
SET mspbill.client_id = 6;
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id)
VALUES ('e', 'E1', to_char(now() AT TIME ZONE 'UTC' + interval '23 hours 59 minutes', 'YYYY-MM-DD HH24:MI:SS') || 'Z', 'LOGIN', 'e2');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_emr_audit(6)$$, $$VALUES (1::bigint, 0::bigint)$$,
                  'a time just under a day ahead loads at UTC+14');

-- An error in a later step, even in a trigger, rejects the record that
-- raised it and loads the rest: here a planted trigger refuses three events.
CREATE FUNCTION public.refuse_planted() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF NEW.source_event_id IN ('p2', 'LAB1:906', 'p5') THEN
    RAISE EXCEPTION 'planted failure' USING ERRCODE = 'numeric_value_out_of_range';
  END IF;
  RETURN NEW;
END $f$;
CREATE TRIGGER refuse_planted BEFORE INSERT ON mspbill.logons FOR EACH ROW EXECUTE FUNCTION public.refuse_planted();
SET mspbill.client_id = 3;
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES
  ('carol', 'LAB1', '2026-02-07 08:00:00', 'LOGIN', 'p1'), ('carol', 'LAB1', '2026-02-07 09:00:00', 'LOGIN', 'p2'),
  ('carol', 'LAB1', '2026-02-07 10:00:00', 'LOGIN', 'p3');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_emr_audit(3)$$, $$VALUES (2::bigint, 1::bigint)$$,
                  'emr: a record a trigger refuses is rejected, the others load');
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "2026-02-07T08:00:00Z", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 906, "TargetUserName": "carol", "TargetDomainName": "LAB", "LogonType": "2"}'),
  ('{"@timestamp": "2026-02-07T09:00:00Z", "Hostname": "LAB1", "EventID": 4624, "RecordNumber": 907, "TargetUserName": "carol", "TargetDomainName": "LAB", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_windows_events(3)$$, $$VALUES (1::bigint, 1::bigint)$$,
                  'windows: likewise');
INSERT INTO entra_signin_staging (raw) VALUES
  ('{"id": "p4", "createdDateTime": "2026-02-07T08:00:00Z", "userPrincipalName": "carol@lab.example", "isInteractive": true}'),
  ('{"id": "p5", "createdDateTime": "2026-02-07T09:00:00Z", "userPrincipalName": "carol@lab.example", "isInteractive": true}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_entra_signins(3)$$, $$VALUES (1::bigint, 1::bigint)$$,
                  'entra: likewise');
SELECT results_eq($$SELECT source, reason FROM load_rejects WHERE client_id = 3 AND reason LIKE 'unloadable%' ORDER BY source$$,
                  $$VALUES ('emr', 'unloadable record: planted failure'), ('entra', 'unloadable record: planted failure'),
                           ('windows', 'unloadable record: planted failure')$$, 'each with the error''s message');
SELECT is((SELECT count(*) FROM windows_event_staging) + (SELECT count(*) FROM entra_signin_staging)
          + (SELECT count(*) FROM emr_audit_staging), 0::bigint, 'and every stage is emptied');
DROP TRIGGER refuse_planted ON mspbill.logons;
DROP FUNCTION public.refuse_planted();

-- Should a load ever fail, the loading role can set the client's stage
-- aside (into load_rejects) instead of waiting for a superuser.
SET mspbill.client_id = 6;
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES ('e', 'E1', '2026-02-05 08:00:00', 'LOGIN', 'd1');
INSERT INTO windows_event_staging (raw) VALUES ('{"EventID": 4624}'), ('{"EventID": 4634}');
SET mspbill.client_id = 5;
INSERT INTO entra_signin_staging (raw) VALUES ('{"id": "d2"}');
SELECT results_eq($$SELECT * FROM msp_discard_staged(6)$$, $$VALUES (2::bigint, 0::bigint, 1::bigint)$$,
                  'msp_discard_staged empties one client''s stages');
SELECT results_eq($$SELECT source, count(*) FROM load_rejects WHERE client_id = 6 AND reason = 'discarded by ' || session_user GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('emr', 1::bigint), ('windows', 2::bigint)$$, 'into load_rejects, with who discarded them');
SELECT is((SELECT count(*) FROM entra_signin_staging WHERE client_id = 5), 1::bigint, 'and leaves other clients'' rows');
DELETE FROM entra_signin_staging WHERE client_id = 5;
SET mspbill.client_id = 3;

-- two sessions load the same client's stage at once: one loads it, the
-- other finds it consumed (loads of a client take turns)
CREATE EXTENSION dblink;
INSERT INTO windows_event_staging (raw)
SELECT format('{"@timestamp": "2026-02-04T08:00:00Z", "Hostname": "LAB%s", "EventID": 4624, "RecordNumber": %s, "TargetUserName": "new%s", "TargetDomainName": "LAB", "LogonType": "2"}', g, 1000 + g, g)
  FROM generate_series(1, 50) g;  -- record numbers of their own: host and RecordNumber are the key
SELECT dblink_connect('a', format('host=%s port=%s dbname=%s', current_setting('unix_socket_directories'), current_setting('port'), current_database())) \g /dev/null
SELECT dblink_connect('b', format('host=%s port=%s dbname=%s', current_setting('unix_socket_directories'), current_setting('port'), current_database())) \g /dev/null
CREATE TEMP TABLE b_pid AS SELECT pid FROM dblink('b', 'SELECT pg_backend_pid()') AS t(pid integer);
SELECT dblink_exec('a', 'BEGIN') \g /dev/null
CREATE TEMP TABLE concurrent_loads (who text, loaded bigint);
INSERT INTO concurrent_loads SELECT 'a', loaded FROM dblink('a', 'SELECT loaded FROM mspbill.msp_load_windows_events(3)') AS t(loaded bigint);
-- a has loaded and not committed; b starts and must wait for it
SELECT dblink_send_query('b', 'SELECT loaded FROM mspbill.msp_load_windows_events(3)') \g /dev/null
DO $$
BEGIN
	FOR i IN 1..600 LOOP
		EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity a JOIN pg_temp.b_pid b USING (pid) WHERE a.wait_event_type = 'Lock');
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;
SELECT dblink_exec('a', 'COMMIT') \g /dev/null
SELECT lives_ok($$INSERT INTO concurrent_loads SELECT 'b', loaded FROM dblink_get_result('b') AS t(loaded bigint)$$,
                'a second load of the same client at the same time waits, and does not fail');
SELECT results_eq($$SELECT who, loaded FROM concurrent_loads ORDER BY who$$, $$VALUES ('a', 50::bigint), ('b', 0::bigint)$$,
                  'one loads the stage, the other finds it consumed');
SELECT dblink_disconnect('a'), dblink_disconnect('b') \g /dev/null

-- EMR times with a one-digit offset or a zone ending in a digit are the
-- instant PostgreSQL reads, never the client's local time (Berlin, 07:00Z)
INSERT INTO clients (client_id, name, time_zone) VALUES (10, 'Berlin', 'Europe/Berlin'), (11, 'Dupes', 'UTC');
SET mspbill.client_id = 10;
CREATE TEMP TABLE zoned (id text, t text);
INSERT INTO zoned VALUES ('z1', '2026-11-02 08:00:00+3'), ('z2', '2026-11-02 08:00:00-3'),
	('z3', '2026-11-02T08:00:00+300'), ('z4', '2026-11-02 08:00:00 Etc/GMT-3'),
	('z5', '2026-11-02 08:00:00 Etc/GMT+3'), ('z6', '2026-11-02 08:00:00 GMT+3'),
	('z7', '2026-11-02 08:00:00 UTC+3'), ('za', '2026-11-02 08:00:00 XYZ+3'), ('z8', '2026-11-02 08:00:00+03'), ('z9', '2026-11-02 08:00:00');
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id)
SELECT 'zed', 'B1', t, 'LOGIN', id FROM zoned
UNION ALL VALUES ('zed', 'B1', '2026-11-02 08:00:00 XYZ', 'LOGIN', 'x2');
SELECT results_eq($$SELECT loaded, duplicate, rejected FROM msp_load_emr_audit(10)$$, $$VALUES (10::bigint, 0::bigint, 1::bigint)$$,
                  'emr zones: ten loaded, the unknown zone rejected');
SELECT results_eq($$SELECT z.id, l.at FROM zoned z JOIN logons l ON l.client_id = 10 AND l.source_event_id = z.id ORDER BY z.id$$,
                  $$SELECT z.id, CASE WHEN z.id = 'z9' THEN '2026-11-02 07:00Z' ELSE z.t::timestamptz END FROM zoned z ORDER BY z.id$$,
                  'emr: +3, -3, +300, Etc/GMT-3, Etc/GMT+3, GMT+3, UTC+3, XYZ+3 (POSIX) are the instants PostgreSQL reads; no zone is Berlin time');
SELECT is((SELECT count(*) FROM zoned z JOIN logons l ON l.client_id = 10 AND l.source_event_id = z.id
            WHERE z.id <> 'z9' AND l.at = '2026-11-02 07:00Z'), 0::bigint, 'emr: no explicit zone is dropped for local time');
SELECT is((SELECT at FROM logons WHERE client_id = 10 AND source_event_id = 'za'), '2026-11-02 11:00Z'::timestamptz,
          'emr: XYZ+3 is a POSIX zone (3 hours west of UTC), as PostgreSQL reads it, not local time');
SELECT results_eq($$SELECT raw, reason FROM load_rejects WHERE client_id = 10 ORDER BY line_no$$,
                  $$VALUES ('zed,B1,2026-11-02 08:00:00 XYZ,LOGIN,x2', 'invalid time')$$,
                  'emr: an unknown zone XYZ is rejected');

-- the source's event id is unique per client, whatever the time: within a
-- load the first line loads and the rest are duplicates; a later load with
-- the same id at another time is a duplicate too
SET mspbill.client_id = 11;
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES
	('gina', 'G1', '2026-11-02 09:31:00', 'LOGIN', 'g7'), ('gina', 'G1', '2026-11-02 09:30:00', 'LOGIN', 'g7');
SELECT results_eq($$SELECT loaded, duplicate, rejected FROM msp_load_emr_audit(11)$$, $$VALUES (1::bigint, 1::bigint, 0::bigint)$$,
                  'emr: one event id twice in a file with other times: one loads, one duplicate');
SELECT results_eq($$SELECT at FROM logons WHERE client_id = 11 AND source_event_id = 'g7'$$, $$VALUES ('2026-11-02 09:31Z'::timestamptz)$$,
                  'emr: the first line of the event id is kept');
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES ('gina', 'G1', '2026-11-02 09:35:00', 'LOGIN', 'g7');
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_emr_audit(11)$$, $$VALUES (0::bigint, 1::bigint)$$,
                  'emr: a re-export with a corrected time is a duplicate');
SELECT is((SELECT count(*) FROM logons WHERE client_id = 11 AND source_event_id = 'g7'), 1::bigint, 'emr: still one logon for g7');
INSERT INTO windows_event_staging (raw) VALUES
	('{"@timestamp": "2026-11-02T08:00:00Z", "Hostname": "WS1", "EventID": 4624, "RecordNumber": 1, "TargetUserName": "wes", "TargetDomainName": "DUP", "LogonType": "2"}'),
	('{"@timestamp": "2026-11-02T08:05:00Z", "Hostname": "WS1", "EventID": 4624, "RecordNumber": 1, "TargetUserName": "wes", "TargetDomainName": "DUP", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded, duplicate, rejected FROM msp_load_windows_events(11)$$, $$VALUES (1::bigint, 1::bigint, 0::bigint)$$,
                  'windows: host and RecordNumber twice with other @timestamps: one loads, one duplicate');
INSERT INTO windows_event_staging (raw) VALUES
	('{"@timestamp": "2026-11-02T08:10:00Z", "Hostname": "WS1", "EventID": 4624, "RecordNumber": 1, "TargetUserName": "wes", "TargetDomainName": "DUP", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_windows_events(11)$$, $$VALUES (0::bigint, 1::bigint)$$,
                  'windows: the same record with another time in a later load is a duplicate');
SELECT results_eq($$SELECT at FROM logons WHERE client_id = 11 AND source = 'windows'$$, $$VALUES ('2026-11-02 08:00Z'::timestamptz)$$,
                  'windows: one logon, the first record''s');
INSERT INTO entra_signin_staging (raw) VALUES
	('{"id": "a1", "userPrincipalName": "ann@dup.example", "createdDateTime": "2026-11-02T10:00:00Z"}'),
	('{"id": "a1", "userPrincipalName": "ann@dup.example", "createdDateTime": "2026-11-02T10:01:00Z"}');
SELECT results_eq($$SELECT loaded, duplicate, rejected FROM msp_load_entra_signins(11)$$, $$VALUES (1::bigint, 1::bigint, 0::bigint)$$,
                  'entra: one id twice with other times: one loads, one duplicate');
INSERT INTO entra_signin_staging (raw) VALUES ('{"id": "a1", "userPrincipalName": "ann@dup.example", "createdDateTime": "2026-11-02T10:02:00Z"}');
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_entra_signins(11)$$, $$VALUES (0::bigint, 1::bigint)$$,
                  'entra: the same id with another time in a later load is a duplicate');
SELECT is((SELECT count(*) FROM logons WHERE client_id = 11 AND source = 'entra'), 1::bigint, 'entra: one logon for a1');
SET mspbill.client_id = 3;

-- One administrator's RDP session on a terminal server, real-shaped (NXLog
-- through Logstash: EventTime local, @timestamp seconds late): two linked
-- 4624s (elevated and limited token), a reconnect (type 7, linked too)
-- closed within milliseconds, and the logoffs.  One logon is one session.
INSERT INTO clients (client_id, name, time_zone) VALUES (20, 'TS once', 'America/Chicago'),
	(21, 'TS second half first', 'America/Chicago'), (22, 'TS first half first', 'America/Chicago');
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user, price_per_seat, shared_billing)
SELECT c, 1, '[2026-01-01,)', 'per_user', 10, 25, 'peak' FROM generate_series(20, 22) c;
CREATE TEMP TABLE rdp (n serial, raw text);
\copy rdp (raw) FROM '../fixtures/windows_rdp_session.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SET mspbill.client_id = 20;
INSERT INTO windows_event_staging (raw) SELECT raw FROM rdp ORDER BY n;
SELECT results_eq($$SELECT * FROM msp_load_windows_events(20)$$, $$VALUES (2::bigint, 0::bigint, 5::bigint, 2::bigint, 0::bigint, 0::bigint)$$,
                  'rdp: 2 logons (the session and the reconnect), 5 logoffs paired, the 2 linked halves skipped, none held');
SELECT results_eq($$SELECT at, ended, session_key FROM logons WHERE client_id = 20 ORDER BY at$$,
                  $$VALUES ('2026-03-03 14:00Z'::timestamptz, '2026-03-03 23:02:09Z'::timestamptz, 'TS1:0x4f2a1c'),
                           ('2026-03-03 16:15:03Z', '2026-03-03 16:15:03Z', 'TS1:0x7c0e10')$$,
                  'rdp: the session is the linked pair''s smaller logon id, from EventTime (Chicago) to the first logoff; the reconnect is an instant');
UPDATE accounts SET kind = 'shared' WHERE client_id = 20;
SELECT is((msp_segment_quantities(20, 1, '[2026-03-01,2026-04-01)', '[2026-03-01,2026-04-01)')).seat_count, 1,
          'peak: one person in one RDP session is one seat (it was 4)');
-- a second, real concurrent session of the room account makes it two
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "2026-03-03T17:00:09.100Z", "EventTime": "2026-03-03 11:00:00", "Hostname": "TS1.clinic.example", "EventID": 4624, "RecordNumber": 50100, "TargetUserName": "or-room1", "TargetDomainName": "CLINIC", "TargetLogonId": "0x8a0001", "TargetLinkedLogonId": "0x0", "LogonType": "10"}'),
  ('{"@timestamp": "2026-03-03T17:30:21.300Z", "EventTime": "2026-03-03 11:30:00", "Hostname": "TS1.clinic.example", "EventID": 4634, "RecordNumber": 50101, "TargetUserName": "or-room1", "TargetDomainName": "CLINIC", "TargetLogonId": "0x8a0001", "LogonType": "10"}');
SELECT results_eq($$SELECT loaded, paired FROM msp_load_windows_events(20)$$, $$VALUES (1::bigint, 1::bigint)$$, 'rdp: a second session loads');
-- an unlock whose logoff is not in the export is still an instant, not an hour's session
INSERT INTO windows_event_staging (raw) VALUES
  ('{"@timestamp": "2026-03-03T18:40:02.100Z", "EventTime": "2026-03-03 12:40:00", "Hostname": "TS1.clinic.example", "EventID": 4624, "RecordNumber": 50102, "TargetUserName": "or-room1", "TargetDomainName": "CLINIC", "TargetLogonId": "0x8b0001", "TargetLinkedLogonId": "0x0", "LogonType": "7"}');
SELECT results_eq($$SELECT loaded, held FROM msp_load_windows_events(20)$$, $$VALUES (1::bigint, 0::bigint)$$, 'rdp: an unlock without its logoff loads');
SELECT is((SELECT ended FROM logons WHERE client_id = 20 AND session_key = 'TS1:0x8b0001'), '2026-03-03 18:40Z'::timestamptz,
          'it ends where it begins');
SELECT is((msp_segment_quantities(20, 1, '[2026-03-01,2026-04-01)', '[2026-03-01,2026-04-01)')).seat_count, 2,
          'peak: two sessions at once are two seats');
DELETE FROM logons WHERE client_id = 20 AND session_key IN ('TS1:0x8a0001', 'TS1:0x8b0001');

-- The two halves of the export in either order give the same logons.
SET mspbill.client_id = 21;
INSERT INTO windows_event_staging (raw) SELECT raw FROM rdp WHERE n > 5 ORDER BY n;
SELECT results_eq($$SELECT loaded, paired, held FROM msp_load_windows_events(21)$$, $$VALUES (0::bigint, 0::bigint, 4::bigint)$$,
                  'second half first: its 4 logoffs wait for their logons');
SELECT is((SELECT count(*) FROM pending_logoffs WHERE client_id = 21), 4::bigint, 'held in pending_logoffs');
INSERT INTO windows_event_staging (raw) SELECT raw FROM rdp WHERE n > 5 ORDER BY n;
SELECT results_eq($$SELECT loaded, paired, held FROM msp_load_windows_events(21)$$, $$VALUES (0::bigint, 0::bigint, 4::bigint)$$,
                  'loaded again: the same 4 still wait (held, not paired)');
INSERT INTO windows_event_staging (raw) SELECT raw FROM rdp WHERE n <= 5 ORDER BY n;
SELECT results_eq($$SELECT loaded, paired, held FROM msp_load_windows_events(21)$$, $$VALUES (2::bigint, 5::bigint, 0::bigint)$$,
                  'then the first half: the logons take the held logoffs');
SELECT is((SELECT count(*) FROM pending_logoffs WHERE client_id = 21), 0::bigint, 'nothing is left waiting');
SET mspbill.client_id = 22;
INSERT INTO windows_event_staging (raw) SELECT raw FROM rdp WHERE n <= 5 ORDER BY n;
SELECT results_eq($$SELECT loaded, paired, held FROM msp_load_windows_events(22)$$, $$VALUES (2::bigint, 1::bigint, 0::bigint)$$,
                  'first half first: the session is open');
INSERT INTO windows_event_staging (raw) SELECT raw FROM rdp WHERE n > 5 ORDER BY n;
SELECT results_eq($$SELECT loaded, paired FROM msp_load_windows_events(22)$$, $$VALUES (0::bigint, 3::bigint)$$,
                  'then the second half closes it');
SELECT set_eq($$SELECT client_id, a.name, d.name AS device, l.at, l.ended, l.presence, l.source_event_id, l.session_key
                  FROM logons l JOIN accounts a USING (client_id, account_id) JOIN devices d USING (client_id, device_id)
                 WHERE client_id IN (21, 22)$$,
              $$SELECT c, a.name, d.name AS device, l.at, l.ended, l.presence, l.source_event_id, l.session_key
                  FROM logons l JOIN accounts a USING (client_id, account_id) JOIN devices d USING (client_id, device_id),
                       (VALUES (21), (22)) v(c)
                 WHERE client_id = 20$$,
              'both orders give the logons of the export loaded at once');
-- a load repeated after its logoffs came adds nothing and changes nothing
SET mspbill.client_id = 20;
INSERT INTO windows_event_staging (raw) SELECT raw FROM rdp ORDER BY n;
SELECT results_eq($$SELECT loaded, duplicate, held FROM msp_load_windows_events(20)$$, $$VALUES (0::bigint, 2::bigint, 0::bigint)$$,
                  'rdp loaded again: 2 duplicates');
SELECT results_eq($$SELECT at, ended FROM logons WHERE client_id = 20 ORDER BY at$$,
                  $$VALUES ('2026-03-03 14:00Z'::timestamptz, '2026-03-03 23:02:09Z'::timestamptz),
                           ('2026-03-03 16:15:03Z', '2026-03-03 16:15:03Z')$$, 'and the sessions are as they were');
-- a held logoff that never meets its logon is dropped once loads are a month past it
SET mspbill.client_id = 21;
INSERT INTO windows_event_staging (raw) VALUES
  ('{"EventTime": "2026-03-04 09:00:00", "Hostname": "TS1", "EventID": 4634, "RecordNumber": 1, "TargetUserName": "x", "TargetDomainName": "CLINIC", "TargetLogonId": "0x99", "LogonType": "2"}');
SELECT results_eq($$SELECT held FROM msp_load_windows_events(21)$$, $$VALUES (1::bigint)$$, 'an orphan logoff is held');
INSERT INTO windows_event_staging (raw) VALUES
  ('{"EventTime": "2026-04-05 09:00:00", "Hostname": "TS1", "EventID": 4624, "RecordNumber": 2, "TargetUserName": "x", "TargetDomainName": "CLINIC", "TargetLogonId": "0x98", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded FROM msp_load_windows_events(21)$$, $$VALUES (1::bigint)$$, 'a load a month later');
SELECT is((SELECT count(*) FROM pending_logoffs WHERE client_id = 21), 0::bigint, 'drops it');
-- a file's byte-order mark before its first record, and blank lines
-- (COPY ... FORCE_NOT_NULL (raw) stages them as empty lines)
INSERT INTO windows_event_staging (raw) VALUES
  (E'\ufeff{"EventTime": "2026-04-06 09:00:00", "Hostname": "TS1", "EventID": 4624, "RecordNumber": 3, "TargetUserName": "x", "TargetDomainName": "CLINIC", "TargetLogonId": "0x97", "LogonType": "2"}'),
  (''), (E' \t');
SELECT results_eq($$SELECT loaded, skipped, rejected FROM msp_load_windows_events(21)$$, $$VALUES (1::bigint, 2::bigint, 0::bigint)$$,
                  'windows: a byte-order mark is read past, blank lines are skipped');
INSERT INTO entra_signin_staging (raw) VALUES
  (E'\ufeff{"id": "bom1", "createdDateTime": "2026-04-06T09:00:00Z", "userPrincipalName": "x@clinic.example", "isInteractive": true}'),
  ('');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_entra_signins(21)$$, $$VALUES (1::bigint, 0::bigint)$$,
                  'entra: a byte-order mark is read past, a blank line is no record');

-- Which time: the event's own, in UTC, whatever the shipper and the session.
SET mspbill.client_id = 20;
SET TimeZone = 'Asia/Tokyo';
INSERT INTO windows_event_staging (raw) VALUES
  -- NXLog's own file (no @timestamp): EventTime, the host's local time
  ('{"EventTime": "2026-03-05 09:00:00", "EventReceivedTime": "2026-03-05 09:00:01", "SourceModuleName": "eventlog", "SourceModuleType": "im_msvistalog", "Hostname": "TS1.clinic.example", "EventID": 4624, "RecordNumber": 60001, "TargetUserName": "t1", "TargetDomainName": "CLINIC", "TargetLogonId": "0x601", "LogonType": "2"}'),
  -- NXLog with a DateFormat that writes the offset
  ('{"EventTime": "2026-03-05T09:30:00.000000-06:00", "@timestamp": "2026-03-05T15:31:35.000Z", "Hostname": "TS1", "EventID": 4624, "RecordNumber": 60002, "TargetUserName": "t2", "TargetDomainName": "CLINIC", "TargetLogonId": "0x602", "LogonType": "2"}'),
  -- TimeCreated without a zone (Windows'' SystemTime is UTC), no EventTime
  ('{"TimeCreated": "2026-03-05 16:00:00", "@timestamp": "2026-03-05T16:01:35.000Z", "Hostname": "TS1", "EventID": 4624, "RecordNumber": 60003, "TargetUserName": "t3", "TargetDomainName": "CLINIC", "TargetLogonId": "0x603", "LogonType": "2"}'),
  -- only Logstash''s @timestamp: the fallback
  ('{"@timestamp": "2026-03-05T17:00:00.000Z", "Hostname": "TS1", "EventID": 4624, "RecordNumber": 60004, "TargetUserName": "t4", "TargetDomainName": "CLINIC", "TargetLogonId": "0x604", "LogonType": "2"}'),
  -- EventTime across the spring-forward gap (2026-03-08 02:30 does not exist in Chicago)
  ('{"EventTime": "2026-03-08 03:30:00", "@timestamp": "2026-03-08T08:30:40.000Z", "Hostname": "TS1", "EventID": 4624, "RecordNumber": 60005, "TargetUserName": "t5", "TargetDomainName": "CLINIC", "TargetLogonId": "0x605", "LogonType": "2"}'),
  -- a bad EventTime is rejected by its name, not replaced by @timestamp
  ('{"EventTime": "2026-03-05 29:00:00", "@timestamp": "2026-03-05T18:00:00.000Z", "Hostname": "TS1", "EventID": 4624, "RecordNumber": 60006, "TargetUserName": "t6", "TargetDomainName": "CLINIC", "TargetLogonId": "0x606", "LogonType": "2"}'),
  ('{"Hostname": "TS1", "EventID": 4624, "RecordNumber": 60007, "TargetUserName": "t7", "TargetDomainName": "CLINIC", "TargetLogonId": "0x607", "LogonType": "2"}');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_windows_events(20)$$, $$VALUES (5::bigint, 2::bigint)$$,
                  'times: five loaded, a bad EventTime and a record without any time rejected');
RESET TimeZone;
SELECT results_eq($$SELECT a.name, l.at FROM logons l JOIN accounts a USING (client_id, account_id)
                     WHERE l.client_id = 20 AND a.name ~ '\\t[0-9]$' ORDER BY a.name$$,
                  $$VALUES ('CLINIC\t1', '2026-03-05 15:00Z'::timestamptz), ('CLINIC\t2', '2026-03-05 15:30Z'),
                           ('CLINIC\t3', '2026-03-05 16:00Z'), ('CLINIC\t4', '2026-03-05 17:00Z'), ('CLINIC\t5', '2026-03-08 08:30Z')$$,
                  'EventTime in the client''s zone (or its own offset), TimeCreated in UTC, @timestamp last; never the session''s Tokyo');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE client_id = 20 ORDER BY line_no$$,
                  $$VALUES ('invalid EventTime'), ('no event time')$$, 'the time field is named');

-- The real export's logon records, their network logons read as interactive
-- so that they load: EventTime read in the lab's zone (UTC-4 in October,
-- America/New_York) is each event's time, at most 95 s before Logstash's
-- @timestamp, never after it.
\if :have_fixture
INSERT INTO clients (client_id, name, time_zone) VALUES (30, 'Shire', 'America/New_York');
SET mspbill.client_id = 30;
CREATE TEMP TABLE shire (raw text);
\copy shire (raw) FROM PROGRAM 'for d in ../../../shared ../../../../shared; do f=$d/fixtures/windows-security/purplesharp_ad_playbook_I.logon_events.jsonl; [ -f $f ] && exec sed "s/\"LogonType\": \"3\"/\"LogonType\": \"2\"/" $f; done; exit 1' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
INSERT INTO windows_event_staging (raw) SELECT raw FROM shire;
CREATE TEMP TABLE shire_load AS SELECT * FROM msp_load_windows_events(30);
SELECT is((SELECT loaded FROM shire_load), (SELECT count(*) FROM shire WHERE raw::jsonb->>'EventID' = '4624'
                                              AND NOT msp_is_machine_account(raw::jsonb->>'TargetUserName')),
          'real export: every 4624 of a person loads (19: pgustavo''s)');
SELECT is((SELECT count(*) FROM shire s JOIN logons l ON l.client_id = 30
             AND l.source_event_id = upper(split_part(s.raw::jsonb->>'Hostname', '.', 1)) || ':' || md5(s.raw)),
          (SELECT loaded FROM shire_load), 'real export: each logon found by its record');
SELECT is((SELECT count(*) FROM shire s JOIN logons l ON l.client_id = 30
             AND l.source_event_id = upper(split_part(s.raw::jsonb->>'Hostname', '.', 1)) || ':' || md5(s.raw)
            WHERE (s.raw::jsonb->>'@timestamp')::timestamptz - l.at NOT BETWEEN '0 s' AND '95 s'), 0::bigint,
          'real export: every logon at its EventTime, 0 to 95 s before @timestamp');
\else
SELECT skip('the shared Windows fixture is absent: ../shared/fixtures/windows-security/ (real-export time checks skipped)', 3);
\endif
SET mspbill.client_id = 3;

-- Entra ID as Graph returns it: a saved response of two pages (each
-- {"@odata.context", "@odata.nextLink", "value": [signIn, ...]}),
-- pretty-printed one after the other, and the same on one line.
INSERT INTO clients (client_id, name, time_zone) VALUES (40, 'Graph pages', 'UTC'), (41, 'Graph one line', 'UTC'),
	(42, 'Graph broken page', 'UTC');
SET mspbill.client_id = 40;
\copy entra_signin_staging (raw) FROM '../fixtures/entra_graph_pages.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT is((SELECT count(*) FROM entra_signin_staging WHERE client_id = 40), 241::bigint, 'graph: 241 pretty-printed lines staged');
SELECT results_eq($$SELECT * FROM msp_load_entra_signins(40)$$, $$VALUES (3::bigint, 0::bigint, 2::bigint, 0::bigint)$$,
                  'graph pages: 3 sign-ins loaded, the non-interactive and the failed one skipped, nothing rejected');
SELECT results_eq($$SELECT a.name, l.at, l.source_event_id FROM logons l JOIN accounts a USING (client_id, account_id)
                     WHERE l.client_id = 40 ORDER BY l.at$$,
                  $$VALUES ('dana@clinic.example', '2026-03-10 14:02:11Z'::timestamptz, '66ea54eb-6301-4ee5-be62-ff5a759b0001'),
                           ('eli@clinic.example', '2026-03-10 14:07:19Z', '66ea54eb-6301-4ee5-be62-ff5a759b0004'),
                           ('fay@clinic.example', '2026-03-11 08:30:00Z', '66ea54eb-6301-4ee5-be62-ff5a759b0005')$$,
                  'graph pages: the signIn objects of both pages');
\copy entra_signin_staging (raw) FROM '../fixtures/entra_graph_pages.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_entra_signins(40)$$, $$VALUES (0::bigint, 3::bigint)$$,
                  'graph pages loaded again: duplicates');
SET mspbill.client_id = 41;
\copy entra_signin_staging (raw) FROM '../fixtures/entra_graph_oneline.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_entra_signins(41)$$, $$VALUES (3::bigint, 0::bigint, 2::bigint, 0::bigint)$$,
                  'graph on one line (two pages back to back): the same counts');
SELECT set_eq($$SELECT a.name, l.at, l.source_event_id FROM logons l JOIN accounts a USING (client_id, account_id) WHERE l.client_id = 41$$,
              $$SELECT a.name, l.at, l.source_event_id FROM logons l JOIN accounts a USING (client_id, account_id) WHERE l.client_id = 40$$,
              'graph on one line: the same logons');
-- a page broken in the middle (an unquoted value) is one reject; the next page loads
SET mspbill.client_id = 42;
\copy entra_signin_staging (raw) FROM PROGRAM 'sed "0,/\"riskState\": \"none\"/s//\"riskState\": none/" ../fixtures/entra_graph_pages.json' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_entra_signins(42)$$, $$VALUES (2::bigint, 0::bigint, 0::bigint, 1::bigint)$$,
                  'graph, first page broken: its records rejected as one, the second page''s 2 loaded');
SELECT results_eq($$SELECT line_no - (SELECT min(line_no) FROM load_rejects WHERE client_id = 42) , reason, raw ~ '^\{\s+"@odata.context".*"riskState": none' FROM load_rejects WHERE client_id = 42$$,
                  $$VALUES (0::bigint, 'not valid JSON', true)$$, 'the reject is the broken page, from its first line, with its text');
SELECT results_eq($$SELECT first_line, is_json, record FROM msp_json_records(ARRAY['{"id": "a", "t": "2026-', '{"id": "b"}', '', '  ',
                                                                                   '[{"id": "c"},', ' {"id": "d"}]', '{"value": []}', '42'])$$,
                  $$VALUES (1, false, '{"id": "a", "t": "2026-'), (2, true, '{"id": "b"}'), (5, true, '{"id": "c"}'), (6, true, '{"id": "d"}'),
                           (8, false, '42')$$,
                  'msp_json_records: a broken JSON line costs itself; blank lines, an array, an empty page, a stray number');
SELECT results_eq($$SELECT first_line, is_json FROM msp_json_records(ARRAY['{"id": "x", "value": [1, 2]}'])$$,
                  $$VALUES (1, true)$$, 'msp_json_records: an object with an id is a record, even with a "value" array');
SET mspbill.client_id = 3;

-- Winlogbeat as it writes (a faithful export built from Elastic's field
-- reference: ECS fields beside winlog.*, event_id and record_id keywords in
-- 8.x and numbers in 7.x, the Security module's winlog.logon.*)
INSERT INTO clients (client_id, name, time_zone) VALUES (43, 'Winlogbeat', 'America/Chicago');
SET mspbill.client_id = 43;
\copy windows_event_staging (raw) FROM '../fixtures/windows_winlogbeat.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT * FROM msp_load_windows_events(43)$$, $$VALUES (2::bigint, 0::bigint, 2::bigint, 4::bigint, 0::bigint, 0::bigint)$$,
                  'winlogbeat: 2 logons, 2 logoffs paired, the linked half, 4672, a network logon and a failed one skipped');
SELECT results_eq($$SELECT a.name, d.name, l.at, l.ended, l.source_event_id, l.session_key
                      FROM logons l JOIN accounts a USING (client_id, account_id) JOIN devices d USING (client_id, device_id)
                     WHERE l.client_id = 43 ORDER BY l.at$$,
                  $$VALUES ('CLINIC\gus', 'TS2', '2026-03-12 14:00:00.512Z'::timestamptz, '2026-03-12 16:30:00.101Z'::timestamptz, 'TS2:182736', 'TS2:0x9a1c2'),
                           ('CLINIC\ivy', 'TS2', '2026-03-12 17:00Z', NULL, 'TS2:182800', 'TS2:0x9c001')$$,
                  'winlogbeat: @timestamp (the record''s time) in UTC, winlog.computer_name, record_id (keyword or number), the linked pair once');
\copy windows_event_staging (raw) FROM '../fixtures/windows_winlogbeat.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, duplicate, rejected FROM msp_load_windows_events(43)$$, $$VALUES (0::bigint, 2::bigint, 0::bigint)$$,
                  'winlogbeat loaded twice: duplicates');
SET mspbill.client_id = 3;

SELECT throws_ok($$SELECT * FROM msp_load_emr_audit(99)$$, 'P0002', 'unknown client 99', 'a load for an unknown client is refused');

-- the real export: 25,993 NXLog records of all channels
\if :have_fixture
SET mspbill.client_id = 2;
\copy windows_event_staging (raw) FROM PROGRAM 'for d in ../../../shared ../../../../shared; do f=$d/fixtures/windows-security/purplesharp_ad_playbook_I.zip; [ -f $f ] && exec unzip -p $f; done; exit 1' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT is((SELECT count(*) FROM windows_event_staging WHERE client_id = 2), 25993::bigint, 'real export: 25,993 records staged');
CREATE TEMP TABLE real_load AS SELECT * FROM msp_load_windows_events(2, 'purplesharp');
SELECT is((SELECT loaded FROM real_load), 0::bigint, 'real export: no presence logon (network, machine or anonymous, or failed)');
SELECT is((SELECT rejected FROM real_load), 0::bigint, 'real export: nothing rejected');
SELECT is((SELECT skipped + paired FROM real_load), 25993::bigint, 'real export: every record skipped cleanly');
SELECT is((SELECT count(*) FROM accounts WHERE client_id = 2), 0::bigint, 'real export: no account created');
SELECT is((SELECT count(*) FROM msp_billable_users(2, '[2020-10-01,2020-11-01)')), 0::bigint, 'real export: no billable person');
SELECT is((SELECT count(*) FROM windows_event_staging WHERE client_id = 2), 0::bigint,
          'real export: the stage is emptied (read in place from ' || :'fixture_zip' || ')');
\else
SELECT skip('the shared Windows fixture is absent: ../shared/fixtures/windows-security/ (real-export checks skipped)', 7);
\endif

-- The duplicate check hashes source and event id into a 16-byte index
-- entry and compares the texts on the rows it finds: source 'emr:a' with
-- id 'b' and source 'emr' with id 'a:b' hash alike (the same text), yet
-- are different events.  The hash is seeded with the client.
INSERT INTO clients (client_id, name, time_zone) VALUES (50, 'Hash twins', 'UTC'), (51, 'Other client', 'UTC'),
	(52, 'One pass', 'America/Chicago');
INSERT INTO accounts (client_id, account_id, realm, name, kind, application) VALUES (50, 5000, 'app', 'hal', 'unknown', 'EMR');
INSERT INTO logons (client_id, account_id, at, source, source_event_id) VALUES (50, 5000, '2026-11-02 08:00Z', 'emr:a', 'b');
SET mspbill.client_id = 50;
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES ('hal', 'H1', '2026-11-02 08:00:00', 'LOGIN', 'a:b');
SELECT results_eq($$SELECT loaded, duplicate, rejected FROM msp_load_emr_audit(50)$$, $$VALUES (1::bigint, 0::bigint, 0::bigint)$$,
                  'an event whose source and id hash like a stored row''s but differ is loaded: the check compares the texts');
SELECT is((SELECT count(DISTINCT hashtextextended(source || ':' || source_event_id, client_id)) FROM logons WHERE client_id = 50),
          1::bigint, 'the two rows do share the hash (so the check above was a real collision)');
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES
	('hal', 'H1', '2026-11-03 08:00:00', 'LOGIN', 'a:b'), ('hal', 'H1', '2026-11-03 09:00:00', 'LOGIN', 'a:c');
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_emr_audit(50)$$, $$VALUES (1::bigint, 1::bigint)$$,
                  'the event itself, again at another time, is still a duplicate; a new id loads');
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_emr_audit(50, 'emr2')$$, $$VALUES (0::bigint, 0::bigint)$$,
                  'an empty stage loads nothing');
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES ('hal', 'H1', '2026-11-03 08:00:00', 'LOGIN', 'a:b');
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_emr_audit(50, 'emr2')$$, $$VALUES (1::bigint, 0::bigint)$$,
                  'the same id from another source is another event');
SET mspbill.client_id = 51;
INSERT INTO emr_audit_staging (user_name, workstation, event_time, action, event_id) VALUES ('hal', 'H1', '2026-11-03 08:00:00', 'LOGIN', 'a:b');
SELECT results_eq($$SELECT loaded, duplicate FROM msp_load_emr_audit(51)$$, $$VALUES (1::bigint, 0::bigint)$$,
                  'the same source and id for another client is that client''s event');
SELECT is((SELECT count(*) FROM logons WHERE source_event_id = 'a:b'), 3::bigint,
          'three rows with id a:b: client 50''s from emr and emr2, client 51''s; none twice');

-- One pass reads, classifies and times each Windows record: a time is
-- read (and can be rejected) only for logons and logoffs; a bad time and
-- a bad record in one batch each get their own reason, and the rest loads.
SET mspbill.client_id = 52;
INSERT INTO windows_event_staging (raw) VALUES
	-- 1 a network logon (type 3) with an unreadable time: skipped, not rejected
	('{"EventTime": "garbage", "Hostname": "P1", "EventID": 4624, "RecordNumber": 1, "TargetUserName": "pam", "TargetDomainName": "ONE", "LogonType": "3", "TargetLogonId": "0x1"}'),
	-- 2 a failed logon (4625) at the special time now: skipped
	('{"EventTime": "now", "Hostname": "P1", "EventID": 4625, "RecordNumber": 2, "TargetUserName": "pam", "TargetDomainName": "ONE", "LogonType": "2"}'),
	-- 3 a logon, local time (Chicago, UTC-6 in November)
	('{"EventTime": "2026-11-02 08:00:00", "Hostname": "P1", "EventID": 4624, "RecordNumber": 3, "TargetUserName": "pam", "TargetDomainName": "ONE", "LogonType": "2", "TargetLogonId": "0x3"}'),
	-- 4 its logoff with a time that cannot be read: rejected by the field's name
	('{"EventTime": "2026-11-02 31:00:00", "Hostname": "P1", "EventID": 4634, "RecordNumber": 4, "TargetUserName": "pam", "TargetDomainName": "ONE", "TargetLogonId": "0x3"}'),
	-- 5 a logoff at the special time today: rejected as not a time
	('{"TimeCreated": "today", "Hostname": "P1", "EventID": 4634, "RecordNumber": 5, "TargetUserName": "pam", "TargetDomainName": "ONE", "TargetLogonId": "0x3"}'),
	-- 6 a Winlogbeat record whose winlog cannot be read as jsonb
	('{"@timestamp": "2026-11-02T14:00:00Z", "winlog": {"event_id": 4624, "computer_name": "P1", "record_id": 6, "event_data": {"TargetUserName": "quin", "LogonType": "2", "Big": 1e1000000}}}'),
	-- 7 a logon with a zone PostgreSQL does not know
	('{"EventTime": "2026-11-02 09:00:00 Mars/Olympus", "Hostname": "P1", "EventID": 4624, "RecordNumber": 7, "TargetUserName": "ray", "TargetDomainName": "ONE", "LogonType": "2", "TargetLogonId": "0x7"}'),
	-- 8 the logoff closing 3, with its own offset
	('{"EventTime": "2026-11-02 09:30:00-06:00", "Hostname": "P1", "EventID": 4634, "RecordNumber": 8, "TargetUserName": "pam", "TargetDomainName": "ONE", "TargetLogonId": "0x3"}');
SELECT results_eq($$SELECT loaded, duplicate, paired, skipped, rejected, held FROM msp_load_windows_events(52)$$,
                  $$VALUES (1::bigint, 0::bigint, 1::bigint, 2::bigint, 4::bigint, 0::bigint)$$,
                  'one pass: one logon and its logoff, two skipped whatever their time, four rejected');
SELECT results_eq($$SELECT line_no - min(line_no) OVER () + 4, reason FROM load_rejects WHERE client_id = 52 ORDER BY line_no$$,
                  $$VALUES (4::bigint, 'invalid EventTime'), (5, 'invalid TimeCreated: not a time'),
                           (6, 'unreadable record: value overflows numeric format'), (7, 'invalid EventTime')$$,
                  'one pass: each rejected record with its own reason');
SELECT results_eq($$SELECT at, ended FROM logons WHERE client_id = 52$$,
                  $$VALUES ('2026-11-02 14:00Z'::timestamptz, '2026-11-02 15:30Z'::timestamptz)$$,
                  'one pass: the logon in the client''s zone, closed by the logoff at its own offset');

-- Entra sign-ins read by msp_json_fields, with jsonb only for what it
-- cannot read: the fields must come out as jsonb would give them.
INSERT INTO clients (client_id, name, time_zone) VALUES (53, 'Entra fields', 'UTC');
SET mspbill.client_id = 53;
INSERT INTO entra_signin_staging (raw) VALUES
  -- 1 escapes in strings; a key given twice (the last wins, as in jsonb)
  ('{"id": "f1", "id": "f1b", "createdDateTime": "2026-11-02T08:00:00Z", "userPrincipalName": "sam\u0040one.example", "isInteractive": true, "deviceDetail": {"displayName": "pc\"1"}}'),
  -- 2 nested deeper than the scanner reads (1,500 levels), which jsonb reads: loads
  ('{"id": "f2", "createdDateTime": "2026-11-02T09:00:00Z", "userPrincipalName": "tess@one.example", "x": ' || repeat('[', 1500) || repeat(']', 1500) || '}'),
  -- 3 an array (read as its elements): one without a userPrincipalName
  ('[{"id": "f3"}]'),
  -- 4 deviceDetail and status that are not objects: no device, not failed
  ('{"id": "f4", "createdDateTime": "2026-11-02T10:00:00Z", "userPrincipalName": "uma@one.example", "deviceDetail": "PC4", "status": 7}'),
  -- 5 a failed sign-in whose errorCode is a string
  ('{"id": "f5", "createdDateTime": "2026-11-02T11:00:00Z", "userPrincipalName": "uma@one.example", "status": {"errorCode": "50126"}}'),
  -- 6 isInteractive false, nested fields first
  ('{"status": {"errorCode": 0}, "isInteractive": false, "id": "f6", "createdDateTime": "2026-11-02T12:00:00Z", "userPrincipalName": "uma@one.example"}'),
  -- 7 a time that is not one
  ('{"id": "f7", "createdDateTime": "yesterday", "userPrincipalName": "uma@one.example"}');
SELECT results_eq($$SELECT loaded, duplicate, skipped, rejected FROM msp_load_entra_signins(53)$$,
                  $$VALUES (3::bigint, 0::bigint, 2::bigint, 2::bigint)$$,
                  'entra fields: three loaded, two skipped, two rejected');
SELECT results_eq($$SELECT l.source_event_id, a.name, d.name FROM logons l JOIN accounts a USING (client_id, account_id)
                      LEFT JOIN devices d USING (client_id, device_id) WHERE l.client_id = 53 ORDER BY l.at$$,
                  $$VALUES ('f1b', 'sam@one.example', NULL::text), ('f2', 'tess@one.example', NULL), ('f4', 'uma@one.example', NULL)$$,
                  'entra fields: escapes read, the last of a repeated key, deep nesting read through jsonb, a device name only from an object');
SELECT results_eq($$SELECT reason FROM load_rejects WHERE client_id = 53 ORDER BY line_no$$,
                  $$VALUES ('no userPrincipalName'), ('no valid createdDateTime: not a time')$$,
                  'entra fields: an array''s element without its user; yesterday is no time');

SELECT * FROM finish();
