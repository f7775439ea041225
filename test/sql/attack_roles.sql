-- The attack suite: every workflow (load, finalize, adjust, read invoices,
-- BI queries) as a login of each non-superuser role, and for each role the
-- attempts an adversary would make: another client through every table,
-- view, function, error message and plan; writes where it must not
-- (invoices, the audit log, triggers, policies, TRUNCATE); search_path and
-- pg_temp hijacks of the SECURITY DEFINER functions.  Tables and views come
-- from the catalog, so new ones are covered without editing this file.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
CREATE EXTENSION dblink;
SET client_min_messages = warning;
SELECT * FROM no_plan();
SELECT msp_install_roles() \g /dev/null

DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY '{atk_admin,atk_billing,atk_bi1,atk_pii1,atk_report1,atk_probe,atk_gone}'::text[] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I LOGIN', r);
		END IF;
	END LOOP;
END
$$;
GRANT mspbill_admin TO atk_admin;
GRANT mspbill_billing TO atk_billing;
GRANT mspbill_bi TO atk_bi1;
GRANT mspbill_pii TO atk_pii1;
GRANT mspbill_report TO atk_report1;
INSERT INTO bi_client_access VALUES ('atk_bi1', 1), ('atk_pii1', 1), ('atk_report1', 1), ('atk_probe', 1),
	('atk_gone', 2);
-- a role dropped while still mapped (issue 13.11): every query below runs with this stale row
DROP ROLE atk_gone;

-- client 2 has rows in every client-keyed table (so that "sees none" means something)
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
VALUES (2, 2, '[2000-01-01,2000-02-01)', 'per_user', 1), (1, 2, '[2000-01-01,2000-02-01)', 'per_user', 1);
INSERT INTO contract_tiers VALUES (2, 2, 10, 0.50), (1, 2, 10, 0.50);
INSERT INTO contracts (client_id, contract_id, effective, model)
VALUES (2, 3, '[2000-02-01,2000-03-01)', 'lines'), (1, 3, '[2000-02-01,2000-03-01)', 'lines');
INSERT INTO contract_lines (client_id, contract_id, line_no, description, source, unit_price)
VALUES (2, 3, 1, 'Users', 'users', 1), (1, 3, 1, 'Users', 'users', 1);
INSERT INTO contract_line_tiers VALUES (2, 3, 1, 10, 0.50), (1, 3, 1, 10, 0.50);
INSERT INTO meter_readings (client_id, meter, day, quantity) VALUES (2, 'backup_gb', '2000-02-01', 1), (1, 'backup_gb', '2000-02-01', 1);
INSERT INTO support_contacts (client_id, contact_id, person_id, at) VALUES (2, 1, 1, '2000-01-10'), (1, 9, 1, '2000-01-10');
INSERT INTO applications VALUES (1, 'EMR', true), (2, 'Dentrix', true);
INSERT INTO person_identities VALUES (1, 1, 'Nora Nurse', 'nora@stolaf.example'),
	(2, 1, 'Dana Dentist', 'dana@maple.example');
INSERT INTO load_rejects (client_id, source, line_no, raw, reason)
VALUES (1, 'emr', 1, 'nurse1,OR1,bad', 'invalid time'), (2, 'emr', 1, 'Dana Dentist,PC1,bad', 'invalid time');
-- licensing (src/licensing.sql): the mappings, snapshots and tickets of both clients
INSERT INTO license_policies VALUES (1, 2, NULL, true), (2, 2, NULL, true);
INSERT INTO partner_companies VALUES (1, 'pax8', 'St. Olaf'), (2, 'pax8', 'Maple');
INSERT INTO psa_contacts VALUES (1, 'halopsa', '401', 1), (2, 'halopsa', '402', 1);
INSERT INTO m365_sku_counts VALUES (1, '2000-01-31', 'sku-1', 'SPB', 'Microsoft 365 Business Premium', 5, 1, 'graph'),
	(2, '2000-01-31', 'sku-1', 'SPB', 'Microsoft 365 Business Premium', 5, 1, 'graph');
INSERT INTO m365_license_assignments VALUES (1, '2000-01-31', 5, 'Microsoft 365 Business Premium', true, 'graph'),
	(2, '2000-01-31', 1, 'Microsoft 365 Business Premium', true, 'graph');
INSERT INTO pax8_subscriptions (client_id, as_of, subscription_id, company, product, quantity, unit_cost, source)
VALUES (1, '2000-01-31', 's1', 'St. Olaf', 'Microsoft 365 Business Premium', 5, 20, 'pax8'),
	(2, '2000-01-31', 's2', 'Maple', 'Microsoft 365 Business Premium', 5, 20, 'pax8');
INSERT INTO psa_tickets (client_id, psa, ticket_id, at, contact, channel)
VALUES (1, 'halopsa', 't1', '2000-01-10', 'someone@stolaf.example', 'ticket'), (2, 'halopsa', 't2', '2000-01-10', 'dana@maple.example', 'ticket');
-- a logoff of each client waiting for its logon
INSERT INTO pending_logoffs VALUES (1, 'OR1:0x1f', '2026-01-05 10:00Z'), (2, 'PC1:0x2e', '2026-01-05 11:00Z');
SELECT msp_finalize_invoice(2, NULL, '{device_silent,day_without_logons,unmapped_account,logon_outside_contract}') \g /dev/null
-- client 2's invoice documents, terms, tax rates and PSA syncs, for the
-- policies to hide
INSERT INTO invoice_terms (client_id, po_reference) VALUES (2, 'PO-2');
INSERT INTO tax_rates VALUES (2, 'cost', 0, 'Tax Exempt');
INSERT INTO psa_mappings (client_id, psa, basis, psa_agreement, psa_item) VALUES (2, 'halopsa', 'cost', 'R-1', 'L-1');
SELECT count(*) FROM msp_psa_sync(2, msp_period(2)) \g /dev/null
-- a month-end run's record of client 2 (finalize_run_clients)
CALL msp_finalize_period(msp_period(2), only_clients => '{2}') \g /dev/null
-- the rollups, refreshed by the admin as cron would; a HIPAA finding of client 2's
SET ROLE atk_admin;
SELECT msp_refresh_rollups() \g /dev/null
RESET ROLE;
INSERT INTO pii_findings VALUES (2, msp_period(2), 'DENTAL-PC1', 'MAPLE\front', 'Dentrix', '2026-01-05 09:00Z', '2026-01-05 10:00Z', 1);
-- a month partition added later is covered like the rest
SELECT msp_add_logon_partitions('2030-01-01', 1) \g /dev/null
INSERT INTO logons (client_id, account_id, device_id, at) VALUES (1, 5, 5, '2030-01-10 10:00Z'), (2, 1, 1, '2030-01-10 10:00Z');

