-- The invoice as today's data prices it, and the reports beside it.

CREATE TYPE @extschema@.invoice AS (
	client_id bigint,
	client_name text,
	period daterange,
	model text,
	users integer,
	seats integer,
	devices integer,
	subtotal numeric,
	total numeric,
	currency char(3)
);
COMMENT ON TYPE @extschema@.invoice IS 'an invoice summary; its lines come from msp_invoice_lines()';

-- Distinct people billed in a period, whichever contracts counted them.
CREATE FUNCTION @extschema@.msp_period_people(client_id bigint, period daterange) RETURNS integer
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- msp_period: unknown client for one the caller may not see
	period := msp_period(client_id, period);
	RETURN (SELECT count(DISTINCT (u.home_client_id, u.person_id))::integer
			  FROM msp_contract_segments(client_id, period) s,
				   LATERAL msp_segment_users(client_id, s.contract_id, s.segment, false) u);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period_people(bigint, daterange) IS
	'how many distinct people the contracts of a period bill';

-- Devices under management in a period: billable range overlapping it.
CREATE FUNCTION @extschema@.msp_period_devices(client_id bigint, period daterange) RETURNS integer
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- msp_period: unknown client for one the caller may not see (a count of
	-- 0 would answer for it)
	period := msp_period(client_id, period);
	RETURN (SELECT count(*)::integer FROM devices d
			 WHERE d.client_id = client_id AND (d.active IS NULL OR d.active && period));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period_devices(bigint, daterange) IS
	'how many devices are under management (billable range overlapping) in a period';

-- The invoice as today's data prices it and its lines, priced once: what
-- msp_compute_invoice shows and what msp_finalize_invoice stores (which
-- before priced every segment twice, once for the summary and once for the
-- lines).  The lines are numbered and rounded as msp_price_lines gives them.
-- people: each contract segment's people, computed for every client at
-- once by msp_period_people_all, as {"contract_id": {"h": [home client
-- ids], "p": [person ids], "d": [days of the segment active]}} (a contract
-- absent: nobody); NULL: counted here, for this client alone.
-- (Not STRICT: people NULL is the per-client path.)
CREATE FUNCTION @extschema@.msp_price_invoice(client_id bigint, period daterange, people jsonb,
											   OUT summary @extschema@.invoice,
											   OUT lines @extschema@.invoice_line[])
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	seg record;
	q segment_quantities;
	line invoice_line;
	inv invoice;
	models text[] := '{}';
	homes bigint[] := '{}';
	ids bigint[] := '{}';
	n integer := 0;
BEGIN
	period := msp_period(client_id, period);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	inv := (c.client_id, c.name, period, NULL, 0, 0, 0, 0, 0, c.currency)::invoice;
	lines := '{}';
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		IF people IS NULL THEN
			q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period);
		ELSE
			q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period,
										ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'h') x),
										ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'p') x),
										ARRAY(SELECT x::integer FROM jsonb_array_elements_text(people->(seg.contract_id::text)->'d') x));
		END IF;
		IF NOT k.model = ANY (models) THEN
			models := models || k.model;
		END IF;
		-- a seat billed by two contracts of the month is one seat
		inv.seats := greatest(inv.seats, q.seat_count);
		homes := homes || q.user_homes;
		ids := ids || q.user_ids;
		FOR line IN SELECT * FROM msp_segment_lines(c, k, seg.segment, period, q, k.model) LOOP
			inv.total := inv.total + line.amount;
			IF line.basis <> 'minimum' THEN
				inv.subtotal := inv.subtotal + line.amount;
			END IF;
			n := n + 1;
			line.line_no := n;
			-- shown and stored alike: four decimals at most
			line.quantity := trim_scale(round(line.quantity, 4));
			lines := lines || line;
		END LOOP;
	END LOOP;
	-- the period's people: each segment's, a person counted by two
	-- contracts once (as msp_period_people counts them, without counting
	-- them again)
	inv.users := (SELECT count(DISTINCT (x.h, x.id))::integer FROM unnest(homes, ids) x(h, id));
	inv.devices := msp_period_devices(client_id, period);
	inv.model := array_to_string(models, '+');
	-- adjustments of earlier invoices carried by this one
	FOR line IN SELECT * FROM msp_adjustment_lines(client_id, period) LOOP
		inv.total := inv.total + line.amount;
		n := n + 1;
		line.line_no := n;
		lines := lines || line;
	END LOOP;
	inv.subtotal := msp_round(inv.subtotal, c.minor_unit);
	inv.total := msp_round(inv.total, c.minor_unit);
	summary := inv;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_price_invoice(bigint, daterange, jsonb) IS
	'the invoice of a client for a period as today''s data prices it and its lines, each segment priced once, from people counted for every client at once (or, NULL, for this one)';

