-- Reporting a BI tool can be given: rollup tables the extension keeps
-- current, with the same row-level security as the base tables, and KPI
-- views over them that show a reader only the clients they may see.
--
-- Rollups:  daily_activity   per client and local day: people, devices,
--                            shared-account sessions (usersets)
--           period_invoices  per client and calendar month: the invoice
--                            figures, status and drift, the billable people
--           pii_findings     per client and month: the HIPAA audit's findings
-- Loaders and late data mark the (client, day) pairs they touch in
-- rollup_dirty (statement triggers with transition tables, so set-based
-- loads stay set-based); msp_refresh_rollups() recomputes only those, and
-- msp_rebuild_rollups() recomputes everything with the same code.
--
-- The dependency on the tenancy helpers (msp_sees_all_clients,
-- msp_visible_clients) lives in two places only: the policy loop and the
-- reporting_clients view below.

-- An append-only log, not a set: with a unique key, two loads of the same
-- day (or a load and a finalization) would wait for each other's commit.
-- A mark commits with the change it marks, so a refresh either sees both
-- or leaves the mark for the next run.
CREATE TABLE @extschema@.rollup_dirty (
	client_id bigint NOT NULL,
	day date NOT NULL,
	marked_at timestamptz NOT NULL DEFAULT now(),
	-- a mark of a day no logon or period can have (300000-01-01) would make
	-- every refresh fail until a rebuild; the loaders accept no time before
	-- 1990-01-01 UTC, whose local day is 1989-12-31 west of Greenwich, and
	-- 9999-12-31 keeps every day's arithmetic far from overflow
	CONSTRAINT rollup_dirty_day_plausible CHECK (day >= '1989-12-31' AND day <= '9999-12-31')
);
COMMENT ON CONSTRAINT rollup_dirty_day_plausible ON @extschema@.rollup_dirty IS
	'marked days lie from 1989-12-31 to 9999-12-31, so that no mark can make a refresh fail';
CREATE INDEX rollup_dirty_pair_idx ON @extschema@.rollup_dirty (client_id, day);
COMMENT ON TABLE @extschema@.rollup_dirty IS
	'(client, local day) pairs whose rollups are stale, one row per marking statement; msp_refresh_rollups() consumes them';

CREATE TABLE @extschema@.daily_activity (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	day date NOT NULL,
	people @extschema@.userset NOT NULL,
	devices @extschema@.userset NOT NULL,
	shared_accounts @extschema@.userset NOT NULL,
	shared_sessions integer NOT NULL,
	logons bigint NOT NULL,
	PRIMARY KEY (client_id, day)
);
COMMENT ON TABLE @extschema@.daily_activity IS
	'rollup per client and local day: people with presence logons of their own accounts, devices seen, shared accounts used and their sessions, logons';

CREATE TABLE @extschema@.period_invoices (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	period daterange NOT NULL,
	status text NOT NULL CONSTRAINT period_invoices_status_known
		CHECK (status IN ('preview', 'finalized', 'unpriced')),
	model text,
	users integer,
	seats integer,
	devices integer,
	subtotal numeric,
	total numeric,
	currency char(3),
	drift numeric,
	billable @extschema@.userset,
	sister_billable jsonb,
	note text,
	PRIMARY KEY (client_id, period)
);
COMMENT ON TABLE @extschema@.period_invoices IS
	'rollup per client and calendar month: msp_invoice() figures, preview or finalized, drift since finalization, the billable people (billable: the client''s own, by person_id; sister_billable: sister clients'' people it pays for, as [{home_client_id, person_id, pseudonym}]); unpriced with the reason when the month cannot be billed';

CREATE TABLE @extschema@.pii_findings (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	period daterange NOT NULL,
	device text NOT NULL,
	account text NOT NULL,
	application text NOT NULL,
	session_start timestamptz NOT NULL,
	session_end timestamptz NOT NULL,
	uses integer NOT NULL
);
-- not unique: two sessions of one shared account may start at the same instant
CREATE INDEX pii_findings_period_idx ON @extschema@.pii_findings (client_id, period);
COMMENT ON TABLE @extschema@.pii_findings IS
	'rollup per client and month of msp_pii_audit(): shared-account sessions that used a PII application without an individual login';

-- Rollups are derived, but a restore should not start from nothing; the
-- dirty pairs are not kept (restored logons mark their days again).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.daily_activity', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.period_invoices', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.pii_findings', '');

-- The clients' own policy on every rollup, as on the base tables.
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['rollup_dirty', 'daily_activity', 'period_invoices', 'pii_findings']
	LOOP
		EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', t);
		EXECUTE format('COMMENT ON POLICY client_rows ON @extschema@.%I IS %L', t,
					   'a reader sees the rows of the clients they may see, as on the base tables');
	END LOOP;
