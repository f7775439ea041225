-- Privacy and tenancy: the HIPAA shared-logon audit, people's real names
-- behind a role, the extension's roles, and row-level security per client.
-- No function here is SECURITY DEFINER: readers act with their own rights,
-- and what they may see is decided by grants and policies.

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
CREATE FUNCTION @extschema@.msp_pii_audit(client_id bigint, period daterange DEFAULT NULL,
										  window_size interval DEFAULT '15 minutes')
RETURNS TABLE (device text, account text, application text, session_start timestamptz,
			   session_end timestamptz, uses integer, sessions bigint)
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH p AS (SELECT msp_period(client_id, period) AS period),
	z AS (SELECT c.time_zone, (lower(p.period)::timestamp AT TIME ZONE c.time_zone) AS t0,
				 (upper(p.period)::timestamp AT TIME ZONE c.time_zone) AS t1,
				 k.default_session
			FROM p CROSS JOIN clients c
			LEFT JOIN contracts k ON k.client_id = c.client_id AND k.effective @> (upper(p.period) - 1)
		   WHERE c.client_id = msp_pii_audit.client_id),
	shared_sessions AS (
		SELECT l.logon_id, l.device_id, l.account_id, l.at AS s0,
			   coalesce(l.ended, l.at + coalesce(z.default_session, interval '1 hour')) AS s1
		  FROM z JOIN logons l ON l.client_id = msp_pii_audit.client_id AND l.at >= z.t0 AND l.at < z.t1
		  JOIN accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
		 WHERE a.kind = 'shared' AND a.realm = 'os' AND l.presence AND l.device_id IS NOT NULL),
	uses AS (
		SELECT s.logon_id, ua.application, count(*)::integer AS uses,
			   bool_or(ua.kind = 'individual') AS individual_login
		  FROM shared_sessions s
		  JOIN logons u ON u.client_id = msp_pii_audit.client_id AND u.device_id = s.device_id
					   AND u.at >= s.s0 - window_size AND u.at <= s.s1 + window_size
		  JOIN accounts ua ON ua.client_id = u.client_id AND ua.account_id = u.account_id AND ua.realm = 'app'
		  JOIN applications ap ON ap.client_id = ua.client_id AND ap.name = ua.application AND ap.holds_pii
		 GROUP BY s.logon_id, ua.application)
	SELECT d.name, al.label, x.application, s.s0, s.s1, x.uses,
		   count(*) OVER (PARTITION BY d.name, al.label, x.application)
	  FROM uses x
	  JOIN shared_sessions s USING (logon_id)
	  JOIN devices d ON d.client_id = msp_pii_audit.client_id AND d.device_id = s.device_id
	  JOIN account_labels al ON al.client_id = msp_pii_audit.client_id AND al.account_id = s.account_id
	 WHERE NOT x.individual_login
	 ORDER BY d.name, s.s0;
END;
COMMENT ON FUNCTION @extschema@.msp_pii_audit(bigint, daterange, interval) IS
	'HIPAA check: shared-account sessions in which a PII application was used without an individual application login';