CREATE TEMP VIEW client_tables AS
SELECT c.oid::regclass AS t, c.relname, c.relrowsecurity, c.relforcerowsecurity
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'client_id' AND NOT a.attisdropped
 WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relkind IN ('r', 'p')
 ORDER BY c.relname;
CREATE TEMP VIEW client_views AS
SELECT c.oid::regclass AS t, c.relname, c.reloptions
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'client_id' AND NOT a.attisdropped
 WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relkind IN ('v', 'm')
 ORDER BY c.relname;
CREATE TEMP TABLE roles (r name);
INSERT INTO roles VALUES ('public'), ('mspbill_admin'), ('mspbill_billing'), ('mspbill_bi'), ('mspbill_pii'), ('mspbill_report');
GRANT SELECT ON client_tables, client_views, roles TO PUBLIC;

-- 1. The catalog: policies, grants, definer functions, views
SELECT ok((SELECT count(*) FROM client_tables) >= 21, 'the catalog lists the client-keyed tables');
SELECT is(ARRAY(SELECT relname::text FROM client_tables WHERE NOT relrowsecurity AND relname !~ '_staging$'), '{}'::text[],
          'every client-keyed table has row-level security (the COPY stages excepted)');
SELECT is(ARRAY(SELECT format('%s %s %s', r, relname, p) FROM client_tables, roles,
                unnest('{SELECT,UPDATE,DELETE,TRUNCATE,TRIGGER,REFERENCES}'::text[]) p
                 WHERE relname ~ '_staging$' AND CASE WHEN relname ~ '_staging$' THEN has_table_privilege(r, t, p)
                   OR (p = 'SELECT' AND has_any_column_privilege(r, t, 'SELECT')) END),
          '{}'::text[], 'the stages without row-level security: nobody but the owner reads, changes or empties them');
SELECT is(ARRAY(SELECT format('%s: %s to %s', c.relname, x.privilege_type, x.grantee::regrole)
                  FROM pg_class c, aclexplode(c.relacl) x
                 WHERE c.relnamespace = 'mspbill'::regnamespace AND x.grantee <> c.relowner
                   AND x.privilege_type IN ('TRIGGER', 'REFERENCES', 'TRUNCATE')
                UNION ALL
                SELECT format('%s.%s: %s to %s', c.relname, a.attname, x.privilege_type, x.grantee::regrole)
                  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid, aclexplode(a.attacl) x
                 WHERE c.relnamespace = 'mspbill'::regnamespace AND x.privilege_type = 'REFERENCES'),
          '{}'::text[], 'nobody but the owner holds TRIGGER, REFERENCES or TRUNCATE on anything');
SELECT is(ARRAY(SELECT format('%s: %s to %s', c.relname, x.privilege_type, x.grantee::regrole)
                  FROM pg_class c, aclexplode(c.relacl) x
                 WHERE c.relnamespace = 'mspbill'::regnamespace AND x.grantee <> c.relowner
                   AND c.relname IN ('invoices', 'invoice_items', 'audit_log')
                   AND x.privilege_type NOT IN ('SELECT')),
          '{}'::text[], 'invoices, their lines and the audit log: read-only for every role');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'mspbill'::regnamespace AND p.prosecdef ORDER BY 1),
          '{msp_account_name,msp_discard_staged,msp_finalize_invoice,msp_finalize_run_begin,msp_finalize_run_client,msp_finalize_run_end,msp_issue_adjustment,msp_load_emr_audit,msp_load_entra_signins,msp_load_m365_activity,msp_load_m365_graph,msp_load_m365_users_csv,msp_load_pax8_subscriptions,msp_load_psa_tickets,msp_load_windows_events,msp_match_psa_tickets,msp_psa_sync,msp_rebuild_rollups,msp_refresh_rollups,msp_report_billable_users,msp_report_invoice,msp_report_invoice_lines,msp_report_invoices}'::text[],
          'SECURITY DEFINER: only the writers (invoices, loads, rollups, PSA syncs), the sealed reports and account names on Citus');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'mspbill'::regnamespace AND p.prosecdef
                   AND NOT 'search_path=pg_catalog, mspbill, pg_temp' = ANY (coalesce(p.proconfig, '{}'))),
          '{}'::text[], 'each pins search_path = pg_catalog, mspbill, pg_temp');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = 'mspbill'::regnamespace
                   AND (p.prosecdef OR p.proname IN ('msp_load_guarded', 'msp_load_normalized_guarded', 'msp_load_begin', 'msp_load_normalized', 'msp_install_roles',
                                                     'msp_rollup_days', 'msp_rollup_period', 'msp_stage_csv', 'msp_stage_json',
                                                     'msp_store_assignments', 'msp_store_rejects'))
                   AND has_function_privilege('public', p.oid, 'EXECUTE')),
          '{}'::text[], 'and none of them (nor the loaders'' or rollups'' internals, nor msp_install_roles) is executable by PUBLIC');
SELECT is(ARRAY(SELECT format('%s: %s to %s', c.relname, x.privilege_type, x.grantee::regrole)
                  FROM pg_class c, aclexplode(c.relacl) x
                 WHERE c.relnamespace = 'mspbill'::regnamespace AND x.grantee = 0 AND c.relname <> 'bi_client_access'),
          '{}'::text[], 'nothing is granted to PUBLIC but bi_client_access (each role holds its own grants)');
SELECT is(ARRAY(SELECT format('%s may %s %s', r, p, t) FROM roles, unnest('{daily_activity,period_invoices,pii_findings,rollup_dirty}'::text[]) t,
                unnest('{INSERT,UPDATE,DELETE}'::text[]) p
                 WHERE r <> 'public' AND has_table_privilege(r, 'mspbill.' || t, p)
                   AND NOT (t = 'rollup_dirty' AND p = 'INSERT' AND r IN ('mspbill_admin', 'mspbill_billing'))),
          '{}'::text[], 'the rollups are written only through msp_refresh_rollups and msp_rebuild_rollups; admin and billing may only add marks');
