-- Privacy and tenancy: the HIPAA shared-logon audit, people's real names
-- behind a role, the extension's roles, and row-level security per client.
-- Readers act with their own rights: what they may see is decided by
-- grants and policies.  The few functions that write what their callers may
-- not write themselves (loaders, finalization, adjustments) are SECURITY
-- DEFINER, callable only by mspbill_billing and mspbill_admin.

CREATE TABLE @extschema@.applications (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	name text NOT NULL,
	holds_pii boolean NOT NULL DEFAULT true,
	PRIMARY KEY (client_id, name)
);
COMMENT ON TABLE @extschema@.applications IS
	'applications per client (as named in accounts.application) and whether they hold PII';

-- Real names live here only; billing needs the pseudonym in people.
CREATE TABLE @extschema@.person_identities (
	client_id bigint NOT NULL,
	person_id bigint NOT NULL,
	full_name text NOT NULL,
	email text,
	PRIMARY KEY (client_id, person_id),
	FOREIGN KEY (client_id, person_id) REFERENCES @extschema@.people ON DELETE CASCADE
);
COMMENT ON TABLE @extschema@.person_identities IS
	'people''s real names and addresses; readable only by mspbill_pii (and mspbill_admin)';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.applications', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.person_identities', '');

-- Shared-account sessions in which a PII-holding application was used
-- without an individual login to it: every use of the application on that
-- device within the session (widened by the window) came from a shared,
-- service or unmapped application account, or there was no login at all
-- while the application recorded activity.
-- (PL/pgSQL, the period and contract read first and every table filtered
-- by client_id, so that Citus plans the query on the client's shard.)
CREATE FUNCTION @extschema@.msp_pii_audit(client_id bigint, period daterange DEFAULT NULL,
										  window_size interval DEFAULT '15 minutes')
RETURNS TABLE (device text, account text, application text, session_start timestamptz,
			   session_end timestamptz, uses integer, sessions bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	z record;
	sess interval;
BEGIN
	-- nothing, rather than an error, for a client the reader may not see
	IF NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = msp_pii_audit.client_id) THEN
		RETURN;
	END IF;
	period := msp_period(client_id, period);
	SELECT c.time_zone, (lower(period)::timestamp AT TIME ZONE c.time_zone) AS t0,
		   (upper(period)::timestamp AT TIME ZONE c.time_zone) AS t1
	  INTO z FROM clients c WHERE c.client_id = msp_pii_audit.client_id;
	SELECT k.default_session INTO sess FROM contracts k
	 WHERE k.client_id = msp_pii_audit.client_id AND k.effective @> (upper(period) - 1);
	sess := coalesce(sess, interval '1 hour');
	RETURN QUERY
	WITH shared_sessions AS MATERIALIZED (
		-- numbered here (the CTE is read twice, so it is materialized once)
		SELECT row_number() OVER () AS session_no, l.device_id, l.account_id, l.at AS s0,
			   coalesce(l.ended, l.at + sess) AS s1
		  FROM logons l
		  JOIN accounts a ON a.client_id = msp_pii_audit.client_id AND a.account_id = l.account_id
		 WHERE l.client_id = msp_pii_audit.client_id AND l.at >= z.t0 AND l.at < z.t1
		   AND a.kind = 'shared' AND a.realm = 'os' AND l.presence AND l.device_id IS NOT NULL),
	uses AS (
		SELECT s.session_no, ua.application, count(*)::integer AS uses,
			   bool_or(ua.kind = 'individual') AS individual_login
		  FROM shared_sessions s
		  JOIN logons u ON u.client_id = msp_pii_audit.client_id AND u.device_id = s.device_id
					   AND u.at >= s.s0 - window_size AND u.at <= s.s1 + window_size
		  JOIN accounts ua ON ua.client_id = msp_pii_audit.client_id AND ua.account_id = u.account_id AND ua.realm = 'app'
		  JOIN applications ap ON ap.client_id = msp_pii_audit.client_id AND ap.name = ua.application AND ap.holds_pii
		 GROUP BY s.session_no, ua.application)
	SELECT d.name, al.label, x.application, s.s0, s.s1, x.uses,
		   count(*) OVER (PARTITION BY d.name, al.label, x.application)
	  FROM uses x
	  JOIN shared_sessions s USING (session_no)
	  JOIN devices d ON d.client_id = msp_pii_audit.client_id AND d.device_id = s.device_id
	  JOIN account_labels al ON al.client_id = msp_pii_audit.client_id AND al.account_id = s.account_id
	 WHERE NOT x.individual_login
	 ORDER BY d.name, s.s0;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pii_audit(bigint, daterange, interval) IS
	'HIPAA check: shared-account sessions in which a PII application was used without an individual application login';

-- The summary's figures (PL/pgSQL, every table filtered by client_id, so
-- that Citus plans the reads on the client's shard; the summary itself
-- keeps its SQL signature, whose output column shares the parameter's name).
CREATE FUNCTION @extschema@.msp_pii_audit_figures(client_id bigint, period daterange)
RETURNS TABLE (shared_sessions bigint, violating_sessions bigint, devices bigint, applications text[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	zone text;
BEGIN
	SELECT cl.time_zone INTO zone FROM clients cl WHERE cl.client_id = msp_pii_audit_figures.client_id;
	-- no row for a client the reader may not see
	IF NOT FOUND THEN
		RETURN;
	END IF;
	period := msp_period(client_id, period);
	SELECT count(*) INTO shared_sessions
	  FROM logons l JOIN accounts a ON a.client_id = msp_pii_audit_figures.client_id AND a.account_id = l.account_id
	 WHERE l.client_id = msp_pii_audit_figures.client_id AND a.kind = 'shared' AND a.realm = 'os' AND l.presence
	   AND l.at >= (lower(period)::timestamp AT TIME ZONE zone)
	   AND l.at < (upper(period)::timestamp AT TIME ZONE zone);
	SELECT count(*), count(DISTINCT v.device), coalesce(array_agg(DISTINCT v.application ORDER BY v.application), '{}')
	  INTO violating_sessions, devices, applications
	  FROM msp_pii_audit(client_id, period) v;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pii_audit_figures(bigint, daterange) IS
	'the figures of msp_pii_audit_summary(): shared sessions, violating sessions, devices and applications; no row for a client the reader may not see';

CREATE FUNCTION @extschema@.msp_pii_audit_summary(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (client_id bigint, shared_sessions bigint, violating_sessions bigint, devices bigint,
			   applications text[])
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT msp_pii_audit_summary.client_id, f.shared_sessions, f.violating_sessions, f.devices, f.applications
	  FROM msp_pii_audit_figures(msp_pii_audit_summary.client_id, period) f;
END;
COMMENT ON FUNCTION @extschema@.msp_pii_audit_summary(bigint, daterange) IS
	'per client: shared sessions, those that broke the individual-login rule, devices and applications involved';

-- Each role sees its own client mappings, which the policies below read
-- for every reader: so everyone may select, and sees only their own rows.
-- Roles are matched through pg_roles, so that a row naming a dropped role
-- is simply nobody's (pg_has_role on a missing name would be an error in
-- every reader's query).
ALTER TABLE @extschema@.bi_client_access ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC;
CREATE POLICY own_rows ON @extschema@.bi_client_access
	USING ((SELECT @extschema@.msp_sees_all_clients())
		   OR role_name = ANY (ARRAY(SELECT r.rolname FROM pg_catalog.pg_roles r
									  WHERE pg_catalog.pg_has_role(r.oid, 'MEMBER'))));
COMMENT ON POLICY own_rows ON @extschema@.bi_client_access IS
	'each role sees the mappings of the roles it belongs to; admins and billing see all';

-- Row-level security: every client-keyed table shows a reader only the
-- clients they may see (msp_can_see_client).  The checks run once per
-- query (initplans), not once per row.  The staging tables are the
-- exception: COPY FROM cannot write a table with row-level security, so
-- nobody but the loaders (SECURITY DEFINER) may read them at all.
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['clients', 'contracts', 'contract_tiers', 'devices', 'people', 'accounts',
							 'logons', 'logons_default', 'support_contacts', 'cost_pools', 'license_counts',
							 'invoices', 'invoice_items', 'audit_log', 'load_rejects', 'applications',
							 'person_identities', 'sister_clients', 'license_policies', 'partner_companies', 'psa_contacts',
							 'm365_sku_counts', 'm365_license_assignments', 'pax8_subscriptions', 'psa_tickets']
	LOOP
		EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', t);
		EXECUTE format('COMMENT ON POLICY client_rows ON @extschema@.%I IS %L', t,
					   'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)');
	END LOOP;
END
$$;

-- A view runs with its owner's rights: without a barrier, a cheap function
-- of the reader's in the WHERE clause would run before the view's own
-- client filter and see every client's accounts.
ALTER VIEW @extschema@.account_labels SET (security_barrier = true);

-- Reports for the sealed BI role (mspbill_report), which holds no grant on
-- any table: so EXPLAIN ANALYZE, statistics views and error messages have
-- no base table of its to describe.  These run as the owner and check the
-- login: a SECURITY DEFINER function cannot see its caller's current role,
-- only session_user, so clients are mapped to the login (or a role the
-- login belongs to) in bi_client_access.
-- (PL/pgSQL reading msp_client_access_table(): on Citus a query on
-- bi_client_access would be a distributed one, and Citus re-plans a
-- RETURN-style SQL body as text, which fails)
CREATE FUNCTION @extschema@.msp_report_clients() RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	ids bigint[];
BEGIN
	EXECUTE format('SELECT ARRAY(SELECT b.client_id FROM %s b
								   JOIN pg_catalog.pg_roles r ON r.rolname = b.role_name
								  WHERE pg_catalog.pg_has_role(session_user, r.oid, ''MEMBER'')
								  ORDER BY b.client_id)', @extschema@.msp_client_access_table())
		INTO ids;
	RETURN ids;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_clients() IS
	'the clients mapped in bi_client_access to the session''s login or a role it belongs to';

-- An unmapped client is as unknown as one that does not exist.
CREATE FUNCTION @extschema@.msp_report_require(client_id bigint) RETURNS void
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	IF client_id IS NULL OR NOT client_id = ANY (msp_report_clients()) THEN
		RAISE EXCEPTION 'unknown client %', client_id
			USING ERRCODE = 'no_data_found',
				  HINT = 'Map the login to the client in mspbill.bi_client_access.';
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_require(bigint) IS
	'an error unless the session''s login is mapped to the client';

CREATE FUNCTION @extschema@.msp_report_invoices()
RETURNS TABLE (client_id bigint, invoice_id bigint, kind text, period daterange, adjusts_invoice_id bigint,
			   apply_period daterange, reason text, model text, users integer, seats integer, devices integer,
			   subtotal numeric, total numeric, currency char(3), evidence jsonb, finalized_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	-- the login's clients, taken here: on Citus a call left in the query
	-- would run on the workers, where the session is the definer's
	ids bigint[] := @extschema@.msp_report_clients();
BEGIN
	RETURN QUERY
	SELECT i.client_id, i.invoice_id, i.kind, i.period, i.adjusts_invoice_id, i.apply_period, i.reason, i.model,
		   i.users, i.seats, i.devices, i.subtotal, i.total, i.currency, i.evidence, i.finalized_at
	  FROM @extschema@.invoices i
	 WHERE i.client_id = ANY (ids)
	 ORDER BY i.client_id, i.invoice_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_invoices() IS
	'for mspbill_report: the finalized invoices and adjustment notes of the clients mapped to the login';

CREATE FUNCTION @extschema@.msp_report_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	PERFORM msp_report_require(client_id);
	RETURN msp_invoice(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_invoice(bigint, daterange) IS
	'for mspbill_report: msp_invoice() of a client mapped to the login';

CREATE FUNCTION @extschema@.msp_report_invoice_lines(client_id bigint, period daterange DEFAULT NULL)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	PERFORM msp_report_require(client_id);
	RETURN QUERY SELECT * FROM msp_invoice_lines(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_invoice_lines(bigint, daterange) IS
	'for mspbill_report: msp_invoice_lines() of a client mapped to the login';

CREATE FUNCTION @extschema@.msp_report_billable_users(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
BEGIN
	PERFORM msp_report_require(client_id);
	-- home_client_id names a sister client whose person this client pays
	-- for: the client's own invoice evidence carries it too
	RETURN QUERY SELECT u.contract_id, u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen,
						u.days_active, u.support_contacts, u.accounts, u.home_client_id
				   FROM msp_billable_users(client_id, period) u;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_billable_users(bigint, daterange) IS
	'for mspbill_report: msp_billable_users() of a client mapped to the login, with pseudonymous account labels';

-- The functions that write on their callers' behalf.
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]),
	@extschema@.msp_issue_adjustment(bigint, daterange, text),
	@extschema@.msp_load_windows_events(bigint, text),
	@extschema@.msp_load_entra_signins(bigint, text),
	@extschema@.msp_load_emr_audit(bigint, text),
	@extschema@.msp_discard_staged(bigint),
	@extschema@.msp_load_m365_graph(bigint, date, text),
	@extschema@.msp_load_m365_users_csv(bigint, date, text),
	@extschema@.msp_load_m365_activity(bigint, text),
	@extschema@.msp_load_pax8_subscriptions(bigint, date, text),
	@extschema@.msp_load_psa_tickets(bigint, text, text),
	@extschema@.msp_match_psa_tickets(bigint),
	@extschema@.msp_stage_csv(bigint, regclass, text),
	@extschema@.msp_stage_json(bigint, regclass, text[]),
	@extschema@.msp_store_assignments(bigint, date, text),
	@extschema@.msp_store_rejects(bigint, text),
	@extschema@.msp_load_begin(bigint),
	@extschema@.msp_load_normalized(bigint, text),
	@extschema@.msp_load_guarded(text, text, bigint, bigint, bigint),
	@extschema@.msp_load_normalized_guarded(bigint, text, text),
	@extschema@.msp_report_invoices(),
	@extschema@.msp_report_invoice(bigint, daterange),
	@extschema@.msp_report_invoice_lines(bigint, daterange),
	@extschema@.msp_report_billable_users(bigint, daterange)
	FROM PUBLIC;

-- The roles.  Roles belong to the whole cluster, not to one database, so
-- the extension does not create them on its own: a DBA runs
-- SELECT mspbill.msp_install_roles(); (again after upgrades; it is idempotent).
-- On a Citus coordinator, Citus carries the roles it creates and the grants
-- on its tables and the schema to the workers (not those on views).
CREATE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.sister_clients, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications, '
						'@extschema@.invoice_terms, @extschema@.tax_rates, @extschema@.psa_mappings, @extschema@.export_codes, '
						'@extschema@.contract_lines, @extschema@.contract_line_tiers, @extschema@.meter_readings, '
						-- licensing (src/licensing.sql): mappings and the loaded snapshots
						'@extschema@.license_policies, @extschema@.partner_companies, @extschema@.psa_contacts, '
						'@extschema@.m365_sku_counts, @extschema@.m365_license_assignments, @extschema@.pax8_subscriptions';
	-- read by every role that reads invoices, written only by the definers
	-- (the number series: see below)
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items, @extschema@.invoice_documents, '
						  '@extschema@.invoice_line_documents, @extschema@.psa_syncs';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging, '
					'@extschema@.m365_graph_staging, @extschema@.m365_users_csv_staging, @extschema@.m365_activity_staging, '
					'@extschema@.pax8_staging, @extschema@.psa_ticket_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq, @extschema@.m365_graph_staging_line_no_seq, '
						 '@extschema@.m365_users_csv_staging_line_no_seq, @extschema@.m365_activity_staging_line_no_seq, '
						 '@extschema@.pax8_staging_line_no_seq, @extschema@.psa_ticket_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_psa_sync(bigint, daterange), '
					'@extschema@.msp_load_m365_graph(bigint, date, text), '
					'@extschema@.msp_load_m365_users_csv(bigint, date, text), '
					'@extschema@.msp_load_m365_activity(bigint, text), '
					'@extschema@.msp_load_pax8_subscriptions(bigint, date, text), '
					'@extschema@.msp_load_psa_tickets(bigint, text, text), '
					'@extschema@.msp_match_psa_tickets(bigint), '
					'@extschema@.msp_finalize_run_begin(daterange, text[], bigint[]), '
					'@extschema@.msp_finalize_run_client(bigint, bigint, boolean), '
					'@extschema@.msp_finalize_run_end(bigint)';
	-- licence names are not per client: those who load maintain them (BI
	-- needs none, and would read their column statistics)
	product_names text := '@extschema@.license_product_names';
	-- PSA tickets without the contact (an e-mail or PSA id) for those who see no names
	ticket_cols text := 'client_id, psa, ticket_id, at, company, board, channel, person_id, contact_id';
	-- month-end (src/monthend.sql): a procedure, granted ON PROCEDURE
	month_end text := '@extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE format('REVOKE ALL ON PROCEDURE %s FROM %s', month_end, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE 'GRANT SELECT, DELETE ON @extschema@.psa_tickets TO mspbill_admin';
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);
	-- month-end: run it, and watch its runs (every client's outcome)
	EXECUTE format('GRANT EXECUTE ON PROCEDURE %s TO mspbill_admin, mspbill_billing', month_end);
	EXECUTE 'GRANT SELECT ON @extschema@.finalize_runs, @extschema@.finalize_run_clients, @extschema@.finalize_progress '
			'TO mspbill_admin, mspbill_billing';

	-- the number series: chosen by the admin before the first invoice
	-- (prefix, digits, the number another system stopped at), never set
	-- back afterwards; billing only reads it (finalization, a definer,
	-- takes the numbers)
	EXECUTE 'GRANT SELECT, INSERT (series, prefix, digits, last_number), UPDATE (prefix, digits) '
			'ON @extschema@.invoice_numbering TO mspbill_admin';
	EXECUTE 'GRANT SELECT ON @extschema@.invoice_numbering TO mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.psa_tickets TO mspbill_billing, mspbill_bi', ticket_cols);
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_admin, mspbill_billing', product_names);
	EXECUTE 'GRANT SELECT ON @extschema@.psa_unknown_contacts TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';
	-- (what account_labels calls on Citus; it checks the login itself)
	EXECUTE 'GRANT EXECUTE ON FUNCTION @extschema@.msp_account_name(bigint, bigint) TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	-- on Citus the workers get the grants on views and functions too
	-- (Citus carries those on tables only)
	PERFORM @extschema@.msp_grants_to_workers();
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';
