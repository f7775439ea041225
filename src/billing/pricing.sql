-- Pricing: tiers, minimums and models turn quantities into invoice lines.

-- How a quantity is priced under tiers given as arrays (a contract's, by
-- msp_tier_bands, or a contract line's): the bands it fills, each with its
-- units and unit price.  A tier starts at unit from_quantity (1: the first
-- unit); units below the lowest tier cost the flat price.  Volume: one
-- band, every unit at the price of the band of the last unit.  Graduated:
-- every band the count reaches.
CREATE FUNCTION @extschema@.msp_line_bands(quantity numeric, flat_price numeric, tier_mode text,
											tier_from numeric[], tier_price numeric[])
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH t AS (
		SELECT greatest(x.f - 1, 0) AS lo, x.p AS unit_price
		  FROM unnest(tier_from, tier_price) x(f, p)),
	bands AS (
		SELECT 0::numeric AS lo, (SELECT min(t.lo) FROM t) AS hi, flat_price AS unit_price
		UNION ALL
		SELECT t.lo, lead(t.lo) OVER (ORDER BY t.lo), t.unit_price FROM t),
	nonempty AS (SELECT * FROM bands b WHERE b.hi IS NULL OR b.hi > b.lo),
	last_unit AS (
		SELECT n.* FROM nonempty n
		 WHERE greatest(ceil(quantity), 1) > n.lo AND (n.hi IS NULL OR greatest(ceil(quantity), 1) <= n.hi)
		 ORDER BY n.lo DESC LIMIT 1)
	SELECT l.lo + 1, quantity, l.unit_price
	  FROM last_unit l
	 WHERE tier_mode = 'volume' OR quantity <= 0
	UNION ALL
	SELECT n.lo + 1, least(quantity, coalesce(n.hi, quantity)) - n.lo, n.unit_price
	  FROM nonempty n
	 WHERE tier_mode = 'graduated' AND quantity > n.lo
	 ORDER BY 1;
END;
COMMENT ON FUNCTION @extschema@.msp_line_bands(numeric, numeric, text, numeric[], numeric[]) IS
	'the price bands a quantity fills under tiers given as arrays (volume: one band; graduated: each band reached)';

-- How a count of units is priced under the contract's tiers (msp_line_bands).
-- (PL/pgSQL: the contract's tiers are read first, by client_id, and the
-- bands are arithmetic on them, so that Citus plans the reads on the
-- client's shard.)
CREATE FUNCTION @extschema@.msp_tier_bands(client_id bigint, contract_id bigint,
											quantity numeric, flat_price numeric)
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	mode text;
	froms numeric[];
	prices numeric[];
BEGIN
	SELECT coalesce(k.tier_mode, 'volume') INTO mode FROM contracts k
	 WHERE k.client_id = msp_tier_bands.client_id AND k.contract_id = msp_tier_bands.contract_id;
	-- no bands for a contract that does not exist or that the caller may
	-- not see (row-level security): nothing is priced for it
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT array_agg(x.from_quantity), array_agg(x.unit_price) INTO froms, prices
	  FROM contract_tiers x
	 WHERE x.client_id = msp_tier_bands.client_id AND x.contract_id = msp_tier_bands.contract_id;
	RETURN QUERY SELECT * FROM msp_line_bands(quantity, flat_price, mode, coalesce(froms, '{}'), coalesce(prices, '{}'));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_tier_bands(bigint, bigint, numeric, numeric) IS
	'the price bands a count of units fills under the contract''s tiers (volume: one band; graduated: each band reached)';

CREATE TYPE @extschema@.invoice_line AS (
	line_no integer,
	contract_id bigint,
	description text,
	quantity numeric,
	unit_price numeric,
	amount numeric,
	basis text
);
COMMENT ON TYPE @extschema@.invoice_line IS 'one line of an invoice; amount is rounded to the minor unit';

-- The main line(s) of a segment: a count of units raised to the minimum
-- quantity picks the tier; the days the units cover (at least the minimum
-- for the days the segment covers) are what is charged, spread over the
-- bands in proportion to their units.
CREATE FUNCTION @extschema@.msp_main_lines(c @extschema@.clients, k @extschema@.contracts,
											units_count integer, unit_days numeric,
											q @extschema@.segment_quantities,
											flat_price numeric, what text, basis text, label text)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH m AS (
		SELECT greatest(units_count, k.minimum_quantity) AS n,
			   greatest(unit_days, k.minimum_quantity * q.covered_days) AS qd),
	b AS (
		SELECT bd.first_unit, bd.units, bd.unit_price,
			   -- units x (days per unit) / period days, one division
			   CASE WHEN m.n > 0 THEN bd.units * m.qd ELSE 0 END AS num,
			   CASE WHEN m.n > 0 THEN m.n * q.period_days ELSE 1 END AS den,
			   count(*) OVER () AS bands, bd.first_unit + bd.units - 1 AS last_unit
		  FROM m, msp_tier_bands(c.client_id, k.contract_id, m.n, flat_price) bd)
	SELECT 0, k.contract_id,
		   what || CASE WHEN m.n > units_count THEN format(', minimum %s', trim_scale(k.minimum_quantity)) ELSE '' END
				|| CASE WHEN b.bands > 1 THEN format(', units %s to %s', trim_scale(b.first_unit),
													 trim_scale(ceil(b.last_unit))) ELSE '' END
				|| label,
		   b.num / b.den, b.unit_price, msp_round(b.num * b.unit_price / b.den, c.minor_unit), basis
	  FROM m, b
	 ORDER BY b.first_unit;
END;
COMMENT ON FUNCTION @extschema@.msp_main_lines(@extschema@.clients, @extschema@.contracts, integer, numeric, @extschema@.segment_quantities, numeric, text, text, text) IS
	'the priced line (or graduated lines) of a segment''s main quantity, with tiers and the minimum quantity';

-- The lines one contract segment bills under a pricing model, numbered
-- from 1.  Pure pricing: the quantities come in computed.
CREATE FUNCTION @extschema@.msp_segment_lines(c @extschema@.clients, k @extschema@.contracts,
											   segment daterange, period daterange,
											   q @extschema@.segment_quantities, model text)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	line invoice_line;
	n integer := 0;
	total numeric := 0;
	amount numeric;
	floor_fee numeric;
	pool record;
	cost numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	IF model IN ('per_user', 'per_user_plus_support') THEN
		IF k.price_per_user IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.user_count, q.user_days, q, k.price_per_user,
										 format('Users: %s billable', q.user_count), 'user', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
		IF q.seat_count > 0 THEN
			amount := msp_round(q.seat_days * coalesce(k.price_per_seat, k.price_per_user) / q.period_days,
								c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('Shared seats: %s%s', q.seat_count, label),
						 q.seat_days / q.period_days, coalesce(k.price_per_seat, k.price_per_user), amount,
						 'seat')::invoice_line;
			total := total + amount;
		END IF;
		IF model = 'per_user_plus_support' AND q.support_cost > 0 THEN
			amount := msp_round(q.support_cost * (1 + k.markup), c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id,
						 format('Support costs spread over %s users (%s per user)%s', q.user_count,
								CASE WHEN q.user_count > 0 THEN msp_round(amount / q.user_count, c.minor_unit)::text
									 ELSE 'n/a' END, label),
						 1::numeric, amount, amount, 'cost')::invoice_line;
			total := total + amount;
		END IF;
	ELSIF model = 'per_device' THEN
		IF k.price_per_device IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.device_count, q.device_days, q, k.price_per_device,
										 format('Devices: %s managed', q.device_count), 'device', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'per_seat' THEN
		IF k.price_per_seat IS NULL THEN RETURN; END IF;
		FOR line IN
			SELECT * FROM msp_main_lines(c, k, q.license_count, q.license_days, q, k.price_per_seat,
										 format('License seats held: %s', q.license_count), 'license', label)
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	ELSIF model = 'cost_plus' THEN
		-- each pool's share computed outside the query that lists the pools
		-- (Citus runs no query on a table from within one)
		FOR pool IN
			SELECT x.pool_id, x.category, x.description FROM cost_pools x
			 WHERE x.client_id = c.client_id AND x.period && segment
			 ORDER BY x.pool_id
		LOOP
			cost := msp_pool_share(c.client_id, pool.pool_id, period, segment);
			amount := msp_round(cost * (1 + k.markup), c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id,
						 format('%s: %s (cost %s, markup %s%%)%s', initcap(pool.category), pool.description,
								cost, round(k.markup * 100, 2), label),
						 1::numeric, amount, amount, 'cost')::invoice_line;
			total := total + amount;
		END LOOP;
	ELSIF model = 'lines' THEN
		-- priced by lines (src/billing/lines.sql): the contract's own, or
		-- the preset its model stands for
		FOR line IN
			SELECT * FROM msp_line_items(c, k, segment, period, q,
										 ARRAY(SELECT e FROM msp_effective_lines(c.client_id, k.contract_id) e))
		LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
			total := total + line.amount;
		END LOOP;
	END IF;

	floor_fee := msp_round(k.minimum_fee * q.covered_days / q.period_days, c.minor_unit);
	IF total < floor_fee THEN
		amount := floor_fee - total;
		n := n + 1;
		RETURN NEXT (n, k.contract_id, format('Minimum monthly fee top-up%s', label),
					 1::numeric, amount, amount, 'minimum')::invoice_line;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_lines(@extschema@.clients, @extschema@.contracts, daterange, daterange, @extschema@.segment_quantities, text) IS
	'the priced lines of one contract segment under a model, from its quantities';

-- Refuse to bill cost pools in another currency than the client's.
CREATE FUNCTION @extschema@.msp_check_currency(client_id bigint, period daterange) RETURNS void
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	bad record;
BEGIN
	SELECT cp.pool_id, cp.currency, c.currency AS client_currency INTO bad
	  FROM cost_pools cp JOIN clients c USING (client_id)
	 WHERE cp.client_id = client_id AND cp.period && period AND cp.currency <> c.currency
	 ORDER BY cp.pool_id LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cost pool currency does not match client % currency %', client_id, bad.client_currency
			USING ERRCODE = 'data_exception',
				  DETAIL = format('Pool %s is in %s.', bad.pool_id, bad.currency),
				  HINT = 'Convert the pool to the client''s currency before billing.';
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_check_currency(bigint, daterange) IS
	'raises an error when a cost pool of the period is not in the client''s currency';

-- Invoice lines of a period under a pricing model (NULL: the contract's own).
CREATE FUNCTION @extschema@.msp_price_lines(client_id bigint, period daterange, model text)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	seg record;
	line invoice_line;
	n integer := 0;
BEGIN
	period := msp_period(client_id, period);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		FOR line IN
			SELECT * FROM msp_segment_lines(c, k, seg.segment, period,
											msp_segment_quantities(client_id, seg.contract_id, seg.segment, period),
											coalesce(model, k.model))
		LOOP
			n := n + 1;
			line.line_no := n;
			-- shown and stored alike: four decimals at most
			line.quantity := trim_scale(round(line.quantity, 4));
			RETURN NEXT line;
		END LOOP;
	END LOOP;
	IF model IS NULL THEN
		FOR line IN SELECT * FROM msp_adjustment_lines(client_id, period) LOOP
			n := n + 1;
			line.line_no := n;
			RETURN NEXT line;
		END LOOP;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_price_lines(bigint, daterange, text) IS
	'invoice lines for a period priced under a model (NULL: each contract''s own)';