CREATE FUNCTION @extschema@.msp_price_invoice(client_id bigint, period daterange,
											   OUT summary @extschema@.invoice,
											   OUT lines @extschema@.invoice_line[])
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	priced record;
BEGIN
	SELECT * INTO priced FROM msp_price_invoice(client_id, period, NULL) p;
	summary := priced.summary;
	lines := priced.lines;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_price_invoice(bigint, daterange) IS
	'the invoice of a client for a period as today''s data prices it and its lines (as msp_price_lines gives them), each segment priced once';

-- Each client's people of a period as msp_price_invoice takes them, from
-- one set-based pass over every client (msp_period_people_all).
CREATE FUNCTION @extschema@.msp_period_people_by_client(period daterange DEFAULT NULL, client_ids bigint[] DEFAULT NULL)
RETURNS TABLE (client_id bigint, people jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	RETURN QUERY
	SELECT c.client_id, coalesce(x.people, '{}')
	  FROM clients c
	  LEFT JOIN (SELECT y.client_id, jsonb_object_agg(y.contract_id::text, y.who) AS people
				   FROM (SELECT u.client_id, u.contract_id,
								jsonb_build_object('h', array_agg(u.home_client_id), 'p', array_agg(u.person_id),
												   'd', array_agg(u.segment_days)) AS who
						   FROM msp_period_people_all(period, client_ids, false) u
						  GROUP BY u.client_id, u.contract_id) y
				  GROUP BY y.client_id) x ON x.client_id = c.client_id
	 WHERE client_ids IS NULL OR c.client_id = ANY (client_ids)
	 ORDER BY c.client_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period_people_by_client(daterange, bigint[]) IS
	'every client''s people of a period, counted for all clients at once, as msp_price_invoice takes them';

-- Every client's invoice for a period as today's data prices it, the
-- people of all of them counted in one set-based pass (the batch form of
-- msp_compute_invoice, which msp_invoices uses on one node).  NULL period:
-- each client's last full month; client_ids NULL: every client.  The first
-- error (a contract gap, a currency) stops it, as it stops one invoice.
CREATE FUNCTION @extschema@.msp_compute_invoices(period daterange DEFAULT NULL, client_ids bigint[] DEFAULT NULL)
RETURNS SETOF @extschema@.invoice
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r record;
BEGIN
	-- on Citus the people of every client are not one statement: each
	-- client is computed on its own (msp_invoices runs them on the workers)
	IF msp_is_distributed('@extschema@.contracts') THEN
		FOR r IN SELECT c.client_id FROM clients c WHERE client_ids IS NULL OR c.client_id = ANY (client_ids)
				  ORDER BY 1 LOOP
			RETURN NEXT msp_compute_invoice(r.client_id, period);
		END LOOP;
		RETURN;
	END IF;
	FOR r IN SELECT * FROM msp_period_people_by_client(period, client_ids) LOOP
		RETURN NEXT (SELECT p.summary FROM msp_price_invoice(r.client_id, msp_period(r.client_id, period), r.people) p);
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compute_invoices(daterange, bigint[]) IS
	'every client''s invoice for a period as today''s data prices it (msp_compute_invoice for each), the people counted for all clients in one set-based pass';

-- The invoice as today's data prices it (msp_invoice() reports a finalized
-- one as stored).
CREATE FUNCTION @extschema@.msp_compute_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- (the period first: msp_price_invoice is STRICT, NULL is the last full month)
	period := msp_period(client_id, period);
	-- (a scalar subquery: (f()).summary in a query would call f once per field)
	RETURN (SELECT p.summary FROM msp_price_invoice(client_id, period) p);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compute_invoice(bigint, daterange) IS
	'the invoice of a client for a period as today''s data prices it, finalized or not';

