-- Month-end: every client's invoice for a period finalized in one call.
-- CALL msp_finalize_period(period) is a procedure, not a function, so that
-- it can COMMIT after each client: each finalized invoice (and the run's
-- record of each client) is visible to other sessions at once, a run that
-- is cancelled or crashes keeps what it finished, no snapshot is held for
-- the hours a large month-end takes (loads go on; vacuum is not held back),
-- and memory is given back client by client.  Each client runs in a
-- transaction of its own, at REPEATABLE READ, so that its invoice, lines
-- and evidence are read from one snapshot even while logons are loaded,
-- and in a subtransaction, so that a client the gates refuse or whose
-- pricing fails is recorded with its error and the others go on.
-- A procedure that commits may have no SET clause and may not be SECURITY
-- DEFINER: it qualifies every name and leaves the writing to the definer
-- functions below (run records) and msp_finalize_invoice (invoices).

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
	-- finalized: 'batch' when the people counted for every client at the
	-- start of the run were used, 'recounted' when this client's data had
	-- changed since and its people were counted again in its transaction
	people_from text CONSTRAINT finalize_run_clients_people_from_known CHECK (people_from IN ('batch', 'recounted')),
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
	PERFORM msp_check_overrides(override);
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
	-- every client's people at once, committed with the run; each client's
	-- transaction uses them if its data did not change since
	PERFORM @extschema@.msp_finalize_run_prepare(id);
	RETURN id;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_begin(daterange, text[], bigint[]) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_begin(daterange, text[], bigint[]) IS
	'month-end internal: checks the period and override once, records a run and the clients it takes, counts their people at once; returns the run id';

-- Every client's people of a run, counted at its start in one set-based
-- pass (msp_period_people_all) in one snapshot, and what they were read
-- from (msp_people_sources), so that each client's transaction can tell
-- whether they still hold in its own snapshot.  Written and read only by
-- the month-end definer functions; a run's rows go when it ends.
CREATE TABLE @extschema@.finalize_run_people (
	run_id bigint NOT NULL REFERENCES @extschema@.finalize_runs,
	client_id bigint NOT NULL,
	-- as msp_price_invoice takes them
	people jsonb NOT NULL,
	-- msp_billable_users' rows, as msp_finalize_invoice stores them
	evidence jsonb NOT NULL,
	sources jsonb NOT NULL,
	snapshot pg_snapshot NOT NULL,
	PRIMARY KEY (run_id, client_id)
);
COMMENT ON TABLE @extschema@.finalize_run_people IS
	'month-end internal: each client''s people counted at the start of a run for every client at once, with the snapshot and the rows they were read from';
ALTER TABLE @extschema@.finalize_run_people ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON @extschema@.finalize_run_people FROM PUBLIC;

-- Was a row (its xmin) committed as of the snapshot since?  The 32-bit
-- xmin is widened with the epoch of the current snapshot's xmax (now_xmax):
-- a row visible now was written less than 2^31 transactions before it.
-- Frozen and bootstrap rows (xmin 1, 2) are old.  Otherwise a row is
-- old only when its transaction is older than the snapshot's xmin (every
-- transaction before it had ended): pg_visible_in_snapshot would misplace
-- a row written by a subtransaction of one still running then (a snapshot
-- lists top-level transactions only), so a row from between the
-- snapshot's xmin and xmax counts as new, as does one it cannot place:
-- at worst a client is counted again.
-- (SQL without SET, so that it inlines; every name qualified.)
CREATE FUNCTION @extschema@.msp_xmin_seen(x xid, since pg_snapshot, now_xmax bigint)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
	WHEN since IS NULL THEN true
	WHEN x::text::bigint OPERATOR(pg_catalog.<) 3 THEN true
	ELSE coalesce(NULLIF(GREATEST(((now_xmax OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.<<) 32)
								  OPERATOR(pg_catalog.+) x::text::bigint
								  OPERATOR(pg_catalog.-) CASE WHEN x::text::bigint OPERATOR(pg_catalog.>=)
																   (now_xmax OPERATOR(pg_catalog.&) 4294967295)
															  THEN 4294967296 ELSE 0 END, -1), -1)
				  OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmin(since)::text::bigint, false)