END
$$;

-- Mark the local days of changed logons (msp_local_day's expression,
-- written out: a function call per row would slow bulk loads).  It runs
-- as whoever writes the logons: the loaders, which run as the owner
-- already, or mspbill_admin and mspbill_billing, who are granted INSERT
-- on rollup_dirty's two columns for it (a mark only asks for a
-- recomputation), so it needs no SECURITY DEFINER.
CREATE FUNCTION @extschema@.msp_mark_logon_days() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	-- the logon's own client, and the client that pays for its person (a
	-- sister client's person is billed there, on the payer's local day)
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
		INSERT INTO rollup_dirty AS d (client_id, day)
		SELECT DISTINCT n.client_id, (n.at AT TIME ZONE c.time_zone)::date
		  FROM new_rows n JOIN clients c ON c.client_id = n.client_id
		UNION
		SELECT p.bill_to_client_id, (n.at AT TIME ZONE c.time_zone)::date
		  FROM new_rows n
		  JOIN accounts a ON a.client_id = n.client_id AND a.account_id = n.account_id
		  JOIN people p ON p.client_id = a.client_id AND p.person_id = a.person_id
		  JOIN clients c ON c.client_id = p.bill_to_client_id
		 WHERE p.bill_to_client_id <> n.client_id
		 ORDER BY 1, 2;
	END IF;
	IF TG_OP IN ('DELETE', 'UPDATE') THEN
		INSERT INTO rollup_dirty AS d (client_id, day)
		SELECT DISTINCT o.client_id, (o.at AT TIME ZONE c.time_zone)::date
		  FROM old_rows o JOIN clients c ON c.client_id = o.client_id
		UNION
		SELECT p.bill_to_client_id, (o.at AT TIME ZONE c.time_zone)::date
		  FROM old_rows o
		  JOIN accounts a ON a.client_id = o.client_id AND a.account_id = o.account_id
		  JOIN people p ON p.client_id = a.client_id AND p.person_id = a.person_id
		  JOIN clients c ON c.client_id = p.bill_to_client_id
		 WHERE p.bill_to_client_id <> o.client_id
		 ORDER BY 1, 2;
	END IF;
	RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_mark_logon_days() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_mark_logon_days() IS
	'trigger: marks the (client, local day) pairs of inserted, updated or deleted logons, and those of the clients paying for their people, for msp_refresh_rollups()';

CREATE TRIGGER mark_rollups_insert AFTER INSERT ON @extschema@.logons
	REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_mark_logon_days();
CREATE TRIGGER mark_rollups_update AFTER UPDATE ON @extschema@.logons
	REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_mark_logon_days();
CREATE TRIGGER mark_rollups_delete AFTER DELETE ON @extschema@.logons
	REFERENCING OLD TABLE AS old_rows
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_mark_logon_days();
COMMENT ON TRIGGER mark_rollups_insert ON @extschema@.logons IS 'marks the days of inserted logons for msp_refresh_rollups()';
COMMENT ON TRIGGER mark_rollups_update ON @extschema@.logons IS 'marks the old and new days of updated logons for msp_refresh_rollups()';
COMMENT ON TRIGGER mark_rollups_delete ON @extschema@.logons IS 'marks the days of deleted logons for msp_refresh_rollups()';

-- Finalizing or adjusting changes a month's status, drift or total: mark
-- the first day of the period (and of the period an adjustment rides on).
-- Invoices are written only by msp_finalize_invoice and
-- msp_issue_adjustment, which run as the owner: no SECURITY DEFINER here.
CREATE FUNCTION @extschema@.msp_mark_invoice_periods() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	INSERT INTO rollup_dirty AS d (client_id, day)
	SELECT DISTINCT n.client_id, x.day
	  FROM new_rows n,
		   LATERAL (VALUES (lower(n.period)), (lower(n.apply_period))) x(day)
	 WHERE x.day IS NOT NULL
	 ORDER BY 1, 2;
	RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_mark_invoice_periods() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_mark_invoice_periods() IS
	'trigger: marks the months of finalized invoices and adjustment notes for msp_refresh_rollups()';

CREATE TRIGGER mark_rollups AFTER INSERT ON @extschema@.invoices
	REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_mark_invoice_periods();
COMMENT ON TRIGGER mark_rollups ON @extschema@.invoices IS 'marks the months of finalized invoices and adjustments for msp_refresh_rollups()';

