-- Invoices you can stand behind: finalization, drift, adjustments, license
-- reconciliation, data-quality gates and the audit trail.
-- A finalized invoice is a fact: its rows cannot be changed or deleted by
-- anyone but a superuser, and later differences become adjustment notes
-- that reference it and ride on the next invoice.
-- Nobody may write invoices, their lines or the audit log directly:
-- msp_finalize_invoice and msp_issue_adjustment do, as the extension's
-- owner (SECURITY DEFINER, callable by mspbill_billing and mspbill_admin),
-- so that every stored invoice passed the gates and every audit row names
-- the session's login and the server's clock.  They run with
-- mspbill.pseudonymous on, so that stored evidence and findings carry
-- account labels, never real names (which only mspbill_pii reads).

CREATE SEQUENCE @extschema@.invoice_id_seq;
CREATE TABLE @extschema@.invoices (
	client_id bigint NOT NULL REFERENCES @extschema@.clients,
	invoice_id bigint NOT NULL DEFAULT nextval('@extschema@.invoice_id_seq'),
	kind text NOT NULL CONSTRAINT invoices_kind_known CHECK (kind IN ('invoice', 'adjustment')),
	period daterange NOT NULL,
	adjusts_invoice_id bigint,
	apply_period daterange,
	reason text,
	model text,
	users integer,
	seats integer,
	devices integer,
	subtotal numeric,
	total numeric NOT NULL,
	currency char(3) NOT NULL,
	evidence jsonb NOT NULL DEFAULT '[]',
	overrides text[] NOT NULL DEFAULT '{}',
	-- the clock, as audit_log.at: a finalization late in a long transaction
	-- is stamped when it happened, not when the transaction began
	finalized_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	finalized_by name NOT NULL DEFAULT session_user,
	PRIMARY KEY (client_id, invoice_id),
	FOREIGN KEY (client_id, adjusts_invoice_id) REFERENCES @extschema@.invoices,
	CONSTRAINT invoices_adjusts_invoice_id_iff_adjustment CHECK ((kind = 'adjustment') = (adjusts_invoice_id IS NOT NULL)),
	CONSTRAINT invoices_apply_period_iff_adjustment CHECK ((kind = 'adjustment') = (apply_period IS NOT NULL)),
	-- no two finalized invoices of a client bill the same day (range types
	-- have = in their GiST opclass, so btree_gist is not needed)
	CONSTRAINT invoices_no_overlap
		EXCLUDE USING gist (int8range(client_id, client_id, '[]') WITH =, period WITH &&) WHERE (kind = 'invoice')
);
CREATE UNIQUE INDEX invoices_one_per_period ON @extschema@.invoices (client_id, period) WHERE kind = 'invoice';
CREATE INDEX invoices_apply_period ON @extschema@.invoices (client_id, apply_period) WHERE kind = 'adjustment';
COMMENT ON TABLE @extschema@.invoices IS
	'finalized invoices and adjustment notes (which reference the invoice they correct); never updated';

CREATE TABLE @extschema@.invoice_items (
	client_id bigint NOT NULL,
	invoice_id bigint NOT NULL,
	line_no integer NOT NULL,
	contract_id bigint,
	description text NOT NULL,
	quantity numeric,
	unit_price numeric,
	amount numeric NOT NULL,
	basis text NOT NULL,
	PRIMARY KEY (client_id, invoice_id, line_no),
	FOREIGN KEY (client_id, invoice_id) REFERENCES @extschema@.invoices
);
COMMENT ON TABLE @extschema@.invoice_items IS 'the lines of finalized invoices and adjustment notes';

CREATE SEQUENCE @extschema@.audit_entry_seq;
CREATE TABLE @extschema@.audit_log (
	client_id bigint NOT NULL,
	entry_id bigint NOT NULL DEFAULT nextval('@extschema@.audit_entry_seq'),
	at timestamptz NOT NULL DEFAULT clock_timestamp(),
	actor name NOT NULL DEFAULT session_user,
	action text NOT NULL CONSTRAINT audit_log_action_known CHECK (action IN ('finalize', 'override', 'adjust')),
	invoice_id bigint,
	detail jsonb NOT NULL DEFAULT '{}',
	PRIMARY KEY (client_id, entry_id)
);
COMMENT ON TABLE @extschema@.audit_log IS 'who finalized, overrode or adjusted what, and when; append-only';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.invoices', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.invoice_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.invoice_items', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_entry_seq', '');

