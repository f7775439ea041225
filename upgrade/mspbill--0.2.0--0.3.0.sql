-- mspbill 0.2.0 -> 0.3.0.  Every change to an object of the install script
-- is repeated here; test/sh/upgrade.sh checks that an updated database
-- equals a fresh install, object by object.
\echo Use "ALTER EXTENSION mspbill UPDATE TO '0.3.0'" to load this file. \quit

-- issue 17 (Citus): the per-client functions in PL/pgSQL with every table
-- filtered by client_id (Citus plans no parameters of SQL functions), nested
-- calls hoisted, msp_valid_time_zone without a subtransaction for zone names,
-- new partitions policy in the distributed form on Citus, and msp_distribute().

CREATE OR REPLACE FUNCTION @extschema@.msp_valid_time_zone(zone text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_timezone_names n WHERE n.name = zone) THEN
		RETURN true;
	END IF;
	BEGIN
		PERFORM now() AT TIME ZONE zone;
		RETURN true;
	EXCEPTION WHEN invalid_parameter_value THEN
		RETURN false;
	END;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_valid_time_zone(text) IS
	'true when PostgreSQL knows the time zone name';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
											   with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	payer bigint := client_id;
	k record;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	-- decided here, by this session: on Citus a sister client's labels are
	-- read on another node, whose session does not carry the caller's
	-- mspbill.pseudonymous (set by the finalizing functions)
	names boolean := msp_sees_names();
