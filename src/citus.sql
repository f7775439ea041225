-- Citus: one call on the coordinator turns the schema into a distributed
-- one.  Nothing here needs Citus to install: its functions are reached
-- through EXECUTE only, and msp_distribute() refuses, with a hint, where
-- Citus is missing.

-- The row-level security expression of a client-keyed table.  On one node
-- the checks are initplans (run once per query); Citus refuses subqueries
-- in policies of distributed tables, so there the policy calls
-- msp_can_see_client per row instead.
CREATE FUNCTION @extschema@.msp_client_policy(distributed boolean) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN distributed
			THEN '@extschema@.msp_can_see_client(client_id)'
			ELSE '(SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[]))' END;
COMMENT ON FUNCTION @extschema@.msp_client_policy(boolean) IS
	'the USING expression of the client_rows policies: initplans on one node, a function call on Citus';

-- Is this table distributed by Citus?  false without Citus.
CREATE FUNCTION @extschema@.msp_is_distributed(rel regclass) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	yes boolean;
BEGIN
	IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
		RETURN false;
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1)' INTO yes USING rel;
	RETURN yes;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_is_distributed(regclass) IS
	'true when Citus manages the table (distributed or reference); false without Citus';

-- The per-client functions the coordinator delegates to the worker that
-- holds the client (first argument), and whether a call inside a
-- transaction block is delegated too (force_delegation: only for functions
-- that read the client's own shards, never a sister client's).
CREATE FUNCTION @extschema@.msp_distributed_functions()
RETURNS TABLE (fn regprocedure, force_delegation boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT x.fn::regprocedure, x.force
	  FROM (VALUES
		('@extschema@.msp_invoice(bigint, daterange)', false),
		('@extschema@.msp_compute_invoice(bigint, daterange)', false),
		('@extschema@.msp_invoice_lines(bigint, daterange)', false),
		('@extschema@.msp_billable_users(bigint, daterange)', false),
		('@extschema@.msp_compare_models(bigint, daterange)', false),
		('@extschema@.msp_cost_allocation(bigint, daterange)', false),
		('@extschema@.msp_invoice_drift(bigint, daterange)', false),
		('@extschema@.msp_finalize_invoice(bigint, daterange, text[])', false),
		('@extschema@.msp_issue_adjustment(bigint, daterange, text)', false),
		('@extschema@.msp_data_quality(bigint, daterange, integer)', true),
		('@extschema@.msp_pii_audit(bigint, daterange, interval)', true),
		('@extschema@.msp_pii_audit_summary(bigint, daterange)', true),
		('@extschema@.msp_shard_invoices(bigint, daterange)', false)) x(fn, force);
END;
COMMENT ON FUNCTION @extschema@.msp_distributed_functions() IS
	'the per-client functions msp_distribute() registers with Citus, and whether calls in a transaction block are delegated too';

-- Run a statement on this node and every worker: msp_distribute() changes
-- the extension's tables before Citus manages them, and each worker holds
-- the extension's own copy of them (the shell tables Citus then plans
-- with), which must change alike.
CREATE FUNCTION @extschema@.msp_on_all_nodes(command text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	EXECUTE command;
	FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)' USING command LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION 'worker %:% refused: %', r.nodename, r.nodeport, r.result
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = format('The statement was: %s', command),
					  HINT = 'Every worker needs the same mspbill version as the coordinator (CREATE EXTENSION mspbill on the coordinator after citus_add_node() creates it there).';
		END IF;
	END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_on_all_nodes(text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_on_all_nodes(text) IS
	'runs a statement on this node and on every Citus worker; an error names the worker that refused';

-- Run statements on every worker only, in one transaction each, with
-- Citus's DDL propagation off there: for the extension's own objects,
-- which CREATE EXTENSION made on every node and Citus does not carry
-- (a worker refuses to change them with propagation on).
CREATE FUNCTION @extschema@.msp_on_workers(commands text[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	block text;
BEGIN
	-- (one statement: run_command_on_workers runs only the first of several)
	block := format('DO %L', 'BEGIN PERFORM pg_catalog.set_config(''citus.enable_ddl_propagation'', ''off'', true); '
							 || (SELECT string_agg(format('EXECUTE %L;', c), ' ') FROM unnest(commands) c) || ' END');
	FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)' USING block LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION 'worker %:% refused: %', r.nodename, r.nodeport, r.result
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = format('Nothing of the %s statements changed there; the first was: %s', cardinality(commands), commands[1]),
					  HINT = 'Every worker needs the same mspbill version as the coordinator, and the mspbill roles (msp_install_roles() on the coordinator creates them there).';
		END IF;
	END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_on_workers(text[]) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_on_workers(text[]) IS
	'runs statements on every Citus worker (not here) in one transaction each, DDL propagation off; an error names the worker that refused';

-- Distribute the schema on a Citus coordinator.  Idempotent: what is
-- distributed already is left as it is.
CREATE FUNCTION @extschema@.msp_distribute(shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- the small shared tables: invoice_numbering is the MSP's one number
	-- series, whose row each finalization locks wherever it runs (Citus
	-- writes a reference table on every node in one transaction and
	-- serializes its writers cluster-wide), export_codes the MSP's books,
	-- license_product_names the licences' spellings, partner_companies the
	-- vendors' company names (unique across clients), sister_clients the
	-- pairs of clients whose invoices read each other's people (so that an
	-- invoice finds them on its own node), finalize_runs the month-end runs
	-- (one row a run, its clients' outcomes distributed beside them)
	ref_tables text[] := '{clients,bi_client_access,invoice_numbering,export_codes,license_product_names,partner_companies,sister_clients,finalize_runs}';
	-- the first distributed table names the co-location group of all
	anchor regclass := '@extschema@.contracts'::regclass;
	todo regclass[];
	t regclass;
	progress boolean;
	n_ref integer := 0;
	n_dist integer := 0;
	n_fn integer := 0;
	f record;
	s record;
	is_coord boolean;
	labels_view text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'Citus is not installed in this database'
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() distributes mspbill''s tables on a Citus cluster; on one server there is nothing to do.',
				  HINT = 'On the coordinator (citus in shared_preload_libraries): CREATE EXTENSION citus; add the workers with citus_add_node(); then SELECT mspbill.msp_distribute();';
	END IF;
	EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO is_coord;
	IF NOT is_coord THEN
		RAISE EXCEPTION 'msp_distribute() runs on the Citus coordinator only'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'This node is not the coordinator of its cluster.',
				  HINT = 'Connect to the coordinator (or register it with citus_set_coordinator_host()) and call it there.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'msp_distribute() must be run by a superuser'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'It distributes tables and sets the sequences of every node.',
				  HINT = 'Connect as the superuser that created the extension.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gist') THEN
		RAISE EXCEPTION 'msp_distribute() needs the extension btree_gist'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'On Citus, the one-contract-per-day and one-invoice-per-period exclusion constraints must name client_id itself, which needs btree_gist''s equality for bigint.',
				  HINT = 'CREATE EXTENSION btree_gist; on the coordinator (Citus creates it on the workers), then call msp_distribute() again.';
	END IF;

	-- Every table it will distribute has a client_id: checked before
	-- anything changes, since the statements run on the workers
	-- (run_command_on_workers) commit there even if this call fails later
	FOR t IN
		SELECT c.oid::regclass FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
		   AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
		   AND c.relname <> ALL (ref_tables)
		   AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'client_id' AND NOT a.attisdropped)
	LOOP
		RAISE EXCEPTION 'table % has no client_id to distribute it by', t
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'msp_distribute() changed nothing.',
				  HINT = 'Every mspbill table is keyed by client_id; a table added by hand must be distributed (or dropped) by hand first.';
	END LOOP;

	-- 1. Policies: a function call instead of the initplans
	FOR s IN
		SELECT p.polrelid::regclass AS rel, p.polname
		  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace
		   AND p.polname IN ('client_rows', 'own_rows')
		   AND NOT @extschema@.msp_is_distributed(p.polrelid)
	LOOP
		IF s.polname = 'own_rows' THEN
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY own_rows ON %s USING (@extschema@.msp_sees_all_clients() OR @extschema@.msp_has_role(role_name))', s.rel));
		ELSE
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER POLICY client_rows ON %s USING (%s)', s.rel, @extschema@.msp_client_policy(true)));
		END IF;
	END LOOP;

	-- 2. Exclusion constraints that name client_id itself (btree_gist)
	IF NOT @extschema@.msp_is_distributed('@extschema@.contracts') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.contracts DROP CONSTRAINT contracts_no_overlap, '
								 'ADD CONSTRAINT contracts_no_overlap EXCLUDE USING gist (client_id WITH =, effective WITH &&)');
	END IF;
	IF NOT @extschema@.msp_is_distributed('@extschema@.invoices') THEN
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.invoices DROP CONSTRAINT invoices_no_overlap, '
								 'ADD CONSTRAINT invoices_no_overlap EXCLUDE USING gist (client_id WITH =, period WITH &&) WHERE (kind = ''invoice'')');
	END IF;

	-- 3. Triggers: Citus distributes no table that has any.  Finalized rows
	-- stay facts through privileges (only the owner may write them) and,
	-- for the owner itself, restrictive policies that refuse UPDATE and
	-- DELETE to everyone but a superuser (who bypasses row-level security,
	-- as the triggers let a superuser through).
	-- (the tables whose triggers refuse changes, as they are before the
	-- triggers go: invoices, items, audit log, documents, PSA syncs)
	FOR t IN
		SELECT DISTINCT tg.tgrelid::regclass FROM pg_trigger tg
		 WHERE tg.tgfoid = '@extschema@.msp_refuse_change()'::regprocedure AND NOT tg.tgisinternal
		   AND NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tg.tgrelid AND polname = 'finalized_no_update')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_update ON %s AS RESTRICTIVE FOR UPDATE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_delete ON %s AS RESTRICTIVE FOR DELETE USING (false)', t));
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t));
	END LOOP;
	FOR s IN
		SELECT tg.tgrelid::regclass AS rel, tg.tgname
		  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND NOT tg.tgisinternal
		   AND tg.tgparentid = 0
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('DROP TRIGGER %I ON %s', s.tgname, s.rel));
	END LOOP;

	-- Foreign keys that set a column NULL when their row goes (a PSA
	-- ticket's person): Citus refuses SET NULL on a key that includes
	-- client_id, so on Citus such a delete is refused instead (clear the
	-- column first)
	FOR s IN
		SELECT k.conrelid::regclass AS rel, k.conname, pg_get_constraintdef(k.oid) AS def
		  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND k.contype = 'f' AND k.confdeltype IN ('n', 'd')
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
													s.rel, s.conname, s.conname,
													regexp_replace(s.def, ' ON DELETE SET (NULL|DEFAULT)( \([^)]*\))?', '')));
	END LOOP;

	-- Sister clients: every pair people name now, then a foreign key in
	-- place of the trigger that kept the table (dropped above)
	IF NOT @extschema@.msp_is_distributed('@extschema@.people') THEN
		INSERT INTO @extschema@.sister_clients (client_id, bill_to_client_id)
		SELECT DISTINCT p.client_id, p.bill_to_client_id FROM @extschema@.people p
		 WHERE p.bill_to_client_id IS NOT NULL
		ON CONFLICT DO NOTHING;
		PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.people ADD CONSTRAINT people_sister_client_declared '
								 'FOREIGN KEY (client_id, bill_to_client_id) REFERENCES @extschema@.sister_clients');
	END IF;

	-- 4. The small shared tables on every node (the client-keyed tables
	-- that reference clients are distributed next: Citus must not turn
	-- them into local tables of its metadata meanwhile)
	PERFORM set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
	FOREACH t IN ARRAY (SELECT array_agg(format('@extschema@.%I', x)::regclass) FROM unnest(ref_tables) x) LOOP
		IF NOT @extschema@.msp_is_distributed(t) THEN
			-- Citus copies the rows to every node in one COPY per node; the
			-- time zone check's exception block (a subtransaction) would
			-- interrupt it on the coordinator's own copy.  The rows passed
			-- the check already; it is put back once the table is copied.
			IF t = '@extschema@.clients'::regclass THEN
				PERFORM @extschema@.msp_on_all_nodes('ALTER TABLE @extschema@.clients DROP CONSTRAINT clients_time_zone_known');
			END IF;
			EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t;
			IF t = '@extschema@.clients'::regclass THEN
				ALTER TABLE @extschema@.clients ADD CONSTRAINT clients_time_zone_known
					CHECK (@extschema@.msp_valid_time_zone(time_zone));
			END IF;
			n_ref := n_ref + 1;
		END IF;
	END LOOP;

	-- 5. Every other table of the schema by client_id, co-located, each
	-- after the tables its foreign keys name
	todo := ARRAY(SELECT c.oid::regclass FROM pg_class c
				   WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind IN ('r', 'p')
					 AND NOT c.relispartition AND NOT @extschema@.msp_is_distributed(c.oid)
				   ORDER BY c.oid <> anchor, c.relname);
	LOOP
		progress := false;
		FOREACH t IN ARRAY todo LOOP
			CONTINUE WHEN @extschema@.msp_is_distributed(t);
			CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint k
								   WHERE k.conrelid = t AND k.contype = 'f' AND k.confrelid <> t
									 AND NOT @extschema@.msp_is_distributed(k.confrelid));
			IF t = anchor THEN
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => ''none'', shard_count => $2)'
					USING t, coalesce(shard_count, current_setting('citus.shard_count')::integer);
			ELSE
				EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''client_id'', colocate_with => $2)'
					USING t, anchor::text;
			END IF;
			n_dist := n_dist + 1;
			progress := true;
		END LOOP;
		EXIT WHEN NOT progress;
	END LOOP;

	-- 6. Sequences: each node numbers from its own range (its group id in
	-- the top bits, as Citus does for the sequences it owns), so that ids
	-- written on workers (delegated finalizations, loads) never collide
	FOR s IN
		SELECT c.oid::regclass AS seq FROM pg_class c
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind = 'S'
	LOOP
		EXECUTE format($cmd$SELECT pg_catalog.run_command_on_workers(%L)$cmd$,
					   format($w$SELECT pg_catalog.setval(%L, greatest(last_value, (SELECT groupid::bigint << 48 FROM pg_catalog.pg_dist_local_group)), true) FROM %s$w$,
							  s.seq, s.seq));
	END LOOP;

	-- 7. account_labels: the same rows and labels, the names through
	-- msp_account_name (called only where a name may show), since Citus
	-- reads the shards as the session user, whom the view's owner rights do
	-- not reach (the label rule as in src/billing/tables.sql)
	labels_view := (
		'CREATE OR REPLACE VIEW @extschema@.account_labels WITH (security_barrier) AS '
		'SELECT a.client_id, a.account_id, a.realm, a.kind, '
		'coalesce(CASE WHEN a.kind IN (''shared'', ''service'') OR @extschema@.msp_sees_names() '
		'THEN @extschema@.msp_account_name(a.client_id, a.account_id) END, '
		'a.realm || '' account '' || a.account_id) AS label '
		'FROM @extschema@.accounts a WHERE @extschema@.msp_can_see_client(a.client_id)');
	EXECUTE labels_view;
	PERFORM @extschema@.msp_on_workers(ARRAY[labels_view]);

	-- 8. Per-client functions run on the worker that holds the client
	FOR f IN SELECT * FROM @extschema@.msp_distributed_functions() LOOP
		EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''$1''::text, colocate_with => $2, force_delegation => $3)'
			USING f.fn, anchor::text, f.force_delegation;
		n_fn := n_fn + 1;
	END LOOP;

	-- 9. The workers get the grants on views and functions (a delegated
	-- call reads account_labels there as its caller)
	PERFORM @extschema@.msp_grants_to_workers();

	RETURN format('%s reference tables, %s distributed tables, %s delegated functions', n_ref, n_dist, n_fn);
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_distribute(integer) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_distribute(integer) IS
	'on a Citus coordinator: makes clients and bi_client_access reference tables, distributes every other table by client_id (co-located), and delegates the per-client functions to the worker that holds the client';