-- Anything else that changes what a month bills (contracts, people,
-- devices, accounts, cost pools, licences, applications) is marked by
-- calling this; msp_rebuild_rollups() needs no marks at all.
CREATE FUNCTION @extschema@.msp_mark_rollups_dirty(client_id bigint, days daterange)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	n integer;
BEGIN
	-- an infinite bound (''[2026-10-01,infinity)'') is not upper_inf, and
	-- would generate days until statement_timeout
	IF isempty(days) OR lower_inf(days) OR upper_inf(days) OR NOT isfinite(lower(days)) OR NOT isfinite(upper(days)) THEN
		RAISE EXCEPTION 'days % are empty or unbounded', days
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass a bounded range such as daterange(''2026-10-01'', ''2026-11-01'').';
	END IF;
	IF lower(days) < '1989-12-31' OR upper(days) > '10000-01-01' THEN
		RAISE EXCEPTION 'days % lie outside 1989-12-31 to 9999-12-31', days
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'No logon before 1990 is loaded, and rollups are kept for days up to 9999-12-31.',
				  HINT = 'Mark only the days whose billing changed.';
	END IF;
	INSERT INTO rollup_dirty AS d (client_id, day)
	SELECT client_id, g::date FROM generate_series(lower(days), upper(days) - 1, interval '1 day') g;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_mark_rollups_dirty(bigint, daterange) IS
	'marks a client''s days for the next msp_refresh_rollups(), after changes the triggers do not see (contracts, accounts, cost pools...)';

-- The daily rows of a set of (client, day) pairs, from the logons.  Each
-- pair reads its day's logons by index, widened by three hours for the
-- daylight-saving shifts, and keeps exactly the logons whose local day it
-- is: the same rule the triggers mark by.  The day's logons are a lateral
-- subquery kept apart (OFFSET 0), so that they are read by
-- (client_id, at) and only then joined to their accounts: joined the
-- other way round, each account probed the account index, which holds
-- presence logons only, and read its client's every logon instead.
CREATE FUNCTION @extschema@.msp_daily_activity_of(client_ids bigint[], days date[])
RETURNS SETOF @extschema@.daily_activity
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT p.client_id, p.day,
		   userset_agg(a.person_id) FILTER (WHERE l.presence AND a.kind = 'individual' AND NOT a.is_machine),
		   userset_agg(l.device_id),
		   userset_agg(l.account_id) FILTER (WHERE l.presence AND a.kind = 'shared' AND NOT a.is_machine),
		   (count(*) FILTER (WHERE l.presence AND a.kind = 'shared' AND NOT a.is_machine))::integer,
		   count(*)
	  FROM (SELECT DISTINCT u.client_id, u.day FROM unnest(client_ids, days) u(client_id, day)) p
	  JOIN clients c ON c.client_id = p.client_id
	  CROSS JOIN LATERAL (SELECT g.client_id, g.account_id, g.device_id, g.presence
							FROM logons g
						   WHERE g.client_id = p.client_id
							 AND g.at >= ((p.day::timestamp - interval '3 hours') AT TIME ZONE c.time_zone)
							 AND g.at < (((p.day + 1)::timestamp + interval '3 hours') AT TIME ZONE c.time_zone)
							 AND msp_local_day(g.at, c.time_zone) = p.day
						  OFFSET 0) l
	  JOIN accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
	 GROUP BY p.client_id, p.day;
END;
COMMENT ON FUNCTION @extschema@.msp_daily_activity_of(bigint[], date[]) IS
	'the daily_activity rows of the given (client, day) pairs, computed from the logons';

-- Recompute one client's month: the invoice figures, the billable people
-- and the HIPAA findings.  A month is kept while it has logons or a
-- finalized invoice.  A month that cannot be billed (no contract, a gap,
-- a currency mismatch) is kept as 'unpriced' with the reason, so that one
-- client's bad data never stops the others' refresh.
CREATE FUNCTION @extschema@.msp_rollup_period(client_id bigint, period daterange) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	fin invoices;
	inv invoice;
	who userset;
	sisters jsonb;
	drift numeric;