BEGIN
	SELECT x.count_realms, x.min_active_days, x.support_rule, x.shared_billing, x.attribution_window,
		   x.default_session, c.time_zone
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = payer AND c.client_id = payer AND x.contract_id = msp_segment_users.contract_id;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;
	-- the payer first, then the sister clients whose people it pays for
	FOREACH home IN ARRAY ARRAY[payer] || ARRAY(SELECT DISTINCT p.client_id FROM people p
												 WHERE p.bill_to_client_id = payer AND p.client_id <> payer
												 ORDER BY 1)
	LOOP
		RETURN QUERY
		WITH eligible AS (
			SELECT p.* FROM people p
			 WHERE p.client_id = home
			   AND ((home = payer AND p.bill_to_client_id IS NULL) OR p.bill_to_client_id = payer)
			   AND NOT p.is_technician AND NOT p.do_not_bill
			   AND (p.active IS NULL OR p.active && segment)),
		-- presence logons in the counted realms, and application logons
		-- attributed through a shared session on the same device
		evidence AS (
			SELECT e.person_id, l.at, a.account_id, true AS by_logon
			  FROM eligible e
			  JOIN accounts a ON a.client_id = home AND a.person_id = e.person_id
							 AND a.kind = 'individual' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
			  JOIN logons l ON l.client_id = home AND l.account_id = a.account_id
						   AND l.at >= t0 AND l.at < t1 AND l.presence
			 WHERE e.active IS NULL OR e.active @> (l.at AT TIME ZONE k.time_zone)::date
			UNION ALL
			SELECT e.person_id, il.at, ia.account_id, false
			  FROM eligible e
			  JOIN accounts ia ON ia.client_id = home AND ia.person_id = e.person_id
							  AND ia.kind = 'individual' AND NOT ia.is_machine AND ia.realm = 'app'
			  JOIN logons il ON il.client_id = home AND il.account_id = ia.account_id
							AND il.at >= t0 AND il.at < t1 AND il.presence
			 WHERE k.shared_billing = 'attribute'
			   AND (e.active IS NULL OR e.active @> (il.at AT TIME ZONE k.time_zone)::date)
			   AND EXISTS (SELECT 1
							 FROM logons sl
							 JOIN accounts sa ON sa.client_id = home AND sa.account_id = sl.account_id
											 AND sa.kind = 'shared' AND NOT sa.is_machine
											 AND sa.realm = ANY (k.count_realms)
							WHERE sl.client_id = home AND sl.device_id = il.device_id
							  AND sl.at >= t0 AND sl.at < t1 AND sl.presence
							  AND il.at >= sl.at - k.attribution_window
							  AND il.at <= coalesce(sl.ended, sl.at + k.default_session) + k.attribution_window)),
		seen AS (
			SELECT ev.person_id, min(ev.at) AS first_seen, max(ev.at) AS last_seen,
				   count(DISTINCT (ev.at AT TIME ZONE k.time_zone)::date)::integer AS days_active,
				   bool_or(ev.by_logon) AS by_logon, array_agg(DISTINCT ev.account_id) AS account_ids
			  FROM evidence ev
			 GROUP BY ev.person_id),
		support AS (
			SELECT e.person_id, count(*)::integer AS contacts, min(s.at) AS first_at, max(s.at) AS last_at
			  FROM eligible e
			  JOIN support_contacts s ON s.client_id = home AND s.person_id = e.person_id
									 AND s.at >= t0 AND s.at < t1
			 WHERE e.active IS NULL OR e.active @> (s.at AT TIME ZONE k.time_zone)::date
			 GROUP BY e.person_id)
		SELECT e.person_id, e.pseudonym,
			   CASE
				   WHEN s.days_active >= k.min_active_days AND sp.contacts > 0 AND k.support_rule <> 'none'
					   THEN CASE WHEN s.by_logon THEN 'logon+support' ELSE 'shared-attributed+support' END
				   WHEN s.days_active >= k.min_active_days
					   THEN CASE WHEN s.by_logon THEN 'logon' ELSE 'shared-attributed' END
				   ELSE 'support'
			   END,
			   least(s.first_seen, sp.first_at), greatest(s.last_seen, sp.last_at),
			   coalesce(s.days_active, 0), coalesce(sp.contacts, 0),
			   CASE WHEN with_evidence
					THEN ARRAY(SELECT x.label FROM (
								SELECT CASE WHEN l.kind IN ('shared', 'service') OR names THEN l.label
											ELSE l.realm || ' account ' || l.account_id END AS label
								  FROM account_labels l
								 WHERE l.client_id = home AND l.account_id = ANY (s.account_ids)) x
								ORDER BY x.label) END,
			   home
		  FROM eligible e
		  LEFT JOIN seen s ON s.person_id = e.person_id
		  LEFT JOIN support sp ON sp.person_id = e.person_id
		 WHERE CASE k.support_rule
				   WHEN 'none' THEN coalesce(s.days_active, 0) >= k.min_active_days
				   WHEN 'sufficient' THEN coalesce(s.days_active, 0) >= k.min_active_days OR sp.contacts > 0
				   ELSE coalesce(s.days_active, 0) >= k.min_active_days AND sp.contacts > 0
			   END
		 ORDER BY e.pseudonym;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_users(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment of a period (sister clients'' people it pays for included), with the rule and evidence';

CREATE OR REPLACE FUNCTION @extschema@.msp_billable_users(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	period := msp_period(client_id, period);
	RETURN QUERY
	SELECT s.contract_id, u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, u.days_active,
		   u.support_contacts, u.accounts, u.home_client_id
	  FROM msp_contract_segments(client_id, period) s,
		   LATERAL msp_segment_users(client_id, s.contract_id, s.segment) u
	 ORDER BY lower(s.segment), u.pseudonym, u.home_client_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_billable_users(bigint, daterange) IS
	'every person counted on the invoice (home_client_id: the client whose person it is), with the rule that counted them, first/last seen and days active';

CREATE OR REPLACE FUNCTION @extschema@.msp_pool_share(client_id bigint, pool_id bigint, period daterange, covered daterange)
RETURNS numeric
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	p record;
	segs daterange[];
BEGIN
	SELECT msp_round(cp.amount, c.minor_unit) AS amount, cp.period AS pp, c.minor_unit INTO p
	  FROM cost_pools cp JOIN clients c ON c.client_id = cp.client_id
	 WHERE cp.client_id = msp_pool_share.client_id AND c.client_id = msp_pool_share.client_id
	   AND cp.pool_id = msp_pool_share.pool_id;
	-- no share at all (NULL) for a pool that does not exist or that the
	-- caller may not see, rather than a 0 that would answer for it
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	segs := ARRAY(SELECT s.segment FROM msp_contract_segments(client_id, period) s WHERE s.segment && p.pp);
	RETURN (
		WITH months AS (
			SELECT x.m0, x.share
			  FROM (SELECT m::date AS m0,
						   allocate(p.amount,
									upper(daterange(m::date, (m + interval '1 month')::date) * p.pp)
									- lower(daterange(m::date, (m + interval '1 month')::date) * p.pp),
									p.minor_unit) OVER (ORDER BY m) AS share
					  FROM generate_series(date_trunc('month', lower(p.pp)), upper(p.pp) - 1, interval '1 month') m) x
			 WHERE x.m0 = lower(period)),
		parts AS (
			SELECT s * p.pp AS part, upper(s * p.pp) - lower(s * p.pp) AS days
			  FROM unnest(segs) s
			UNION ALL
			-- the days of the month no contract covers
			SELECT NULL, (upper(period * p.pp) - lower(period * p.pp))
						 - coalesce((SELECT sum(upper(s * p.pp) - lower(s * p.pp)) FROM unnest(segs) s), 0)),
		shares AS (
			SELECT parts.part, allocate(months.share, parts.days, p.minor_unit)
								   OVER (ORDER BY lower(parts.part) NULLS LAST) AS share
			  FROM parts, months)
		SELECT coalesce((SELECT shares.share FROM shares WHERE shares.part = covered * p.pp), 0));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pool_share(bigint, bigint, daterange, daterange) IS
	'the part of a cost pool billed in one contract segment of a month, so that all parts sum to the pool to the cent';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange)
RETURNS @extschema@.segment_quantities
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	k record;
	q segment_quantities;
	t0 timestamptz;
	t1 timestamptz;
	home bigint;
	ids bigint[];
	homes bigint[];
	days numeric;
	n integer;
	pool record;
	share numeric;
BEGIN
	SELECT x.prorate, x.shared_billing, x.count_realms, x.default_session, c.time_zone,
		   upper(period) - lower(period) AS period_days,
		   CASE WHEN x.prorate THEN upper(segment) - lower(segment)
				ELSE upper(period) - lower(period) END AS covered_days
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = msp_segment_quantities.client_id AND c.client_id = msp_segment_quantities.client_id
	   AND x.contract_id = msp_segment_quantities.contract_id;
	-- no quantities for a contract that does not exist or that the caller
	-- may not see
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;

	-- people: the days each billed person's active range covers, read in
	-- the person's own client
	q.user_days := 0;
	q.user_count := 0;
	SELECT array_agg(b.home_client_id), array_agg(b.person_id) INTO homes, ids
	  FROM msp_segment_users(client_id, contract_id, segment, false) b;
	FOREACH home IN ARRAY ARRAY(SELECT DISTINCT h FROM unnest(homes) h ORDER BY 1) LOOP
		SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
								 ELSE upper(coalesce(p.active, segment) * segment)
									  - lower(coalesce(p.active, segment) * segment) END), 0),
			   count(*)::integer
		  INTO days, n
		  FROM people p
		 WHERE p.client_id = home
		   AND p.person_id = ANY (ARRAY(SELECT x.id FROM unnest(homes, ids) x(h, id) WHERE x.h = home));
		q.user_days := q.user_days + days;
		q.user_count := q.user_count + n;
	END LOOP;

	-- shared seats: one per shared account with presence logons, or its
	-- peak of concurrent sessions
	IF k.shared_billing IN ('seat', 'peak') THEN
		SELECT coalesce(sum(CASE WHEN k.shared_billing = 'peak' THEN greatest(sh.peak, 1) ELSE 1 END), 0)::integer
		  INTO q.seat_count
		  FROM (SELECT a.account_id,
					   peak_concurrency(tstzrange(l.at, coalesce(l.ended, l.at + k.default_session))) AS peak
				  FROM logons l
				  JOIN accounts a ON a.client_id = msp_segment_quantities.client_id AND a.account_id = l.account_id
								 AND a.kind = 'shared' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
				 WHERE l.client_id = msp_segment_quantities.client_id AND l.at >= t0 AND l.at < t1 AND l.presence
				 GROUP BY a.account_id) sh;
	ELSE
		q.seat_count := 0;
	END IF;

	SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
							 ELSE upper(coalesce(dv.active, segment) * segment)
								  - lower(coalesce(dv.active, segment) * segment) END), 0),
		   count(*)::integer
	  INTO q.device_days, q.device_count
	  FROM devices dv
	 WHERE dv.client_id = msp_segment_quantities.client_id AND (dv.active IS NULL OR dv.active && segment);

	SELECT coalesce(sum(lc.seats), 0)::integer INTO q.license_count
	  FROM (SELECT DISTINCT ON (x.sku) x.seats
			  FROM license_counts x
			 WHERE x.client_id = msp_segment_quantities.client_id AND x.as_of < upper(segment)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc;

	-- each pool's share, computed outside the query that lists the pools
	q.cost := 0;
	q.support_cost := 0;
	FOR pool IN
		SELECT cp.pool_id, cp.category FROM cost_pools cp
		 WHERE cp.client_id = msp_segment_quantities.client_id AND cp.period && segment
		 ORDER BY cp.pool_id
	LOOP
		share := msp_pool_share(client_id, pool.pool_id, period, segment);
		q.cost := q.cost + share;
		IF pool.category = 'support' THEN
			q.support_cost := q.support_cost + share;
		END IF;
	END LOOP;

	q.seat_days := q.seat_count * k.covered_days;
	q.license_days := q.license_count * k.covered_days;
	q.covered_days := k.covered_days;
	q.period_days := k.period_days;
	RETURN q;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange) IS
	'billable counts and prorated quantities of one contract segment';