-- Finalized rows are facts: only a superuser may change or remove them.
CREATE FUNCTION @extschema@.msp_refuse_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF current_setting('is_superuser')::boolean THEN
		RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
	END IF;
	RAISE EXCEPTION 'finalized billing records cannot be changed'
		USING ERRCODE = 'insufficient_privilege',
			  DETAIL = format('%s on %s was refused.', TG_OP, TG_TABLE_NAME),
			  HINT = 'Issue an adjustment with msp_issue_adjustment() instead.';
END
$$;
COMMENT ON FUNCTION @extschema@.msp_refuse_change() IS
	'trigger: refuses UPDATE, DELETE and TRUNCATE of finalized records unless the user is a superuser';

CREATE TRIGGER refuse_change BEFORE UPDATE OR DELETE ON @extschema@.invoices
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON @extschema@.invoices
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_change BEFORE UPDATE OR DELETE ON @extschema@.invoice_items
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON @extschema@.invoice_items
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_change BEFORE UPDATE OR DELETE ON @extschema@.audit_log
	FOR EACH ROW EXECUTE FUNCTION @extschema@.msp_refuse_change();
CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON @extschema@.audit_log
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_refuse_change();

-- The lines that adjustment notes add to the invoice of a period.
CREATE FUNCTION @extschema@.msp_adjustment_lines(client_id bigint, period daterange)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- PL/pgSQL, so that Citus plans the read on the client's shard
	RETURN QUERY
	-- the adjusted invoice by the number the client holds (its id when it
	-- was sent unnumbered, before 0.3.0)
	SELECT (row_number() OVER (ORDER BY a.invoice_id))::integer, NULL::bigint,
		   format('Adjustment %s to invoice %s for %s to %s: %s', a.invoice_id,
				  coalesce(d.invoice_number, a.adjusts_invoice_id::text),
				  lower(a.period), upper(a.period) - 1, a.reason),
		   1::numeric, a.total, a.total, 'adjustment'::text
	  FROM invoices a
	  LEFT JOIN invoice_documents d ON d.client_id = client_id AND d.invoice_id = a.adjusts_invoice_id
	 WHERE a.client_id = client_id AND a.kind = 'adjustment' AND a.apply_period = period
	 ORDER BY a.invoice_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_adjustment_lines(bigint, daterange) IS
	'adjustment notes carried by the invoice of a period, one line each';

-- The finalized invoice of a client and period, or NULL.
CREATE FUNCTION @extschema@.msp_finalized_invoice(client_id bigint, period daterange)
RETURNS @extschema@.invoices
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	fin invoices;
BEGIN
	-- PL/pgSQL, so that Citus plans the read on the client's shard
	SELECT * INTO fin FROM invoices i
	 WHERE i.client_id = client_id AND i.period = period AND i.kind = 'invoice';
	RETURN fin;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalized_invoice(bigint, daterange) IS
	'the finalized invoice of a client and period, or NULL';

-- The same, for what only makes sense once finalized.
CREATE FUNCTION @extschema@.msp_require_finalized(client_id bigint, period daterange)
RETURNS @extschema@.invoices
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	fin invoices := msp_finalized_invoice(client_id, period);
BEGIN
	IF fin.invoice_id IS NULL THEN
		RAISE EXCEPTION 'no finalized invoice for client % in %', client_id, period
			USING ERRCODE = 'no_data_found',
				  HINT = 'Finalize it with msp_finalize_invoice() first; until then msp_invoice() is always current.';
	END IF;
	RETURN fin;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_require_finalized(bigint, daterange) IS
	'the finalized invoice of a client and period; an error when there is none';

