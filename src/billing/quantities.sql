-- Quantities: what each contract segment bills, counted and prorated.

-- A cost pool's part of one contract segment, in minor units, so that the
-- parts of a pool sum to it exactly: the pool (rounded to the minor unit)
-- is split over the calendar months it touches by days, largest remainder;
-- a month's part over the month's contract segments (and the days no
-- contract covers, which are not billed) the same way.
-- (PL/pgSQL: the pool is read first, by client_id, and the rest is
-- arithmetic on it, so that Citus plans the one read on the client's shard.)
CREATE FUNCTION @extschema@.msp_pool_share(client_id bigint, pool_id bigint, period daterange, covered daterange)
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

CREATE TYPE @extschema@.segment_quantities AS (
	user_days numeric,
	user_count integer,
	seat_days numeric,
	seat_count integer,
	device_days numeric,
	device_count integer,
	license_days numeric,
	license_count integer,
	cost numeric,
	support_cost numeric,
	covered_days integer,
	period_days integer,
	user_segment_days numeric,
	user_homes bigint[],
	user_ids bigint[]
);
COMMENT ON TYPE @extschema@.segment_quantities IS
	'what one contract segment bills: counts (people, seats, devices, licence seats), the days they cover (a unit covering the whole period counts period_days), costs, the days the segment covers (period_days without proration), the days of the segment its people are active (prorated or not, for contract lines that prorate), and who they are (home client and person, pairwise)';

-- Quantities of one contract segment: how many units (the count, which
-- picks the tier) and how many days of the period they cover (the
-- quantity is that over the period's days; money is computed from the
-- days, dividing once, so that it rounds exactly).  Without proration every
-- unit covers the whole period.
-- (PL/pgSQL: the contract is read first and each count is one statement
-- filtered by client_id, so that Citus plans each on the client's shard;
-- the people a segment bills may live in sister clients, read per client.)
-- The people are given (user_homes, user_ids and the days of the segment
-- each is active, pairwise: what msp_segment_people gives, from one client
-- or from msp_period_people_all for every client at once).
CREATE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange,
													user_homes bigint[], user_ids bigint[], user_days integer[])
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

	-- people: the days of the segment each billed person is active (kept
	-- too: contract lines that prorate read them from here instead of
	-- counting the people again)
	q.user_count := coalesce(cardinality(user_ids), 0);
	q.user_segment_days := coalesce((SELECT sum(d) FROM unnest(user_days) d), 0);
	q.user_days := CASE WHEN k.prorate THEN q.user_segment_days ELSE q.user_count * k.period_days END;
	-- who: an invoice of two contracts counts a person billed by both once
	q.user_homes := coalesce(user_homes, '{}');
	q.user_ids := coalesce(user_ids, '{}');

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
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange, bigint[], bigint[], integer[]) IS
	'billable counts and prorated quantities of one contract segment, its people given';

-- The same, the people counted for this client alone.
CREATE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange)
RETURNS @extschema@.segment_quantities
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	homes bigint[];
	ids bigint[];
	days integer[];
BEGIN
	SELECT array_agg(b.home_client_id), array_agg(b.person_id), array_agg(b.segment_days) INTO homes, ids, days
	  FROM msp_segment_people(client_id, contract_id, segment, false) b;
	RETURN msp_segment_quantities(client_id, contract_id, segment, period, coalesce(homes, '{}'), coalesce(ids, '{}'),
								  coalesce(days, '{}'));
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange) IS
	'billable counts and prorated quantities of one contract segment';