SELECT is(ARRAY(SELECT format('%s %s', r, f) FROM roles, unnest('{mspbill.msp_refresh_rollups(),mspbill.msp_rebuild_rollups()}'::text[]) f
                 WHERE has_function_privilege(r, f, 'EXECUTE') ORDER BY 1),
          '{"mspbill_admin mspbill.msp_rebuild_rollups()","mspbill_admin mspbill.msp_refresh_rollups()","mspbill_billing mspbill.msp_rebuild_rollups()","mspbill_billing mspbill.msp_refresh_rollups()"}'::text[],
          'only admin and billing may refresh or rebuild the rollups');
SELECT is(ARRAY(SELECT r::text FROM roles WHERE has_schema_privilege(r, 'mspbill', 'CREATE')), '{}'::text[],
          'nobody may create objects in the schema the definer functions search');
SELECT is(ARRAY(SELECT format('%s may %s', r, f) FROM unnest('{atk_bi1,atk_pii1,atk_report1}'::name[]) r,
                unnest(ARRAY['mspbill.msp_finalize_invoice(bigint,daterange,text[])', 'mspbill.msp_issue_adjustment(bigint,daterange,text)',
                             'mspbill.msp_load_windows_events(bigint,text)', 'mspbill.msp_load_entra_signins(bigint,text)',
                             'mspbill.msp_load_emr_audit(bigint,text)', 'mspbill.msp_discard_staged(bigint)']) f
                 WHERE has_function_privilege(r, f, 'EXECUTE')
                UNION ALL
                SELECT format('%s may stage into %s', r, t) FROM unnest('{atk_bi1,atk_pii1,atk_report1}'::name[]) r, client_tables
                 WHERE relname ~ '_staging$' AND CASE WHEN relname ~ '_staging$' THEN has_table_privilege(r, t, 'INSERT') END),
          '{}'::text[], 'BI, PII and report logins can neither stage, load, finalize nor adjust');
SELECT is(ARRAY(SELECT format('%s may not %s', r, f) FROM unnest('{atk_admin,atk_billing}'::name[]) r,
                unnest(ARRAY['mspbill.msp_finalize_invoice(bigint,daterange,text[])', 'mspbill.msp_issue_adjustment(bigint,daterange,text)',
                             'mspbill.msp_load_windows_events(bigint,text)', 'mspbill.msp_load_entra_signins(bigint,text)',
                             'mspbill.msp_load_emr_audit(bigint,text)', 'mspbill.msp_discard_staged(bigint)']) f
                 WHERE NOT has_function_privilege(r, f, 'EXECUTE')),
          '{}'::text[], 'admin and billing logins may load, finalize and adjust');
SELECT is(ARRAY(SELECT relname::text FROM client_views
                 WHERE NOT coalesce(reloptions && '{security_barrier=true,security_invoker=true}', false)),
          '{}'::text[], 'every view that shows client rows is a security barrier (or security invoker)');

-- 2. Policies on every table, whatever the grants: a client-1 reader holding
--    SELECT on everything sees no row of another client anywhere
CREATE TEMP TABLE seen_other (relname name, who name, other bigint);
GRANT ALL ON seen_other TO PUBLIC;
GRANT USAGE ON SCHEMA mspbill TO atk_probe;
GRANT SELECT ON ALL TABLES IN SCHEMA mspbill TO atk_probe;
CREATE FUNCTION pg_temp.count_other(who name) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	c record;
	n bigint;
BEGIN
	-- (finalize_run_people: empty but during a month-end run, and no role
	-- may read it, test/sql/month_end)
	FOR c IN SELECT * FROM pg_temp.client_tables WHERE relname !~ '_staging$' AND relname <> 'finalize_run_people' LOOP
		IF has_column_privilege(who, c.t, 'client_id', 'SELECT') THEN
			EXECUTE format('SELECT count(*) FROM %s WHERE client_id IS DISTINCT FROM 1', c.t) INTO n;
			INSERT INTO pg_temp.seen_other VALUES (c.relname, who, n);
		END IF;
	END LOOP;
END
$$;
SELECT pg_temp.count_other('postgres') \g /dev/null
SELECT ok(other > 0, format('%s holds rows of another client (so the checks below can fail)', relname))
  FROM seen_other WHERE who = 'postgres' ORDER BY relname;
SET ROLE atk_probe;
SELECT pg_temp.count_other('atk_probe') \g /dev/null
SET ROLE atk_bi1;
SELECT pg_temp.count_other('atk_bi1') \g /dev/null
SET ROLE atk_pii1;
SELECT pg_temp.count_other('atk_pii1') \g /dev/null
RESET ROLE;
REVOKE SELECT ON ALL TABLES IN SCHEMA mspbill FROM atk_probe;
SELECT is(other, 0::bigint, format('%s: %s sees no other client''s row', who, relname))
  FROM seen_other WHERE who <> 'postgres' ORDER BY who, relname;
SELECT is((SELECT count(*) FROM seen_other WHERE who = 'atk_probe'), (SELECT count(*) FROM client_tables WHERE relname !~ '_staging$' AND relname <> 'finalize_run_people'),
          'the probe read every client-keyed table');

-- 3. A cheap function of the reader's in WHERE runs before no filter: it
--    sees only client 1 in every view and table, for BI and PII readers
CREATE TEMP TABLE peeked (relname text, who name, client_id bigint);
GRANT ALL ON peeked TO PUBLIC;
CREATE FUNCTION pg_temp.peek_all(who name) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	c record;
BEGIN
	FOR c IN SELECT t, relname FROM pg_temp.client_views UNION ALL SELECT t, relname FROM pg_temp.client_tables LOOP
		IF has_column_privilege(who, c.t, 'client_id', 'SELECT') THEN
			EXECUTE format('SELECT count(*) FROM %s x WHERE pg_temp.peek(%L, x.client_id)', c.t, c.relname);
		END IF;
	END LOOP;
END
$$;
SET ROLE atk_bi1;
CREATE FUNCTION pg_temp.peek(rel text, client bigint) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN
	INSERT INTO pg_temp.peeked VALUES (rel, current_user, client);
	RETURN true;