CREATE OR REPLACE FUNCTION @extschema@.msp_tier_bands(client_id bigint, contract_id bigint,
											quantity numeric, flat_price numeric)
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	mode text;
	los numeric[];
	prices numeric[];
BEGIN
	SELECT coalesce(k.tier_mode, 'volume') INTO mode FROM contracts k
	 WHERE k.client_id = msp_tier_bands.client_id AND k.contract_id = msp_tier_bands.contract_id;
	-- no bands for a contract that does not exist or that the caller may
	-- not see (row-level security): nothing is priced for it
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT array_agg(greatest(x.from_quantity - 1, 0)), array_agg(x.unit_price) INTO los, prices
	  FROM contract_tiers x
	 WHERE x.client_id = msp_tier_bands.client_id AND x.contract_id = msp_tier_bands.contract_id;
	RETURN QUERY
	WITH t AS (SELECT * FROM unnest(los, prices) u(lo, unit_price)),
	-- bands (lo, hi]: units below the lowest tier, then each tier to the next
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
	 WHERE mode = 'volume' OR quantity <= 0
	UNION ALL
	SELECT n.lo + 1, least(quantity, coalesce(n.hi, quantity)) - n.lo, n.unit_price
	  FROM nonempty n
	 WHERE mode = 'graduated' AND quantity > n.lo
	 ORDER BY 1;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_tier_bands(bigint, bigint, numeric, numeric) IS
	'the price bands a count of units fills under the contract''s tiers (volume: one band; graduated: each band reached)';