BEGIN
	-- two refreshes that reach the same month take turns
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.rollup_period'), hashtext(client_id::text || period::text));
	DELETE FROM period_invoices p WHERE p.client_id = client_id AND p.period = period;
	DELETE FROM pii_findings f WHERE f.client_id = client_id AND f.period = period;
	fin := msp_finalized_invoice(client_id, period);
	IF fin.invoice_id IS NULL
	   AND NOT EXISTS (SELECT 1 FROM daily_activity d
					    WHERE d.client_id = client_id AND d.day >= lower(period) AND d.day < upper(period)) THEN
		RETURN;
	END IF;
	BEGIN
		inv := msp_invoice(client_id, period);
		-- person ids are per client: a sister client's person billed here is
		-- kept apart with its home client, or it could merge with (or
		-- stand for) one of this client's own people of the same id
		IF fin.invoice_id IS NOT NULL THEN
			SELECT userset_agg(b.person) FILTER (WHERE b.home = client_id),
				   coalesce(jsonb_agg(jsonb_build_object('home_client_id', b.home, 'person_id', b.person,
														 'pseudonym', b.pseudonym) ORDER BY b.home, b.person)
							FILTER (WHERE b.home <> client_id), '[]')
			  INTO who, sisters
			  FROM (SELECT DISTINCT coalesce((e ->> 'home_client_id')::bigint, client_id) AS home,
						   (e ->> 'person_id')::bigint AS person, e ->> 'pseudonym' AS pseudonym
					  FROM jsonb_array_elements(fin.evidence) e) b;
			drift := (SELECT coalesce(sum(d.difference), 0) FROM msp_invoice_drift(client_id, period) d);
		ELSE
			SELECT userset_agg(b.person) FILTER (WHERE b.home = client_id),
				   coalesce(jsonb_agg(jsonb_build_object('home_client_id', b.home, 'person_id', b.person,
														 'pseudonym', b.pseudonym) ORDER BY b.home, b.person)
							FILTER (WHERE b.home <> client_id), '[]')
			  INTO who, sisters
			  FROM (SELECT DISTINCT coalesce(u.home_client_id, client_id) AS home, u.person_id AS person,
						   u.pseudonym
					  FROM msp_billable_users(client_id, period) u) b;
		END IF;
		INSERT INTO period_invoices (client_id, period, status, model, users, seats, devices, subtotal, total,
									 currency, drift, billable, sister_billable)
		VALUES (client_id, period, CASE WHEN fin.invoice_id IS NULL THEN 'preview' ELSE 'finalized' END,
				inv.model, inv.users, inv.seats, inv.devices, inv.subtotal, inv.total, inv.currency, drift, who,
				sisters);
		INSERT INTO pii_findings (client_id, period, device, account, application, session_start, session_end, uses)
		SELECT client_id, period, a.device, a.account, a.application, a.session_start, a.session_end, a.uses
		  FROM msp_pii_audit(client_id, period) a;
	EXCEPTION WHEN data_exception OR no_data_found THEN
		INSERT INTO period_invoices (client_id, period, status, note)
		VALUES (client_id, period, 'unpriced', SQLERRM);
	END;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_rollup_period(bigint, daterange) IS
	'recomputes the period_invoices and pii_findings rows of one client and month';

-- Recompute the rollups of a set of (client, day) pairs, one client and
-- month at a time under that month's lock (taken in client and month
-- order, so that concurrent refreshes never deadlock): the days' rows,
-- then the month.  Two refreshes holding marks of the same day take turns,
-- and the second sees the first one's rows.
CREATE FUNCTION @extschema@.msp_rollup_days(client_ids bigint[], days date[], OUT days_done integer,
											OUT periods_done integer)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	m record;
	period daterange;
BEGIN
	days_done := (SELECT count(DISTINCT (u.client_id, u.day)) FROM unnest(client_ids, days) u(client_id, day));
	periods_done := 0;
	FOR m IN
		SELECT u.client_id, date_trunc('month', u.day)::date AS first_day,
			   array_agg(DISTINCT u.day) AS month_days
		  FROM unnest(client_ids, days) u(client_id, day)
		  JOIN clients c ON c.client_id = u.client_id
		 GROUP BY 1, 2
		 ORDER BY 1, 2
	LOOP
		period := daterange(m.first_day, (m.first_day + interval '1 month')::date);
		PERFORM pg_advisory_xact_lock(hashtext('mspbill.rollup_period'), hashtext(m.client_id::text || period::text));
		DELETE FROM daily_activity a WHERE a.client_id = m.client_id AND a.day = ANY (m.month_days);
		INSERT INTO daily_activity
		SELECT * FROM msp_daily_activity_of(array_fill(m.client_id, ARRAY[cardinality(m.month_days)]), m.month_days);
		PERFORM msp_rollup_period(m.client_id, period);
		periods_done := periods_done + 1;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_rollup_days(bigint[], date[]) IS
	'recomputes the daily rows of the given (client, day) pairs and the months they fall in';