END
$$;
SELECT pg_temp.peek_all('atk_bi1') \g /dev/null
SET ROLE atk_pii1;
SELECT pg_temp.peek_all('atk_pii1') \g /dev/null
RESET ROLE;
SELECT ok((SELECT count(*) FROM peeked WHERE relname = 'account_labels' AND who = 'atk_bi1') > 0,
          'the cheap function ran on account_labels');
SELECT is(ARRAY(SELECT relname::text FROM client_views EXCEPT SELECT relname FROM peeked WHERE who = 'atk_bi1' ORDER BY 1),
          '{}'::text[], 'the cheap function ran on every view (the KPI views included) as BI');
SELECT is(ARRAY(SELECT DISTINCT format('%s as %s: client %s', relname, who, client_id) FROM peeked WHERE client_id <> 1),
          '{}'::text[], 'a cheap pg_temp function sees no other client in any view or table (BI and PII)');

-- 4. Loading as the billing role, with COPY
SET ROLE atk_billing;
SET mspbill.client_id = 1;
\copy windows_event_staging (raw) FROM '../fixtures/windows_nxlog.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SET mspbill.client_id = 2;
\copy windows_event_staging (raw) FROM '../fixtures/windows_nxlog.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_windows_events(1)$$, $$VALUES (3::bigint, 3::bigint)$$,
                  'billing: COPY into the stage and load client 1');
RESET ROLE;
SELECT is((SELECT count(*) FROM windows_event_staging WHERE client_id = 2), 16::bigint,
          'client 2''s staged rows are left alone by client 1''s load');
SET ROLE atk_billing;
SELECT throws_ok($$SELECT raw FROM windows_event_staging$$, '42501', NULL, 'billing: the stage cannot be read');
SELECT throws_ok($$DELETE FROM windows_event_staging$$, '42501', NULL, 'billing: nor emptied');
SELECT is(ARRAY(SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relname ~ '_staging$'
                   AND (pg_has_role(current_user, c.relowner, 'USAGE')
                        OR pg_has_role(current_user, (SELECT d.datdba FROM pg_database d WHERE d.datname = current_database()), 'USAGE'))),
          '{}'::text[], 'billing owns no stage (nor the database), so its VACUUM of one skips it: autovacuum or the owner vacuums');
SELECT throws_ok($$SELECT raw FROM load_rejects$$, '42501', NULL, 'billing: raw rejected records cannot be read');
SELECT is((SELECT count(*) FROM load_rejects WHERE source = 'windows'), 3::bigint, 'but the rejects and their reasons can');
SELECT throws_ok($$SELECT name FROM accounts$$, '42501', NULL, 'billing: account names cannot be read');
SELECT throws_ok($$SELECT * FROM person_identities$$, '42501', NULL, 'billing: real names cannot be read');
SELECT is((SELECT accounts FROM msp_billable_users(1) WHERE pseudonym = 'n2'), ARRAY['os account 6'],
          'billing sees account labels, not names');
SELECT results_eq($$SELECT loaded FROM msp_load_windows_events(2)$$, $$VALUES (3::bigint)$$, 'billing: then load client 2');
SELECT lives_ok($$UPDATE accounts SET kind = 'individual', person_id = 3
                   WHERE client_id = 1 AND account_id = (SELECT min(l.account_id) FROM account_labels l WHERE l.client_id = 1 AND l.kind = 'unknown')$$,
                'billing: maps a loaded account to a person by its label');
SELECT is((SELECT count(*) FROM accounts WHERE client_id = 1 AND person_id = 3), 2::bigint, 'the mapping is stored');
\copy emr_audit_staging (user_name, workstation, event_time, action, event_id) FROM '../fixtures/emr_audit.csv' WITH (FORMAT csv, HEADER)
SELECT throws_ok($$SELECT * FROM msp_load_emr_audit(99)$$, 'P0002', 'unknown client 99', 'billing: a load for an unknown client is refused');
RESET ROLE;
SELECT is((SELECT count(*) FROM emr_audit_staging WHERE client_id = 2), 6::bigint, 'and the staged rows wait');

SET ROLE atk_billing;
SET mspbill.client_id = 1;
INSERT INTO windows_event_staging (raw) VALUES ('{"EventID": 4624}'), ('{"EventID": 4624}');
SELECT results_eq($$SELECT * FROM msp_discard_staged(1)$$, $$VALUES (2::bigint, 0::bigint, 0::bigint)$$,
                  'billing: sets its client''s staged rows aside with msp_discard_staged');
SET mspbill.client_id = 2;
RESET ROLE;

-- the admin stages and loads too
SET ROLE atk_admin;
SET mspbill.client_id = 2;
\copy entra_signin_staging (raw) FROM '../fixtures/entra_signins.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_entra_signins(2)$$, $$VALUES (2::bigint, 2::bigint)$$,
                  'admin: COPY into the stage and load client 2''s sign-ins');
SELECT results_eq($$SELECT loaded, rejected FROM msp_load_emr_audit(2)$$, $$VALUES (3::bigint, 2::bigint)$$,
                  'admin: loads client 2''s staged EMR rows');
SELECT is((SELECT raw FROM load_rejects WHERE client_id = 2 AND source = 'emr' AND reason = 'no user'), 'OR1,2026-01-05 09:00:00,LOGIN,e4',
          'admin reads raw rejected records');
RESET ROLE;

-- a hijack of the loader: a temp table in its way with a trigger that
-- would make the caller a superuser if the loader wrote through it
SET ROLE atk_billing;
CREATE FUNCTION pg_temp.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE 'ALTER ROLE atk_billing SUPERUSER';
	RETURN NEW;
END
$$;
CREATE TEMP TABLE msp_load_events (realm text, application text, account_name text, device_name text, create_device boolean,
                                   at timestamptz, ended timestamptz, source_event_id text, session_key text);
CREATE TRIGGER escalate BEFORE INSERT ON pg_temp.msp_load_events FOR EACH ROW EXECUTE FUNCTION pg_temp.escalate();
SET search_path = pg_temp, public, mspbill, pg_catalog;
SET mspbill.client_id = 1;
\copy windows_event_staging (raw) FROM '../fixtures/windows_nxlog.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
SELECT lives_ok($$SELECT * FROM mspbill.msp_load_windows_events(1)$$, 'billing: a load with a planted temp table and pg_temp first on the path');
RESET ROLE;
SET search_path = public, mspbill;
SELECT is((SELECT rolsuper FROM pg_roles WHERE rolname = 'atk_billing'), false, 'the planted trigger never ran as the owner');