CREATE OR REPLACE FUNCTION @extschema@.msp_segment_lines(c @extschema@.clients, k @extschema@.contracts,
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

CREATE OR REPLACE FUNCTION @extschema@.msp_period_people(client_id bigint, period daterange) RETURNS integer
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

CREATE OR REPLACE FUNCTION @extschema@.msp_period_devices(client_id bigint, period daterange) RETURNS integer
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

CREATE OR REPLACE FUNCTION @extschema@.msp_cost_allocation(client_id bigint, period daterange DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_adjustment_lines(client_id bigint, period daterange)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	-- PL/pgSQL, so that Citus plans the read on the client's shard
	RETURN QUERY
	SELECT (row_number() OVER (ORDER BY a.invoice_id))::integer, NULL::bigint,
		   format('Adjustment %s to invoice %s for %s to %s: %s', a.invoice_id, a.adjusts_invoice_id,
				  lower(a.period), upper(a.period) - 1, a.reason),
		   1::numeric, a.total, a.total, 'adjustment'::text
	  FROM invoices a
	 WHERE a.client_id = client_id AND a.kind = 'adjustment' AND a.apply_period = period
	 ORDER BY a.invoice_id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_adjustment_lines(bigint, daterange) IS
	'adjustment notes carried by the invoice of a period, one line each';

CREATE OR REPLACE FUNCTION @extschema@.msp_finalized_invoice(client_id bigint, period daterange)
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
	evidence jsonb;
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
	IF EXISTS (SELECT 1 FROM msp_data_quality(client_id, period) q WHERE q.gate = 'period_not_over') THEN
		today := (now() AT TIME ZONE (SELECT c.time_zone FROM clients c WHERE c.client_id = client_id))::date;
		RAISE EXCEPTION 'period % of client % is not over', period, client_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The period ends on %s; today is %s in the client''s time zone.', upper(period) - 1, today),
				  HINT = format('Finalize on or after %s; until then, preview it with SELECT * FROM mspbill.msp_invoice(%s, %L);',
								upper(period), client_id, period);
	END IF;
	failing := ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, period) q
					  WHERE NOT q.gate = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway (the override is recorded): SELECT mspbill.msp_finalize_invoice(%s, %L, %L);',
								client_id, period, failing);
	END IF;

	inv := msp_compute_invoice(client_id, period);
	-- (computed before the INSERT: Citus takes no subquery in INSERT ... VALUES)
	evidence := coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]');
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency, evidence, coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM msp_price_lines(client_id, period, NULL) l;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		evidence := (SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q
					  WHERE q.gate = ANY (override));
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override, 'findings', evidence));
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines and evidence and returns its id; finalizing again returns the same id';