-- The invoices (msp_invoice) of the clients in the same shard as client_id
-- (without Citus: client_id's alone), as one JSON array.  msp_invoices() runs
-- one call per shard at once, each on the worker that holds the shard, so
-- that each invoice's statements run on that worker's own shards.  A
-- delegated function of msp_distribute(), so that Citus lets the call,
-- made over its own connection, query the shards.
CREATE FUNCTION @extschema@.msp_shard_invoices(client_id bigint, period daterange) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	ids bigint[];
	id bigint;
	out jsonb := '[]';
BEGIN
	IF @extschema@.msp_is_distributed('@extschema@.contracts') THEN
		EXECUTE 'SELECT array_agg(c.client_id ORDER BY c.client_id) FROM @extschema@.clients c
				  WHERE pg_catalog.get_shard_id_for_distribution_column(''@extschema@.contracts'', c.client_id)
						= pg_catalog.get_shard_id_for_distribution_column(''@extschema@.contracts'', $1)'
			INTO ids USING client_id;
	ELSE
		-- one node, one shard per client as far as this function goes:
		-- a client the reader may not see is refused by msp_invoice
		ids := ARRAY[client_id];
	END IF;
	FOREACH id IN ARRAY coalesce(ids, '{}') LOOP
		out := out || jsonb_build_array(to_jsonb(msp_invoice(id, period)));
	END LOOP;
	RETURN out;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_shard_invoices(bigint, daterange) IS
	'the invoices of the clients in client_id''s shard (without Citus: its own), as a JSON array; msp_invoices() calls it once per shard';

-- The name an account label shows, for account_labels on Citus.  There
-- Citus sends the view's query to the shards as the session user, so a
-- view that reads accounts.name fails for every role that may not read the
-- column (a view's owner rights do not reach the shards).  This definer
-- reads the one row instead, from this node's own shard (the caller is a
-- query on that shard, where Citus refuses queries on distributed tables),
-- and decides by the caller: current_user is the definer here, so the
-- caller is the role set with SET ROLE, else the session's login (on a
-- worker, the coordinator's current user).  NULL when the caller may not
-- see the client, or for the name of a person's account without
-- mspbill_pii.
CREATE FUNCTION @extschema@.msp_account_name(client_id bigint, account_id bigint) RETURNS text
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	caller name := coalesce(nullif(current_setting('role'), 'none'), session_user);
	super boolean;
	mapped boolean;
	tbl regclass;
	nm text;
	k text;
BEGIN
	SELECT r.rolsuper INTO super FROM pg_catalog.pg_roles r WHERE r.rolname = caller;
	EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s b JOIN pg_catalog.pg_roles r ON r.rolname = b.role_name
								   WHERE b.client_id = $1 AND pg_catalog.pg_has_role($2, r.oid, ''MEMBER''))',
				   @extschema@.msp_client_access_table())
		INTO mapped USING client_id, caller;
	IF NOT (super OR mapped
			OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
						WHERE r.rolname IN ('mspbill_admin', 'mspbill_billing')
						  AND pg_catalog.pg_has_role(caller, r.oid, 'MEMBER'))) THEN
		RETURN NULL;
	END IF;
	IF @extschema@.msp_is_distributed('@extschema@.accounts') THEN
		EXECUTE $q$SELECT pg_catalog.to_regclass(pg_catalog.format('@extschema@.%I', 'accounts_' || pg_catalog.get_shard_id_for_distribution_column('@extschema@.accounts', $1)))$q$
			INTO tbl USING client_id;
	END IF;
	-- (not on this node, or no Citus: the table itself)
	EXECUTE format('SELECT a.name, a.kind FROM %s a WHERE a.client_id = $1 AND a.account_id = $2',
				   coalesce(tbl, '@extschema@.accounts'::regclass))
		INTO nm, k USING client_id, account_id;
	IF k IN ('shared', 'service')
	   OR (coalesce(current_setting('mspbill.pseudonymous', true), '') <> 'on'
		   AND (super OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
								  WHERE r.rolname = 'mspbill_pii' AND pg_catalog.pg_has_role(caller, r.oid, 'MEMBER')))) THEN
		RETURN nm;
	END IF;
	RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_account_name(bigint, bigint) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_account_name(bigint, bigint) IS
	'the real name of an account for account_labels on Citus, read from this node''s shard, if the session''s login may see it; NULL otherwise';

