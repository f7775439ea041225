-- Money, periods and contract segments: the calendar every price is cut by.

-- Money rounded half away from zero to the client's minor unit.
CREATE FUNCTION @extschema@.msp_round(amount numeric, minor_unit numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN round(amount / minor_unit) * minor_unit;
COMMENT ON FUNCTION @extschema@.msp_round(numeric, numeric) IS
	'amount rounded half away from zero to a whole number of minor units';

-- The part of a cost pool that falls in a range, prorated by days.
-- (No SET clause, so that it inlines; every name in it is qualified.)
CREATE FUNCTION @extschema@.msp_pool_part(amount numeric, pool_period daterange, covered daterange)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN amount OPERATOR(pg_catalog.*)
	(pg_catalog.upper(pool_period OPERATOR(pg_catalog.*) covered)
	 OPERATOR(pg_catalog.-) pg_catalog.lower(pool_period OPERATOR(pg_catalog.*) covered))
	OPERATOR(pg_catalog./) (pg_catalog.upper(pool_period) OPERATOR(pg_catalog.-) pg_catalog.lower(pool_period));
COMMENT ON FUNCTION @extschema@.msp_pool_part(numeric, daterange, daterange) IS
	'the share of a cost pool''s amount that falls in a range, prorated by days';

-- The period to bill: the one given, checked, or the last full month in the
-- client's time zone.  A billing period is one calendar month: anything
-- else would price some days twice (two finalized invoices overlapping) or
-- price a fortnight as a month.
CREATE FUNCTION @extschema@.msp_period(client_id bigint, period daterange DEFAULT NULL)
RETURNS daterange
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	today date;
	m0 date;
BEGIN
	SELECT * INTO c FROM clients WHERE clients.client_id = msp_period.client_id;
	-- A reader limited to some clients gets the same words whether the
	-- client does not exist or is another tenant's, so that nothing tells
	-- them apart; only a role that sees every client is told to add it.
	IF NOT FOUND AND msp_sees_all_clients() THEN
		RAISE EXCEPTION 'unknown client %', coalesce(client_id::text, 'NULL')
			USING ERRCODE = 'no_data_found',
				  HINT = 'Add the client to mspbill.clients first.';
	ELSIF NOT FOUND THEN
		RAISE EXCEPTION 'unknown client %', coalesce(client_id::text, 'NULL')
			USING ERRCODE = 'no_data_found',
				  HINT = 'You can read only the clients mapped to your role in mspbill.bi_client_access.';
	END IF;
	today := (now() AT TIME ZONE c.time_zone)::date;
	IF period IS NULL THEN
		RETURN daterange((date_trunc('month', today) - interval '1 month')::date,
						 date_trunc('month', today)::date);
	END IF;
	IF isempty(period) OR lower_inf(period) OR upper_inf(period) THEN
		RAISE EXCEPTION 'billing period % is empty or unbounded', period
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass a period such as daterange(''2026-10-01'', ''2026-11-01'').';
	END IF;
	IF lower(period) > today THEN
		RAISE EXCEPTION 'billing period % starts in the future', period
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Today is %s in the client''s time zone %s.', today, c.time_zone),
				  HINT = 'Bill a period that has started.';
	END IF;
	m0 := date_trunc('month', lower(period))::date;
	IF lower(period) <> m0 OR upper(period) <> (m0 + interval '1 month')::date THEN
		RAISE EXCEPTION 'billing period % is not a calendar month', period
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'An invoice bills one calendar month in the client''s time zone.',
				  HINT = format('Bill the month it starts in: daterange(%L, %L).', m0, (m0 + interval '1 month')::date);
	END IF;
	RETURN period;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period(bigint, daterange) IS
	'the checked billing period (one calendar month); by default the last full month in the client''s time zone';

-- The contracts covering a period, each clipped to it.  A gap between two
-- contracts inside the period is an error; a period that starts before the
-- first contract or ends after the last is billed for the covered days.
CREATE FUNCTION @extschema@.msp_contract_segments(client_id bigint, period daterange)
RETURNS TABLE (contract_id bigint, segment daterange)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	r record;
	prev date;
	found_any boolean := false;
BEGIN
	FOR r IN
		SELECT k.contract_id, k.effective * period AS seg
		  FROM contracts k
		 WHERE k.client_id = msp_contract_segments.client_id AND k.effective && period
		 ORDER BY lower(k.effective)
	LOOP
		IF found_any AND lower(r.seg) <> prev THEN
			RAISE EXCEPTION 'contract gap for client % from % to %', client_id, prev, lower(r.seg)
				USING ERRCODE = 'data_exception',
					  HINT = 'Extend a contract or add one so that every day of the period is covered.';
		END IF;
		found_any := true;
		prev := upper(r.seg);
		contract_id := r.contract_id;
		segment := r.seg;
		RETURN NEXT;
	END LOOP;
	IF NOT found_any THEN
		RAISE EXCEPTION 'client % has no contract in effect for %', client_id, period
			USING ERRCODE = 'no_data_found',
				  DETAIL = 'No row of mspbill.contracts for the client has an effective range that overlaps the period.',
				  HINT = format('Add one, e.g. INSERT INTO mspbill.contracts (client_id, effective, model, price_per_user) VALUES (%s, ''[%s,)'', ''per_user'', 40.00);',
								client_id, lower(period));
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_contract_segments(bigint, daterange) IS
	'the contracts in effect during a period, clipped to it; fails on gaps between contracts';

-- Local day of a timestamp in a zone.
CREATE FUNCTION @extschema@.msp_local_day(at timestamptz, zone text) RETURNS date
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN (at AT TIME ZONE zone)::date;
COMMENT ON FUNCTION @extschema@.msp_local_day(timestamptz, text) IS 'the calendar day of a timestamp in a time zone';
