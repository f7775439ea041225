-- The catalog check: what the README says of every function and table,
-- asserted from the catalog, so that an object added later is checked
-- without anyone writing a test for it.
--   * C functions and aggregates are IMMUTABLE and PARALLEL SAFE.
--   * Only the functions that write (listed below) are VOLATILE, and they
--     are PARALLEL UNSAFE; a function that only reads is PARALLEL SAFE or
--     RESTRICTED, never UNSAFE (that would keep every query calling it
--     serial).  A PARALLEL SAFE function calls only PARALLEL SAFE
--     functions of mspbill and has no EXCEPTION block (a parallel worker
--     cannot start a subtransaction).
--   * An IMMUTABLE function reads no mspbill table.
--   * A function that is not STRICT takes no arguments, is an aggregate,
--     window or aggregate-support function (NULL is its empty state), has parameter
--     defaults (NULL asks for the default), or is listed with its reason.
--   * Every SQL and PL/pgSQL function has a fixed search_path (proconfig),
--     or a BEGIN ATOMIC / RETURN body, whose names are bound when it is
--     created and cannot be hijacked later, or is listed with its reason.
--   * SECURITY DEFINER only for (exactly) the functions listed below, each with a
--     search_path ending in pg_temp and EXECUTE revoked from PUBLIC.
--   * Every table with a client_id column (partitions included, also those
--     msp_add_logon_partitions creates) has row-level security enabled,
--     but the staging tables listed below (COPY FROM cannot write a table
--     with row-level security).
--   * Every function, table (partitions aside), view and type has a COMMENT.
-- What fails today is listed in known_failures, for its owner to fix and
-- then remove: a listed object that passes fails the last assertion.
\set ECHO none
\set QUIET on
SET client_min_messages = warning;
SELECT plan(16);

-- partitions made after installation must be covered too
SELECT mspbill.msp_add_logon_partitions(date '2026-01-01', 2) \g /dev/null

-- functions that write, and so are VOLATILE and PARALLEL UNSAFE
CREATE TEMP TABLE writers (proname name PRIMARY KEY);
INSERT INTO writers VALUES
	('msp_add_logon_partitions'), ('msp_refuse_change'), ('msp_finalize_invoice'), ('msp_issue_adjustment'),
	('msp_load_normalized'), ('msp_load_begin'), ('msp_load_windows_events'), ('msp_load_entra_signins'),
	('msp_load_emr_audit'), ('msp_load_guarded'), ('msp_load_normalized_guarded'), ('msp_discard_staged'), ('msp_install_roles'),
	-- licensing: the loaders, their steps and the ticket matcher
	('msp_load_m365_graph'), ('msp_load_m365_users_csv'), ('msp_load_m365_activity'), ('msp_load_pax8_subscriptions'),
	('msp_load_psa_tickets'), ('msp_match_psa_tickets'), ('msp_stage_csv'), ('msp_stage_json'),
	('msp_store_assignments'), ('msp_store_rejects'),
	-- reporting: the rollups' marks (triggers and by hand) and their writers
	('msp_mark_logon_days'), ('msp_mark_invoice_periods'), ('msp_mark_rollups_dirty'), ('msp_rollup_period'),
	('msp_rollup_days'), ('msp_refresh_rollups'), ('msp_rebuild_rollups'),
	-- documents: the PSA sync records what it set
	('msp_psa_sync'),
	-- contract lines: the trigger that refuses lines a contract would not price
	('msp_check_contract_line'),
	-- Citus: distributes the tables and changes them on every node
	('msp_distribute'), ('msp_on_all_nodes'), ('msp_on_workers'), ('msp_grants_to_workers'),

	-- month-end: the procedure and the definer functions that record its runs
	('msp_finalize_period'), ('msp_finalize_run_begin'), ('msp_finalize_run_prepare'), ('msp_finalize_run_client'),
	('msp_finalize_run_end'), ('msp_finalize_invoice_with'),
	-- sister clients: the trigger of people records the pairs
	('msp_note_sister_client'),
	-- documents: the trigger that keeps the number series
	('msp_invoice_numbering_guard');