-- the same against the definer refresh: look-alike rollup tables with the
-- trigger, a look-alike = operator, pg_temp and public first on the path
CREATE FUNCTION public.evil_eq(tid, tid) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = tid, RIGHTARG = tid, FUNCTION = public.evil_eq);
SET ROLE atk_billing;
CREATE TEMP TABLE rollup_dirty (client_id bigint, day date, marked_at timestamptz);
CREATE TEMP TABLE daily_activity (LIKE mspbill.daily_activity);
CREATE TEMP TABLE period_invoices (LIKE mspbill.period_invoices);
CREATE TRIGGER escalate BEFORE INSERT ON pg_temp.daily_activity FOR EACH ROW EXECUTE FUNCTION pg_temp.escalate();
CREATE TRIGGER escalate BEFORE INSERT ON pg_temp.period_invoices FOR EACH ROW EXECUTE FUNCTION pg_temp.escalate();
INSERT INTO pg_temp.rollup_dirty VALUES (1, '2026-01-05', now());
SET search_path = pg_temp, public, mspbill, pg_catalog;
SELECT ok((SELECT days FROM mspbill.msp_refresh_rollups()) > 0, 'billing: refreshes the rollups (the load''s days) under a hijack attempt');
SELECT is((SELECT count(*) FROM pg_temp.daily_activity) + (SELECT count(*) FROM pg_temp.period_invoices), 0::bigint,
          'nothing went to the look-alike rollups');
SELECT is((SELECT count(*) FROM pg_temp.rollup_dirty), 1::bigint, 'and the look-alike marks were not consumed');
DROP TABLE pg_temp.rollup_dirty, pg_temp.daily_activity, pg_temp.period_invoices;
RESET ROLE;
SET search_path = public, mspbill;
DROP OPERATOR public.= (tid, tid);
DROP FUNCTION public.evil_eq(tid, tid);
SELECT is((SELECT rolsuper FROM pg_roles WHERE rolname = 'atk_billing'), false, 'the planted triggers never ran as the owner');
SELECT is((SELECT count(*) FROM mspbill.rollup_dirty), 0::bigint, 'the real marks were consumed');
SELECT is((SELECT count(*) FROM mspbill.period_invoices p, LATERAL (SELECT (msp_invoice(p.client_id, p.period)).total) i(t)
            WHERE p.status <> 'unpriced' AND p.total IS DISTINCT FROM i.t), 0::bigint,
          'and every month''s rollup equals msp_invoice()');

-- 5. Writing where no role may
SET ROLE atk_billing;
SELECT throws_ok($$INSERT INTO invoices (client_id, kind, period, total, currency, finalized_by)
                   VALUES (1, 'invoice', msp_period(1), 1.00, 'USD', 'adm')$$, '42501', NULL, 'billing: no forged invoice');
SELECT throws_ok($$INSERT INTO invoice_items (client_id, invoice_id, line_no, description, amount, basis)
                   VALUES (2, 1, 99, 'x', 1, 'user')$$, '42501', NULL, 'billing: no forged invoice line');
SELECT throws_ok($$INSERT INTO audit_log (client_id, action, actor, at) VALUES (1, 'finalize', 'adm', '2020-01-01')$$,
                 '42501', NULL, 'billing: no forged audit row');
SELECT throws_ok($$UPDATE invoices SET total = 1$$, '42501', NULL, 'billing: no invoice changed');
SELECT throws_ok($$DELETE FROM audit_log$$, '42501', NULL, 'billing: no audit row removed');
SELECT throws_ok($$TRUNCATE support_contacts$$, '42501', NULL, 'billing: no TRUNCATE');
SELECT throws_ok($$ALTER TABLE invoices DISABLE ROW LEVEL SECURITY$$, '42501', NULL, 'billing: no policy switched off');
SELECT throws_ok($$DROP POLICY client_rows ON invoices$$, '42501', NULL, 'billing: no policy dropped');
SELECT throws_ok($$CREATE POLICY mine ON invoices USING (true)$$, '42501', NULL, 'billing: no policy added');
SELECT throws_ok($$UPDATE accounts SET name = 'x' WHERE client_id = 1$$, '42501', NULL, 'billing: no account renamed');
RESET ROLE;
SET ROLE atk_admin;
CREATE FUNCTION pg_temp.make_me_super() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('is_superuser')::boolean THEN
		EXECUTE 'ALTER ROLE atk_admin SUPERUSER';
	END IF;
	RETURN NEW;
END
$$;
SELECT throws_ok($$CREATE TRIGGER escalate BEFORE INSERT ON mspbill.support_contacts FOR EACH ROW EXECUTE FUNCTION pg_temp.make_me_super()$$,
                 '42501', NULL, 'admin: no trigger on a table the superuser writes (issue 13.6)');
SELECT throws_ok($$TRUNCATE invoices$$, '42501', NULL, 'admin: no TRUNCATE');
SELECT throws_ok($$INSERT INTO invoices (client_id, kind, period, total, currency) VALUES (1, 'invoice', msp_period(1), 1.00, 'USD')$$,
                 '42501', NULL, 'admin: no forged invoice either');
SELECT throws_ok($$INSERT INTO audit_log (client_id, action) VALUES (1, 'adjust')$$, '42501', NULL, 'admin: nor audit row');
SELECT throws_ok($$CREATE TABLE mspbill.evil (client_id bigint)$$, '42501', NULL, 'admin: nothing new in the schema');
SELECT is((SELECT full_name FROM person_identities WHERE client_id = 2), 'Dana Dentist', 'admin reads real names');
RESET ROLE;

-- 6. Finalize and adjust as a billing login: actor and time are the server's
CREATE TEMP TABLE expected AS SELECT (msp_invoice(1)).total AS total;
GRANT SELECT ON expected TO PUBLIC;
SELECT is((SELECT id FROM dblink(format('host=%s port=%s dbname=%s user=atk_billing',
                                       current_setting('unix_socket_directories'), current_setting('port'), current_database()),
                                 'SELECT mspbill.msp_finalize_invoice(1, NULL, ''{device_silent,unmapped_account}'') > 0') AS t(id boolean)),
          true, 'billing login: finalizes client 1');
