-- Who is billable: the contract's policy applied to logons and support
-- contacts, person by person, with the evidence.

-- The billing rule, one text for one client and for every client at once:
-- everyone a contract's policy counts in a segment, with the evidence: the
-- payer's own people and the people of sister clients who name it in
-- bill_to_client_id.  Their logons and contacts come from their own
-- (home) client's data; the payer's contract (policy) and time zone judge
-- them.  Only logons and contacts inside a person's active range count.
-- The query reads its segments from g, one row per (home client, payer,
-- contract, segment).  for_one_client: g is one row of parameters $1..$15
-- and every table is filtered by client_id = $1, the home client (so that
-- Citus plans it on one shard, and the plan is the one a single client
-- always had); otherwise g is every segment of unnest($1..$4) with its
-- contract ($5 with_evidence, $6 names) and the logons read are bounded by
-- $7..$8 (the earliest and latest segment bound, for partition pruning),
-- one grouped statement for every client, shaped like the raw count.
CREATE FUNCTION @extschema@.msp_segment_people_query(for_one_client boolean)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
RETURN regexp_replace(regexp_replace(regexp_replace(replace($rule$
WITH g AS NOT MATERIALIZED ({SEGMENTS}),
eligible AS (
	SELECT g.*, p.person_id, p.pseudonym, p.active
	  FROM g JOIN people p ON p.client_id = {HOME:g}
	 WHERE ((g.home = g.payer AND p.bill_to_client_id IS NULL) OR p.bill_to_client_id = g.payer)
	   AND NOT p.is_technician AND NOT p.do_not_bill
	   AND (p.active IS NULL OR p.active && g.segment)),
-- their accounts that may carry evidence, first (a logon is found by its
-- account, whichever client: the plan is the same for one and for all):
-- counted, in the counted realms; app, an application account whose
-- logons count when attributed through a shared session
person_accounts AS (
	SELECT e.payer, e.contract_id, e.home, e.person_id, e.time_zone, e.t0, e.t1, e.active, e.count_realms,
		   e.shared_billing, e.attribution_window, e.default_session, a.account_id,
		   a.realm = ANY (e.count_realms) AS counted, a.realm = 'app' AS app
	  FROM eligible e
	  JOIN accounts a ON a.client_id = {HOME:e} AND a.person_id = e.person_id
					 AND a.kind = 'individual' AND NOT a.is_machine
					 AND (a.realm = ANY (e.count_realms) OR (a.realm = 'app' AND e.shared_billing = 'attribute'))),
-- presence logons in the counted realms, and application logons
-- attributed through a shared session on the same device
evidence AS (
	SELECT e.payer, e.contract_id, e.home, e.person_id, e.time_zone, l.at, e.account_id, true AS by_logon
	  FROM person_accounts e
	  JOIN logons l ON l.client_id = {HOME:e} AND l.account_id = e.account_id
				   AND l.at >= e.t0 AND l.at < e.t1 AND l.at >= {LO} AND l.at < {HI} AND l.presence
	 WHERE e.counted AND (e.active IS NULL OR e.active @> (l.at AT TIME ZONE e.time_zone)::date)
	UNION ALL
	SELECT e.payer, e.contract_id, e.home, e.person_id, e.time_zone, il.at, e.account_id, false
	  FROM person_accounts e
	  JOIN logons il ON il.client_id = {HOME:e} AND il.account_id = e.account_id
					AND il.at >= e.t0 AND il.at < e.t1 AND il.at >= {LO} AND il.at < {HI} AND il.presence
	 WHERE e.app AND e.shared_billing = 'attribute'
	   AND (e.active IS NULL OR e.active @> (il.at AT TIME ZONE e.time_zone)::date)
	   AND EXISTS (SELECT 1
					 FROM logons sl
					 JOIN accounts sa ON sa.client_id = {HOME:e} AND sa.account_id = sl.account_id
									 AND sa.kind = 'shared' AND NOT sa.is_machine
									 AND sa.realm = ANY (e.count_realms)
					WHERE sl.client_id = {HOME:e} AND sl.device_id = il.device_id
					  AND sl.at >= e.t0 AND sl.at < e.t1 AND sl.at >= {LO} AND sl.at < {HI} AND sl.presence
					  AND il.at >= sl.at - e.attribution_window
					  AND il.at <= coalesce(sl.ended, sl.at + e.default_session) + e.attribution_window)),
seen AS (
	SELECT ev.payer, ev.contract_id, ev.home, ev.person_id, min(ev.at) AS first_seen, max(ev.at) AS last_seen,
		   count(DISTINCT (ev.at AT TIME ZONE ev.time_zone)::date)::integer AS days_active,
		   bool_or(ev.by_logon) AS by_logon, array_agg(DISTINCT ev.account_id) AS account_ids
	  FROM evidence ev
	 GROUP BY ev.payer, ev.contract_id, ev.home, ev.person_id),
support AS (
	SELECT e.payer, e.contract_id, e.home, e.person_id, count(*)::integer AS contacts,
		   min(s.at) AS first_at, max(s.at) AS last_at
	  FROM eligible e
	  JOIN support_contacts s ON s.client_id = {HOME:e} AND s.person_id = e.person_id
							 AND s.at >= e.t0 AND s.at < e.t1
	 WHERE e.active IS NULL OR e.active @> (s.at AT TIME ZONE e.time_zone)::date
	 GROUP BY e.payer, e.contract_id, e.home, e.person_id)
SELECT e.payer AS payer_id, e.contract_id, e.segment, e.home AS home_client_id, e.person_id, e.pseudonym,
	   CASE
		   WHEN s.days_active >= e.min_active_days AND sp.contacts > 0 AND e.support_rule <> 'none'
			   THEN CASE WHEN s.by_logon THEN 'logon+support' ELSE 'shared-attributed+support' END
		   WHEN s.days_active >= e.min_active_days
			   THEN CASE WHEN s.by_logon THEN 'logon' ELSE 'shared-attributed' END
		   ELSE 'support'
	   END AS rule,
	   least(s.first_seen, sp.first_at) AS first_seen, greatest(s.last_seen, sp.last_at) AS last_seen,
	   coalesce(s.days_active, 0) AS days_active, coalesce(sp.contacts, 0) AS support_contacts,
	   CASE WHEN e.with_evidence
			THEN ARRAY(SELECT x.label FROM (
						SELECT CASE WHEN l.kind IN ('shared', 'service') OR e.names THEN l.label
									ELSE l.realm || ' account ' || l.account_id END AS label
						  FROM account_labels l
						 WHERE l.client_id = {HOME:e} AND l.account_id = ANY (s.account_ids)) x
						ORDER BY x.label) END AS accounts,
	   -- the days of the segment the person is active (contract lines and
	   -- quantities that prorate read them)
	   upper(coalesce(e.active, e.segment) * e.segment) - lower(coalesce(e.active, e.segment) * e.segment) AS segment_days
  FROM eligible e
  LEFT JOIN seen s ON s.payer = e.payer AND s.contract_id = e.contract_id AND s.home = e.home AND s.person_id = e.person_id
  LEFT JOIN support sp ON sp.payer = e.payer AND sp.contract_id = e.contract_id AND sp.home = e.home
					  AND sp.person_id = e.person_id
 WHERE CASE e.support_rule
		   WHEN 'none' THEN coalesce(s.days_active, 0) >= e.min_active_days
		   WHEN 'sufficient' THEN coalesce(s.days_active, 0) >= e.min_active_days OR sp.contacts > 0
		   ELSE coalesce(s.days_active, 0) >= e.min_active_days AND sp.contacts > 0
	   END
 ORDER BY e.payer, e.contract_id, e.pseudonym, e.home
$rule$, '{SEGMENTS}',
	CASE WHEN for_one_client
		 THEN 'SELECT $1::bigint AS home, $2::bigint AS payer, $3::bigint AS contract_id, $4::daterange AS segment, '
			  '$5::timestamptz AS t0, $6::timestamptz AS t1, $7::text[] AS count_realms, $8::integer AS min_active_days, '
			  '$9::text AS support_rule, $10::text AS shared_billing, $11::interval AS attribution_window, '
			  '$12::interval AS default_session, $13::text AS time_zone, $14::boolean AS with_evidence, $15::boolean AS names'
		 ELSE 'SELECT s.home, s.payer, s.contract_id, s.segment, '
			  'lower(s.segment)::timestamp AT TIME ZONE c.time_zone AS t0, '
			  'upper(s.segment)::timestamp AT TIME ZONE c.time_zone AS t1, x.count_realms, x.min_active_days, '
			  'x.support_rule, x.shared_billing, x.attribution_window, x.default_session, c.time_zone, '
			  '$5::boolean AS with_evidence, $6::boolean AS names '
			  'FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::daterange[]) s(home, payer, contract_id, segment) '
			  'JOIN contracts x ON x.client_id = s.payer AND x.contract_id = s.contract_id '
			  'JOIN clients c ON c.client_id = s.payer' END),
	'\{HOME:([a-z]+)\}', CASE WHEN for_one_client THEN '$1' ELSE '\1.home' END, 'g'),
	'\{LO\}', CASE WHEN for_one_client THEN '$5' ELSE '$7' END, 'g'),
	'\{HI\}', CASE WHEN for_one_client THEN '$6' ELSE '$8' END, 'g');