END;
COMMENT ON FUNCTION @extschema@.msp_xmin_seen(xid, pg_snapshot, bigint) IS
	'month-end internal: whether a row version (its xmin) was committed as of a snapshot (NULL snapshot: true)';

-- What one client's people are read from, per table (and home client):
-- how many rows, and how many of them are new since the snapshot given.
-- The same counts with no row new mean the same rows: a row written,
-- changed or deleted since changes one of them.  Every table is filtered
-- by client_id (PL/pgSQL, so that Citus could plan each on one shard).
CREATE FUNCTION @extschema@.msp_people_sources(client_id bigint, period daterange, since pg_snapshot)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	payer bigint := client_id;
	now_xmax bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
	tz text;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	n bigint;
	fresh bigint;
	out jsonb := '{}';
BEGIN
	SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax)), min(x.time_zone)
	  INTO n, fresh, tz FROM clients x WHERE x.client_id = payer;
	out := out || jsonb_build_object('clients', ARRAY[n, fresh]);
	t0 := lower(period)::timestamp AT TIME ZONE tz;
	t1 := upper(period)::timestamp AT TIME ZONE tz;
	SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
	  INTO n, fresh FROM contracts x WHERE x.client_id = payer;
	out := out || jsonb_build_object('contracts', ARRAY[n, fresh]);
	SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
	  INTO n, fresh FROM sister_clients x WHERE x.bill_to_client_id = payer;
	out := out || jsonb_build_object('sister_clients', ARRAY[n, fresh]);
	FOREACH home IN ARRAY ARRAY[payer] || ARRAY(SELECT s.client_id FROM sister_clients s
												 WHERE s.bill_to_client_id = payer AND s.client_id <> payer
												 ORDER BY 1)
	LOOP
		SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
		  INTO n, fresh FROM people x WHERE x.client_id = home;
		out := out || jsonb_build_object('people ' || home, ARRAY[n, fresh]);
		SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
		  INTO n, fresh FROM accounts x WHERE x.client_id = home;
		out := out || jsonb_build_object('accounts ' || home, ARRAY[n, fresh]);
		SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
		  INTO n, fresh FROM logons x WHERE x.client_id = home AND x.at >= t0 AND x.at < t1;
		out := out || jsonb_build_object('logons ' || home, ARRAY[n, fresh]);
		SELECT count(*), count(*) FILTER (WHERE NOT msp_xmin_seen(x.xmin, since, now_xmax))
		  INTO n, fresh FROM support_contacts x WHERE x.client_id = home AND x.at >= t0 AND x.at < t1;
		out := out || jsonb_build_object('support_contacts ' || home, ARRAY[n, fresh]);
	END LOOP;
	RETURN out;
END
$$;
-- (reads xmin, which the roles' column grants do not cover: month-end's
-- definer functions call it as the owner)
REVOKE EXECUTE ON FUNCTION @extschema@.msp_people_sources(bigint, daterange, pg_snapshot) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_people_sources(bigint, daterange, pg_snapshot) IS
	'month-end internal: the rows one client''s billable people of a period are read from, counted per table and home client, and how many are new since a snapshot';

