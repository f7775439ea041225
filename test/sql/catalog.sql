-- The catalog check: what the README says of every function and table,
-- asserted from the catalog, so that an object added later is checked
-- without anyone writing a test for it.
--   * C functions and aggregates are IMMUTABLE and PARALLEL SAFE.
--   * Only the functions that write (listed below) are VOLATILE, and they
--     are PARALLEL UNSAFE; a function that only reads is PARALLEL SAFE or
--     RESTRICTED, never UNSAFE (that would keep every query calling it
--     serial).
--   * An IMMUTABLE function reads no mspbill table.
--   * A function that is not STRICT takes no arguments, is an aggregate,
--     window or aggregate-support function (NULL is its empty state), has parameter
--     defaults (NULL asks for the default), or is listed with its reason.
--   * Every SQL and PL/pgSQL function has a fixed search_path (proconfig),
--     or a BEGIN ATOMIC / RETURN body, whose names are bound when it is
--     created and cannot be hijacked later.
--   * SECURITY DEFINER only for the functions listed below, each with a
--     search_path ending in pg_temp and EXECUTE revoked from PUBLIC.
--   * Every table with a client_id column (partitions included, also those
--     msp_add_logon_partitions creates) has row-level security enabled.
--   * Every function, table (partitions aside), view and type has a COMMENT.
-- What fails today is listed in known_failures, for its owner to fix and
-- then remove: a listed object that passes fails the last assertion.
\set ECHO none
\set QUIET on
SET client_min_messages = warning;
SELECT plan(13);

-- partitions made after installation must be covered too
SELECT mspbill.msp_add_logon_partitions(date '2026-01-01', 2) \g /dev/null

-- functions that write, and so are VOLATILE and PARALLEL UNSAFE
CREATE TEMP TABLE writers (proname name PRIMARY KEY);
INSERT INTO writers VALUES
	('msp_add_logon_partitions'), ('msp_refuse_change'), ('msp_finalize_invoice'), ('msp_issue_adjustment'),
	('msp_load_normalized'), ('msp_load_begin'), ('msp_load_windows_events'), ('msp_load_entra_signins'),
	('msp_load_emr_audit'), ('msp_install_roles');

-- not STRICT, deliberately
CREATE TEMP TABLE nonstrict_ok (proname name PRIMARY KEY, why text NOT NULL);
INSERT INTO nonstrict_ok VALUES
	('msp_canonical_account', 'a NULL domain is the UPN form'),
	('msp_can_see_client', 'a policy helper: answers false, never NULL'),
	('msp_has_role', 'a policy helper: answers false, never NULL');

-- SECURITY DEFINER allowed (none yet)
CREATE TEMP TABLE definer_ok (proname name PRIMARY KEY, why text NOT NULL);

-- Known failures on this tree (check, object): each a finding for the
-- object's owner; remove the line with the fix.
CREATE TEMP TABLE known_failures (check_name text, object text, PRIMARY KEY (check_name, object));
INSERT INTO known_failures VALUES
	-- read-only billing functions declared PARALLEL UNSAFE (issue 15)
	('reader parallel', 'msp_period'), ('reader parallel', 'msp_contract_segments'),
	('reader parallel', 'msp_segment_users'), ('reader parallel', 'msp_billable_users'),
	('reader parallel', 'msp_segment_quantities'), ('reader parallel', 'msp_tiered_amount'),
	('reader parallel', 'msp_segment_lines'), ('reader parallel', 'msp_check_currency'),
	('reader parallel', 'msp_price_lines'), ('reader parallel', 'msp_compute_invoice'),
	('reader parallel', 'msp_cost_allocation'), ('reader parallel', 'msp_compare_models'),
	('reader parallel', 'msp_adjustment_lines'), ('reader parallel', 'msp_finalized_invoice'),
	('reader parallel', 'msp_require_finalized'), ('reader parallel', 'msp_invoice'),
	('reader parallel', 'msp_invoice_lines'), ('reader parallel', 'msp_data_quality'),
	('reader parallel', 'msp_invoice_drift'), ('reader parallel', 'msp_reconcile_licenses'),
	('reader parallel', 'msp_pii_audit'), ('reader parallel', 'msp_pii_audit_summary'),
	-- not STRICT, no defaults, no reason given
	('strict', 'msp_is_machine_account'), ('strict', 'msp_pool_part'), ('strict', 'msp_contract_segments'),
	('strict', 'msp_segment_quantities'), ('strict', 'msp_tiered_amount'), ('strict', 'msp_segment_lines'),
	('strict', 'msp_check_currency'), ('strict', 'msp_price_lines'), ('strict', 'msp_adjustment_lines'),
	('strict', 'msp_finalized_invoice'), ('strict', 'msp_require_finalized'), ('strict', 'msp_issue_adjustment'),
	('strict', 'msp_load_normalized'), ('strict', 'msp_load_begin'),
	-- the default logon partition and the monthly ones carry no policy of
	-- their own: whoever may read a partition directly reads every client
	('row security', 'mspbill.logons_default'), ('row security', 'mspbill.logons_2026_01'),
	('row security', 'mspbill.logons_2026_02');

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
 WHERE lanname IN ('sql', 'plpgsql') AND NOT bound_body
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
SELECT is(pg_temp.new_offenders('immutable reads no table'), '{}', 'no IMMUTABLE function reads a table of mspbill');
SELECT is(pg_temp.new_offenders('strict'), '{}', 'every function is STRICT, or has a reason not to be');
SELECT is(pg_temp.new_offenders('search_path'), '{}', 'every SQL and PL/pgSQL function fixes its search_path or binds its names at creation');
SELECT is(pg_temp.new_offenders('security definer allowed'), '{}', 'no SECURITY DEFINER function outside the allow-list');
SELECT is(pg_temp.new_offenders('security definer hardened'), '{}', 'SECURITY DEFINER functions have search_path ending in pg_temp and no PUBLIC EXECUTE');
SELECT is(pg_temp.new_offenders('row security'), '{}', 'every table with a client_id column has row-level security, partitions too');
SELECT is(pg_temp.new_offenders('comment'), '{}', 'every function, table, view and type has a COMMENT');
SELECT is(
	ARRAY(SELECT check_name || ': ' || object FROM known_failures
	      EXCEPT SELECT check_name || ': ' || object FROM offenders ORDER BY 1),
	'{}', 'every known failure still fails (remove the fixed ones from known_failures)');

SELECT * FROM finish();
