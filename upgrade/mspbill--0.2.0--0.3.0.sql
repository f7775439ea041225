-- mspbill 0.2.0 -> 0.3.0.  Every change to an object of the install script
-- is repeated here; test/sh/upgrade.sh checks that an updated database
-- equals a fresh install, object by object.
\echo Use "ALTER EXTENSION mspbill UPDATE TO '0.3.0'" to load this file. \quit

-- monthend (issue 21): month-end as one call, CALL msp_finalize_period(period),
-- with its run records (finalize_runs, finalize_run_clients,
-- finalize_progress) and the definer functions that write them, as in
-- src/monthend.sql; msp_install_roles grants them to mspbill_admin and
-- mspbill_billing (run SELECT mspbill.msp_install_roles(); after the update).
CREATE TABLE @extschema@.finalize_runs (
	run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	period daterange NOT NULL,
	override text[] NOT NULL DEFAULT '{}',
	-- the clients the run takes, in the order it takes them
	client_ids bigint[] NOT NULL,
	started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	started_by name NOT NULL DEFAULT session_user,
	backend_pid integer NOT NULL DEFAULT pg_backend_pid(),
	finished_at timestamptz
);
COMMENT ON TABLE @extschema@.finalize_runs IS
	'month-end runs (msp_finalize_period): the period, the override, the clients taken, who ran it and when it finished';

CREATE TABLE @extschema@.finalize_run_clients (
	client_id bigint NOT NULL,
	run_id bigint NOT NULL REFERENCES @extschema@.finalize_runs,
	outcome text NOT NULL
		CONSTRAINT finalize_run_clients_outcome_known
		CHECK (outcome IN ('finalized', 'already_finalized', 'refused', 'failed')),
	invoice_id bigint,
	total numeric,
	-- refused: the gates that had findings
	gates text[],
	sqlstate char(5),
	message text,
	detail text,
	hint text,
	at timestamptz NOT NULL DEFAULT clock_timestamp(),
	PRIMARY KEY (client_id, run_id),
	CONSTRAINT finalize_run_clients_invoice_iff_done
		CHECK ((outcome IN ('finalized', 'already_finalized')) = (invoice_id IS NOT NULL))
);
-- the progress view counts one run's clients
CREATE INDEX finalize_run_clients_run_idx ON @extschema@.finalize_run_clients (run_id, outcome);
COMMENT ON TABLE @extschema@.finalize_run_clients IS
	'what a month-end run did with each client: finalized (invoice_id), already finalized, refused by the gates (gates, hint) or failed (the error)';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.finalize_runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.finalize_runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.finalize_run_clients', '');

ALTER TABLE @extschema@.finalize_run_clients ENABLE ROW LEVEL SECURITY;
CREATE POLICY client_rows ON @extschema@.finalize_run_clients
	USING ((SELECT @extschema@.msp_sees_all_clients())
		   OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])));
COMMENT ON POLICY client_rows ON @extschema@.finalize_run_clients IS
	'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)';

-- Progress of every run, readable from any session while it runs (each
-- client's row is committed as it is done).  Granted to the roles that may
-- run month-end, who see every client.
CREATE VIEW @extschema@.finalize_progress WITH (security_barrier) AS
SELECT r.run_id, r.period, r.started_by, r.started_at, r.finished_at,
	   CASE WHEN r.finished_at IS NOT NULL THEN 'finished'
			WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
						  WHERE a.pid OPERATOR(pg_catalog.=) r.backend_pid
							AND a.backend_start OPERATOR(pg_catalog.<=) r.started_at) THEN 'running'
			ELSE 'interrupted' END AS state,
	   pg_catalog.cardinality(r.client_ids) AS clients,
	   pg_catalog.count(c.client_id) AS done,
	   pg_catalog.count(*) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'finalized') AS finalized,
	   pg_catalog.count(*) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'already_finalized') AS already_finalized,
	   pg_catalog.count(*) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'refused') AS refused,
	   pg_catalog.count(*) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'failed') AS failed,
	   pg_catalog.sum(c.total) FILTER (WHERE c.outcome OPERATOR(pg_catalog.=) 'finalized') AS finalized_total
  FROM @extschema@.finalize_runs r
  LEFT JOIN @extschema@.finalize_run_clients c ON c.run_id OPERATOR(pg_catalog.=) r.run_id
 GROUP BY r.run_id;
COMMENT ON VIEW @extschema@.finalize_progress IS
	'month-end runs as they go: clients done, finalized, already finalized, refused, failed; state running, finished or interrupted';