-- Refreshing and rebuilding write the rollups, which BI readers trust as
-- they trust invoices: so, like invoices, they are written only through
-- these two functions, which run as the owner (SECURITY DEFINER: the owner
-- sees every client, so the figures never depend on who refreshes) and
-- are executable only by mspbill_admin and mspbill_billing (granted in
-- msp_install_roles), e.g. from cron.  Stored labels are pseudonymous, as
-- in finalized evidence, whoever runs them.  Names are schema-qualified;
-- the internals they call pin their own search_path.

-- Recompute the pairs marked dirty.  Safe to run from several sessions at
-- once: each takes the marks no one else holds (SKIP LOCKED); the marks of
-- loads not yet committed are not visible, and wait for the next run.
CREATE FUNCTION @extschema@.msp_refresh_rollups(OUT days integer, OUT periods integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
DECLARE
	cids bigint[];
	ds date[];
BEGIN
	-- shared with other refreshes, exclusive against a rebuild
	PERFORM pg_catalog.pg_advisory_xact_lock_shared(pg_catalog.hashtext('mspbill.rollups'));
	WITH taken AS (
		DELETE FROM @extschema@.rollup_dirty d
		 USING (SELECT x.ctid AS row_id FROM @extschema@.rollup_dirty x FOR UPDATE SKIP LOCKED) free
		 WHERE d.ctid OPERATOR(pg_catalog.=) free.row_id
		RETURNING d.client_id, d.day)
	SELECT coalesce(pg_catalog.array_agg(t.client_id), '{}'), coalesce(pg_catalog.array_agg(t.day), '{}')
	  INTO cids, ds FROM taken t;
	SELECT r.days_done, r.periods_done INTO days, periods FROM @extschema@.msp_rollup_days(cids, ds) r;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_refresh_rollups() IS
	'recomputes the rollups of the (client, day) pairs marked dirty since the last refresh; safe to run concurrently, e.g. from cron or pg_cron; for mspbill_admin and mspbill_billing';

CREATE FUNCTION @extschema@.msp_rebuild_rollups(OUT days integer, OUT periods integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
DECLARE
	cids bigint[];
	ds date[];
BEGIN
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('mspbill.rollups'));
	DELETE FROM @extschema@.rollup_dirty;
	DELETE FROM @extschema@.daily_activity;
	DELETE FROM @extschema@.period_invoices;
	DELETE FROM @extschema@.pii_findings;
	-- every day with logons, and the first day of every finalized month
	SELECT coalesce(pg_catalog.array_agg(x.client_id), '{}'), coalesce(pg_catalog.array_agg(x.day), '{}') INTO cids, ds
	  FROM (SELECT DISTINCT l.client_id, @extschema@.msp_local_day(l.at, c.time_zone) AS day
			  FROM @extschema@.logons l JOIN @extschema@.clients c ON c.client_id OPERATOR(pg_catalog.=) l.client_id
			UNION
			SELECT i.client_id, pg_catalog.date_trunc('month', pg_catalog.lower(i.period))::date
			  FROM @extschema@.invoices i WHERE i.kind OPERATOR(pg_catalog.=) 'invoice') x;
	SELECT r.days_done, r.periods_done INTO days, periods FROM @extschema@.msp_rollup_days(cids, ds) r;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_rebuild_rollups() IS
	'recomputes every rollup from the base tables (the same rows an incremental refresh keeps); takes a lock that waits for running refreshes; for mspbill_admin and mspbill_billing';

-- the definer functions, and the internals that only they call
REVOKE EXECUTE ON FUNCTION @extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups(),
	@extschema@.msp_rollup_days(bigint[], date[]), @extschema@.msp_rollup_period(bigint, daterange)
	FROM PUBLIC;

-- ---------------------------------------------------------------------
-- KPI views.  Each is security_barrier and joins reporting_clients, the one
-- place that asks which clients the reader may see; the views read the
-- rollups with their owner's rights, so this filter is what protects them.
-- No column is of type userset: sets come as bigint[] and counts, which any
-- BI tool reads.

CREATE VIEW @extschema@.reporting_clients WITH (security_barrier) AS
SELECT c.client_id, c.name AS client_name, c.currency, c.minor_unit, c.time_zone
  FROM @extschema@.clients c
 WHERE (SELECT @extschema@.msp_sees_all_clients())
	OR c.client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[]));
COMMENT ON VIEW @extschema@.reporting_clients IS
	'the clients the current user may see, with name, currency and time zone; every KPI view joins it';