-- Counts every client's people of a run at once, as msp_finalize_invoice
-- would store them (pseudonymous), in one statement: its functions are
-- STABLE and read in its snapshot, the one recorded with them.  Called by
-- msp_finalize_run_begin, as the owner (not for callers: nobody else may
-- write what invoices are priced from).  On Citus nothing is counted:
-- every client is counted in its own transaction.
CREATE FUNCTION @extschema@.msp_finalize_run_prepare(run_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	r finalize_runs;
	n integer;
BEGIN
	SELECT * INTO r FROM finalize_runs f WHERE f.run_id = run_id;
	IF NOT FOUND OR r.finished_at IS NOT NULL OR r.started_by <> session_user THEN
		RAISE EXCEPTION 'month-end run % is not an open run of yours', run_id
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Run month-end with CALL mspbill.msp_finalize_period(period);';
	END IF;
	IF msp_is_distributed('@extschema@.contracts') THEN
		RETURN 0;
	END IF;
	INSERT INTO @extschema@.finalize_run_people (run_id, client_id, people, evidence, sources, snapshot)
	WITH u AS MATERIALIZED (
		SELECT * FROM msp_period_people_all(r.period, r.client_ids, true)),
	p AS (
		SELECT y.client_id, jsonb_object_agg(y.contract_id::text, y.who) AS people
		  FROM (SELECT u.client_id, u.contract_id,
					   jsonb_build_object('h', array_agg(u.home_client_id), 'p', array_agg(u.person_id),
										  'd', array_agg(u.segment_days)) AS who
				  FROM u GROUP BY u.client_id, u.contract_id) y
		 GROUP BY y.client_id),
	-- msp_billable_users' columns and order
	e AS (
		SELECT u.client_id,
			   jsonb_agg(jsonb_build_object('contract_id', u.contract_id, 'person_id', u.person_id,
											'pseudonym', u.pseudonym, 'rule', u.rule, 'first_seen', u.first_seen,
											'last_seen', u.last_seen, 'days_active', u.days_active,
											'support_contacts', u.support_contacts, 'accounts', u.accounts,
											'home_client_id', u.home_client_id)
						 ORDER BY lower(u.segment), u.pseudonym, u.home_client_id) AS evidence
		  FROM u GROUP BY u.client_id)
	SELECT run_id, c.id, coalesce(p.people, '{}'), coalesce(e.evidence, '[]'),
		   msp_people_sources(c.id, msp_period(c.id, r.period), NULL), pg_current_snapshot()
	  FROM unnest(r.client_ids) c(id)
	  JOIN clients k ON k.client_id = c.id
	  LEFT JOIN p ON p.client_id = c.id
	  LEFT JOIN e ON e.client_id = c.id;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_run_prepare(bigint) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_run_prepare(bigint) IS
	'month-end internal: counts the billable people of every client of a run at once and records them with their snapshot; returns how many clients';

-- One client of a run: finalized in a subtransaction, the outcome recorded
-- either way.  The advisory lock is msp_finalize_invoice's, so that
-- "already finalized" is decided under it.  The lock is taken after this
-- transaction's snapshot, so an invoice another session commits meanwhile
-- is not seen and the insert conflicts with it: then 'retry' is returned
-- and nothing recorded, and the caller runs the client again in a new
-- transaction, which sees that invoice.  The same for a serialization
-- failure on the invoice-number counter, which every finalization updates
-- (may_retry false on the last attempt: a conflict then is a failure, not
-- a loop).
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
	b finalize_run_people;
	source text;
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
		-- the people counted for every client at the start of the run hold
		-- if what they were read from is the same in this transaction's
		-- snapshot; else they are counted again here
		SELECT * INTO b FROM finalize_run_people p WHERE p.run_id = run_id AND p.client_id = client_id;
		IF prior IS NULL AND b.run_id IS NOT NULL
		   AND msp_people_sources(client_id, r.period, b.snapshot) = b.sources THEN
			id := msp_finalize_invoice_with(client_id, r.period, r.override, b.people, b.evidence);
			source := 'batch';
		ELSE
			id := msp_finalize_invoice_with(client_id, r.period, r.override, NULL, NULL);
			source := CASE WHEN prior IS NULL THEN 'recounted' END;
		END IF;
		result := CASE WHEN prior IS NULL THEN 'finalized' ELSE 'already_finalized' END;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
								hin = PG_EXCEPTION_HINT, con = CONSTRAINT_NAME;
		IF may_retry AND (con IN ('invoices_one_per_period', 'invoices_no_overlap') OR st IN ('40001', '40P01')) THEN
			-- another session finalized it, or took the next invoice number
			-- (the counter row), after this transaction's snapshot
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
												  message, detail, hint, people_from)
	VALUES (client_id, run_id, result, id,
			(SELECT i.total FROM invoices i WHERE i.client_id = client_id AND i.invoice_id = id),
			failing, st, msg, nullif(det, ''), nullif(hin, ''), CASE WHEN result = 'finalized' THEN source END);
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
	DELETE FROM @extschema@.finalize_run_people p WHERE p.run_id = run_id;
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
		FOR attempt IN 1..5 LOOP
			COMMIT;
			SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
			outcome := @extschema@.msp_finalize_run_client(cid, run_id, attempt OPERATOR(pg_catalog.<) 5);
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