-- Every cost pool of the period spread over its basis; a pool with no
-- unit to carry it still appears, whole, with unit NULL.
-- (PL/pgSQL: pools, shares and units are read by client_id first, each
-- share outside the query that lists the pools, so that Citus plans every
-- read on the client's shard; the allocation is arithmetic on them.)
CREATE FUNCTION @extschema@.msp_cost_allocation(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (pool_id bigint, category text, basis text, unit text, share numeric)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	minor numeric;
	segs daterange[];
	pool record;
	amount numeric;
	p_ids bigint[] := '{}';
	p_categories text[] := '{}';
	p_bases text[] := '{}';
	p_amounts numeric[] := '{}';
	u_bases text[];
	u_units text[];
BEGIN
	period := msp_period(client_id, period);
	SELECT c.minor_unit INTO minor FROM clients c WHERE c.client_id = msp_cost_allocation.client_id;
	FOR pool IN
		SELECT cp.pool_id, cp.category, cp.basis, cp.period FROM cost_pools cp
		 WHERE cp.client_id = msp_cost_allocation.client_id AND cp.period && msp_cost_allocation.period
		 ORDER BY cp.pool_id
	LOOP
		IF segs IS NULL THEN
			segs := ARRAY(SELECT s.segment FROM msp_contract_segments(client_id, period) s);
		END IF;
		amount := 0;
		FOR i IN 1..coalesce(cardinality(segs), 0) LOOP
			IF segs[i] && pool.period THEN
				amount := amount + msp_pool_share(client_id, pool.pool_id, period, segs[i]);
			END IF;
		END LOOP;
		p_ids := p_ids || pool.pool_id;
		p_categories := p_categories || pool.category;
		p_bases := p_bases || pool.basis;
		p_amounts := p_amounts || amount;
	END LOOP;
	SELECT array_agg(x.basis), array_agg(x.unit) INTO u_bases, u_units
	  FROM (SELECT DISTINCT y.basis, y.unit FROM (
			SELECT 'device' AS basis, d.name AS unit FROM devices d
			 WHERE d.client_id = msp_cost_allocation.client_id AND (d.active IS NULL OR d.active && period)
			UNION ALL
			SELECT 'seat', a.label FROM account_labels a
			 WHERE a.client_id = msp_cost_allocation.client_id AND a.kind = 'shared') y) x;
	SELECT coalesce(u_bases, '{}') || array_agg('user'::text), coalesce(u_units, '{}') || array_agg(x.unit)
	  INTO u_bases, u_units
	  FROM (SELECT DISTINCT CASE WHEN u.home_client_id = client_id THEN u.pseudonym
								 ELSE format('%s (client %s)', u.pseudonym, u.home_client_id) END AS unit
			  FROM msp_billable_users(client_id, period) u) x;
	RETURN QUERY
	WITH pools AS (SELECT * FROM unnest(p_ids, p_categories, p_bases, p_amounts) p(pool_id, category, basis, amount)),
	units AS (SELECT DISTINCT * FROM unnest(u_bases, u_units) u(basis, unit))
	SELECT pools.pool_id, pools.category, pools.basis, units.unit,
		   allocate(pools.amount, 1, minor) OVER (PARTITION BY pools.pool_id ORDER BY units.unit)
	  FROM pools LEFT JOIN units ON units.basis = pools.basis
	 ORDER BY pools.pool_id, units.unit;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_cost_allocation(bigint, daterange) IS
	'every cost pool billed in the period spread over its basis (devices, seats or users) to the cent with allocate(); unit NULL when nothing carries it';

CREATE FUNCTION @extschema@.msp_compare_models(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (model text, total numeric, users integer, devices integer,
			   per_user numeric, per_device numeric, break_even_users numeric)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	seg record;
	q segment_quantities;
	names text[] := '{per_user,per_device,per_seat,cost_plus,per_user_plus_support}';
	totals numeric[] := '{NULL,NULL,NULL,NULL,NULL}';
	n_users integer := 0;
	n_devices integer := 0;
	amount numeric;
BEGIN
	period := msp_period(client_id, period);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period);
		FOR i IN 1..cardinality(names) LOOP
			SELECT sum(l.amount) INTO amount
			  FROM msp_segment_lines(c, k, seg.segment, period, q, names[i]) l;
			IF amount IS NOT NULL THEN
				totals[i] := coalesce(totals[i], 0) + amount;
			END IF;
		END LOOP;
	END LOOP;
	n_users := msp_period_people(client_id, period);
	n_devices := msp_period_devices(client_id, period);
	FOR i IN 1..cardinality(names) LOOP
		model := names[i];
		total := totals[i];
		users := n_users;
		devices := n_devices;
		per_user := CASE WHEN n_users > 0 THEN msp_round(total / n_users, c.minor_unit) END;
		per_device := CASE WHEN n_devices > 0 THEN msp_round(total / n_devices, c.minor_unit) END;
		break_even_users := CASE WHEN model = 'per_device' AND totals[1] > 0 AND n_users > 0
								 THEN round(total / (totals[1] / n_users), 2) END;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compare_models(bigint, daterange) IS
	'per-user, per-device, per-seat, cost-plus and support-lifted totals side by side, with effective prices and the per-device break-even user count';

-- Every client's invoice for a period (NULL: each client's last full
-- month), in client order: the month's batch.  On one node, one client
-- after the other; on Citus, every shard's clients at once on the workers
-- that hold them (msp_shard_invoices), where a query calling msp_invoice
-- per client would be refused (a distributed query inside a query on a
-- shard).  The first error (a contract gap, a currency) stops the batch,
-- as it stops a single invoice.
CREATE FUNCTION @extschema@.msp_invoices(period daterange DEFAULT NULL)
RETURNS SETOF @extschema@.invoice
-- (PARALLEL RESTRICTED: on Citus it opens connections to the workers)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	parts jsonb := '[]';
BEGIN
	IF NOT msp_is_distributed('@extschema@.contracts') THEN
		-- the finalized ones as stored; the others priced from one
		-- set-based count of every client's people
		FOR r IN SELECT * FROM msp_period_people_by_client(period) LOOP
			IF (msp_finalized_invoice(r.client_id, msp_period(r.client_id, period))).invoice_id IS NOT NULL THEN
				RETURN NEXT msp_invoice(r.client_id, period);
			ELSE
				RETURN NEXT (SELECT p.summary FROM msp_price_invoice(r.client_id, msp_period(r.client_id, period), r.people) p);
			END IF;
		END LOOP;
		RETURN;
	END IF;
	-- one call per shard, over a connection per shard to the worker that
	-- holds it, all at once (master_run_on_worker, which Citus's own
	-- run_command_on_shards uses); each names one client of its shard
	FOR r IN EXECUTE
		'SELECT w.success, w.result
		   FROM (SELECT array_agg(p.nodename) AS nodes, array_agg(p.nodeport) AS ports,
						array_agg(format(''SELECT @extschema@.msp_shard_invoices(%s, %L)'', s.client_id, $1)) AS commands
				   FROM (SELECT min(c.client_id) AS client_id,
								pg_catalog.get_shard_id_for_distribution_column(''@extschema@.contracts'', c.client_id) AS shardid
						   FROM @extschema@.clients c GROUP BY 2) s
				   JOIN pg_catalog.pg_dist_shard_placement p ON p.shardid = s.shardid) x,
				pg_catalog.master_run_on_worker(x.nodes, x.ports, x.commands, true) w'
		USING period
	LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION '%', r.result
				USING ERRCODE = 'data_exception',
					  DETAIL = 'A worker could not price the invoices of one shard of clients.',
					  HINT = 'Price the client it names alone (SELECT * FROM mspbill.msp_invoice(client_id, period)) to see the whole error.';
		END IF;
		parts := parts || r.result::jsonb;
	END LOOP;
	RETURN QUERY SELECT i.* FROM jsonb_populate_recordset(NULL::invoice, parts) i ORDER BY i.client_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_invoices(daterange) IS
	'every client''s invoice for a period (default: each client''s last full month), as msp_invoice gives it; on Citus computed on the workers in parallel';