COMMENT ON FUNCTION @extschema@.msp_segment_people_query(boolean) IS
	'the billing rule as one query text: for one client''s segment (parameters, every table filtered by client_id = $1) or for every segment of every client at once';

-- Everyone the policy counts in one contract segment (msp_segment_users),
-- with the days of the segment each is active.  PL/pgSQL, one statement
-- per home client with every table filtered by client_id = that client,
-- so that Citus plans each on one shard (it cannot plan parameters of SQL
-- functions); the contract is read first.
CREATE FUNCTION @extschema@.msp_segment_people(client_id bigint, contract_id bigint, segment daterange,
												with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint, segment_days integer)
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
	q text := 'SELECT u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, u.days_active, u.support_contacts, '
			  'u.accounts, u.home_client_id, u.segment_days FROM (' || msp_segment_people_query(true) || ') u';
	-- decided here, by this session: on Citus a sister client's labels are
	-- read on another node, whose session does not carry the caller's
	-- mspbill.pseudonymous (set by the finalizing functions)
	names boolean := msp_sees_names();
BEGIN
	SELECT x.count_realms, x.min_active_days, x.support_rule, x.shared_billing, x.attribution_window,
		   x.default_session, c.time_zone
	  INTO k
	  FROM contracts x JOIN clients c ON c.client_id = x.client_id
	 WHERE x.client_id = payer AND c.client_id = payer AND x.contract_id = msp_segment_people.contract_id;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	t0 := lower(segment)::timestamp AT TIME ZONE k.time_zone;
	t1 := upper(segment)::timestamp AT TIME ZONE k.time_zone;
	-- the payer first, then the sister clients whose people it pays for
	-- (sister_clients: a small table, on Citus a reference table read on
	-- this node, where people of every client would be every shard)
	FOREACH home IN ARRAY ARRAY[payer] || ARRAY(SELECT s.client_id FROM sister_clients s
												 WHERE s.bill_to_client_id = payer AND s.client_id <> payer
												 ORDER BY 1)
	LOOP
		RETURN QUERY EXECUTE q
			USING home, payer, contract_id, segment, t0, t1, k.count_realms, k.min_active_days, k.support_rule,
				  k.shared_billing, k.attribution_window, k.default_session, k.time_zone, with_evidence, names;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_people(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment (msp_segment_users), with the days of the segment each is active';

-- The same people as the invoice shows them.
CREATE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
											   with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	RETURN QUERY
	SELECT u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, u.days_active, u.support_contacts,
		   u.accounts, u.home_client_id
	  FROM msp_segment_people(client_id, contract_id, segment, with_evidence) u;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_segment_users(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment of a period (sister clients'' people it pays for included), with the rule and evidence';

-- Every client's people of a period in one grouped statement (the rule of
-- msp_segment_people_query over every segment at once): what
-- msp_segment_people gives for each client's contract segments.  NULL
-- period: each client's last full month; client_ids NULL: every client.
-- Contract gaps are not checked here: the pricing of each client is.
-- Without nested loops: the planner cannot estimate how many people the
-- segments (an array) hold, takes them for one row and loops over every
-- client's people and aggregates once per person (16 s at BENCH_SCALE=0.02
-- against 0.5 s); every table is read once and hashed, as the raw count
-- over the month reads them.
CREATE FUNCTION @extschema@.msp_period_people_all(period daterange DEFAULT NULL, client_ids bigint[] DEFAULT NULL,
												   with_evidence boolean DEFAULT false)