-- not STRICT, deliberately
CREATE TEMP TABLE nonstrict_ok (proname name PRIMARY KEY, why text NOT NULL);
INSERT INTO nonstrict_ok VALUES
	('msp_license_main_product', 'a NULL snapshot (none loaded yet) still chooses by the seats bought'),
	('msp_canonical_account', 'a NULL domain is the UPN form'),
	('msp_implausible_time', 'a time that did not parse (NULL) may still be a special word'),
	('msp_can_see_client', 'a policy helper: answers false, never NULL'),
	('msp_has_role', 'a policy helper: answers false, never NULL'),
	('msp_is_machine_account', 'inlined into queries and the generated accounts.is_machine (its OR is not strict, so a STRICT one would not inline); accounts.name is NOT NULL'),
	('msp_price_lines', 'model NULL prices under each contract''s own model'),
	('msp_finalize_invoice_with', 'people and evidence NULL are counted here (the per-client path)'),
	('msp_people_sources', 'a NULL snapshot counts the rows without asking which are new (the start of a month-end run)'),
	('msp_xmin_seen', 'a NULL snapshot means nothing to compare with: every row counts as seen'),
	('msp_price_invoice', 'people NULL (3 arguments) counts this client''s people itself; the 2-argument form is STRICT'),
	('msp_require_finalized', 'a guard: a NULL period must raise, not pass'),
	('msp_report_require', 'a guard: a NULL client must raise, not pass'),
	('msp_issue_adjustment', 'a NULL reason is refused with a hint, not ignored'),
	('msp_load_begin', 'a guard: a NULL client must raise (unknown client), not pass'),
	('msp_load_guarded', 'an empty stage has NULL bounds: nothing to load, 0 rejected'),
	('msp_export_line', 'a line without quantity or unit price (NULL) is exported as one unit at its amount'),
	('msp_pii_audit_figures', 'a NULL period is the last full month, as in msp_pii_audit_summary'),

	('msp_snapshot_day', 'a NULL day means the client''s today'),
	('msp_invoices', 'a NULL period is each client''s last full month, as in msp_invoice'),
	('msp_shard_invoices', 'a NULL period is each client''s last full month, as in msp_invoice'),
	('msp_require_month', 'a guard: a NULL period must raise, not pass'),
	('msp_export_xero', 'a NULL period is refused (msp_require_month), not an empty export'),
	('msp_export_quickbooks', 'likewise'),
	('msp_export_json', 'likewise');

-- SECURITY DEFINER allowed, each for a workflow that needs rights its
-- callers must not have
CREATE TEMP TABLE definer_ok (proname name PRIMARY KEY, why text NOT NULL);
INSERT INTO definer_ok VALUES
	('msp_finalize_invoice', 'writes invoices, their lines and the audit log, which no role may write'),
	('msp_issue_adjustment', 'likewise, for adjustment notes'),
	('msp_load_windows_events', 'reads and empties the staging tables, which the loading roles may only insert into'),
	('msp_load_entra_signins', 'likewise'),
	('msp_load_emr_audit', 'likewise'),
	('msp_discard_staged', 'empties a client''s stage (into load_rejects) should a load ever fail: the loading roles may only insert into it'),
	('msp_load_m365_graph', 'reads and empties the licensing stages, which the loading roles may only insert into'),
	('msp_load_m365_users_csv', 'likewise'),
	('msp_load_m365_activity', 'likewise'),
	('msp_load_pax8_subscriptions', 'likewise'),
	('msp_load_psa_tickets', 'likewise'),
	('msp_match_psa_tickets', 'matches PSA contacts by Microsoft 365 UPN and person_identities e-mail, which mspbill_billing may not read, and writes support contacts for them'),
	('msp_report_invoices', 'the sealed mspbill_report role holds no grant on any table'),
	('msp_report_invoice', 'likewise'),
	('msp_report_invoice_lines', 'likewise'),
	('msp_report_billable_users', 'likewise'),
	('msp_refresh_rollups', 'the only writer of the rollups BI readers trust (no role may write them), computing as the owner, who sees every client'),
	('msp_rebuild_rollups', 'likewise'),
	('msp_account_name', 'account_labels on Citus: the shards are read as the session user, who may not read accounts.name; it shows a name only where the view would'),
	('msp_psa_sync', 'appends to the PSA sync history (server-stamped), which no role may write directly'),

	('msp_finalize_run_begin', 'records a month-end run, which no role may write (the procedure that calls it cannot be SECURITY DEFINER: it commits)'),
	('msp_finalize_run_client', 'likewise, for each client''s outcome; invoices are written by msp_finalize_invoice'),
	('msp_finalize_run_end', 'likewise, marks the run finished');

-- no search_path of their own, deliberately
CREATE TEMP TABLE no_search_path_ok (proname name PRIMARY KEY, why text NOT NULL);
INSERT INTO no_search_path_ok VALUES
	('msp_finalize_period', 'a procedure that COMMITs may have no SET clause; it qualifies every name and runs with its caller''s rights');

