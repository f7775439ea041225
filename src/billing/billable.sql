-- Who is billable: the contract's policy applied to logons and support
-- contacts, person by person, with the evidence.

-- Everyone the policy counts in one contract segment, with the evidence:
-- the client's own people and the people of sister clients who name it in
-- bill_to_client_id.  Their logons and contacts come from their own
-- client's data; the payer's contract (policy) and time zone judge them.
-- Only logons and contacts inside a person's active range count.
-- PL/pgSQL, one statement per home client with every table filtered by
-- client_id = that client, so that Citus plans each on one shard (it
-- cannot plan parameters of SQL functions); the contract is read first.
CREATE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
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
	-- (sister_clients: a small table, on Citus a reference table read on
	-- this node, where people of every client would be every shard)
	FOREACH home IN ARRAY ARRAY[payer] || ARRAY(SELECT s.client_id FROM sister_clients s
												 WHERE s.bill_to_client_id = payer AND s.client_id <> payer
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