CREATE OR REPLACE FUNCTION @extschema@.msp_invoice_drift(client_id bigint, period daterange DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_issue_adjustment(client_id bigint, period daterange, reason text)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_pii_audit(client_id bigint, period daterange DEFAULT NULL,
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
	WITH shared_sessions AS (
		SELECT l.logon_id, l.device_id, l.account_id, l.at AS s0,
			   coalesce(l.ended, l.at + sess) AS s1
		  FROM logons l
		  JOIN accounts a ON a.client_id = msp_pii_audit.client_id AND a.account_id = l.account_id
		 WHERE l.client_id = msp_pii_audit.client_id AND l.at >= z.t0 AND l.at < z.t1
		   AND a.kind = 'shared' AND a.realm = 'os' AND l.presence AND l.device_id IS NOT NULL),
	uses AS (
		SELECT s.logon_id, ua.application, count(*)::integer AS uses,
			   bool_or(ua.kind = 'individual') AS individual_login
		  FROM shared_sessions s
		  JOIN logons u ON u.client_id = msp_pii_audit.client_id AND u.device_id = s.device_id
					   AND u.at >= s.s0 - window_size AND u.at <= s.s1 + window_size
		  JOIN accounts ua ON ua.client_id = msp_pii_audit.client_id AND ua.account_id = u.account_id AND ua.realm = 'app'
		  JOIN applications ap ON ap.client_id = msp_pii_audit.client_id AND ap.name = ua.application AND ap.holds_pii
		 GROUP BY s.logon_id, ua.application)
	SELECT d.name, al.label, x.application, s.s0, s.s1, x.uses,
		   count(*) OVER (PARTITION BY d.name, al.label, x.application)
	  FROM uses x
	  JOIN shared_sessions s USING (logon_id)
	  JOIN devices d ON d.client_id = msp_pii_audit.client_id AND d.device_id = s.device_id
	  JOIN account_labels al ON al.client_id = msp_pii_audit.client_id AND al.account_id = s.account_id
	 WHERE NOT x.individual_login
	 ORDER BY d.name, s.s0;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_pii_audit(bigint, daterange, interval) IS
	'HIPAA check: shared-account sessions in which a PII application was used without an individual application login';

CREATE OR REPLACE FUNCTION @extschema@.msp_pii_audit_figures(client_id bigint, period daterange)
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

CREATE OR REPLACE FUNCTION @extschema@.msp_pii_audit_summary(client_id bigint, period daterange DEFAULT NULL)
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

-- The row-level security expression of a client-keyed table.  On one node
-- the checks are initplans (run once per query); Citus refuses subqueries
-- in policies of distributed tables, so there the policy calls
-- msp_can_see_client per row instead.
CREATE OR REPLACE FUNCTION @extschema@.msp_client_policy(distributed boolean) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN distributed
			THEN '@extschema@.msp_can_see_client(client_id)'
			ELSE '(SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[]))' END;
COMMENT ON FUNCTION @extschema@.msp_client_policy(boolean) IS
	'the USING expression of the client_rows policies: initplans on one node, a function call on Citus';

-- Is this table distributed by Citus?  false without Citus.
CREATE OR REPLACE FUNCTION @extschema@.msp_is_distributed(rel regclass) RETURNS boolean
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
CREATE OR REPLACE FUNCTION @extschema@.msp_distributed_functions()
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
		('@extschema@.msp_pii_audit_summary(bigint, daterange)', true)) x(fn, force);
END;
COMMENT ON FUNCTION @extschema@.msp_distributed_functions() IS
	'the per-client functions msp_distribute() registers with Citus, and whether calls in a transaction block are delegated too';

-- Run a statement on this node and every worker: msp_distribute() changes
-- the extension's tables before Citus manages them, and each worker holds
-- the extension's own copy of them (the shell tables Citus then plans
-- with), which must change alike.
CREATE OR REPLACE FUNCTION @extschema@.msp_on_all_nodes(command text) RETURNS void
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