-- client-keyed tables without row-level security, deliberately
CREATE TEMP TABLE no_row_security_ok (relname text PRIMARY KEY, why text NOT NULL);
INSERT INTO no_row_security_ok VALUES
	('mspbill.windows_event_staging', 'COPY FROM cannot write a table with row-level security; only the owner reads it'),
	('mspbill.entra_signin_staging', 'likewise'),
	('mspbill.emr_audit_staging', 'likewise'),
	('mspbill.m365_graph_staging', 'likewise'),
	('mspbill.m365_users_csv_staging', 'likewise'),
	('mspbill.m365_activity_staging', 'likewise'),
	('mspbill.pax8_staging', 'likewise'),
	('mspbill.psa_ticket_staging', 'likewise');

-- Known failures on this tree (check, object): each a finding for the
-- object's owner; remove the line with the fix.
CREATE TEMP TABLE known_failures (check_name text, object text, PRIMARY KEY (check_name, object));
-- (none at the moment)

CREATE TEMP VIEW fns AS
SELECT p.oid, p.proname, l.lanname, p.prokind, p.provolatile, p.proisstrict, p.proparallel, p.prosecdef,
       p.proconfig, p.prosqlbody IS NOT NULL AS bound_body, p.pronargs, p.pronargdefaults, p.prosrc,
       'internal'::regtype = ANY (p.proargtypes)
       OR EXISTS (SELECT 1 FROM pg_aggregate a
                   WHERE p.oid IN (a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn))
         AS aggregate_support
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'mspbill'::regnamespace;

CREATE TEMP TABLE offenders (check_name text, object text);
INSERT INTO offenders
SELECT 'c immutable parallel safe', proname FROM fns
 WHERE (lanname = 'c' OR prokind = 'a') AND (provolatile <> 'i' OR proparallel <> 's')
UNION ALL
SELECT 'volatile only writers', proname FROM fns
 WHERE provolatile = 'v' AND proname NOT IN (SELECT proname FROM writers)
UNION ALL
SELECT 'writers volatile unsafe', w.proname FROM writers w
 WHERE NOT EXISTS (SELECT 1 FROM fns f WHERE f.proname = w.proname)
    OR EXISTS (SELECT 1 FROM fns f WHERE f.proname = w.proname AND (f.provolatile <> 'v' OR f.proparallel <> 'u'))
UNION ALL
SELECT 'reader parallel', proname FROM fns
 WHERE provolatile <> 'v' AND proparallel = 'u'
UNION ALL
-- a PARALLEL SAFE function calls only PARALLEL SAFE functions of mspbill:
-- recorded dependencies (BEGIN ATOMIC bodies) or a call by name in the
-- body outside string literals (string bodies)
SELECT 'parallel safe calls safe', f.proname FROM fns f
 WHERE f.proparallel = 's'
   AND EXISTS (SELECT 1 FROM fns g
                WHERE g.proparallel <> 's' AND g.oid <> f.oid
                  AND (regexp_replace(f.prosrc, '''[^'']*''', '', 'g') ~ ('\m' || g.proname || '\s*\(')
                       OR EXISTS (SELECT 1 FROM pg_depend d
                                   WHERE d.classid = 'pg_proc'::regclass AND d.objid = f.oid
                                     AND d.refclassid = 'pg_proc'::regclass AND d.refobjid = g.oid)))
UNION ALL
-- a parallel worker cannot start a subtransaction (an EXCEPTION block)
SELECT 'parallel safe no subtransaction', proname FROM fns
 WHERE proparallel = 's' AND lanname = 'plpgsql' AND prosrc ~* '\mEXCEPTION\s+WHEN\M'