SELECT is((SELECT total FROM invoices WHERE client_id = 1 AND kind = 'invoice'), (SELECT total FROM expected),
          'stored as computed');
SELECT is((SELECT format('%s %s', finalized_by, finalized_at > now() - interval '1 minute') FROM invoices WHERE client_id = 1 AND kind = 'invoice'),
          'atk_billing t', 'by the login, now');
SELECT is(ARRAY(SELECT DISTINCT format('%s %s', actor, at > now() - interval '1 minute') FROM audit_log WHERE client_id = 1),
          ARRAY['atk_billing t'], 'the audit rows name the login and the server''s time');
-- evidence and findings hold labels, not names (issue 13.8)
SELECT is(ARRAY(SELECT DISTINCT l FROM invoices i, jsonb_array_elements(i.evidence) e, jsonb_array_elements_text(e->'accounts') l
                  JOIN accounts a ON a.name = l AND a.kind = 'individual'),
          '{}'::text[], 'stored evidence holds no individual account name');
SELECT ok((SELECT bool_and(l ~ '^(os|app|m365) account \d+$' OR l IN (SELECT name FROM accounts WHERE kind IN ('shared', 'service')))
             FROM invoices i, jsonb_array_elements(i.evidence) e, jsonb_array_elements_text(e->'accounts') l),
          'only labels, and the names of shared and service accounts');
SELECT ok((SELECT count(*) FROM invoices i, jsonb_array_elements(i.evidence) e WHERE i.client_id = 1) = 9,
          'the evidence still lists the 9 people billed (Dr. Gray of the sister client included)');
SELECT is(ARRAY(SELECT DISTINCT f->>'subject' FROM audit_log, jsonb_array_elements(detail->'findings') f
                  JOIN accounts a ON a.name = f->>'subject' AND a.kind <> 'shared'),
          '{}'::text[], 'override findings in the audit log hold no account name');

-- a late logon, then the adjustment, under a hijack: look-alike functions
-- and operators in public and pg_temp, public and pg_temp first on the path
INSERT INTO people (client_id, person_id, pseudonym) VALUES (1, 4, 'n4');
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id) VALUES (1, 11, 'os', 'STOLAF\nurse4', 'individual', 4);
INSERT INTO logons (client_id, account_id, device_id, at) SELECT 1, 11, 5, lower(msp_period(1)) + interval '10 days 14 hours';
CREATE TEMP TABLE expected_drift AS SELECT sum(difference) AS total FROM msp_invoice_drift(1) WHERE difference <> 0;
CREATE FUNCTION public.msp_invoice_drift(bigint, daterange)
	RETURNS TABLE (contract_id bigint, basis text, description text, billed_quantity numeric, current_quantity numeric,
				   billed numeric, current numeric, difference numeric)
	LANGUAGE sql AS $$ SELECT NULL::bigint, 'user', 'forged', 0, 0, 0, 0, 1000000::numeric $$;
CREATE FUNCTION public.evil_eq(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.evil_eq);
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
SET ROLE atk_billing;
CREATE TEMP TABLE invoices (LIKE mspbill.invoices);
CREATE TEMP TABLE audit_log (LIKE mspbill.audit_log);
SET search_path = pg_temp, public, mspbill, pg_catalog;
SELECT ok(mspbill.msp_issue_adjustment(1, mspbill.msp_period(1), 'late logon') > 0, 'billing: adjusts under a hijack attempt');
SELECT is((SELECT count(*) FROM pg_temp.invoices) + (SELECT count(*) FROM pg_temp.audit_log), 0::bigint, 'nothing went to the look-alike tables');
DROP TABLE pg_temp.invoices, pg_temp.audit_log;
RESET ROLE;
SET search_path = public, mspbill;
DROP OPERATOR public.= (bigint, bigint);
DROP FUNCTION public.evil_eq(bigint, bigint), public.msp_invoice_drift(bigint, daterange), public.now();
SELECT results_eq($$SELECT i.total, i.reason FROM mspbill.invoices i WHERE i.client_id = 1 AND i.kind = 'adjustment'$$,
                  $$SELECT total, 'late logon' FROM expected_drift$$, 'the adjustment is the real drift');
SELECT is((SELECT count(*) FROM mspbill.audit_log WHERE client_id = 1 AND action = 'adjust' AND at > now() - interval '1 minute'), 1::bigint,
          'audited at the server''s time');

-- 7. BI: its client only, through every function and error message
SET ROLE atk_bi1;
SELECT is((SELECT array_agg(DISTINCT client_id) FROM invoices), ARRAY[1::bigint], 'BI: its own invoices only');
SELECT is((msp_invoice(1)).total, (SELECT total FROM expected), 'BI reads its finalized invoice');
SELECT throws_ok($$SELECT msp_invoice(2)$$, 'P0002', 'unknown client 2', 'BI: another client''s invoice is unknown');
SELECT throws_ok($$SELECT msp_invoice(99)$$, 'P0002', 'unknown client 99', 'exactly as a client that does not exist');
SELECT throws_ok($$SELECT * FROM msp_billable_users(2)$$, 'P0002', 'unknown client 2', 'BI: another client''s billable users are unknown');
SELECT throws_ok($$SELECT * FROM msp_invoice_lines(2, (SELECT period FROM invoices LIMIT 1))$$, 'P0002', 'unknown client 2',
                 'BI: so are the lines of its finalized invoice');
