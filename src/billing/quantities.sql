-- Quantities: what each contract segment bills, counted and prorated.

-- A cost pool's part of one contract segment, in minor units, so that the
-- parts of a pool sum to it exactly: the pool (rounded to the minor unit)
-- is split over the calendar months it touches by days, largest remainder;
-- a month's part over the month's contract segments (and the days no
-- contract covers, which are not billed) the same way.
CREATE FUNCTION @extschema@.msp_pool_share(client_id bigint, pool_id bigint, period daterange, covered daterange)
RETURNS numeric
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH p AS (
		SELECT msp_round(cp.amount, c.minor_unit) AS amount, cp.period AS pp, c.minor_unit
		  FROM cost_pools cp JOIN clients c USING (client_id)
		 WHERE cp.client_id = msp_pool_share.client_id AND cp.pool_id = msp_pool_share.pool_id),
	months AS (
		SELECT x.m0, x.share
		  FROM (SELECT m::date AS m0,
					   allocate(p.amount,
								upper(daterange(m::date, (m + interval '1 month')::date) * p.pp)
								- lower(daterange(m::date, (m + interval '1 month')::date) * p.pp),
								p.minor_unit) OVER (ORDER BY m) AS share
				  FROM p, generate_series(date_trunc('month', lower(p.pp)), upper(p.pp) - 1, interval '1 month') m) x
		 WHERE x.m0 = lower(period)),
	parts AS (
		SELECT s.segment * p.pp AS part, upper(s.segment * p.pp) - lower(s.segment * p.pp) AS days
		  FROM p, msp_contract_segments(msp_pool_share.client_id, period) s
		 WHERE s.segment && p.pp
		UNION ALL
		-- the days of the month no contract covers
		SELECT NULL, (upper(period * p.pp) - lower(period * p.pp))
					 - coalesce((SELECT sum(upper(s.segment * p.pp) - lower(s.segment * p.pp))
								   FROM msp_contract_segments(msp_pool_share.client_id, period) s
								  WHERE s.segment && p.pp), 0)
		  FROM p),
	shares AS (
		SELECT parts.part, allocate(months.share, parts.days, p.minor_unit)
							   OVER (ORDER BY lower(parts.part) NULLS LAST) AS share
		  FROM parts, months, p)
	-- no share at all (NULL) for a pool that does not exist or that the
	-- caller may not see, rather than a 0 that would answer for it
	SELECT coalesce((SELECT shares.share FROM shares WHERE shares.part = covered * p.pp), 0) FROM p;
END;
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
	period_days integer
);
COMMENT ON TYPE @extschema@.segment_quantities IS
	'what one contract segment bills: counts (people, seats, devices, licence seats), the days they cover (a unit covering the whole period counts period_days), costs, and the days the segment covers (period_days without proration)';

-- Quantities of one contract segment: how many units (the count, which
-- picks the tier) and how many days of the period they cover (the
-- quantity is that over the period's days; money is computed from the
-- days, dividing once, so that it rounds exactly).  Without proration every
-- unit covers the whole period.
CREATE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange)
RETURNS @extschema@.segment_quantities
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH k AS (
		SELECT k.*, c.time_zone,
			   upper(period) - lower(period) AS period_days,
			   CASE WHEN k.prorate THEN upper(segment) - lower(segment)
					ELSE upper(period) - lower(period) END AS covered_days,
			   (lower(segment)::timestamp AT TIME ZONE c.time_zone) AS t0,
			   (upper(segment)::timestamp AT TIME ZONE c.time_zone) AS t1
		  FROM contracts k JOIN clients c USING (client_id)
		 WHERE k.client_id = msp_segment_quantities.client_id
		   AND k.contract_id = msp_segment_quantities.contract_id),
	u AS (
		SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
								 ELSE upper(coalesce(p.active, segment) * segment)
									  - lower(coalesce(p.active, segment) * segment) END), 0) AS user_days,
			   count(*)::integer AS user_count
		  FROM k, msp_segment_users(msp_segment_quantities.client_id, msp_segment_quantities.contract_id,
									segment, false) b
		  JOIN people p ON p.client_id = b.home_client_id AND p.person_id = b.person_id),
	shared AS (
		SELECT a.account_id,
			   peak_concurrency(tstzrange(l.at, coalesce(l.ended, l.at + k.default_session))) AS peak
		  FROM k
		  JOIN logons l ON l.client_id = k.client_id AND l.at >= k.t0 AND l.at < k.t1 AND l.presence
		  JOIN accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
						 AND a.kind = 'shared' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
		 WHERE k.shared_billing IN ('seat', 'peak')
		 GROUP BY a.account_id),
	s AS (
		SELECT coalesce(sum(CASE WHEN k.shared_billing = 'peak' THEN greatest(sh.peak, 1) ELSE 1 END),
						0)::integer AS seat_count
		  FROM k, shared sh),
	d AS (
		SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN k.period_days
								 ELSE upper(coalesce(dv.active, segment) * segment)
									  - lower(coalesce(dv.active, segment) * segment) END), 0) AS device_days,
			   count(*)::integer AS device_count
		  FROM k JOIN devices dv ON dv.client_id = k.client_id AND (dv.active IS NULL OR dv.active && segment)),
	lic AS (
		SELECT coalesce(sum(lc.seats), 0)::integer AS license_count
		  FROM k, LATERAL (
			SELECT DISTINCT ON (x.sku) x.seats
			  FROM license_counts x
			 WHERE x.client_id = k.client_id AND x.as_of < upper(segment)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc),
	c AS (
		SELECT coalesce(sum(x.share), 0) AS cost,
			   coalesce(sum(x.share) FILTER (WHERE x.category = 'support'), 0) AS support_cost
		  FROM (SELECT cp.category,
					   msp_pool_share(k.client_id, cp.pool_id, msp_segment_quantities.period,
									  msp_segment_quantities.segment) AS share
				  FROM k JOIN cost_pools cp ON cp.client_id = k.client_id
										   AND cp.period && msp_segment_quantities.segment) x)
	SELECT (u.user_days, u.user_count, s.seat_count * k.covered_days, s.seat_count, d.device_days, d.device_count,
			lic.license_count * k.covered_days, lic.license_count, c.cost, c.support_cost,
			k.covered_days, k.period_days)::segment_quantities
	  FROM k, u, s, d, lic, c;
END;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange) IS
	'billable counts and prorated quantities of one contract segment';