-- Citus carries the grants on distributed tables to the workers, not those
-- on the extension's views and functions (objects of an extension are the
-- extension's, made by CREATE EXTENSION on each node).  A delegated call
-- runs on a worker as its caller and reads views there (account_labels),
-- so the workers get the coordinator's grants on them: the mspbill roles'
-- grants are taken back there and granted as here.
CREATE FUNCTION @extschema@.msp_grants_to_workers() RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	roles text;
	cmds text[] := '{}';
	r record;
	distributed oid[];
BEGIN
	IF NOT @extschema@.msp_is_distributed('@extschema@.accounts') THEN
		RETURN 0;
	END IF;
	SELECT string_agg(quote_ident(rolname), ', ' ORDER BY rolname) INTO roles FROM pg_catalog.pg_roles
	 WHERE rolname IN ('mspbill_admin', 'mspbill_billing', 'mspbill_bi', 'mspbill_pii', 'mspbill_report');
	IF roles IS NULL THEN
		RETURN 0;
	END IF;
	-- the delegated functions are Citus's objects: it carries their grants
	-- itself, in the caller's transaction (here on the workers' same rows,
	-- over other connections, it would wait for that transaction forever)
	EXECUTE 'SELECT array_agg(objid) FROM pg_catalog.pg_dist_object WHERE classid = ''pg_catalog.pg_proc''::regclass'
		INTO distributed;
	distributed := coalesce(distributed, '{}');
	FOR r IN
		SELECT format('%s %s', CASE c.relkind WHEN 'v' THEN 'TABLE' END, c.oid::regclass) AS obj, c.relacl AS acl, c.relowner AS owner
		  FROM pg_catalog.pg_class c WHERE c.relnamespace = '@extschema@'::regnamespace AND c.relkind = 'v'
		UNION ALL
		SELECT format('%s %s', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.oid::regprocedure), p.proacl, p.proowner
		  FROM pg_catalog.pg_proc p WHERE p.pronamespace = '@extschema@'::regnamespace AND p.prokind IN ('f', 'p')
		   AND NOT p.oid = ANY (distributed)
	LOOP
		cmds := cmds || format('REVOKE ALL ON %s FROM %s', r.obj, roles);
		cmds := cmds || ARRAY(SELECT format('GRANT %s ON %s TO %I', x.privilege_type, r.obj, g.rolname)
								FROM aclexplode(r.acl) x JOIN pg_catalog.pg_roles g ON g.oid = x.grantee
							   WHERE x.grantee <> r.owner AND g.rolname IN ('mspbill_admin', 'mspbill_billing', 'mspbill_bi', 'mspbill_pii', 'mspbill_report'));
	END LOOP;
	PERFORM @extschema@.msp_on_workers(cmds);
	RETURN cardinality(cmds);
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_grants_to_workers() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_grants_to_workers() IS
	'on a Citus coordinator: gives the workers the mspbill roles'' grants on the extension''s views and functions as they are here; returns the statements run';
