-- Every object of the mspbill extension, described as lines "object | fact",
-- ordered, so that two databases (0.1.0 updated, 0.2.0 installed fresh) can
-- be compared with diff and each difference names its object.  Members are
-- what pg_depend records as belonging to the extension; their parts
-- (columns, constraints, indexes, policies, triggers, comments, grants)
-- follow them.  Objects the data created (logon partitions, a user's views)
-- are not members and are left out.  Used by test/sh/upgrade.sh.
-- names print schema-qualified whatever the database's search_path
SET search_path = pg_catalog;
\pset format unaligned
\pset tuples_only on
\pset fieldsep ' | '
WITH ext AS (
	SELECT oid, extnamespace FROM pg_extension WHERE extname = 'mspbill'
), members AS (
	SELECT d.classid, d.objid
	  FROM pg_depend d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
), facts(obj, n, fact) AS (
	-- the member list itself: a missing or extra object shows here first
	SELECT 'extension members', 0, pg_describe_object(classid, objid, 0) FROM members
	UNION ALL
	SELECT 'extension', 0, 'config tables: ' || coalesce((
		SELECT string_agg(c::regclass::text || coalesce(' WHERE ' || nullif(w, ''), ''), ', ' ORDER BY c::regclass::text)
		  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(c, w) WHERE e.extname = 'mspbill'), '')
	UNION ALL
	SELECT 'schema ' || n.nspname, 0, 'grants: ' || coalesce((SELECT string_agg(a::text, ' ' ORDER BY a::text) FROM unnest(n.nspacl) a), '(default)')
	  FROM pg_namespace n, ext WHERE n.oid = ext.extnamespace
	UNION ALL
	SELECT 'schema ' || n.nspname, 1, 'comment: ' || coalesce(obj_description(n.oid, 'pg_namespace'), '(none)')
	  FROM pg_namespace n, ext WHERE n.oid = ext.extnamespace
	UNION ALL
	-- functions: the whole definition (volatility, strictness, PARALLEL,
	-- SECURITY DEFINER, SET, COST, ROWS, body) as PostgreSQL prints it
	SELECT 'function ' || p.oid::regprocedure::text, l.n::int, l.line
	  FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
	  LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid,
	       LATERAL regexp_split_to_table(
		       CASE WHEN p.prokind = 'a' THEN
			       format(E'aggregate kind %s, sfunc %s, stype %s, finalfunc %s, finalextra %s, finalmodify %s, combinefunc %s, serialfunc %s, deserialfunc %s\nmsfunc %s, minvfunc %s, mstype %s, mfinalfunc %s, sortop %s, transspace %s, initcond %s, minitcond %s\nparallel %s, strict %s, volatility %s',
			              a.aggkind, a.aggtransfn, a.aggtranstype::regtype, a.aggfinalfn, a.aggfinalextra, a.aggfinalmodify,
			              a.aggcombinefn, a.aggserialfn, a.aggdeserialfn, a.aggmtransfn, a.aggminvtransfn,
			              a.aggmtranstype::regtype, a.aggmfinalfn, a.aggsortop::regoperator, a.aggtransspace,
			              coalesce(a.agginitval, 'NULL'), coalesce(a.aggminitval, 'NULL'),
			              p.proparallel, p.proisstrict, p.provolatile)
		       ELSE pg_get_functiondef(p.oid) END, E'\n') WITH ORDINALITY AS l(line, n)
	UNION ALL
	SELECT 'function ' || p.oid::regprocedure::text, 100000,
	       'grants: ' || coalesce((SELECT string_agg(a::text, ' ' ORDER BY a::text) FROM unnest(p.proacl) a), '(default)')
	  FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
	UNION ALL
	SELECT 'function ' || p.oid::regprocedure::text, 100001, 'comment: ' || coalesce(obj_description(p.oid, 'pg_proc'), '(none)')
	  FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
	UNION ALL
	-- relations: kind, options, row-level security, grants, comment
	SELECT 'relation ' || c.oid::regclass::text, 0,
	       format('kind %s, persistence %s, row security %s, forced %s, options %s, partition key %s, partition bound %s',
	              c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity, coalesce(c.reloptions::text, '{}'),
	              coalesce(pg_get_partkeydef(c.oid), '-'), coalesce(pg_get_expr(c.relpartbound, c.oid), '-'))
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text, 1,
	       'grants: ' || coalesce((SELECT string_agg(a::text, ' ' ORDER BY a::text) FROM unnest(c.relacl) a), '(default)')
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text, 2, 'comment: ' || coalesce(obj_description(c.oid, 'pg_class'), '(none)')
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text, 3, 'column order: ' ||
	       (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text, 10 + l.n::int, 'view: ' || l.line
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid,
	       LATERAL regexp_split_to_table(pg_get_viewdef(c.oid, true), E'\n') WITH ORDINALITY AS l(line, n)
	 WHERE c.relkind IN ('v', 'm')
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text, 10000,
	       format('sequence %s, start %s, increment %s, min %s, max %s, cache %s, cycle %s',
	              s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	  JOIN pg_sequence s ON s.seqrelid = c.oid
	UNION ALL
	-- columns, by name (their order is the line above)
	SELECT 'relation ' || c.oid::regclass::text || ' column ' || quote_ident(a.attname), 0,
	       format('type %s, not null %s, default %s, identity %s, generated %s, collation %s, grants %s, comment %s',
	              format_type(a.atttypid, a.atttypmod), a.attnotnull,
	              coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-'), nullif(a.attidentity, ''), nullif(a.attgenerated, ''),
	              CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text END,
	              coalesce((SELECT string_agg(x::text, ' ' ORDER BY x::text) FROM unnest(a.attacl) x), '(default)'),
	              coalesce(col_description(c.oid, a.attnum), '(none)'))
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text || ' constraint ' || quote_ident(k.conname), 0,
	       pg_get_constraintdef(k.oid) || CASE WHEN k.condeferrable THEN ' deferrable' ELSE '' END
	       || ', comment ' || coalesce(obj_description(k.oid, 'pg_constraint'), '(none)')
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	  JOIN pg_constraint k ON k.conrelid = c.oid
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text || ' index ' || quote_ident(ic.relname), 0,
	       pg_get_indexdef(i.indexrelid) || ', comment ' || coalesce(obj_description(i.indexrelid, 'pg_class'), '(none)')
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	  JOIN pg_index i ON i.indrelid = c.oid JOIN pg_class ic ON ic.oid = i.indexrelid
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text || ' policy ' || quote_ident(p.policyname), 0,
	       format('%s for %s to %s using (%s) with check (%s)', p.permissive, p.cmd,
	              (SELECT string_agg(r, ',' ORDER BY r) FROM unnest(p.roles) r), coalesce(p.qual, '-'), coalesce(p.with_check, '-'))
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	  JOIN pg_policies p ON p.schemaname = c.relnamespace::regnamespace::text AND p.tablename = c.relname
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text || ' trigger ' || quote_ident(t.tgname), 0,
	       pg_get_triggerdef(t.oid) || CASE t.tgenabled WHEN 'O' THEN '' ELSE ' (enabled ' || t.tgenabled::text || ')' END
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	  JOIN pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
	UNION ALL
	SELECT 'relation ' || c.oid::regclass::text || ' rule ' || quote_ident(r.rulename), 0, pg_get_ruledef(r.oid)
	  FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	  JOIN pg_rewrite r ON r.ev_class = c.oid AND r.rulename <> '_RETURN'
	UNION ALL
	-- types: base, composite, enum, domain
	SELECT 'type ' || format_type(t.oid, NULL), 0,
	       format('kind %s, len %s, byval %s, align %s, storage %s, category %s, preferred %s, input %s, output %s, receive %s, send %s, analyze %s, subscript %s, element %s, array %s, base %s, not null %s, default %s, collation %s',
	              t.typtype, t.typlen, t.typbyval, t.typalign, t.typstorage, t.typcategory, t.typispreferred,
	              t.typinput, t.typoutput, t.typreceive, t.typsend, t.typanalyze, t.typsubscript,
	              format_type(nullif(t.typelem, 0), NULL), format_type(nullif(t.typarray, 0), NULL),
	              format_type(nullif(t.typbasetype, 0), NULL), t.typnotnull, coalesce(t.typdefault, '-'),
	              CASE WHEN t.typcollation <> 0 THEN t.typcollation::regcollation::text END)
	  FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
	UNION ALL
	SELECT 'type ' || format_type(t.oid, NULL), 1, 'attribute ' || a.attnum || ' ' || quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
	  FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
	  JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
	UNION ALL
	SELECT 'type ' || format_type(t.oid, NULL), 2, 'label ' || e.enumsortorder || ' ' || e.enumlabel
	  FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
	  JOIN pg_enum e ON e.enumtypid = t.oid
	UNION ALL
	SELECT 'type ' || format_type(t.oid, NULL), 3, 'domain constraint ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
	  FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
	  JOIN pg_constraint k ON k.contypid = t.oid
	UNION ALL
	SELECT 'type ' || format_type(t.oid, NULL), 4,
	       'grants: ' || coalesce((SELECT string_agg(a::text, ' ' ORDER BY a::text) FROM unnest(t.typacl) a), '(default)')
	       || ', comment: ' || coalesce(obj_description(t.oid, 'pg_type'), '(none)')
	  FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
	UNION ALL
	SELECT 'operator ' || o.oid::regoperator::text, 0,
	       format('function %s, commutator %s, negator %s, restrict %s, join %s, merges %s, hashes %s, comment %s',
	              o.oprcode, nullif(o.oprcom, 0)::regoperator, nullif(o.oprnegate, 0)::regoperator, o.oprrest, o.oprjoin,
	              o.oprcanmerge, o.oprcanhash, coalesce(obj_description(o.oid, 'pg_operator'), '(none)'))
	  FROM members m JOIN pg_operator o ON m.classid = 'pg_operator'::regclass AND o.oid = m.objid
	UNION ALL
	SELECT 'cast (' || format_type(k.castsource, NULL) || ' AS ' || format_type(k.casttarget, NULL) || ')', 0,
	       format('function %s, context %s, method %s, comment %s', nullif(k.castfunc, 0)::regprocedure, k.castcontext, k.castmethod,
	              coalesce(obj_description(k.oid, 'pg_cast'), '(none)'))
	  FROM members m JOIN pg_cast k ON m.classid = 'pg_cast'::regclass AND k.oid = m.objid
	UNION ALL
	SELECT 'operator class ' || oc.opcname || ' using ' || am.amname, 0,
	       format('type %s, default %s, family %s, storage %s', format_type(oc.opcintype, NULL), oc.opcdefault,
	              f.opfname, format_type(nullif(oc.opckeytype, 0), NULL))
	  FROM members m JOIN pg_opclass oc ON m.classid = 'pg_opclass'::regclass AND oc.oid = m.objid
	  JOIN pg_am am ON am.oid = oc.opcmethod JOIN pg_opfamily f ON f.oid = oc.opcfamily
	UNION ALL
	SELECT 'operator family ' || f.opfname || ' using ' || am.amname, 1,
	       'member ' || pg_describe_object(d.classid, d.objid, 0)
	  FROM members m JOIN pg_opfamily f ON m.classid = 'pg_opfamily'::regclass AND f.oid = m.objid
	  JOIN pg_am am ON am.oid = f.opfmethod
	  JOIN pg_depend d ON d.refclassid = 'pg_opfamily'::regclass AND d.refobjid = f.oid
	                  AND d.classid IN ('pg_amop'::regclass, 'pg_amproc'::regclass)
	UNION ALL
	SELECT 'default privileges in ' || d.defaclnamespace::regnamespace::text, 0,
	       d.defaclobjtype::text || ': ' || (SELECT string_agg(a::text, ' ' ORDER BY a::text) FROM unnest(d.defaclacl) a)
	  FROM pg_default_acl d, ext WHERE d.defaclnamespace = ext.extnamespace
	UNION ALL
	-- the privileges the extension's scripts left (pg_dump saves only what
	-- differs from them, so a grant recorded here would not be dumped)
	SELECT 'initial privileges of ' || pg_describe_object(i.classoid, i.objoid, i.objsubid), 0,
	       i.privtype::text || ': ' || coalesce((SELECT string_agg(a::text, ' ' ORDER BY a::text) FROM unnest(i.initprivs) a), '-')
	  FROM pg_init_privs i
	  JOIN members m ON m.classid = i.classoid AND m.objid = i.objoid
)
SELECT obj, fact FROM facts ORDER BY obj, n, fact;