SELECT throws_ok($$SELECT * FROM msp_data_quality(2)$$, 'P0002', 'unknown client 2', 'BI: and its data-quality findings');
SELECT is((SELECT count(*) FROM msp_pii_audit(2)), 0::bigint, 'BI: and its HIPAA audit is empty');
SELECT is((SELECT count(*) FROM account_labels WHERE client_id <> 1), 0::bigint, 'BI: no other client''s account labels');
SELECT is((SELECT count(*) FROM clients), 1::bigint, 'BI: a role dropped while mapped breaks nothing (issue 13.11)');
SELECT is((SELECT count(*) FROM bi_client_access), 1::bigint, 'BI: sees only its own mapping');
SELECT throws_ok($$INSERT INTO windows_event_staging (client_id, raw) VALUES (1, '{}')$$, '42501', NULL, 'BI: cannot stage');
SELECT throws_ok($$SELECT * FROM msp_load_windows_events(1)$$, '42501', NULL, 'BI: cannot load');
SELECT throws_ok($$SELECT msp_finalize_invoice(1)$$, '42501', NULL, 'BI: cannot finalize');
SELECT throws_ok($$SELECT msp_issue_adjustment(1, msp_period(1), 'x')$$, '42501', NULL, 'BI: cannot adjust');
SELECT throws_ok($$SELECT * FROM audit_log$$, '42501', NULL, 'BI: cannot read the audit log');
SELECT throws_ok($$SELECT * FROM load_rejects$$, '42501', NULL, 'BI: cannot read rejected records');
SELECT throws_ok($$SELECT name FROM accounts$$, '42501', NULL, 'BI: cannot read account names');
SELECT throws_ok($$SELECT * FROM msp_report_invoices()$$, '42501', NULL, 'BI: the sealed reports are not its');
-- the invoice's 9 people, and the adjustment's 10 (the late nurse n4 too)
SELECT is(ARRAY(SELECT i.kind || ' ' || count(*) FROM invoices i, jsonb_array_elements(i.evidence) e
                 GROUP BY i.kind ORDER BY 1),
          '{"adjustment 10","invoice 9"}'::text[], 'BI reads its evidence');