-- The overridable gates, as msp_finalize_invoice knows them.
CREATE FUNCTION @extschema@.msp_finalize_run_begin(period daterange, override text[] DEFAULT '{}',
												   only_clients bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	ids bigint[];
	unknown text[];
BEGIN
	-- checked once here rather than refused for every client alike
	IF period IS NULL OR isempty(period) OR lower_inf(period) OR upper_inf(period)
	   OR lower(period) <> date_trunc('month', lower(period))::date
	   OR upper(period) <> (date_trunc('month', lower(period)) + interval '1 month')::date THEN
		RAISE EXCEPTION 'billing period % is not a calendar month', coalesce(period::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Month-end finalizes one calendar month for every client.',
				  HINT = 'Pass the month, e.g. CALL mspbill.msp_finalize_period(daterange(''2026-10-01'', ''2026-11-01''));';
	END IF;
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- every client with a contract in the period; clients named explicitly
	-- are taken as named (one without a contract fails, with the reason)
	IF only_clients IS NULL THEN
		ids := ARRAY(SELECT DISTINCT k.client_id FROM contracts k WHERE k.effective && period ORDER BY 1);
	ELSE
		ids := ARRAY(SELECT DISTINCT x FROM unnest(only_clients) x WHERE x IS NOT NULL ORDER BY 1);
	END IF;
	INSERT INTO @extschema@.finalize_runs (period, override, client_ids)
	VALUES (period, coalesce(override, '{}'), ids)
	RETURNING run_id INTO id;
	RETURN id;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_begin(daterange, text[], bigint[]) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_begin(daterange, text[], bigint[]) IS
	'month-end internal: checks the period and override once, records a run and the clients it takes; returns the run id';

-- One client of a run: finalized in a subtransaction, the outcome recorded
-- either way.  The advisory lock is msp_finalize_invoice's, so that
-- "already finalized" is decided under it.  The lock is taken after this
-- transaction's snapshot, so an invoice another session commits meanwhile
-- is not seen and the insert conflicts with it: then 'retry' is returned
-- and nothing recorded, and the caller runs the client again in a new
-- transaction, which sees that invoice (may_retry false: a second conflict
-- is a failure, not a loop).
CREATE FUNCTION @extschema@.msp_finalize_run_client(client_id bigint, run_id bigint, may_retry boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r finalize_runs;
	prior bigint;
	id bigint;
	result text;
	st text;
	msg text;
	det text;
	hin text;
	con text;
	failing text[];
BEGIN
	SELECT * INTO r FROM finalize_runs f WHERE f.run_id = run_id;
	IF NOT FOUND OR r.finished_at IS NOT NULL OR r.started_by <> session_user
	   OR NOT client_id = ANY (r.client_ids) THEN
		RAISE EXCEPTION 'client % is not pending in an open month-end run % of yours', client_id, run_id
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Run month-end with CALL mspbill.msp_finalize_period(period);';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || r.period::text));
	prior := (msp_finalized_invoice(client_id, r.period)).invoice_id;
	BEGIN
		id := msp_finalize_invoice(client_id, r.period, r.override);
		result := CASE WHEN prior IS NULL THEN 'finalized' ELSE 'already_finalized' END;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
								hin = PG_EXCEPTION_HINT, con = CONSTRAINT_NAME;
		IF may_retry AND con IN ('invoices_one_per_period', 'invoices_no_overlap') THEN
			-- another session finalized it after this transaction's snapshot
			RETURN 'retry';
		ELSIF st = '55000' OR (st = '23514' AND coalesce(con, '') = '') THEN
			-- the gates (a check constraint's violation names the constraint)
			result := 'refused';
			failing := CASE WHEN st = '55000' THEN '{period_not_over}'::text[]
							ELSE ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, r.period) q
										WHERE NOT q.gate = ANY (r.override) ORDER BY 1) END;
		ELSE
			result := 'failed';
		END IF;
	END;
	INSERT INTO @extschema@.finalize_run_clients (client_id, run_id, outcome, invoice_id, total, gates, sqlstate,
												  message, detail, hint)
	VALUES (client_id, run_id, result, id,
			(SELECT i.total FROM invoices i WHERE i.client_id = client_id AND i.invoice_id = id),
			failing, st, msg, nullif(det, ''), nullif(hin, ''));
	RETURN result;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_client(bigint, bigint, boolean) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_client(bigint, bigint, boolean) IS
	'month-end internal: finalizes one client of a run in a subtransaction and records the outcome (finalized, already_finalized, refused, failed)';

CREATE FUNCTION @extschema@.msp_finalize_run_end(run_id bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	UPDATE @extschema@.finalize_runs f SET finished_at = clock_timestamp()
	 WHERE f.run_id = run_id AND f.started_by = session_user AND f.finished_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'month-end run % is not an open run of yours', run_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_end(bigint) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_end(bigint) IS
	'month-end internal: marks a run finished';

CREATE PROCEDURE @extschema@.msp_finalize_period(period daterange, override text[] DEFAULT '{}',
												  only_clients bigint[] DEFAULT NULL,
												  INOUT run_id bigint DEFAULT NULL,
												  INOUT finalized integer DEFAULT NULL,
												  INOUT already_finalized integer DEFAULT NULL,
												  INOUT refused integer DEFAULT NULL,
												  INOUT failed integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
	ids pg_catalog.int8[];
	cid pg_catalog.int8;
	outcome pg_catalog.text;
	done pg_catalog.int4 := 0;
BEGIN
	finalized := 0;
	already_finalized := 0;
	refused := 0;
	failed := 0;
	run_id := @extschema@.msp_finalize_run_begin(period, override, only_clients);
	ids := (SELECT r.client_ids FROM @extschema@.finalize_runs r WHERE r.run_id OPERATOR(pg_catalog.=) run_id);
	RAISE NOTICE 'month-end run % for %: % clients', run_id, period, pg_catalog.cardinality(ids);
	FOREACH cid IN ARRAY ids LOOP
		-- the run row, then each client, committed as soon as done; the
		-- next statement after COMMIT must be SET TRANSACTION
		FOR attempt IN 1..2 LOOP
			COMMIT;
			SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
			outcome := @extschema@.msp_finalize_run_client(cid, run_id, attempt OPERATOR(pg_catalog.=) 1);
			EXIT WHEN outcome OPERATOR(pg_catalog.<>) 'retry';
		END LOOP;
		done := done OPERATOR(pg_catalog.+) 1;
		CASE outcome
			WHEN 'finalized' THEN finalized := finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'already_finalized' THEN already_finalized := already_finalized OPERATOR(pg_catalog.+) 1;
			WHEN 'refused' THEN refused := refused OPERATOR(pg_catalog.+) 1;
			ELSE failed := failed OPERATOR(pg_catalog.+) 1;
		END CASE;
		IF done OPERATOR(pg_catalog.%) 100 OPERATOR(pg_catalog.=) 0 THEN
			RAISE NOTICE 'month-end run %: % of % clients done (% finalized, % already finalized, % refused, % failed)',
				run_id, done, pg_catalog.cardinality(ids), finalized, already_finalized, refused, failed;
		END IF;
	END LOOP;
	COMMIT;
	PERFORM @extschema@.msp_finalize_run_end(run_id);
	COMMIT;
	RAISE NOTICE 'month-end run % for % done: % finalized, % already finalized, % refused, % failed',
		run_id, period, finalized, already_finalized, refused, failed
		USING DETAIL = 'Each client''s outcome, with the gates or the error: SELECT * FROM mspbill.finalize_run_clients WHERE run_id = ' || run_id || ';';
END
$$;
REVOKE EXECUTE ON PROCEDURE @extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer) FROM PUBLIC;
COMMENT ON PROCEDURE @extschema@.msp_finalize_period(daterange, text[], bigint[], bigint, integer, integer, integer, integer) IS
	'month-end: finalizes every client''s invoice for a period (clients with a contract in it, or only_clients), one transaction per client, committed as it goes; returns the run id and how many were finalized, already finalized, refused and failed';

CREATE OR REPLACE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications';
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint), '
					'@extschema@.msp_finalize_run_begin(daterange, text[], bigint[]), '
					'@extschema@.msp_finalize_run_client(bigint, bigint, boolean), '
					'@extschema@.msp_finalize_run_end(bigint)';
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
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);
	-- month-end: run it, and watch its runs (every client's outcome)
	EXECUTE format('GRANT EXECUTE ON PROCEDURE %s TO mspbill_admin, mspbill_billing', month_end);
	EXECUTE 'GRANT SELECT ON @extschema@.finalize_runs, @extschema@.finalize_run_clients, @extschema@.finalize_progress '
			'TO mspbill_admin, mspbill_billing';

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';

-- monthend: msp_finalize_invoice runs the gates once, not two or three times
CREATE OR REPLACE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
	today date;
	stamp timestamptz;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	-- an unfinished month is not a data-quality question: its logons are
	-- still coming, so no override finalizes it
	IF 'period_not_over' = ANY (coalesce(override, '{}')) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		today := (now() AT TIME ZONE (SELECT c.time_zone FROM clients c WHERE c.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q->>'gate' FROM jsonb_array_elements(findings) q
					  WHERE NOT q->>'gate' = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period, failing);
	END IF;

	inv := msp_compute_invoice(client_id, period);
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency,
			coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]'),
			coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM msp_price_lines(client_id, period, NULL) l;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override,
				'findings', (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q
							  WHERE q->>'gate' = ANY (override))));
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines and evidence and returns its id; finalizing again returns the same id';