UNION ALL
-- names of mspbill tables in the body (string bodies), or a recorded
-- dependency on one (BEGIN ATOMIC bodies)
SELECT 'immutable reads no table', f.proname FROM fns f
 WHERE f.provolatile = 'i' AND f.lanname IN ('sql', 'plpgsql')
   AND (EXISTS (SELECT 1 FROM pg_class c
                 WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
                   AND f.prosrc ~ ('\m' || c.relname || '\M'))
        OR EXISTS (SELECT 1 FROM pg_depend d JOIN pg_class c ON d.refclassid = 'pg_class'::regclass AND c.oid = d.refobjid
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = f.oid
                      AND c.relnamespace = 'mspbill'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')))
UNION ALL
SELECT 'strict', proname FROM fns
 WHERE NOT proisstrict AND prokind = 'f' AND pronargs > 0 AND NOT aggregate_support AND pronargdefaults = 0
   AND proname NOT IN (SELECT proname FROM nonstrict_ok)
UNION ALL
SELECT 'search_path', proname FROM fns
 WHERE lanname IN ('sql', 'plpgsql') AND NOT bound_body AND proname NOT IN (SELECT proname FROM no_search_path_ok)
   AND NOT EXISTS (SELECT 1 FROM unnest(proconfig) s WHERE s LIKE 'search\_path=%')
UNION ALL
SELECT 'security definer allowed', proname FROM fns
 WHERE prosecdef AND proname NOT IN (SELECT proname FROM definer_ok)
UNION ALL
SELECT 'security definer hardened', proname FROM fns
 WHERE prosecdef
   AND (NOT EXISTS (SELECT 1 FROM unnest(proconfig) s WHERE s ~ '^search_path=.*pg_temp$')
        OR has_function_privilege('public', oid, 'EXECUTE'))
UNION ALL
SELECT 'row security', c.oid::regclass::text FROM pg_class c
 WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity
   AND c.oid::regclass::text NOT IN (SELECT relname FROM no_row_security_ok)
   AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'client_id' AND NOT a.attisdropped)
UNION ALL
SELECT 'comment', 'function ' || proname FROM fns WHERE obj_description(oid, 'pg_proc') IS NULL
UNION ALL
SELECT 'comment', 'table ' || c.oid::regclass::text FROM pg_class c
 WHERE c.relnamespace = 'mspbill'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition
   AND obj_description(c.oid, 'pg_class') IS NULL
UNION ALL
SELECT 'comment', 'type ' || t.oid::regtype::text FROM pg_type t
 WHERE t.typnamespace = 'mspbill'::regnamespace AND t.typtype IN ('b', 'c', 'd', 'e') AND t.typelem = 0
   AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
   AND obj_description(t.oid, 'pg_type') IS NULL;

-- offenders of one check that are not known failures
CREATE FUNCTION pg_temp.new_offenders(c text) RETURNS text[] LANGUAGE sql AS $$
	SELECT coalesce(array_agg(object ORDER BY object), '{}') FROM (
		SELECT object FROM offenders WHERE check_name = c
		EXCEPT SELECT object FROM known_failures WHERE check_name = c) o
$$;

SELECT cmp_ok((SELECT count(*) FROM fns WHERE lanname = 'c'), '>=', 30::bigint, 'the check sees the C functions');
SELECT is(pg_temp.new_offenders('c immutable parallel safe'), '{}', 'C functions and aggregates are IMMUTABLE and PARALLEL SAFE');
SELECT is(pg_temp.new_offenders('volatile only writers'), '{}', 'only the functions that write are VOLATILE');
SELECT is(pg_temp.new_offenders('writers volatile unsafe'), '{}', 'every function that writes exists and is VOLATILE and PARALLEL UNSAFE');
SELECT is(pg_temp.new_offenders('reader parallel'), '{}', 'a function that only reads is PARALLEL SAFE or RESTRICTED');
SELECT is(pg_temp.new_offenders('parallel safe calls safe'), '{}', 'a PARALLEL SAFE function calls only PARALLEL SAFE functions');
SELECT is(pg_temp.new_offenders('parallel safe no subtransaction'), '{}', 'no PARALLEL SAFE function has an EXCEPTION block (a parallel worker cannot run it)');
SELECT is(pg_temp.new_offenders('immutable reads no table'), '{}', 'no IMMUTABLE function reads a table of mspbill');
SELECT is(pg_temp.new_offenders('strict'), '{}', 'every function is STRICT, or has a reason not to be');
SELECT is(pg_temp.new_offenders('search_path'), '{}', 'every SQL and PL/pgSQL function fixes its search_path or binds its names at creation');
SELECT is(pg_temp.new_offenders('security definer allowed'), '{}', 'no SECURITY DEFINER function outside the allow-list');
SELECT is(pg_temp.new_offenders('security definer hardened'), '{}', 'SECURITY DEFINER functions have search_path ending in pg_temp and no PUBLIC EXECUTE');
SELECT is(pg_temp.new_offenders('row security'), '{}', 'every table with a client_id column has row-level security, partitions too');
SELECT is(pg_temp.new_offenders('comment'), '{}', 'every function, table, view and type has a COMMENT');
SELECT is(ARRAY(SELECT proname FROM definer_ok EXCEPT SELECT proname FROM fns WHERE prosecdef ORDER BY 1),
	'{}'::name[], 'every function of the SECURITY DEFINER allow-list exists and is one');
SELECT is(
	ARRAY(SELECT check_name || ': ' || object FROM known_failures
	      EXCEPT SELECT check_name || ': ' || object FROM offenders ORDER BY 1),
	'{}', 'every known failure still fails (remove the fixed ones from known_failures)');

SELECT * FROM finish();