CREATE FUNCTION @extschema@.msp_pii_audit_summary(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (client_id bigint, shared_sessions bigint, violating_sessions bigint, devices bigint,
			   applications text[])
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH p AS (SELECT msp_period(msp_pii_audit_summary.client_id, period) AS period),
	c AS (SELECT cl.time_zone FROM clients cl WHERE cl.client_id = msp_pii_audit_summary.client_id),
	v AS (SELECT * FROM msp_pii_audit(msp_pii_audit_summary.client_id, period))
	SELECT msp_pii_audit_summary.client_id,
		   (SELECT count(*) FROM p, c, logons l JOIN accounts a USING (client_id, account_id)
			 WHERE l.client_id = msp_pii_audit_summary.client_id AND a.kind = 'shared' AND a.realm = 'os' AND l.presence
			   AND l.at >= (lower(p.period)::timestamp AT TIME ZONE c.time_zone)
			   AND l.at < (upper(p.period)::timestamp AT TIME ZONE c.time_zone)),
		   (SELECT count(*) FROM v),
		   (SELECT count(DISTINCT device) FROM v),
		   (SELECT coalesce(array_agg(DISTINCT application ORDER BY application), '{}') FROM v);
END;
COMMENT ON FUNCTION @extschema@.msp_pii_audit_summary(bigint, daterange) IS
	'per client: shared sessions, those that broke the individual-login rule, devices and applications involved';

-- Each role sees its own client mappings, which the policies below read
-- for every reader: so everyone may select, and sees only their own rows.
ALTER TABLE @extschema@.bi_client_access ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC;
CREATE POLICY own_rows ON @extschema@.bi_client_access
	USING ((SELECT @extschema@.msp_sees_all_clients()) OR pg_catalog.pg_has_role(role_name, 'MEMBER'));

-- Row-level security: every client-keyed table shows a reader only the
-- clients they may see (msp_can_see_client).  The checks run once per
-- query (initplans), not once per row.
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['clients', 'contracts', 'contract_tiers', 'devices', 'people', 'accounts',
							 'logons', 'support_contacts', 'cost_pools', 'license_counts', 'invoices',
							 'invoice_items', 'audit_log', 'load_rejects', 'windows_event_staging',
							 'entra_signin_staging', 'emr_audit_staging', 'applications', 'person_identities']
	LOOP
		EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', t);
	END LOOP;
END
$$;

-- The roles.  Roles belong to the whole cluster, not to one database, so
-- the extension does not create them on its own: a DBA runs
-- SELECT mspbill.msp_install_roles(); (again after upgrades; it is idempotent).
--   mspbill_admin    everything, every client
--   mspbill_billing  loads data, finalizes and adjusts, every client
--   mspbill_bi       reads billing data (not real names, not raw records) of
--                    the clients mapped in bi_client_access
--   mspbill_pii      may read real names (person_identities, account names)
CREATE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	r text;
	bi_tables text := 'clients, contracts, contract_tiers, devices, people, logons, support_contacts, '
					  'cost_pools, license_counts, invoices, invoice_items, applications';
BEGIN
	FOREACH r IN ARRAY ARRAY['mspbill_admin', 'mspbill_billing', 'mspbill_bi', 'mspbill_pii'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- every function may be called by anyone with schema usage; what it
	-- reads is still checked against the caller's grants and policies
	EXECUTE 'GRANT ALL ON ALL TABLES IN SCHEMA @extschema@ TO mspbill_admin';
	EXECUTE 'GRANT ALL ON ALL SEQUENCES IN SCHEMA @extschema@ TO mspbill_admin';
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';

	EXECUTE 'GRANT SELECT ON ALL TABLES IN SCHEMA @extschema@ TO mspbill_billing';
	EXECUTE 'REVOKE SELECT ON @extschema@.person_identities FROM mspbill_billing';
	EXECUTE 'GRANT INSERT, UPDATE, DELETE ON @extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers,
				 @extschema@.devices, @extschema@.people, @extschema@.accounts, @extschema@.logons,
				 @extschema@.support_contacts, @extschema@.cost_pools, @extschema@.license_counts,
				 @extschema@.applications, @extschema@.windows_event_staging, @extschema@.entra_signin_staging,
				 @extschema@.emr_audit_staging, @extschema@.load_rejects TO mspbill_billing';
	EXECUTE 'GRANT INSERT ON @extschema@.invoices, @extschema@.invoice_items, @extschema@.audit_log TO mspbill_billing';
	EXECUTE 'GRANT USAGE ON ALL SEQUENCES IN SCHEMA @extschema@ TO mspbill_billing';

	EXECUTE format('GRANT SELECT ON %s TO mspbill_bi',
				   (SELECT string_agg('@extschema@.' || btrim(t), ', ') FROM unnest(string_to_array(bi_tables, ',')) t));
	-- accounts without their names
	EXECUTE 'GRANT SELECT (client_id, account_id, realm, kind, person_id, application, is_machine)
				 ON @extschema@.accounts TO mspbill_bi';
	EXECUTE 'GRANT SELECT ON @extschema@.account_labels, @extschema@.bi_client_access TO mspbill_bi, mspbill_billing, mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.person_identities TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi and mspbill_pii are ready';
END
$$;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi and mspbill_pii; idempotent';