-- Distribute the schema on a Citus coordinator.  Idempotent: what is
-- distributed already is left as it is.
CREATE OR REPLACE FUNCTION @extschema@.msp_distribute(shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ref_tables text[] := '{clients,bi_client_access}';
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
	FOR s IN
		SELECT tg.tgrelid::regclass AS rel, tg.tgname
		  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
		 WHERE c.relnamespace = '@extschema@'::regnamespace AND NOT tg.tgisinternal
		   AND tg.tgparentid = 0
	LOOP
		PERFORM @extschema@.msp_on_all_nodes(format('DROP TRIGGER %I ON %s', s.tgname, s.rel));
	END LOOP;
	FOREACH t IN ARRAY ARRAY['@extschema@.invoices', '@extschema@.invoice_items', '@extschema@.audit_log']::regclass[] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = t AND polname = 'finalized_no_update') THEN
			PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_update ON %s AS RESTRICTIVE FOR UPDATE USING (false)', t));
			PERFORM @extschema@.msp_on_all_nodes(format('CREATE POLICY finalized_no_delete ON %s AS RESTRICTIVE FOR DELETE USING (false)', t));
			PERFORM @extschema@.msp_on_all_nodes(format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t));
		END IF;
	END LOOP;

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
	FOREACH t IN ARRAY todo LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t AND a.attname = 'client_id' AND NOT a.attisdropped) THEN
			RAISE EXCEPTION 'table % has no client_id to distribute it by', t
				USING ERRCODE = 'feature_not_supported',
					  HINT = 'Every mspbill table is keyed by client_id; a table added by hand must be distributed by hand.';
		END IF;
	END LOOP;
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

	-- 7. Per-client functions run on the worker that holds the client
	FOR f IN SELECT * FROM @extschema@.msp_distributed_functions() LOOP
		EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''$1''::text, colocate_with => $2, force_delegation => $3)'
			USING f.fn, anchor::text, f.force_delegation;
		n_fn := n_fn + 1;
	END LOOP;

	RETURN format('%s reference tables, %s distributed tables, %s delegated functions', n_ref, n_dist, n_fn);
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_distribute(integer) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_distribute(integer) IS
	'on a Citus coordinator: makes clients and bi_client_access reference tables, distributes every other table by client_id (co-located), and delegates the per-client functions to the worker that holds the client';

CREATE OR REPLACE FUNCTION @extschema@.msp_add_logon_partitions(first_month date, months integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	m date := date_trunc('month', first_month);
	created integer := 0;
	part text;
BEGIN
	IF months < 1 THEN
		RAISE EXCEPTION 'months must be at least 1'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR i IN 1..months LOOP
		part := format('logons_%s', to_char(m, 'YYYY_MM'));
		IF to_regclass(format('@extschema@.%I', part)) IS NULL THEN
			EXECUTE format('CREATE TABLE @extschema@.%I PARTITION OF @extschema@.logons FOR VALUES FROM (%L) TO (%L)',
						   part, m::timestamptz, (m + interval '1 month')::timestamptz);
			-- read directly, a partition would bypass the parent's policy
			EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', part);
			-- (on Citus, the distributed form: a partition of a distributed
			-- table is distributed as it is created)
			EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING (%s)', part,
						   @extschema@.msp_client_policy(@extschema@.msp_is_distributed('@extschema@.logons')));
			created := created + 1;
		END IF;
		m := m + interval '1 month';
	END LOOP;
	RETURN created;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_add_logon_partitions(date, integer) IS
	'creates monthly logon partitions (UTC month bounds) that do not exist yet; returns how many it created';