CREATE FUNCTION @extschema@.msp_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	inv invoice;
BEGIN
	period := msp_period(client_id, period);
	SELECT i.client_id, c.name, i.period, i.model, i.users, i.seats, i.devices, i.subtotal, i.total, i.currency
	  INTO inv
	  FROM msp_finalized_invoice(client_id, period) i JOIN clients c USING (client_id)
	 WHERE i.invoice_id IS NOT NULL;
	IF FOUND THEN
		RETURN inv;
	END IF;
	RETURN msp_compute_invoice(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice(bigint, daterange) IS
	'the invoice of a client for a period (default: last full month in the client''s time zone): as stored once finalized, else a preview';

CREATE FUNCTION @extschema@.msp_invoice_lines(client_id bigint, period daterange DEFAULT NULL)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
BEGIN
	period := msp_period(client_id, period);
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN QUERY SELECT it.line_no, it.contract_id, it.description, it.quantity, it.unit_price,
							it.amount, it.basis
					   FROM invoice_items it
					  WHERE it.client_id = client_id AND it.invoice_id = id
					  ORDER BY it.line_no;
	ELSE
		RETURN QUERY SELECT l.line_no, l.contract_id, l.description, trim_scale(round(l.quantity, 4)),
							l.unit_price, l.amount, l.basis
					   FROM msp_price_lines(client_id, period, NULL) l;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice_lines(bigint, daterange) IS
	'the lines of a client''s invoice for a period (default: last full month): as stored once finalized, else a preview';

-- Data-quality gates.  Every row is one finding; finalization refuses while
-- a gate has findings, unless the gate is overridden explicitly.
CREATE FUNCTION @extschema@.msp_data_quality(client_id bigint, period daterange DEFAULT NULL,
											 silent_days integer DEFAULT 3)
RETURNS TABLE (gate text, subject text, detail text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	t0 timestamptz;
	t1 timestamptz;
	today date;
BEGIN
	period := msp_period(client_id, period);
	-- no contract (or a gap between two) is the first thing to fix: raise
	-- it before weekdays without logons and the like bury it
	PERFORM count(*) FROM msp_contract_segments(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	t0 := lower(period)::timestamp AT TIME ZONE c.time_zone;
	t1 := upper(period)::timestamp AT TIME ZONE c.time_zone;
	today := (now() AT TIME ZONE c.time_zone)::date;

	IF upper(period) > today THEN
		RETURN QUERY SELECT 'period_not_over', period::text,
							format('The period ends on %s; today is %s.', upper(period) - 1, today);
	END IF;

	-- devices that fell silent before the end of the period
	RETURN QUERY
	SELECT 'device_silent', d.name,
		   CASE WHEN max(l.at) IS NULL THEN 'No logons in the period.'
				ELSE format('Last logon %s, %s days before the period ends.',
							(max(l.at) AT TIME ZONE c.time_zone)::date,
							upper(period) - (max(l.at) AT TIME ZONE c.time_zone)::date - 1) END
	  FROM devices d
	  LEFT JOIN logons l ON l.client_id = d.client_id AND l.device_id = d.device_id
						AND l.at >= t0 AND l.at < t1
	 WHERE d.client_id = client_id AND (d.active IS NULL OR d.active && period)
	 GROUP BY d.device_id, d.name
	HAVING max(l.at) IS NULL
		OR upper(period) - (max(l.at) AT TIME ZONE c.time_zone)::date - 1 >= silent_days
	 ORDER BY d.name;

	-- weekdays without a single logon
	RETURN QUERY
	SELECT 'day_without_logons', day::date::text, 'No logon at all on this weekday.'
	  FROM generate_series(lower(period), least(upper(period), today + 1) - 1, interval '1 day') day
	 WHERE extract(isodow FROM day) < 6
	   AND NOT EXISTS (SELECT 1 FROM logons l
					    WHERE l.client_id = client_id
						  AND l.at >= day::date::timestamp AT TIME ZONE c.time_zone
						  AND l.at < (day::date + 1)::timestamp AT TIME ZONE c.time_zone)
	 ORDER BY day;

	-- logons of accounts nobody has classified yet
	RETURN QUERY
	SELECT 'unmapped_account', a.label, format('%s logons by an account not mapped to a person, nor marked shared or service.', count(*))
	  FROM logons l JOIN account_labels a ON a.client_id = l.client_id AND a.account_id = l.account_id
	 WHERE l.client_id = client_id AND l.at >= t0 AND l.at < t1 AND a.kind = 'unknown'
	 GROUP BY a.label ORDER BY a.label;

	-- logons on days no contract covers
	RETURN QUERY
	SELECT 'logon_outside_contract', (l.at AT TIME ZONE c.time_zone)::date::text,
		   format('%s logons on a day no contract covers.', count(*))
	  FROM logons l
	 WHERE l.client_id = client_id AND l.at >= t0 AND l.at < t1
	   AND NOT EXISTS (SELECT 1 FROM contracts k WHERE k.client_id = client_id
						  AND k.effective @> (l.at AT TIME ZONE c.time_zone)::date)
	 GROUP BY 2 ORDER BY 2;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_data_quality(bigint, daterange, integer) IS
	'findings that block finalization: period not over, silent devices, weekdays without logons, unmapped accounts, logons outside the contract';

-- The overrides a finalization may be given: the four data-quality gates.
-- An unfinished month is not a data-quality question (its logons are
-- still coming), so no override finalizes it.  Checked by
-- msp_finalize_invoice_with and, once for every client, by month-end.
CREATE FUNCTION @extschema@.msp_check_overrides(override text[]) RETURNS void
-- (STRICT: no overrides, nothing to refuse)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	unknown text[];
BEGIN
	IF 'period_not_over' = ANY (override) THEN
		RAISE EXCEPTION 'the gate period_not_over cannot be overridden'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A period is finalized only after it ends.',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	unknown := ARRAY(SELECT unnest(override)
					 EXCEPT SELECT unnest('{device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Overridable gates are device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_check_overrides(text[]) IS
	'internal: refuses overrides that are not data-quality gates (period_not_over, unknown names)';

-- The finalization, its people given or not: people (as msp_price_invoice
-- takes them) and evidence (msp_billable_users' rows as JSON) that
-- month-end counted for every client at once, and checked unchanged in
-- this transaction's snapshot (msp_finalize_run_client); NULL: counted
-- here.  Not for callers: it trusts the people it is given, so only the
-- definer functions (msp_finalize_invoice, msp_finalize_run_client), as
-- the owner, may call it.  (Not STRICT: people NULL is the per-client path.)
CREATE FUNCTION @extschema@.msp_finalize_invoice_with(client_id bigint, period daterange, override text[],
													  people jsonb, evidence jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	today date;
	stamp timestamptz;
	c clients;
	terms record;
	lines invoice_line[];
	priced record;
	number text;
	invoice_day date;
	tax numeric;
	findings jsonb;
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	PERFORM msp_check_overrides(override);
	-- the gates run once: they read the period's logons several times over
	findings := coalesce((SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q), '[]');
	IF jsonb_path_exists(findings, '$[*] ? (@.gate == "period_not_over")') THEN
		-- (not alias c: the variable c would shadow it, and today be NULL)
		today := (now() AT TIME ZONE (SELECT cl.time_zone FROM clients cl WHERE cl.client_id = client_id))::date;
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
				  -- the overrides already given too: the hint is the whole call
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period,
								ARRAY(SELECT DISTINCT g FROM unnest(coalesce(override, '{}') || failing) g ORDER BY 1));
	END IF;

	-- the summary and its lines from one pricing
	SELECT * INTO priced FROM msp_price_invoice(client_id, period, people) p;
	inv := priced.summary;
	lines := priced.lines;
	IF people IS NULL OR evidence IS NULL THEN
		evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	END IF;
	SELECT * INTO terms FROM msp_invoice_terms(client_id);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	-- the number last: its counter row stays locked until this transaction
	-- ends, so other finalizations wait here (not through the pricing), and
	-- a rollback gives the number back: no gaps, no duplicates
	INSERT INTO @extschema@.invoice_numbering AS n (series, last_number) VALUES ('invoice', 1)
	ON CONFLICT (series) DO UPDATE SET last_number = n.last_number + 1
	RETURNING msp_invoice_number_text(n.prefix, n.last_number, n.digits) INTO number;
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	invoice_day := (stamp AT TIME ZONE c.time_zone)::date;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	tax := (SELECT coalesce(sum(t.tax), 0) FROM msp_tax_lines(client_id, lines) t);
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM unnest(lines) l;
	-- the document: number, dates, terms and PO as the client has them
	-- today, and each line's tax and explanation (src/billing/documents.sql)
	INSERT INTO @extschema@.invoice_documents (client_id, invoice_id, invoice_number, invoice_date, due_date,
							   payment_terms_days, po_reference, tax)
	VALUES (client_id, id, number, invoice_day, invoice_day + terms.payment_terms_days, terms.payment_terms_days,
			terms.po_reference, tax);
	INSERT INTO @extschema@.invoice_line_documents (client_id, invoice_id, line_no, tax_name, tax_rate, tax,
									explanation, evidence)
	SELECT client_id, id, t.line_no, t.tax_name, t.tax_rate, t.tax, x.explanation, x.evidence
	  FROM msp_tax_lines(client_id, lines) t
	  JOIN msp_explain_lines(client_id, period, lines, evidence) x ON x.line_no = t.line_no;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		-- the findings read once above (computed before the INSERT: Citus
		-- takes no subquery in INSERT ... VALUES)
		evidence := (SELECT jsonb_agg(q) FROM jsonb_array_elements(findings) q WHERE q->>'gate' = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_invoice_with(bigint, daterange, text[], jsonb, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice_with(bigint, daterange, text[], jsonb, jsonb) IS
	'finalization internal: msp_finalize_invoice with the people and evidence month-end counted for every client at once (NULL: counted here)';

CREATE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
BEGIN
	RETURN @extschema@.msp_finalize_invoice_with(client_id, period, override, NULL, NULL);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines, evidence, number, dates, terms and tax and returns its id; finalizing again returns the same id';

-- What changed since an invoice was finalized, line by line (lines are
-- matched by contract and basis; earlier adjustments count as billed).
CREATE FUNCTION @extschema@.msp_invoice_drift(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, basis text, description text, billed_quantity numeric,
			   current_quantity numeric, billed numeric, current numeric, difference numeric)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	b_contract bigint[];
	b_basis text[];
	b_description text[];
	b_quantity numeric[];
	b_amount numeric[];
	n_contract bigint[];
	n_basis text[];
	n_description text[];
	n_quantity numeric[];
	n_amount numeric[];
BEGIN
	period := msp_period(client_id, period);
	id := (msp_require_finalized(client_id, period)).invoice_id;
	-- billed and current lines are read first, each on its own: Citus runs
	-- no query on a table from within one (msp_price_lines), and plans the
	-- billed lines on the client's shard
	SELECT array_agg(x.contract_id), array_agg(x.basis), array_agg(x.description), array_agg(x.quantity),
		   array_agg(x.amount)
	  INTO b_contract, b_basis, b_description, b_quantity, b_amount
	  FROM (SELECT it.contract_id, it.basis, min(it.description) FILTER (WHERE i.kind = 'invoice') AS description,
				   sum(it.quantity) FILTER (WHERE i.kind = 'invoice') AS quantity, sum(it.amount) AS amount
			  FROM invoices i JOIN invoice_items it ON it.client_id = client_id AND it.invoice_id = i.invoice_id
			 WHERE i.client_id = client_id AND (i.invoice_id = id OR i.adjusts_invoice_id = id)
			   AND it.basis <> 'adjustment'
			 GROUP BY it.contract_id, it.basis) x;
	SELECT array_agg(x.contract_id), array_agg(x.basis), array_agg(x.description), array_agg(x.quantity),
		   array_agg(x.amount)
	  INTO n_contract, n_basis, n_description, n_quantity, n_amount
	  FROM (SELECT l.contract_id, l.basis, min(l.description) AS description, sum(l.quantity) AS quantity,
				   sum(l.amount) AS amount
			  FROM msp_price_lines(client_id, period, NULL) l
			 WHERE l.basis <> 'adjustment'
			 GROUP BY l.contract_id, l.basis) x;
	RETURN QUERY
	WITH billed AS (SELECT * FROM unnest(b_contract, b_basis, b_description, b_quantity, b_amount)
						 b(contract_id, basis, description, quantity, amount)),
	now_ AS (SELECT * FROM unnest(n_contract, n_basis, n_description, n_quantity, n_amount)
					 n(contract_id, basis, description, quantity, amount))
	SELECT coalesce(n.contract_id, b.contract_id), coalesce(n.basis, b.basis),
		   coalesce(n.description, b.description),
		   b.quantity, trim_scale(round(n.quantity, 4)), coalesce(b.amount, 0), coalesce(n.amount, 0),
		   coalesce(n.amount, 0) - coalesce(b.amount, 0)
	  FROM billed b FULL JOIN now_ n ON n.contract_id IS NOT DISTINCT FROM b.contract_id AND n.basis = b.basis
	 ORDER BY 1, 2;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoice_drift(bigint, daterange) IS
	'for a finalized period: what was billed (with adjustments) against what today''s data prices, line by line';

CREATE FUNCTION @extschema@.msp_issue_adjustment(client_id bigint, period daterange, reason text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	original invoices;
	carrier daterange;
	total numeric;
	stamp timestamptz;
	evidence jsonb;
BEGIN
	IF reason IS NULL OR reason = '' THEN
		RAISE EXCEPTION 'an adjustment needs a reason'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Say why, e.g. ''late logons from the EMR export''; it is printed on the invoice.';
	END IF;
	period := msp_period(client_id, period);
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	original := msp_require_finalized(client_id, period);
	SELECT sum(d.difference) INTO total FROM msp_invoice_drift(client_id, period) d WHERE d.difference <> 0;
	IF total IS NULL THEN
		RAISE EXCEPTION 'invoice % has no drift to adjust', original.invoice_id
			USING ERRCODE = 'no_data_found';
	END IF;
	-- the next invoice not finalized yet carries the note
	SELECT daterange(m::date, (m + interval '1 month')::date) INTO carrier
	  FROM generate_series(date_trunc('month', upper(period)), date_trunc('month', upper(period)) + interval '10 years',
						   interval '1 month') m
	 WHERE NOT EXISTS (SELECT 1 FROM invoices i WHERE i.client_id = client_id AND i.kind = 'invoice'
						  AND i.period && daterange(m::date, (m + interval '1 month')::date))
	 ORDER BY m LIMIT 1;
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM @extschema@.msp_billable_users(client_id, period) u), '[]');
	stamp := clock_timestamp();
	INSERT INTO @extschema@.invoices (client_id, kind, period, adjusts_invoice_id, apply_period, reason, total, currency,
						  evidence, finalized_at)
	VALUES (client_id, 'adjustment', period, original.invoice_id, carrier, reason, total, original.currency,
			evidence, stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, row_number() OVER (ORDER BY d.contract_id, d.basis), d.contract_id,
		   format('%s (billed %s, now %s)', d.description, d.billed, d.current),
		   d.current_quantity, NULL, d.difference, d.basis
	  FROM msp_invoice_drift(client_id, period) d WHERE d.difference <> 0;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'adjust', id, jsonb_build_object('adjusts', original.invoice_id, 'total', total,
														'reason', reason, 'carried_by', carrier::text), stamp);
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_issue_adjustment(bigint, daterange, text) IS
	'turns the drift of a finalized invoice into a credit or debit note that references it; the next invoice carries it';

CREATE FUNCTION @extschema@.msp_reconcile_licenses(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (category text, sku text, subject text, quantity numeric, amount numeric, note text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	fin invoices;
	active_ids bigint[];
	active integer;
	billed numeric;
	seats numeric;
	seat_cost numeric;
	snapshot boolean;
BEGIN
	period := msp_period(client_id, period);
	-- with a licence snapshot (src/licensing.sql) seats are known per
	-- account: msp_license_gaps names them instead of the account checks
	snapshot := EXISTS (SELECT 1 FROM m365_license_assignments x WHERE x.client_id = client_id AND x.as_of < upper(period));
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.effective @> (upper(period) - 1);
	active_ids := ARRAY(SELECT DISTINCT u.person_id FROM msp_billable_users(client_id, period) u
						 WHERE u.home_client_id = client_id);
	active := (SELECT count(DISTINCT (u.home_client_id, u.person_id)) FROM msp_billable_users(client_id, period) u);
	-- people billed: a preview bills everyone active; once finalized, those in
	-- the evidence of the invoice or of an adjustment to it
	fin := msp_finalized_invoice(client_id, period);
	IF fin.invoice_id IS NULL THEN
		billed := active;
	ELSE
		billed := (SELECT count(*) FROM (
					 SELECT DISTINCT coalesce((e->>'home_client_id')::bigint, i.client_id), (e->>'person_id')::bigint
					   FROM invoices i, jsonb_array_elements(i.evidence) e
					  WHERE i.client_id = client_id
						AND (i.invoice_id = fin.invoice_id OR i.adjusts_invoice_id = fin.invoice_id)
					 INTERSECT
					 SELECT u.home_client_id, u.person_id FROM msp_billable_users(client_id, period) u) b);
	END IF;

	-- seats held per SKU (latest count before the period ends, per source)
	RETURN QUERY
	SELECT 'seats_held', lc.sku, NULL::text, lc.seats::numeric, msp_round(lc.seats * lc.unit_cost, c.minor_unit),
		   format('%s seats held; %s people active; %s users billed.', lc.seats, active, billed)
	  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
			 WHERE x.client_id = client_id AND x.as_of < upper(period)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc
	 ORDER BY lc.sku;
	SELECT sum(lc.seats), max(lc.unit_cost) INTO seats, seat_cost
	  FROM (SELECT DISTINCT ON (x.sku) x.* FROM license_counts x
			 WHERE x.client_id = client_id AND x.as_of < upper(period)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- people who work without a Microsoft 365 account
	RETURN QUERY
	SELECT 'active_unlicensed', NULL::text, a.pseudonym, 1::numeric, msp_round(seat_cost, c.minor_unit),
		   'Active in the period but holds no Microsoft 365 account: license them (or record the account).'
	  FROM people a
	 WHERE a.client_id = client_id AND a.person_id = ANY (active_ids) AND NOT snapshot
	   AND NOT EXISTS (SELECT 1 FROM accounts x WHERE x.client_id = client_id AND x.person_id = a.person_id
						  AND x.realm = 'm365')
	 ORDER BY a.pseudonym;
	-- licensed people who did not work: seats to reclaim
	RETURN QUERY
	SELECT 'licensed_inactive', NULL::text, l.label, 1::numeric, msp_round(seat_cost, c.minor_unit),
		   'Holds a Microsoft 365 account but was not active in the period: a seat to reclaim.'
	  FROM accounts x JOIN account_labels l USING (client_id, account_id)
	 WHERE x.client_id = client_id AND x.realm = 'm365' AND x.kind = 'individual'
	   AND NOT x.person_id = ANY (active_ids) AND NOT snapshot
	 ORDER BY l.label;
	IF seats IS NOT NULL AND active > seats THEN
		RETURN QUERY SELECT 'seat_shortfall', NULL::text, NULL::text, (active - seats)::numeric,
							msp_round((active - seats) * seat_cost, c.minor_unit),
							format('%s people active but only %s seats held.', active, seats);
	END IF;
	IF billed < active AND k.model IN ('per_user', 'per_user_plus_support') THEN
		RETURN QUERY SELECT 'unbilled_users', NULL::text, NULL::text, active - billed,
							msp_round((active - billed) * k.price_per_user, c.minor_unit),
							format('%s people active, %s billed.', active, billed);
	END IF;
	RETURN QUERY SELECT * FROM msp_license_gaps(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_reconcile_licenses(bigint, daterange) IS
	'three-way license reconciliation: people active by logon, seats held per SKU, quantities billed, and the money at stake; with a licence snapshot, the gaps of msp_license_gaps by name and product';