CREATE VIEW @extschema@.kpi_daily_activity WITH (security_barrier) AS
SELECT d.client_id, rc.client_name, d.day,
	   @extschema@.cardinality(d.people)::integer AS people_active,
	   @extschema@.cardinality(d.devices)::integer AS devices_seen,
	   d.shared_sessions,
	   @extschema@.cardinality(d.shared_accounts)::integer AS shared_accounts_used,
	   d.logons,
	   @extschema@.userset_to_array(d.people) AS person_ids
  FROM @extschema@.daily_activity d
  JOIN @extschema@.reporting_clients rc ON rc.client_id = d.client_id;
COMMENT ON VIEW @extschema@.kpi_daily_activity IS
	'per client and local day: people active, devices seen, shared-account sessions and logons; person_ids as bigint[]';

-- Who joined and who left are counted and listed on one set, the people
-- the invoice counts (billable_users): the client's own and the sister
-- clients' people it pays for (listed as 'gray (client 2)'), each keyed by
-- its home client, since person ids are per client.  So joined_count -
-- left_count = change.  The members of every month are listed once (a
-- month's set as "now" of its own month and "before" of the next) and
-- grouped by client and month, not gathered per row in a LATERAL
-- subquery: Citus cannot plan that one (set-returning functions and
-- UNION ALL inside a correlated subquery), and it pushes this one down
-- whole, every part joined on client_id.
CREATE VIEW @extschema@.kpi_billable_users WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month, p.status,
	   p.users AS billable_users, prev.users AS previous_billable_users, p.users - prev.users AS change,
	   CASE WHEN prev.client_id IS NOT NULL THEN coalesce(ch.joined_count, 0) END AS joined_count,
	   CASE WHEN prev.client_id IS NOT NULL THEN coalesce(ch.left_count, 0) END AS left_count,
	   CASE WHEN prev.client_id IS NOT NULL THEN coalesce(ch.joined, '{}') END AS joined,
	   CASE WHEN prev.client_id IS NOT NULL THEN coalesce(ch.departed, '{}') END AS departed,
	   @extschema@.userset_to_array(p.billable) AS billable_person_ids,
	   p.total, p.currency
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  LEFT JOIN @extschema@.period_invoices prev
	ON prev.client_id = p.client_id
   AND prev.period = daterange((lower(p.period) - interval '1 month')::date, lower(p.period))
  LEFT JOIN (
	SELECT x.client_id, x.month,
		   (count(*) FILTER (WHERE x.is_now AND NOT x.was_before))::integer AS joined_count,
		   (count(*) FILTER (WHERE x.was_before AND NOT x.is_now))::integer AS left_count,
		   array_agg(x.label ORDER BY x.label) FILTER (WHERE x.is_now AND NOT x.was_before) AS joined,
		   array_agg(x.label ORDER BY x.label) FILTER (WHERE x.was_before AND NOT x.is_now) AS departed
	  FROM (SELECT m.client_id, m.month, m.home_client_id, m.person_id,
				   max(coalesce(m.label, pe.pseudonym, 'person ' || m.person_id)) AS label,
				   bool_or(m.is_now) AS is_now, bool_or(NOT m.is_now) AS was_before
			  FROM (SELECT n.client_id, lower(n.period) AS month, n.client_id AS home_client_id,
						   @extschema@.userset_members(n.billable) AS person_id, NULL::text AS label, true AS is_now
					  FROM @extschema@.period_invoices n
					UNION ALL
					SELECT s.client_id, s.month, (s.e ->> 'home_client_id')::bigint, (s.e ->> 'person_id')::bigint,
						   format('%s (client %s)', s.e ->> 'pseudonym', s.e ->> 'home_client_id'), true
					  FROM (SELECT n.client_id, lower(n.period) AS month, jsonb_array_elements(n.sister_billable) AS e
							  FROM @extschema@.period_invoices n) s
					UNION ALL
					SELECT b.client_id, upper(b.period), b.client_id,
						   @extschema@.userset_members(b.billable), NULL::text, false
					  FROM @extschema@.period_invoices b
					 WHERE lower(b.period) = (upper(b.period) - interval '1 month')::date
					UNION ALL
					SELECT s.client_id, s.month, (s.e ->> 'home_client_id')::bigint, (s.e ->> 'person_id')::bigint,
						   format('%s (client %s)', s.e ->> 'pseudonym', s.e ->> 'home_client_id'), false
					  FROM (SELECT b.client_id, upper(b.period) AS month, jsonb_array_elements(b.sister_billable) AS e
							  FROM @extschema@.period_invoices b
							 WHERE lower(b.period) = (upper(b.period) - interval '1 month')::date) s) m
			  LEFT JOIN @extschema@.people pe
				ON pe.client_id = m.client_id AND pe.person_id = m.person_id AND m.label IS NULL
			 GROUP BY m.client_id, m.month, m.home_client_id, m.person_id) x
	 GROUP BY x.client_id, x.month) ch
	ON ch.client_id = p.client_id AND ch.month = lower(p.period)
 WHERE p.status <> 'unpriced';
COMMENT ON VIEW @extschema@.kpi_billable_users IS
	'billable users per client and month, the change from the month before, and who joined and who left (pseudonyms; sister clients'' people as ''pseudonym (client N)''; joined_count - left_count = change); NULL changes for a first month; billable_person_ids are the client''s own people';

-- Seats held: the latest marketplace count per SKU before the month ends
-- (as msp_reconcile_licenses reads it).
CREATE VIEW @extschema@.kpi_license_utilization WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month,
	   coalesce(lic.seats, 0)::integer AS seats_held,
	   coalesce(act.people_active, 0)::integer AS people_active,
	   p.users AS billable_users,
	   m365.accounts AS licensed_accounts,
	   m365.inactive AS seats_to_reclaim,
	   m365.inactive * lic.seat_cost AS reclaim_value,
	   greatest(p.users - coalesce(lic.seats, 0), 0)::integer AS seat_shortfall,
	   greatest(p.users - coalesce(lic.seats, 0), 0) * lic.seat_cost AS shortfall_cost,
	   CASE WHEN lic.seats > 0 THEN round(p.users::numeric / lic.seats, 4) END AS utilization,
	   lic.licence_cost, p.currency
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  LEFT JOIN LATERAL (
	SELECT sum(x.seats) AS seats, max(x.unit_cost) AS seat_cost, sum(x.seats * x.unit_cost) AS licence_cost
	  FROM (SELECT DISTINCT ON (lc.sku) lc.seats, lc.unit_cost
			  FROM @extschema@.license_counts lc
			 WHERE lc.client_id = p.client_id AND lc.as_of < upper(p.period)
			 ORDER BY lc.sku, lc.as_of DESC, lc.source) x) lic ON true
  LEFT JOIN LATERAL (
	SELECT @extschema@.cardinality(@extschema@.userset_union(d.people)) AS people_active
	  FROM @extschema@.daily_activity d
	 WHERE d.client_id = p.client_id AND d.day >= lower(p.period) AND d.day < upper(p.period)) act ON true
  LEFT JOIN LATERAL (
	SELECT count(*)::integer AS accounts,
		   (count(*) FILTER (WHERE NOT @extschema@.userset_contains(p.billable, a.person_id)))::integer AS inactive
	  FROM @extschema@.accounts a
	 WHERE a.client_id = p.client_id AND a.realm = 'm365' AND a.kind = 'individual') m365 ON true
 WHERE p.status <> 'unpriced';
COMMENT ON VIEW @extschema@.kpi_license_utilization IS
	'per client and month: licence seats held vs people active and billed, Microsoft 365 seats to reclaim and the shortfall, with money (unit cost from license_counts)';

CREATE VIEW @extschema@.kpi_margin WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month, p.status, p.users,
	   p.total AS revenue,
	   cost.pools AS pool_cost,
	   coalesce(lic.licence_cost, 0) AS licence_cost,
	   p.total - cost.pools - coalesce(lic.licence_cost, 0) AS margin,
	   CASE WHEN p.total > 0
			THEN round((p.total - cost.pools - coalesce(lic.licence_cost, 0)) / p.total * 100, 1) END AS margin_pct,
	   CASE WHEN p.users > 0
			THEN @extschema@.msp_round((p.total - cost.pools - coalesce(lic.licence_cost, 0)) / p.users, rc.minor_unit) END
		   AS margin_per_user,
	   p.currency
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  CROSS JOIN LATERAL (
	SELECT coalesce(sum(@extschema@.msp_round(@extschema@.msp_pool_part(cp.amount, cp.period, p.period), rc.minor_unit)), 0) AS pools
	  FROM @extschema@.cost_pools cp
	 WHERE cp.client_id = p.client_id AND cp.period && p.period) cost
  LEFT JOIN LATERAL (
	SELECT sum(x.seats * x.unit_cost) AS licence_cost
	  FROM (SELECT DISTINCT ON (lc.sku) lc.seats, lc.unit_cost
			  FROM @extschema@.license_counts lc
			 WHERE lc.client_id = p.client_id AND lc.as_of < upper(p.period)
			 ORDER BY lc.sku, lc.as_of DESC, lc.source) x) lic ON true
 WHERE p.status <> 'unpriced';
COMMENT ON VIEW @extschema@.kpi_margin IS
	'per client and month: billed revenue against the cost pools (prorated, rounded per pool) and licence costs; margin, margin % and margin per billable user';

-- Revenue and cost spread over the month's billable people to the cent
-- with allocate(), so that the per-user margins add up to kpi_margin.
CREATE VIEW @extschema@.kpi_margin_per_user WITH (security_barrier) AS
SELECT k.client_id, k.client_name, k.month, k.person_id, k.pseudonym, k.home_client_id,
	   @extschema@.allocate(k.revenue, 1, k.minor_unit) OVER w AS revenue,
	   @extschema@.allocate(k.cost, 1, k.minor_unit) OVER w AS cost,
	   @extschema@.allocate(k.revenue, 1, k.minor_unit) OVER w
		   - @extschema@.allocate(k.cost, 1, k.minor_unit) OVER w AS margin,
	   k.currency
  FROM (SELECT m.client_id, m.client_name, m.month, m.revenue, m.pool_cost + m.licence_cost AS cost,
			   rc.minor_unit, m.currency, u.home_client_id, u.person_id, u.pseudonym
		  FROM @extschema@.kpi_margin m
		  JOIN @extschema@.reporting_clients rc ON rc.client_id = m.client_id
		  JOIN @extschema@.period_invoices p ON p.client_id = m.client_id AND lower(p.period) = m.month
		  -- every person the invoice counts: its own and sister clients' people
		  CROSS JOIN LATERAL (
			SELECT p.client_id AS home_client_id, b.id AS person_id, pe.pseudonym
			  FROM @extschema@.userset_members(p.billable) b(id)
			  LEFT JOIN @extschema@.people pe ON pe.client_id = p.client_id AND pe.person_id = b.id
			UNION ALL
			SELECT (s ->> 'home_client_id')::bigint, (s ->> 'person_id')::bigint, s ->> 'pseudonym'
			  FROM jsonb_array_elements(coalesce(p.sister_billable, '[]')) s) u) k
WINDOW w AS (PARTITION BY k.client_id, k.month ORDER BY k.home_client_id, k.person_id);
COMMENT ON VIEW @extschema@.kpi_margin_per_user IS
	'per client, month and billable person (home_client_id: a sister client whose person it pays for): their share of revenue and cost to the cent (allocate), and the margin';

CREATE VIEW @extschema@.kpi_hipaa_findings WITH (security_barrier) AS
SELECT x.client_id, rc.client_name, x.day,
	   coalesce(d.shared_sessions, 0) AS shared_sessions,
	   coalesce(f.violating_sessions, 0)::integer AS violating_sessions,
	   coalesce(f.devices, 0)::integer AS devices,
	   coalesce(f.applications, '{}') AS applications
  FROM (SELECT a.client_id, a.day FROM @extschema@.daily_activity a WHERE a.shared_sessions > 0
		UNION
		SELECT pf.client_id, @extschema@.msp_local_day(pf.session_start, c.time_zone)
		  FROM @extschema@.pii_findings pf JOIN @extschema@.clients c ON c.client_id = pf.client_id) x
  JOIN @extschema@.reporting_clients rc ON rc.client_id = x.client_id
  LEFT JOIN @extschema@.daily_activity d ON d.client_id = x.client_id AND d.day = x.day
  LEFT JOIN LATERAL (
	SELECT count(*) AS violating_sessions, count(DISTINCT pf.device) AS devices,
		   array_agg(DISTINCT pf.application ORDER BY pf.application) AS applications
	  FROM @extschema@.pii_findings pf
	 WHERE pf.client_id = x.client_id
	   AND @extschema@.msp_local_day(pf.session_start, rc.time_zone) = x.day) f ON true;
COMMENT ON VIEW @extschema@.kpi_hipaa_findings IS
	'per client and local day: shared-account sessions and those that used a PII application without an individual login (msp_pii_audit)';

-- Live, not rolled up: the gates depend on today's date as well as on data.
CREATE VIEW @extschema@.kpi_data_quality WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month, q.gate, q.subject, q.detail
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  CROSS JOIN LATERAL @extschema@.msp_data_quality(p.client_id, p.period) q
 WHERE p.status = 'preview';
COMMENT ON VIEW @extschema@.kpi_data_quality IS
	'data-quality findings of every month not finalized yet, per client (msp_data_quality, computed when read)';

-- No grant to PUBLIC: msp_install_roles grants reading the rollups and
-- views to mspbill_admin, mspbill_billing and mspbill_bi (their rows
-- filtered by the policies and the views' own filter), marking
-- (rollup_dirty's two columns) to admin and billing, and refreshing to them
-- through msp_refresh_rollups() and msp_rebuild_rollups().
