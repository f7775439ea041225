-- Billing: who is billable, what the contract says, and the invoice.
-- Every table carries client_id first, so that each can be distributed and
-- co-located by it (Citus); every per-client function takes client_id first.
-- Functions are STABLE, fix their search_path, and build on the C
-- aggregates (userset_agg, distinct_count, peak_concurrency) and allocate().

-- A time zone name PostgreSQL knows.  Declared IMMUTABLE so that it can
-- guard a CHECK constraint: zone names are treated as fixed once accepted.
-- PARALLEL RESTRICTED: its EXCEPTION block is a subtransaction, which a
-- parallel worker cannot start.
CREATE FUNCTION @extschema@.msp_valid_time_zone(zone text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM now() AT TIME ZONE zone;
	RETURN true;
EXCEPTION WHEN invalid_parameter_value THEN
	RETURN false;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_valid_time_zone(text) IS
	'true when PostgreSQL knows the time zone name';

CREATE TABLE @extschema@.clients (
	client_id bigint PRIMARY KEY,
	name text NOT NULL CHECK (name <> ''),
	currency char(3) NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
	minor_unit numeric NOT NULL DEFAULT 0.01 CHECK (minor_unit > 0),
	time_zone text NOT NULL DEFAULT 'UTC' CHECK (@extschema@.msp_valid_time_zone(time_zone)),
	created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.clients IS
	'clients of the MSP; the time zone decides where their days and months start';

CREATE TABLE @extschema@.contracts (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	contract_id bigint NOT NULL,
	effective daterange NOT NULL CHECK (NOT isempty(effective) AND NOT lower_inf(effective)),
	-- pricing
	model text NOT NULL
		CHECK (model IN ('per_user', 'per_device', 'per_seat', 'cost_plus', 'per_user_plus_support')),
	price_per_user numeric CHECK (price_per_user >= 0),
	price_per_device numeric CHECK (price_per_device >= 0),
	price_per_seat numeric CHECK (price_per_seat >= 0),
	markup numeric NOT NULL DEFAULT 0 CHECK (markup >= 0),
	minimum_fee numeric NOT NULL DEFAULT 0 CHECK (minimum_fee >= 0),
	minimum_quantity numeric NOT NULL DEFAULT 0 CHECK (minimum_quantity >= 0),
	tier_mode text NOT NULL DEFAULT 'volume' CHECK (tier_mode IN ('volume', 'graduated')),
	prorate boolean NOT NULL DEFAULT true,
	-- billable-user policy
	count_realms text[] NOT NULL DEFAULT '{os,m365}'
		CHECK (count_realms <@ '{os,app,m365}' AND cardinality(count_realms) > 0),
	min_active_days integer NOT NULL DEFAULT 1 CHECK (min_active_days >= 1),
	support_rule text NOT NULL DEFAULT 'sufficient'
		CHECK (support_rule IN ('none', 'sufficient', 'required')),
	shared_billing text NOT NULL DEFAULT 'seat'
		CHECK (shared_billing IN ('none', 'seat', 'peak', 'attribute')),
	attribution_window interval NOT NULL DEFAULT '15 minutes' CHECK (attribution_window >= '0'),
	default_session interval NOT NULL DEFAULT '1 hour' CHECK (default_session > '0'),
	PRIMARY KEY (client_id, contract_id),
	CHECK (model NOT IN ('per_user', 'per_user_plus_support') OR price_per_user IS NOT NULL),
	CHECK (model <> 'per_device' OR price_per_device IS NOT NULL),
	CHECK (model <> 'per_seat' OR price_per_seat IS NOT NULL),
	-- one contract in effect per day (range types have = in their GiST opclass)
	EXCLUDE USING gist (int8range(client_id, client_id, '[]') WITH =, effective WITH &&)
);
COMMENT ON TABLE @extschema@.contracts IS
	'agreed terms per client and date range: pricing model, prices, minimums and the billable-user policy';

CREATE TABLE @extschema@.contract_tiers (
	client_id bigint NOT NULL,
	contract_id bigint NOT NULL,
	from_quantity numeric NOT NULL CHECK (from_quantity >= 0),
	unit_price numeric NOT NULL CHECK (unit_price >= 0),
	PRIMARY KEY (client_id, contract_id, from_quantity),
	FOREIGN KEY (client_id, contract_id) REFERENCES @extschema@.contracts ON DELETE CASCADE
);
COMMENT ON TABLE @extschema@.contract_tiers IS
	'volume or graduated unit prices for the contract''s main quantity, from a quantity up';

CREATE TABLE @extschema@.devices (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	device_id bigint NOT NULL,
	name text NOT NULL,
	kind text NOT NULL DEFAULT 'desktop'
		CHECK (kind IN ('desktop', 'laptop', 'server', 'room', 'other')),
	active daterange CHECK (active IS NULL OR NOT isempty(active)),
	PRIMARY KEY (client_id, device_id),
	UNIQUE (client_id, name)
);
COMMENT ON TABLE @extschema@.devices IS
	'computers and rooms under management; active bounds the days a device is billed (NULL: always)';

CREATE TABLE @extschema@.people (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	person_id bigint NOT NULL,
	pseudonym text NOT NULL,
	is_technician boolean NOT NULL DEFAULT false,
	do_not_bill boolean NOT NULL DEFAULT false,
	bill_to_client_id bigint REFERENCES @extschema@.clients,
	active daterange CHECK (active IS NULL OR NOT isempty(active)),
	PRIMARY KEY (client_id, person_id),
	UNIQUE (client_id, pseudonym)
);
-- a client's invoice reads the sister clients' people it pays for
CREATE INDEX people_bill_to_idx ON @extschema@.people (bill_to_client_id) WHERE bill_to_client_id IS NOT NULL;
COMMENT ON TABLE @extschema@.people IS
	'people by pseudonym; one person may own several accounts. bill_to_client_id names a sister client that pays for them';

-- (No SET clause, so that it inlines; every name in it is qualified.)
CREATE FUNCTION @extschema@.msp_is_machine_account(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN name OPERATOR(pg_catalog.~) '\$$'
	OR pg_catalog.upper(name) OPERATOR(pg_catalog.=) ANY ('{SYSTEM,LOCAL SERVICE,NETWORK SERVICE,ANONYMOUS LOGON}'::text[])
	OR pg_catalog.upper(name) OPERATOR(pg_catalog.~) '^(DWM|UMFD)-';
COMMENT ON FUNCTION @extschema@.msp_is_machine_account(text) IS
	'Windows machine and service identities, which are never billable';

CREATE TABLE @extschema@.accounts (
	client_id bigint NOT NULL,
	account_id bigint NOT NULL,
	realm text NOT NULL CHECK (realm IN ('os', 'app', 'm365')),
	name text NOT NULL CHECK (name <> ''),
	kind text NOT NULL CHECK (kind IN ('individual', 'shared', 'service', 'unknown')),
	person_id bigint,
	application text,
	is_machine boolean GENERATED ALWAYS AS (@extschema@.msp_is_machine_account(name)) STORED,
	PRIMARY KEY (client_id, account_id),
	FOREIGN KEY (client_id) REFERENCES @extschema@.clients ON DELETE CASCADE,
	FOREIGN KEY (client_id, person_id) REFERENCES @extschema@.people,
	CHECK ((kind = 'individual') = (person_id IS NOT NULL)),
	CHECK ((realm = 'app') = (application IS NOT NULL))
);
CREATE UNIQUE INDEX accounts_name_key ON @extschema@.accounts (client_id, realm, lower(name), coalesce(application, ''));
COMMENT ON TABLE @extschema@.accounts IS
	'logon identities per realm (os, app, m365): individual (owned by a person), shared (a room or PC) or service';

-- Is the current user a member of a role (false when the role does not exist)?
CREATE FUNCTION @extschema@.msp_has_role(role_name text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role_name)
	AND pg_has_role(role_name, 'MEMBER');
COMMENT ON FUNCTION @extschema@.msp_has_role(text) IS
	'true when the current user is a member of the role; false when it does not exist';

-- May the current user see this client's rows?  Superusers and members
-- of mspbill_admin or mspbill_billing see every client; other roles see the
-- clients mapped to them in bi_client_access.
CREATE TABLE @extschema@.bi_client_access (
	role_name name NOT NULL,
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	PRIMARY KEY (role_name, client_id)
);
COMMENT ON TABLE @extschema@.bi_client_access IS
	'which clients a BI role (or login) may read; roles not listed see no client rows';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.bi_client_access', '');

CREATE FUNCTION @extschema@.msp_sees_all_clients() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)
	OR @extschema@.msp_has_role('mspbill_admin') OR @extschema@.msp_has_role('mspbill_billing');
COMMENT ON FUNCTION @extschema@.msp_sees_all_clients() IS
	'true for superusers and members of mspbill_admin or mspbill_billing';

CREATE FUNCTION @extschema@.msp_visible_clients() RETURNS bigint[]
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN ARRAY(SELECT b.client_id FROM @extschema@.bi_client_access b JOIN pg_roles r ON r.rolname = b.role_name
			  WHERE pg_has_role(r.oid, 'MEMBER'));
COMMENT ON FUNCTION @extschema@.msp_visible_clients() IS 'the clients mapped to the current user''s roles';

CREATE FUNCTION @extschema@.msp_can_see_client(client_id bigint) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN @extschema@.msp_sees_all_clients() OR client_id = ANY (@extschema@.msp_visible_clients());
COMMENT ON FUNCTION @extschema@.msp_can_see_client(bigint) IS 'may the current user read this client''s rows?';

-- May the current user see real names?  Superusers and mspbill_pii members,
-- unless mspbill.pseudonymous is on (what is stored for others to read).
CREATE FUNCTION @extschema@.msp_sees_names() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN coalesce(current_setting('mspbill.pseudonymous', true), '') <> 'on'
	AND ((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)
		 OR @extschema@.msp_has_role('mspbill_pii'));
COMMENT ON FUNCTION @extschema@.msp_sees_names() IS 'true for superusers and members of mspbill_pii';

-- Account names are personal data: a label shows the real name of shared
-- and service accounts (rooms, PCs) and, to members of mspbill_pii, of
-- everyone; others see "os account 17".  A view, so that readers who may
-- not select accounts.name still get labels (it runs with its owner's
-- rights and filters by the reader's clients itself).
CREATE VIEW @extschema@.account_labels AS
SELECT a.client_id, a.account_id, a.realm, a.kind,
	   CASE WHEN a.kind IN ('shared', 'service') OR @extschema@.msp_sees_names()
			THEN a.name
			ELSE a.realm || ' account ' || a.account_id END AS label
  FROM @extschema@.accounts a
 WHERE @extschema@.msp_can_see_client(a.client_id);
COMMENT ON VIEW @extschema@.account_labels IS
	'account names for display: real for rooms, shared PCs and service accounts, and for members of mspbill_pii; pseudonymous otherwise';

CREATE SEQUENCE @extschema@.logons_logon_id_seq;
CREATE TABLE @extschema@.logons (
	client_id bigint NOT NULL,
	logon_id bigint NOT NULL DEFAULT nextval('@extschema@.logons_logon_id_seq'),
	account_id bigint NOT NULL,
	device_id bigint,
	at timestamptz NOT NULL,
	ended timestamptz CHECK (ended >= at),
	presence boolean NOT NULL DEFAULT true,
	source text,
	source_event_id text,
	session_key text,
	PRIMARY KEY (client_id, at, logon_id),
	FOREIGN KEY (client_id, account_id) REFERENCES @extschema@.accounts,
	FOREIGN KEY (client_id, device_id) REFERENCES @extschema@.devices
) PARTITION BY RANGE (at);
CREATE TABLE @extschema@.logons_default PARTITION OF @extschema@.logons DEFAULT;
-- per-account scans read only this index (presence included) in account order
CREATE INDEX logons_account_idx ON @extschema@.logons (client_id, account_id, at) INCLUDE (presence);
CREATE INDEX logons_at_brin ON @extschema@.logons USING brin (at);
-- loading the same export twice adds nothing
CREATE UNIQUE INDEX logons_source_event_key ON @extschema@.logons (client_id, source, source_event_id, at);
CREATE INDEX logons_session_idx ON @extschema@.logons (client_id, session_key) WHERE session_key IS NOT NULL;
COMMENT ON TABLE @extschema@.logons IS
	'one row per logon (presence = counts as a person being there); partitioned by time: add months with msp_add_logon_partitions()';

CREATE TABLE @extschema@.support_contacts (
	client_id bigint NOT NULL,
	contact_id bigint NOT NULL,
	person_id bigint NOT NULL,
	at timestamptz NOT NULL,
	channel text NOT NULL DEFAULT 'phone',
	PRIMARY KEY (client_id, contact_id),
	FOREIGN KEY (client_id, person_id) REFERENCES @extschema@.people
);
CREATE INDEX support_contacts_at_idx ON @extschema@.support_contacts (client_id, at);
COMMENT ON TABLE @extschema@.support_contacts IS 'tickets and calls to the support desk, per person';

CREATE TABLE @extschema@.cost_pools (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	pool_id bigint NOT NULL,
	category text NOT NULL
		CHECK (category IN ('licensing', 'backup', 'server', 'hardware', 'support', 'other')),
	description text NOT NULL,
	amount numeric NOT NULL CHECK (amount >= 0),
	currency char(3) NOT NULL,
	period daterange NOT NULL CHECK (NOT isempty(period) AND NOT lower_inf(period) AND NOT upper_inf(period)),
	basis text NOT NULL DEFAULT 'device' CHECK (basis IN ('device', 'seat', 'user')),
	PRIMARY KEY (client_id, pool_id)
);
COMMENT ON TABLE @extschema@.cost_pools IS
	'what serving a client costs the MSP in a period, and what to spread it over (devices, seats or users)';

CREATE TABLE @extschema@.license_counts (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	sku text NOT NULL,
	seats integer NOT NULL CHECK (seats >= 0),
	unit_cost numeric CHECK (unit_cost >= 0),
	source text NOT NULL DEFAULT 'manual',
	as_of date NOT NULL,
	PRIMARY KEY (client_id, sku, source, as_of)
);
COMMENT ON TABLE @extschema@.license_counts IS
	'license seats held per SKU as synced from a marketplace (e.g. Microsoft 365 from Pax8), by date';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.clients', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.contracts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.contract_tiers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.devices', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.people', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.logons_default', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.logons_logon_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.support_contacts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.cost_pools', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.license_counts', '');

CREATE FUNCTION @extschema@.msp_add_logon_partitions(first_month date, months integer)
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
			EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', part);
			created := created + 1;
		END IF;
		m := m + interval '1 month';
	END LOOP;
	RETURN created;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_add_logon_partitions(date, integer) IS
	'creates monthly logon partitions (UTC month bounds) that do not exist yet; returns how many it created';

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
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown client %', coalesce(client_id::text, 'NULL')
			USING ERRCODE = 'no_data_found',
				  HINT = 'Add the client to mspbill.clients first.';
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
		RAISE EXCEPTION 'no contract in effect for client % in %', client_id, period
			USING ERRCODE = 'no_data_found',
				  HINT = 'Add a row to mspbill.contracts whose effective range covers the period.';
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

-- Everyone the policy counts in one contract segment, with the evidence:
-- the client's own people and the people of sister clients who name it in
-- bill_to_client_id.  Their logons and contacts come from their own
-- client's data; the payer's contract (policy) and time zone judge them.
-- Only logons and contacts inside a person's active range count.
CREATE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
											   with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH k AS (
		SELECT k.*, c.time_zone,
			   (lower(segment)::timestamp AT TIME ZONE c.time_zone) AS t0,
			   (upper(segment)::timestamp AT TIME ZONE c.time_zone) AS t1
		  FROM contracts k JOIN clients c USING (client_id)
		 WHERE k.client_id = msp_segment_users.client_id AND k.contract_id = msp_segment_users.contract_id),
	eligible AS (
		SELECT p.* FROM people p
		 WHERE p.client_id = msp_segment_users.client_id
		   AND (p.bill_to_client_id IS NULL OR p.bill_to_client_id = p.client_id)
		   AND NOT p.is_technician AND NOT p.do_not_bill
		   AND (p.active IS NULL OR p.active && segment)
		UNION ALL
		SELECT p.* FROM people p
		 WHERE p.bill_to_client_id = msp_segment_users.client_id
		   AND p.client_id <> msp_segment_users.client_id
		   AND NOT p.is_technician AND NOT p.do_not_bill
		   AND (p.active IS NULL OR p.active && segment)),
	-- presence logons in the counted realms, and application logons
	-- attributed through a shared session on the same device
	evidence AS (
		SELECT e.client_id AS home, e.person_id, l.at, a.account_id, true AS by_logon
		  FROM k
		  JOIN eligible e ON true
		  JOIN accounts a ON a.client_id = e.client_id AND a.person_id = e.person_id
						 AND a.kind = 'individual' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
		  JOIN logons l ON l.client_id = a.client_id AND l.account_id = a.account_id
					   AND l.at >= k.t0 AND l.at < k.t1 AND l.presence
		 WHERE e.active IS NULL OR e.active @> (l.at AT TIME ZONE k.time_zone)::date
		UNION ALL
		SELECT e.client_id, e.person_id, il.at, ia.account_id, false
		  FROM k
		  JOIN eligible e ON true
		  JOIN accounts ia ON ia.client_id = e.client_id AND ia.person_id = e.person_id
						  AND ia.kind = 'individual' AND NOT ia.is_machine AND ia.realm = 'app'
		  JOIN logons il ON il.client_id = ia.client_id AND il.account_id = ia.account_id
						AND il.at >= k.t0 AND il.at < k.t1 AND il.presence
		 WHERE k.shared_billing = 'attribute'
		   AND (e.active IS NULL OR e.active @> (il.at AT TIME ZONE k.time_zone)::date)
		   AND EXISTS (SELECT 1
						 FROM logons sl
						 JOIN accounts sa ON sa.client_id = sl.client_id AND sa.account_id = sl.account_id
										 AND sa.kind = 'shared' AND NOT sa.is_machine
										 AND sa.realm = ANY (k.count_realms)
						WHERE sl.client_id = il.client_id AND sl.device_id = il.device_id
						  AND sl.at >= k.t0 AND sl.at < k.t1 AND sl.presence
						  AND il.at >= sl.at - k.attribution_window
						  AND il.at <= coalesce(sl.ended, sl.at + k.default_session) + k.attribution_window)),
	seen AS (
		SELECT ev.home, ev.person_id, min(ev.at) AS first_seen, max(ev.at) AS last_seen,
			   count(DISTINCT (ev.at AT TIME ZONE k.time_zone)::date)::integer AS days_active,
			   bool_or(ev.by_logon) AS by_logon, array_agg(DISTINCT ev.account_id) AS account_ids
		  FROM evidence ev, k
		 GROUP BY ev.home, ev.person_id),
	support AS (
		SELECT e.client_id AS home, e.person_id, count(*)::integer AS contacts,
			   min(s.at) AS first_at, max(s.at) AS last_at
		  FROM k
		  JOIN eligible e ON true
		  JOIN support_contacts s ON s.client_id = e.client_id AND s.person_id = e.person_id
								 AND s.at >= k.t0 AND s.at < k.t1
		 WHERE e.active IS NULL OR e.active @> (s.at AT TIME ZONE k.time_zone)::date
		 GROUP BY e.client_id, e.person_id)
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
				THEN ARRAY(SELECT l.label FROM account_labels l
							WHERE l.client_id = e.client_id AND l.account_id = ANY (s.account_ids)
							ORDER BY l.label) END,
		   e.client_id
	  FROM k
	  JOIN eligible e ON true
	  LEFT JOIN seen s ON s.home = e.client_id AND s.person_id = e.person_id
	  LEFT JOIN support sp ON sp.home = e.client_id AND sp.person_id = e.person_id
	 WHERE CASE k.support_rule
			   WHEN 'none' THEN coalesce(s.days_active, 0) >= k.min_active_days
			   WHEN 'sufficient' THEN coalesce(s.days_active, 0) >= k.min_active_days OR sp.contacts > 0
			   ELSE coalesce(s.days_active, 0) >= k.min_active_days AND sp.contacts > 0
		   END
	 ORDER BY e.pseudonym, e.client_id;
END;
COMMENT ON FUNCTION @extschema@.msp_segment_users(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment of a period (sister clients'' people it pays for included), with the rule and evidence';

CREATE FUNCTION @extschema@.msp_billable_users(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT s.contract_id, u.*
	  FROM msp_contract_segments(client_id, msp_period(client_id, period)) s,
		   LATERAL msp_segment_users(client_id, s.contract_id, s.segment) u
	 ORDER BY lower(s.segment), u.pseudonym, u.home_client_id;
END;
COMMENT ON FUNCTION @extschema@.msp_billable_users(bigint, daterange) IS
	'every person counted on the invoice (home_client_id: the client whose person it is), with the rule that counted them, first/last seen and days active';

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

-- How a count of units is priced under the contract's tiers: the bands it
-- fills, each with its units and unit price.  A tier starts at unit
-- from_quantity (1: the first unit); units below the lowest tier cost the
-- flat price.  Volume: one band, every unit at the price of the band of the
-- last unit.  Graduated: every band the count reaches.
CREATE FUNCTION @extschema@.msp_tier_bands(client_id bigint, contract_id bigint,
											quantity numeric, flat_price numeric)
RETURNS TABLE (first_unit numeric, units numeric, unit_price numeric)
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	-- no bands for a contract that does not exist or that the caller may
	-- not see (row-level security): nothing is priced for it
	WITH mode AS (
		SELECT coalesce(k.tier_mode, 'volume') AS tier_mode FROM contracts k
		 WHERE k.client_id = msp_tier_bands.client_id AND k.contract_id = msp_tier_bands.contract_id),
	t AS (
		SELECT greatest(x.from_quantity - 1, 0) AS lo, x.unit_price
		  FROM contract_tiers x
		 WHERE x.client_id = msp_tier_bands.client_id AND x.contract_id = msp_tier_bands.contract_id),
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
	  FROM last_unit l, mode
	 WHERE mode.tier_mode = 'volume' OR quantity <= 0
	UNION ALL
	SELECT n.lo + 1, least(quantity, coalesce(n.hi, quantity)) - n.lo, n.unit_price
	  FROM nonempty n, mode
	 WHERE mode.tier_mode = 'graduated' AND quantity > n.lo
	 ORDER BY 1;
END;
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
		FOR line IN
			SELECT 0, k.contract_id,
				   format('%s: %s (cost %s, markup %s%%)%s', initcap(cp.category), cp.description,
						  cp.cost, round(k.markup * 100, 2), label),
				   1::numeric, cp.billed, cp.billed, 'cost'
			  FROM (SELECT p.*, msp_round(p.cost * (1 + k.markup), c.minor_unit) AS billed
					  FROM (SELECT x.*, msp_pool_share(c.client_id, x.pool_id, period, segment) AS cost
							  FROM cost_pools x
							 WHERE x.client_id = c.client_id AND x.period && segment) p) cp
			 ORDER BY cp.pool_id
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
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	-- msp_period: unknown client for one the caller may not see
	SELECT count(DISTINCT (u.home_client_id, u.person_id))::integer
	  FROM msp_contract_segments(client_id, msp_period(client_id, period)) s,
		   LATERAL msp_segment_users(client_id, s.contract_id, s.segment, false) u;
END;
COMMENT ON FUNCTION @extschema@.msp_period_people(bigint, daterange) IS
	'how many distinct people the contracts of a period bill';

-- Devices under management in a period: billable range overlapping it.
CREATE FUNCTION @extschema@.msp_period_devices(client_id bigint, period daterange) RETURNS integer
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	-- msp_period: unknown client for one the caller may not see (a count of
	-- 0 would answer for it); OFFSET 0 keeps the check from being planned
	-- away when no device row is visible
	SELECT count(d.client_id)::integer
	  FROM (SELECT msp_period(client_id, period) AS period OFFSET 0) p
	  LEFT JOIN devices d ON d.client_id = msp_period_devices.client_id
								 AND (d.active IS NULL OR d.active && p.period);
END;
COMMENT ON FUNCTION @extschema@.msp_period_devices(bigint, daterange) IS
	'how many devices are under management (billable range overlapping) in a period';

-- The invoice as today's data prices it (msp_invoice() reports a finalized
-- one as stored).  Each segment's quantities are computed once.
CREATE FUNCTION @extschema@.msp_compute_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
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
BEGIN
	period := msp_period(client_id, period);
	PERFORM msp_check_currency(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	inv := (c.client_id, c.name, period, NULL, 0, 0, 0, 0, 0, c.currency)::invoice;
	FOR seg IN SELECT * FROM msp_contract_segments(client_id, period) LOOP
		SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id
			AND contracts.contract_id = seg.contract_id;
		q := msp_segment_quantities(client_id, seg.contract_id, seg.segment, period);
		IF NOT k.model = ANY (models) THEN
			models := models || k.model;
		END IF;
		-- a seat billed by two contracts of the month is one seat
		inv.seats := greatest(inv.seats, q.seat_count);
		FOR line IN SELECT * FROM msp_segment_lines(c, k, seg.segment, period, q, k.model) LOOP
			inv.total := inv.total + line.amount;
			IF line.basis <> 'minimum' THEN
				inv.subtotal := inv.subtotal + line.amount;
			END IF;
		END LOOP;
	END LOOP;
	inv.users := msp_period_people(client_id, period);
	inv.devices := msp_period_devices(client_id, period);
	inv.model := array_to_string(models, '+');
	-- adjustments of earlier invoices carried by this one
	inv.total := inv.total + coalesce((SELECT sum(amount) FROM msp_adjustment_lines(client_id, period)), 0);
	inv.subtotal := msp_round(inv.subtotal, c.minor_unit);
	inv.total := msp_round(inv.total, c.minor_unit);
	RETURN inv;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_compute_invoice(bigint, daterange) IS
	'the invoice of a client for a period as today''s data prices it, finalized or not';

-- Every cost pool of the period spread over its basis; a pool with no
-- unit to carry it still appears, whole, with unit NULL.
CREATE FUNCTION @extschema@.msp_cost_allocation(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (pool_id bigint, category text, basis text, unit text, share numeric)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH p AS (SELECT msp_period(client_id, period) AS period),
	c AS (SELECT * FROM clients WHERE clients.client_id = msp_cost_allocation.client_id),
	units AS (
		SELECT 'device' AS basis, d.name AS unit FROM devices d, p
		 WHERE d.client_id = msp_cost_allocation.client_id AND (d.active IS NULL OR d.active && p.period)
		UNION ALL
		SELECT 'user', CASE WHEN u.home_client_id = msp_cost_allocation.client_id THEN u.pseudonym
							ELSE format('%s (client %s)', u.pseudonym, u.home_client_id) END
		  FROM msp_billable_users(client_id, period) u
		UNION ALL
		SELECT 'seat', a.label FROM account_labels a
		 WHERE a.client_id = msp_cost_allocation.client_id AND a.kind = 'shared'),
	pools AS (
		SELECT cp.pool_id, cp.category, cp.basis, c.minor_unit,
			   (SELECT coalesce(sum(msp_pool_share(cp.client_id, cp.pool_id, p.period, s.segment)), 0)
				  FROM msp_contract_segments(cp.client_id, p.period) s
				 WHERE s.segment && cp.period) AS amount
		  FROM p, c
		  JOIN cost_pools cp ON cp.client_id = c.client_id
		 WHERE cp.period && p.period)
	SELECT pools.pool_id, pools.category, pools.basis, units.unit,
		   allocate(pools.amount, 1, pools.minor_unit) OVER (PARTITION BY pools.pool_id ORDER BY units.unit)
	  FROM pools LEFT JOIN (SELECT DISTINCT basis, unit FROM units) units USING (basis)
	 ORDER BY pools.pool_id, units.unit;
END;
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