RETURNS TABLE (client_id bigint, contract_id bigint, segment daterange, person_id bigint, pseudonym text,
			   rule text, first_seen timestamptz, last_seen timestamptz, days_active integer,
			   support_contacts integer, accounts text[], home_client_id bigint, segment_days integer)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
SET enable_nestloop = off
AS $$
#variable_conflict use_variable
DECLARE
	homes bigint[];
	payers bigint[];
	contracts_ bigint[];
	segments daterange[];
	lo timestamptz;
	hi timestamptz;
BEGIN
	-- every (home, payer, contract, segment): the payer's contract segments
	-- of its period, for itself and for each sister client it pays for
	SELECT array_agg(h.home), array_agg(s.client_id), array_agg(s.contract_id), array_agg(s.segment),
		   min(lower(s.segment)::timestamp AT TIME ZONE s.time_zone),
		   max(upper(s.segment)::timestamp AT TIME ZONE s.time_zone)
	  INTO homes, payers, contracts_, segments, lo, hi
	  FROM (SELECT c.client_id, c.time_zone, k.contract_id, k.effective * msp_period(c.client_id, period) AS segment
			  FROM clients c
			  JOIN contracts k ON k.client_id = c.client_id AND k.effective && msp_period(c.client_id, period)
			 WHERE client_ids IS NULL OR c.client_id = ANY (client_ids)) s,
		   LATERAL (SELECT s.client_id
					UNION
					SELECT sc.client_id FROM sister_clients sc WHERE sc.bill_to_client_id = s.client_id) h(home);
	IF homes IS NULL THEN
		RETURN;
	END IF;
	RETURN QUERY EXECUTE
		'SELECT u.payer_id, u.contract_id, u.segment, u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen, '
		'u.days_active, u.support_contacts, u.accounts, u.home_client_id, u.segment_days FROM ('
		|| msp_segment_people_query(false) || ') u'
		USING homes, payers, contracts_, segments, with_evidence, msp_sees_names(), lo, hi;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period_people_all(daterange, bigint[], boolean) IS
	'every client''s billable people of a period (each contract segment''s, with the days of it each is active) in one set-based statement of the billing rule';

CREATE FUNCTION @extschema@.msp_billable_users(client_id bigint, period daterange DEFAULT NULL)
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