RESET ROLE;
-- every function that takes a client first, called by BI for client 2 with
-- its other arguments defaulted or NULL: no row, no value, and no error
-- message that names something of client 2's
CREATE TEMP TABLE bi_calls (fn text, outcome text);
GRANT ALL ON bi_calls TO PUBLIC;
CREATE FUNCTION pg_temp.call_all_for(client bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	f record;
	q text;
	n bigint;
	msg text;
	state text;
BEGIN
	FOR f IN SELECT p.oid::regprocedure AS sig, p.proname, p.pronargs, p.proretset, p.prorettype, p.proargtypes
			   FROM pg_proc p
			  WHERE p.pronamespace = 'mspbill'::regnamespace AND p.pronargs >= 1
				AND p.proargnames[1] IN ('client_id', 'for_client') AND p.proargtypes[0] = 'bigint'::regtype
				AND p.prokind = 'f' LOOP
		-- a real period and contract, NULL for the rest
		q := format('mspbill.%I(%s)', f.proname,
					(SELECT string_agg(CASE WHEN a.n = 1 THEN client::text
											WHEN a.t = 'daterange'::regtype THEN '''[2026-01-01,2026-02-01)''::daterange'
											WHEN a.t = 'bigint'::regtype THEN '1'
											ELSE 'NULL' END, ', ' ORDER BY a.n)
					   FROM unnest(f.proargtypes::oid[]) WITH ORDINALITY a(t, n)));
		-- every call is rolled back, so that a writer that works leaves nothing
		BEGIN
			IF f.proretset THEN
				EXECUTE format('SELECT count(*) FROM %s x', q) INTO n;
			ELSE
				-- a value counts unless NULL, false or void
				EXECUTE format('SELECT count(*) FROM (SELECT %s AS v) x WHERE x.v IS NOT NULL AND x.v::text NOT IN (''false'', '''')', q) INTO n;
			END IF;
			RAISE EXCEPTION USING ERRCODE = 'P0999', MESSAGE = CASE WHEN n = 0 THEN 'nothing' ELSE n || ' rows' END;
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
			INSERT INTO pg_temp.bi_calls VALUES (f.sig::text, CASE WHEN state = 'P0999' THEN msg ELSE state || ' ' || msg END);
		END;
	END LOOP;
END
$$;
SET ROLE atk_bi1;
SELECT pg_temp.call_all_for(2) \g /dev/null
RESET ROLE;
-- and for its own client every read works: a permission error means a
-- grant the workflow needs is missing
CREATE TEMP TABLE own_calls AS SELECT * FROM bi_calls;
TRUNCATE bi_calls;
SET ROLE atk_bi1;
SELECT pg_temp.call_all_for(1) \g /dev/null
RESET ROLE;
SELECT is(ARRAY(SELECT fn FROM bi_calls WHERE outcome ~ '^42501'
                 AND fn !~ '^msp_(finalize_invoice|finalize_run_|people_sources|issue_adjustment|load_|discard_staged|psa_sync|report_(invoice|billable)|mark_rollups_dirty|rollup_period|match_psa_tickets|store_|stage_)' ORDER BY 1),
          '{}'::text[], 'BI: every read-only per-client function works for its own client');
TRUNCATE bi_calls;
SET ROLE atk_billing;
SELECT pg_temp.call_all_for(1) \g /dev/null
RESET ROLE;
SELECT is(ARRAY(SELECT fn FROM bi_calls WHERE outcome ~ '^42501' AND fn !~ '^msp_(load_(begin|normalized)|report_(invoice|billable)|rollup_period|store_|stage_|finalize_invoice_with|people_sources)' ORDER BY 1),
          '{}'::text[], 'billing: every per-client function but the internals and the sealed reports works');
TRUNCATE bi_calls;
SET ROLE atk_admin;
SELECT pg_temp.call_all_for(1) \g /dev/null
RESET ROLE;
SELECT is(ARRAY(SELECT fn FROM bi_calls WHERE outcome ~ '^42501' AND fn !~ '^msp_(load_(begin|normalized)|report_(invoice|billable)|rollup_period|store_|stage_|finalize_invoice_with|people_sources)' ORDER BY 1),
          '{}'::text[], 'admin: likewise');
TRUNCATE bi_calls;
INSERT INTO bi_calls SELECT * FROM own_calls;
SELECT diag(format('%s: %s', fn, outcome)) FROM bi_calls ORDER BY fn;
SELECT is(ARRAY(SELECT format('%s: %s', fn, outcome) FROM bi_calls WHERE fn ~ '^msp_(mark_rollups_dirty|rollup_period)' ORDER BY 1),
          ARRAY['msp_mark_rollups_dirty(bigint,daterange): 42501 permission denied for table rollup_dirty',
                'msp_rollup_period(bigint,daterange): 42501 permission denied for function msp_rollup_period'],
          'BI: can neither mark its rollups dirty nor write them');
SELECT ok((SELECT count(*) FROM bi_calls) >= 20, 'BI called every per-client function');
SELECT is(ARRAY(SELECT format('%s: %s', fn, outcome) FROM bi_calls
                 WHERE outcome !~ '^(nothing$|P0002 unknown client 2$|42501 )'
                   AND (outcome !~ '^[0-9A-Z]{5} ' OR outcome ~* 'maple|dental|dentist|hygienist|front|gray|USD|America')
                 ORDER BY 1),
          '{}'::text[], 'BI: no per-client function returns or names anything of client 2''s');
-- statistics: PostgreSQL hides them for tables whose policies apply to the reader
ANALYZE;
SET ROLE atk_bi1;
SELECT is(ARRAY(SELECT DISTINCT tablename::text FROM pg_stats WHERE schemaname = 'mspbill' ORDER BY 1), '{}'::text[],
          'BI: no column statistics of any mspbill table (they would show other clients'' values)');
RESET ROLE;
SET ROLE atk_report1;
SELECT is((SELECT count(*) FROM pg_stats WHERE schemaname = 'mspbill'), 0::bigint, 'report: none either');
RESET ROLE;
-- the documented limit (README): table sizes in pg_class are every client's together
CREATE TEMP TABLE people_total AS SELECT count(*)::real AS n FROM mspbill.people;
GRANT SELECT ON people_total TO PUBLIC;
SET ROLE atk_bi1;
SELECT is((SELECT reltuples FROM pg_class WHERE oid = 'mspbill.people'::regclass), (SELECT n FROM people_total),
          'documented limit: BI reads the number of people of all clients together in pg_class');
SET ROLE atk_report1;
SELECT is((SELECT reltuples FROM pg_class WHERE oid = 'mspbill.people'::regclass), (SELECT n FROM people_total),
          'documented limit: and so does the sealed role');
RESET ROLE;
-- the documented limit (README): a plan of a base-table scan counts the
-- rows the policy removed, so a BI role can count another client's rows
CREATE FUNCTION pg_temp.plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	l text;
	r text := '';
BEGIN
	FOR l IN EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ' || q LOOP
		r := r || l || E'\n';
	END LOOP;
	RETURN r;
END
$$;
SET ROLE atk_bi1;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT matches(pg_temp.plan_of($$SELECT 1 FROM mspbill.people WHERE client_id = 2$$), 'Rows Removed by Filter: 6',
               'documented limit: EXPLAIN ANALYZE on a base table counts the other client''s 6 people');
SELECT matches(pg_temp.plan_of($$SELECT 1 FROM mspbill.people WHERE client_id = 2 AND pseudonym >= 'h'$$), 'Rows Removed by Filter: 2',
               'and, with an index condition, how many of their pseudonyms sort after h');
RESET enable_seqscan;
RESET enable_bitmapscan;
RESET ROLE;

-- 8. PII: real names of its own client only
SET ROLE atk_pii1;
SELECT is(ARRAY(SELECT full_name FROM person_identities), ARRAY['Nora Nurse'], 'PII: real names of its client');
SELECT is((SELECT name FROM accounts WHERE client_id = 1 AND account_id = 6), 'STOLAF\nurse2', 'PII: account names of its client');
SELECT is(ARRAY(SELECT raw FROM load_rejects WHERE source = 'emr' AND reason = 'invalid time' ORDER BY raw), ARRAY['nurse1,OR1,bad'],
          'PII: raw rejected records of its client only');
SELECT throws_ok($$SELECT msp_finalize_invoice(1)$$, '42501', NULL, 'PII: cannot finalize');
RESET ROLE;

-- 9. The sealed BI role (mspbill_report), as its own login: no table at all
CREATE TEMP TABLE report_conn AS
SELECT format('host=%s port=%s dbname=%s user=atk_report1', current_setting('unix_socket_directories'),
			  current_setting('port'), current_database()) AS c;
SELECT throws_ok($$SELECT * FROM dblink((SELECT c FROM report_conn), 'SELECT count(*) FROM mspbill.people') AS t(n bigint)$$,
                 '42501', NULL, 'report: no base table to scan');
SELECT throws_ok($$SELECT * FROM dblink((SELECT c FROM report_conn), 'EXPLAIN (ANALYZE) SELECT 1 FROM mspbill.people WHERE client_id = 2') AS t(n text)$$,
                 '42501', NULL, 'report: so no plan of one to read');
SELECT throws_ok($$SELECT * FROM dblink((SELECT c FROM report_conn), 'SELECT count(*) FROM mspbill.account_labels') AS t(n bigint)$$,
                 '42501', NULL, 'report: no view either');
SELECT is((SELECT array_agg(DISTINCT n) FROM dblink((SELECT c FROM report_conn), 'SELECT client_id FROM mspbill.msp_report_invoices()') AS t(n bigint)),
          ARRAY[1::bigint], 'report: the invoices of its client');
SELECT is((SELECT n FROM dblink((SELECT c FROM report_conn), 'SELECT sum(amount) FROM mspbill.msp_report_invoice_lines(1)') AS t(n numeric)),
          (SELECT total FROM expected), 'report: its invoice''s lines');
SELECT is((SELECT n FROM dblink((SELECT c FROM report_conn), 'SELECT (mspbill.msp_report_invoice(1)).total') AS t(n numeric)),
          (SELECT total FROM expected), 'report: its invoice');
SELECT is((SELECT n FROM dblink((SELECT c FROM report_conn), $q$SELECT accounts FROM mspbill.msp_report_billable_users(1) WHERE pseudonym = 'n2'$q$) AS t(n text[])),
          ARRAY['os account 6'], 'report: billable users with labels, not names');
SELECT throws_ok($$SELECT * FROM dblink((SELECT c FROM report_conn), 'SELECT * FROM mspbill.msp_report_invoice_lines(2)') AS t(a int, b bigint, c text, d numeric, e numeric, f numeric, g text)$$,
                 'P0002', 'unknown client 2', 'report: another client is unknown');
SELECT throws_ok($$SELECT * FROM dblink((SELECT c FROM report_conn), 'SELECT * FROM mspbill.msp_report_invoice_lines(99)') AS t(a int, b bigint, c text, d numeric, e numeric, f numeric, g text)$$,
                 'P0002', 'unknown client 99', 'report: exactly as one that does not exist');

SET client_min_messages = warning;
DROP OWNED BY atk_admin, atk_billing, atk_bi1, atk_pii1, atk_report1, atk_probe;
DROP ROLE atk_admin, atk_billing, atk_bi1, atk_pii1, atk_report1, atk_probe;
SELECT * FROM finish();
