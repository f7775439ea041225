-- mspbill: exact per-user billing for managed-service providers.
-- Generated install scripts start with this file; the concepts follow,
-- each from the .sql file beside its C source.

\echo Use "CREATE EXTENSION mspbill" to load this file. \quit
-- userset: an exact set of bigint member ids (src/userset.c)

CREATE TYPE @extschema@.userset;

CREATE FUNCTION @extschema@.userset_in(cstring) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION @extschema@.userset_out(@extschema@.userset) RETURNS cstring
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION @extschema@.userset_recv(internal) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION @extschema@.userset_send(@extschema@.userset) RETURNS bytea
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE @extschema@.userset (
	INPUT = @extschema@.userset_in,
	OUTPUT = @extschema@.userset_out,
	RECEIVE = @extschema@.userset_recv,
	SEND = @extschema@.userset_send,
	INTERNALLENGTH = VARIABLE,
	ALIGNMENT = int4,
	STORAGE = extended
);
COMMENT ON TYPE @extschema@.userset IS
	'exact set of bigint member ids, e.g. {3,17,42}; stored sorted and varint-delta encoded';

CREATE FUNCTION @extschema@.userset_eq(@extschema@.userset, @extschema@.userset) RETURNS boolean
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_eq(@extschema@.userset, @extschema@.userset) IS
	'true when both sets have the same members';
CREATE FUNCTION @extschema@.userset_ne(@extschema@.userset, @extschema@.userset) RETURNS boolean
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_ne(@extschema@.userset, @extschema@.userset) IS
	'true when the sets differ in any member';
CREATE FUNCTION @extschema@.userset_hash(@extschema@.userset) RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_hash(@extschema@.userset) IS
	'hash of a userset, so that sets can be grouped and compared with DISTINCT';

CREATE OPERATOR @extschema@.= (
	LEFTARG = @extschema@.userset, RIGHTARG = @extschema@.userset,
	FUNCTION = @extschema@.userset_eq,
	COMMUTATOR = OPERATOR(@extschema@.=), NEGATOR = OPERATOR(@extschema@.<>),
	RESTRICT = eqsel, JOIN = eqjoinsel, HASHES
);
COMMENT ON OPERATOR @extschema@.= (@extschema@.userset, @extschema@.userset) IS 'same members';
CREATE OPERATOR @extschema@.<> (
	LEFTARG = @extschema@.userset, RIGHTARG = @extschema@.userset,
	FUNCTION = @extschema@.userset_ne,
	COMMUTATOR = OPERATOR(@extschema@.<>), NEGATOR = OPERATOR(@extschema@.=),
	RESTRICT = neqsel, JOIN = neqjoinsel
);
COMMENT ON OPERATOR @extschema@.<> (@extschema@.userset, @extschema@.userset) IS 'different members';

CREATE OPERATOR CLASS @extschema@.userset_hash_ops
	DEFAULT FOR TYPE @extschema@.userset USING hash AS
	OPERATOR 1 @extschema@.= (@extschema@.userset, @extschema@.userset),
	FUNCTION 1 @extschema@.userset_hash(@extschema@.userset);
COMMENT ON OPERATOR CLASS @extschema@.userset_hash_ops USING hash IS
	'lets GROUP BY, DISTINCT and hash joins work on userset';

CREATE FUNCTION @extschema@.userset_or(@extschema@.userset, @extschema@.userset) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_or(@extschema@.userset, @extschema@.userset) IS
	'union: members of either set';
CREATE FUNCTION @extschema@.userset_and(@extschema@.userset, @extschema@.userset) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_and(@extschema@.userset, @extschema@.userset) IS
	'intersection: members of both sets';
CREATE FUNCTION @extschema@.userset_minus(@extschema@.userset, @extschema@.userset) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_minus(@extschema@.userset, @extschema@.userset) IS
	'difference: members of the first set missing from the second (who is new, who left)';

CREATE OPERATOR @extschema@.| (
	LEFTARG = @extschema@.userset, RIGHTARG = @extschema@.userset,
	FUNCTION = @extschema@.userset_or, COMMUTATOR = OPERATOR(@extschema@.|)
);
COMMENT ON OPERATOR @extschema@.| (@extschema@.userset, @extschema@.userset) IS 'union';
CREATE OPERATOR @extschema@.& (
	LEFTARG = @extschema@.userset, RIGHTARG = @extschema@.userset,
	FUNCTION = @extschema@.userset_and, COMMUTATOR = OPERATOR(@extschema@.&)
);
COMMENT ON OPERATOR @extschema@.& (@extschema@.userset, @extschema@.userset) IS 'intersection';
CREATE OPERATOR @extschema@.- (
	LEFTARG = @extschema@.userset, RIGHTARG = @extschema@.userset,
	FUNCTION = @extschema@.userset_minus
);
COMMENT ON OPERATOR @extschema@.- (@extschema@.userset, @extschema@.userset) IS 'difference';

CREATE FUNCTION @extschema@.cardinality(@extschema@.userset) RETURNS bigint
	AS 'MODULE_PATHNAME', 'userset_cardinality' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.cardinality(@extschema@.userset) IS
	'number of members (exact, read from the header)';
CREATE FUNCTION @extschema@.userset_contains(@extschema@.userset, bigint) RETURNS boolean
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_contains(@extschema@.userset, bigint) IS
	'true when the id is a member';
CREATE FUNCTION @extschema@.userset_members(@extschema@.userset) RETURNS SETOF bigint
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_members(@extschema@.userset) IS
	'the members, ascending, one row each';
CREATE FUNCTION @extschema@.userset(bigint[]) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME', 'userset_from_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset(bigint[]) IS
	'the set of an array''s elements (NULL elements are skipped)';
CREATE FUNCTION @extschema@.userset_to_array(@extschema@.userset) RETURNS bigint[]
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_to_array(@extschema@.userset) IS
	'the members as an ascending bigint array';
CREATE CAST (bigint[] AS @extschema@.userset) WITH FUNCTION @extschema@.userset(bigint[]);
CREATE CAST (@extschema@.userset AS bigint[]) WITH FUNCTION @extschema@.userset_to_array(@extschema@.userset);
CREATE FUNCTION @extschema@.userset_text_id(text) RETURNS bigint
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_text_id(text) IS
	'the 64-bit id a text member is counted under (hash_bytes_extended, seed 0)';
CREATE FUNCTION @extschema@.userset_from_binary(bytea) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_from_binary(bytea) IS
	'the set whose binary form (userset_send) the bytes are; malformed bytes are an error';
-- Exact counting aggregates (src/userset_agg.c).  Every one is PARALLEL SAFE
-- with combine/serial/deserial functions.  Transition functions are not
-- STRICT: they skip NULL inputs themselves, as COUNT(DISTINCT) does.

CREATE FUNCTION @extschema@.userset_agg_trans(internal, bigint) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_agg_trans(internal, bigint) IS
	'transition function of userset_agg(bigint) and distinct_count(bigint)';
CREATE FUNCTION @extschema@.userset_agg_trans(internal, text) RETURNS internal
	AS 'MODULE_PATHNAME', 'userset_agg_trans_text' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_agg_trans(internal, text) IS
	'transition function of userset_agg(text) and distinct_count(text)';
CREATE FUNCTION @extschema@.userset_agg_combine(internal, internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_agg_combine(internal, internal) IS
	'combine function of userset_agg and distinct_count';
CREATE FUNCTION @extschema@.userset_agg_serialize(internal) RETURNS bytea
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_agg_serialize(internal) IS
	'serial function of userset_agg and distinct_count';
CREATE FUNCTION @extschema@.userset_agg_deserialize(bytea, internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_agg_deserialize(bytea, internal) IS
	'deserial function of userset_agg and distinct_count';
CREATE FUNCTION @extschema@.userset_agg_final(internal) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_agg_final(internal) IS
	'final function of userset_agg';
CREATE FUNCTION @extschema@.distinct_count_final(internal) RETURNS bigint
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.distinct_count_final(internal) IS
	'final function of distinct_count';

CREATE AGGREGATE @extschema@.userset_agg(bigint) (
	SFUNC = @extschema@.userset_agg_trans, STYPE = internal,
	FINALFUNC = @extschema@.userset_agg_final,
	COMBINEFUNC = @extschema@.userset_agg_combine,
	SERIALFUNC = @extschema@.userset_agg_serialize,
	DESERIALFUNC = @extschema@.userset_agg_deserialize,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.userset_agg(bigint) IS
	'exact set of the distinct non-NULL ids';
CREATE AGGREGATE @extschema@.userset_agg(text) (
	SFUNC = @extschema@.userset_agg_trans, STYPE = internal,
	FINALFUNC = @extschema@.userset_agg_final,
	COMBINEFUNC = @extschema@.userset_agg_combine,
	SERIALFUNC = @extschema@.userset_agg_serialize,
	DESERIALFUNC = @extschema@.userset_agg_deserialize,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.userset_agg(text) IS
	'set of the distinct non-NULL text ids, each as its userset_text_id()';
CREATE AGGREGATE @extschema@.distinct_count(bigint) (
	SFUNC = @extschema@.userset_agg_trans, STYPE = internal,
	FINALFUNC = @extschema@.distinct_count_final,
	COMBINEFUNC = @extschema@.userset_agg_combine,
	SERIALFUNC = @extschema@.userset_agg_serialize,
	DESERIALFUNC = @extschema@.userset_agg_deserialize,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.distinct_count(bigint) IS
	'exact COUNT(DISTINCT x), parallel';
CREATE AGGREGATE @extschema@.distinct_count(text) (
	SFUNC = @extschema@.userset_agg_trans, STYPE = internal,
	FINALFUNC = @extschema@.distinct_count_final,
	COMBINEFUNC = @extschema@.userset_agg_combine,
	SERIALFUNC = @extschema@.userset_agg_serialize,
	DESERIALFUNC = @extschema@.userset_agg_deserialize,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.distinct_count(text) IS
	'COUNT(DISTINCT x) for text ids through a 64-bit hash (see README for collision odds), parallel';

-- userset_union keeps userset itself as its state (no serial functions are
-- needed, and Citus can ship partial states as text).
CREATE FUNCTION @extschema@.userset_union_trans(@extschema@.userset, @extschema@.userset)
	RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_union_trans(@extschema@.userset, @extschema@.userset) IS
	'transition and combine function of userset_union';
CREATE AGGREGATE @extschema@.userset_union(@extschema@.userset) (
	SFUNC = @extschema@.userset_union_trans, STYPE = @extschema@.userset,
	COMBINEFUNC = @extschema@.userset_union_trans,
	INITCOND = '{}',
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.userset_union(@extschema@.userset) IS
	'union of sets, e.g. daily sets rolled up to a month; NULL sets are skipped';

CREATE FUNCTION @extschema@.userset_at_least_trans(internal, @extschema@.userset, integer)
	RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_at_least_trans(internal, @extschema@.userset, integer) IS
	'transition function of userset_at_least';
CREATE FUNCTION @extschema@.userset_at_least_combine(internal, internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_at_least_combine(internal, internal) IS
	'combine function of userset_at_least';
CREATE FUNCTION @extschema@.userset_at_least_serialize(internal) RETURNS bytea
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_at_least_serialize(internal) IS
	'serial function of userset_at_least';
CREATE FUNCTION @extschema@.userset_at_least_deserialize(bytea, internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_at_least_deserialize(bytea, internal) IS
	'deserial function of userset_at_least';
CREATE FUNCTION @extschema@.userset_at_least_final(internal) RETURNS @extschema@.userset
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.userset_at_least_final(internal) IS
	'final function of userset_at_least';
CREATE AGGREGATE @extschema@.userset_at_least(@extschema@.userset, integer) (
	SFUNC = @extschema@.userset_at_least_trans, STYPE = internal,
	FINALFUNC = @extschema@.userset_at_least_final,
	COMBINEFUNC = @extschema@.userset_at_least_combine,
	SERIALFUNC = @extschema@.userset_at_least_serialize,
	DESERIALFUNC = @extschema@.userset_at_least_deserialize,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.userset_at_least(@extschema@.userset, integer) IS
	'members present in at least n of the aggregated sets (n must be the same on every row)';
-- peak_concurrency: seats of a shared device or room (src/peak_concurrency.c)

CREATE FUNCTION @extschema@.peak_concurrency_trans(internal, tstzrange) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.peak_concurrency_trans(internal, tstzrange) IS
	'transition function of peak_concurrency';
CREATE FUNCTION @extschema@.peak_concurrency_combine(internal, internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.peak_concurrency_combine(internal, internal) IS
	'combine function of peak_concurrency';
CREATE FUNCTION @extschema@.peak_concurrency_serialize(internal) RETURNS bytea
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.peak_concurrency_serialize(internal) IS
	'serial function of peak_concurrency';
CREATE FUNCTION @extschema@.peak_concurrency_deserialize(bytea, internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.peak_concurrency_deserialize(bytea, internal) IS
	'deserial function of peak_concurrency';
CREATE FUNCTION @extschema@.peak_concurrency_final(internal) RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.peak_concurrency_final(internal) IS
	'final function of peak_concurrency';
CREATE AGGREGATE @extschema@.peak_concurrency(tstzrange) (
	SFUNC = @extschema@.peak_concurrency_trans, STYPE = internal,
	FINALFUNC = @extschema@.peak_concurrency_final,
	COMBINEFUNC = @extschema@.peak_concurrency_combine,
	SERIALFUNC = @extschema@.peak_concurrency_serialize,
	DESERIALFUNC = @extschema@.peak_concurrency_deserialize,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.peak_concurrency(tstzrange) IS
	'largest number of sessions overlapping at one instant (NULL and empty ranges ignored)';
-- allocate: split money to the minor unit (src/allocate.c)

-- Not STRICT: a NULL total gives NULL shares, but a NULL weight is an error.
CREATE FUNCTION @extschema@.allocate(total numeric, weight numeric, minor_unit numeric DEFAULT 0.01)
	RETURNS numeric
	AS 'MODULE_PATHNAME', 'allocate_window' LANGUAGE C WINDOW IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.allocate(numeric, numeric, numeric) IS
	'window function: this row''s share of total by weight, largest remainder, ties to the earlier row in ORDER BY';

CREATE FUNCTION @extschema@.allocate(total numeric, weights numeric[], minor_unit numeric DEFAULT 0.01)
	RETURNS numeric[]
	AS 'MODULE_PATHNAME', 'allocate_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.allocate(numeric, numeric[], numeric) IS
	'shares of total by weights, largest remainder, ties to the earlier element';
-- Billing: who is billable, what the contract says, and the invoice.
-- Every table carries client_id first, so that each can be distributed and
-- co-located by it (Citus); every per-client function takes client_id first.
-- Functions are STABLE, fix their search_path, and build on the C
-- aggregates (userset_agg, distinct_count, peak_concurrency) and allocate().

-- A time zone name PostgreSQL knows.  Declared IMMUTABLE so that it can
-- guard a CHECK constraint: zone names are treated as fixed once accepted.
CREATE FUNCTION @extschema@.msp_valid_time_zone(zone text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
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
RETURN ARRAY(SELECT b.client_id FROM @extschema@.bi_client_access b WHERE pg_has_role(b.role_name, 'MEMBER'));
COMMENT ON FUNCTION @extschema@.msp_visible_clients() IS 'the clients mapped to the current user''s roles';

CREATE FUNCTION @extschema@.msp_can_see_client(client_id bigint) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN @extschema@.msp_sees_all_clients() OR client_id = ANY (@extschema@.msp_visible_clients());
COMMENT ON FUNCTION @extschema@.msp_can_see_client(bigint) IS 'may the current user read this client''s rows?';

-- May the current user see real names?  Superusers and mspbill_pii members.
CREATE FUNCTION @extschema@.msp_sees_names() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)
	OR @extschema@.msp_has_role('mspbill_pii');
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
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN amount OPERATOR(pg_catalog.*)
	(pg_catalog.upper(pool_period OPERATOR(pg_catalog.*) covered)
	 OPERATOR(pg_catalog.-) pg_catalog.lower(pool_period OPERATOR(pg_catalog.*) covered))
	OPERATOR(pg_catalog./) (pg_catalog.upper(pool_period) OPERATOR(pg_catalog.-) pg_catalog.lower(pool_period));
COMMENT ON FUNCTION @extschema@.msp_pool_part(numeric, daterange, daterange) IS
	'the share of a cost pool''s amount that falls in a range, prorated by days';

-- The period to bill: the one given, checked, or the last full month in the
-- client's time zone.
CREATE FUNCTION @extschema@.msp_period(client_id bigint, period daterange DEFAULT NULL)
RETURNS daterange
LANGUAGE plpgsql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	today date;
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
	RETURN period;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_period(bigint, daterange) IS
	'the checked billing period; by default the last full month in the client''s time zone';

-- The contracts covering a period, each clipped to it.  A gap between two
-- contracts inside the period is an error; a period that starts before the
-- first contract or ends after the last is billed for the covered days.
CREATE FUNCTION @extschema@.msp_contract_segments(client_id bigint, period daterange)
RETURNS TABLE (contract_id bigint, segment daterange)
LANGUAGE plpgsql STABLE
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

-- Everyone the policy counts in one contract segment, with the evidence.
-- Logons are first reduced to one row per account (its days as a userset),
-- so the work after that is proportional to accounts, not to logons.
CREATE FUNCTION @extschema@.msp_segment_users(client_id bigint, contract_id bigint, segment daterange,
											   with_evidence boolean DEFAULT true)
RETURNS TABLE (person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[])
LANGUAGE sql STABLE
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
		   AND NOT p.is_technician AND NOT p.do_not_bill
		   AND (p.bill_to_client_id IS NULL OR p.bill_to_client_id = p.client_id)),
	-- one row per account: its logon days as a set of day numbers
	account_days AS (
		SELECT l.account_id, min(l.at) AS f, max(l.at) AS l,
			   userset_agg(((l.at AT TIME ZONE k.time_zone)::date - date '2000-01-01')::bigint) AS days
		  FROM k JOIN logons l ON l.client_id = k.client_id AND l.at >= k.t0 AND l.at < k.t1
		 WHERE l.presence
		 GROUP BY l.account_id),
	presence AS (
		SELECT a.person_id, d.f, d.l, d.days, a.account_id, true AS by_logon
		  FROM k, account_days d
		  JOIN accounts a ON a.client_id = msp_segment_users.client_id AND a.account_id = d.account_id
		 WHERE a.kind = 'individual' AND NOT a.is_machine AND a.realm = ANY (k.count_realms)
		UNION ALL
		-- shared-account sessions attributed to the individual application
		-- logons on the same device within the window
		SELECT ia.person_id, il.at, il.at,
			   userset(ARRAY[((il.at AT TIME ZONE k.time_zone)::date - date '2000-01-01')::bigint]),
			   ia.account_id, false
		  FROM k
		  JOIN logons sl ON sl.client_id = k.client_id AND sl.at >= k.t0 AND sl.at < k.t1 AND sl.presence
		  JOIN accounts sa ON sa.client_id = sl.client_id AND sa.account_id = sl.account_id
						  AND sa.kind = 'shared' AND NOT sa.is_machine
		  JOIN logons il ON il.client_id = sl.client_id AND il.device_id = sl.device_id
						AND il.at >= sl.at - k.attribution_window
						AND il.at <= coalesce(sl.ended, sl.at + k.default_session) + k.attribution_window
		  JOIN accounts ia ON ia.client_id = il.client_id AND ia.account_id = il.account_id
						  AND ia.kind = 'individual' AND ia.realm = 'app'
		 WHERE k.shared_billing = 'attribute'),
	seen AS (
		SELECT person_id, min(f) AS first_seen, max(l) AS last_seen,
			   cardinality(userset_union(days))::integer AS days_active,
			   bool_or(by_logon) AS by_logon, array_agg(DISTINCT account_id) AS account_ids
		  FROM presence GROUP BY person_id),
	support AS (
		SELECT s.person_id, count(*)::integer AS contacts, min(s.at) AS first_at, max(s.at) AS last_at
		  FROM k JOIN support_contacts s ON s.client_id = k.client_id AND s.at >= k.t0 AND s.at < k.t1
		 GROUP BY s.person_id)
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
							WHERE l.client_id = msp_segment_users.client_id AND l.account_id = ANY (s.account_ids)
							ORDER BY l.label) END
	  FROM k
	  JOIN eligible e ON true
	  LEFT JOIN seen s ON s.person_id = e.person_id
	  LEFT JOIN support sp ON sp.person_id = e.person_id
	 WHERE CASE k.support_rule
			   WHEN 'none' THEN coalesce(s.days_active, 0) >= k.min_active_days
			   WHEN 'sufficient' THEN coalesce(s.days_active, 0) >= k.min_active_days OR sp.contacts > 0
			   ELSE coalesce(s.days_active, 0) >= k.min_active_days AND sp.contacts > 0
		   END
	 ORDER BY e.pseudonym;
END;
COMMENT ON FUNCTION @extschema@.msp_segment_users(bigint, bigint, daterange, boolean) IS
	'the people one contract''s policy counts during a segment of a period, with the rule and evidence';

CREATE FUNCTION @extschema@.msp_billable_users(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[])
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT s.contract_id, u.*
	  FROM msp_contract_segments(client_id, msp_period(client_id, period)) s,
		   LATERAL msp_segment_users(client_id, s.contract_id, s.segment) u
	 ORDER BY lower(s.segment), u.pseudonym;
END;
COMMENT ON FUNCTION @extschema@.msp_billable_users(bigint, daterange) IS
	'every person counted on the invoice, with the rule that counted them, first/last seen and days active';

CREATE TYPE @extschema@.segment_quantities AS (
	users numeric,
	user_count integer,
	seats numeric,
	seat_count integer,
	devices numeric,
	device_count integer,
	license_seats numeric,
	cost numeric,
	support_cost numeric,
	fraction numeric
);
COMMENT ON TYPE @extschema@.segment_quantities IS
	'what one contract segment bills: prorated users, seats, devices, licence seats and costs';

-- Quantities of one contract segment: users, seats, devices, license seats
-- and costs, each prorated by the days it covers when the contract says so.
CREATE FUNCTION @extschema@.msp_segment_quantities(client_id bigint, contract_id bigint,
													segment daterange, period daterange)
RETURNS @extschema@.segment_quantities
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH k AS (
		SELECT k.*, c.time_zone, c.currency, c.minor_unit,
			   (upper(period) - lower(period))::numeric AS period_days,
			   (upper(segment) - lower(segment))::numeric AS segment_days,
			   (lower(segment)::timestamp AT TIME ZONE c.time_zone) AS t0,
			   (upper(segment)::timestamp AT TIME ZONE c.time_zone) AS t1
		  FROM contracts k JOIN clients c USING (client_id)
		 WHERE k.client_id = msp_segment_quantities.client_id
		   AND k.contract_id = msp_segment_quantities.contract_id),
	u AS (
		SELECT coalesce(sum(CASE WHEN k.prorate AND p.active IS NOT NULL
								 THEN (upper(p.active * segment) - lower(p.active * segment)) / k.period_days
								 WHEN k.prorate THEN k.segment_days / k.period_days
								 ELSE 1 END), 0) AS users,
			   count(*)::integer AS user_count
		  FROM k, msp_segment_users(msp_segment_quantities.client_id, msp_segment_quantities.contract_id,
									segment, false) b
		  JOIN people p ON p.client_id = msp_segment_quantities.client_id AND p.person_id = b.person_id),
	shared AS (
		SELECT a.account_id,
			   peak_concurrency(tstzrange(l.at, coalesce(l.ended, l.at + k.default_session))) AS peak
		  FROM k
		  JOIN logons l ON l.client_id = k.client_id AND l.at >= k.t0 AND l.at < k.t1 AND l.presence
		  JOIN accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
						 AND a.kind = 'shared' AND NOT a.is_machine
		 WHERE k.shared_billing IN ('seat', 'peak')
		 GROUP BY a.account_id),
	s AS (
		SELECT coalesce(sum(CASE WHEN shared.account_id IS NULL THEN 0
								 WHEN k.shared_billing = 'peak' THEN shared.peak ELSE 1 END), 0)
				   * CASE WHEN k.prorate THEN k.segment_days / k.period_days ELSE 1 END AS seats,
			   count(shared.account_id)::integer AS seat_count
		  FROM k LEFT JOIN shared ON true
		 GROUP BY k.shared_billing, k.prorate, k.segment_days, k.period_days),
	d AS (
		SELECT coalesce(sum(CASE WHEN NOT k.prorate THEN 1
								 WHEN dv.active IS NULL THEN k.segment_days / k.period_days
								 ELSE (upper(dv.active * segment) - lower(dv.active * segment)) / k.period_days
							END), 0) AS devices,
			   count(dv.device_id)::integer AS device_count
		  FROM k LEFT JOIN devices dv ON dv.client_id = k.client_id
									  AND (dv.active IS NULL OR dv.active && segment)),
	lic AS (
		SELECT coalesce(sum(lc.seats), 0) AS license_seats
		  FROM k, LATERAL (
			SELECT DISTINCT ON (x.sku) x.seats
			  FROM license_counts x
			 WHERE x.client_id = k.client_id AND x.as_of < upper(segment)
			 ORDER BY x.sku, x.as_of DESC, x.source) lc),
	c AS (
		SELECT coalesce(sum(msp_pool_part(cp.amount, cp.period, segment)), 0) AS cost,
			   coalesce(sum(msp_pool_part(cp.amount, cp.period, segment))
						FILTER (WHERE cp.category = 'support'), 0) AS support_cost
		  FROM k JOIN cost_pools cp ON cp.client_id = k.client_id AND cp.period && segment)
	SELECT (u.users, u.user_count, s.seats, s.seat_count, d.devices, d.device_count,
			lic.license_seats, c.cost, c.support_cost, k.segment_days / k.period_days)::segment_quantities
	  FROM k, u, s, d, lic, c;
END;
COMMENT ON FUNCTION @extschema@.msp_segment_quantities(bigint, bigint, daterange, daterange) IS
	'billable quantities of one contract segment, prorated by covered days';

-- The price of a quantity under the contract's tiers (or the flat price).
CREATE FUNCTION @extschema@.msp_tiered_amount(client_id bigint, contract_id bigint,
											   quantity numeric, flat_price numeric)
RETURNS numeric
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT CASE
		WHEN NOT EXISTS (SELECT 1 FROM contract_tiers t
						  WHERE t.client_id = msp_tiered_amount.client_id
							AND t.contract_id = msp_tiered_amount.contract_id)
			THEN quantity * flat_price
		WHEN (SELECT tier_mode FROM contracts k
			   WHERE k.client_id = msp_tiered_amount.client_id
				 AND k.contract_id = msp_tiered_amount.contract_id) = 'volume'
			THEN quantity * (SELECT t.unit_price FROM contract_tiers t
							  WHERE t.client_id = msp_tiered_amount.client_id
								AND t.contract_id = msp_tiered_amount.contract_id
								AND t.from_quantity <= quantity
							  ORDER BY t.from_quantity DESC LIMIT 1)
		ELSE (SELECT sum(greatest(least(quantity, coalesce(nxt, quantity)) - from_quantity, 0) * unit_price)
				FROM (SELECT t.from_quantity, t.unit_price,
							 lead(t.from_quantity) OVER (ORDER BY t.from_quantity) AS nxt
						FROM contract_tiers t
					   WHERE t.client_id = msp_tiered_amount.client_id
						 AND t.contract_id = msp_tiered_amount.contract_id) b)
	END;
END;
COMMENT ON FUNCTION @extschema@.msp_tiered_amount(bigint, bigint, numeric, numeric) IS
	'amount for a quantity: volume tiers price every unit at the reached tier, graduated tiers price each band';

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

-- The lines one contract segment bills under a pricing model, numbered
-- from 1.  Pure pricing: the quantities come in computed.
CREATE FUNCTION @extschema@.msp_segment_lines(c @extschema@.clients, k @extschema@.contracts,
											   segment daterange, period daterange,
											   q @extschema@.segment_quantities, model text)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	line invoice_line;
	n integer := 0;
	total numeric := 0;
	amount numeric;
	label text := CASE WHEN segment = period THEN ''
					   ELSE format(' (%s to %s)', lower(segment), upper(segment) - 1) END;
BEGIN
	IF model IN ('per_user', 'per_user_plus_support') THEN
		IF k.price_per_user IS NULL THEN RETURN; END IF;
		amount := msp_round(msp_tiered_amount(c.client_id, k.contract_id,
											  greatest(q.users, k.minimum_quantity), k.price_per_user), c.minor_unit);
		n := n + 1;
		RETURN NEXT (n, k.contract_id, format('Users: %s billable%s', q.user_count, label),
					 greatest(q.users, k.minimum_quantity), k.price_per_user, amount, 'user')::invoice_line;
		total := total + amount;
		IF q.seats > 0 THEN
			amount := msp_round(q.seats * coalesce(k.price_per_seat, k.price_per_user), c.minor_unit);
			n := n + 1;
			RETURN NEXT (n, k.contract_id, format('Shared seats: %s room or shared accounts%s', q.seat_count, label),
						 q.seats, coalesce(k.price_per_seat, k.price_per_user), amount, 'seat')::invoice_line;
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
		amount := msp_round(msp_tiered_amount(c.client_id, k.contract_id,
											  greatest(q.devices, k.minimum_quantity), k.price_per_device), c.minor_unit);
		n := n + 1;
		RETURN NEXT (n, k.contract_id, format('Devices: %s managed%s', q.device_count, label),
					 greatest(q.devices, k.minimum_quantity), k.price_per_device, amount, 'device')::invoice_line;
		total := total + amount;
	ELSIF model = 'per_seat' THEN
		IF k.price_per_seat IS NULL THEN RETURN; END IF;
		amount := msp_round(msp_tiered_amount(c.client_id, k.contract_id,
											  greatest(q.license_seats, k.minimum_quantity), k.price_per_seat), c.minor_unit);
		n := n + 1;
		RETURN NEXT (n, k.contract_id, format('License seats held%s', label),
					 greatest(q.license_seats, k.minimum_quantity), k.price_per_seat, amount, 'license')::invoice_line;
		total := total + amount;
	ELSIF model = 'cost_plus' THEN
		FOR line IN
			SELECT 0, k.contract_id,
				   format('%s: %s (cost %s, markup %s%%)%s', initcap(cp.category), cp.description,
						  cp.cost, round(k.markup * 100, 2), label),
				   1::numeric, cp.billed, cp.billed, 'cost'
			  FROM (SELECT p.*, msp_round(p.cost * (1 + k.markup), c.minor_unit) AS billed
					  FROM (SELECT x.*, msp_round(msp_pool_part(x.amount, x.period, segment), c.minor_unit) AS cost
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

	IF total < msp_round(k.minimum_fee * q.fraction, c.minor_unit) THEN
		amount := msp_round(k.minimum_fee * q.fraction, c.minor_unit) - total;
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
LANGUAGE plpgsql STABLE
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
LANGUAGE plpgsql STABLE
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

-- The invoice as today's data prices it (msp_invoice() reports a finalized
-- one as stored).  Each segment's quantities are computed once.
CREATE FUNCTION @extschema@.msp_compute_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
LANGUAGE plpgsql STABLE
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
		inv.users := greatest(inv.users, q.user_count);
		inv.seats := greatest(inv.seats, q.seat_count);
		inv.devices := greatest(inv.devices, q.device_count);
		FOR line IN SELECT * FROM msp_segment_lines(c, k, seg.segment, period, q, k.model) LOOP
			inv.total := inv.total + line.amount;
			IF line.basis <> 'minimum' THEN
				inv.subtotal := inv.subtotal + line.amount;
			END IF;
		END LOOP;
	END LOOP;
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

CREATE FUNCTION @extschema@.msp_cost_allocation(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (pool_id bigint, category text, basis text, unit text, share numeric)
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH p AS (SELECT msp_period(client_id, period) AS period),
	c AS (SELECT * FROM clients WHERE clients.client_id = msp_cost_allocation.client_id),
	units AS (
		SELECT 'device' AS basis, d.name AS unit FROM devices d, p
		 WHERE d.client_id = msp_cost_allocation.client_id AND (d.active IS NULL OR d.active && p.period)
		UNION ALL
		SELECT 'user', u.pseudonym FROM msp_billable_users(client_id, period) u
		UNION ALL
		SELECT 'seat', a.label FROM account_labels a
		 WHERE a.client_id = msp_cost_allocation.client_id AND a.kind = 'shared'),
	pools AS (
		SELECT cp.pool_id, cp.category, cp.basis,
			   msp_round(msp_pool_part(cp.amount, cp.period, p.period), c.minor_unit) AS amount, c.minor_unit
		  FROM p LEFT JOIN c ON true
		  JOIN cost_pools cp ON cp.client_id = msp_cost_allocation.client_id AND cp.period && p.period)
	SELECT pools.pool_id, pools.category, pools.basis, units.unit,
		   allocate(pools.amount, 1, pools.minor_unit) OVER (PARTITION BY pools.pool_id ORDER BY units.unit)
	  FROM pools JOIN (SELECT DISTINCT basis, unit FROM units) units USING (basis)
	 ORDER BY pools.pool_id, units.unit;
END;
COMMENT ON FUNCTION @extschema@.msp_cost_allocation(bigint, daterange) IS
	'every cost pool of the period spread over its basis (devices, seats or users) to the cent with allocate()';

CREATE FUNCTION @extschema@.msp_compare_models(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (model text, total numeric, users integer, devices integer,
			   per_user numeric, per_device numeric, break_even_users numeric)
LANGUAGE plpgsql STABLE
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
		n_users := greatest(n_users, q.user_count);
		n_devices := greatest(n_devices, q.device_count);
		FOR i IN 1..cardinality(names) LOOP
			SELECT sum(l.amount) INTO amount
			  FROM msp_segment_lines(c, k, seg.segment, period, q, names[i]) l;
			IF amount IS NOT NULL THEN
				totals[i] := coalesce(totals[i], 0) + amount;
			END IF;
		END LOOP;
	END LOOP;
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
-- Invoices you can stand behind: finalization, drift, adjustments, license
-- reconciliation, data-quality gates and the audit trail.
-- A finalized invoice is a fact: its rows cannot be changed or deleted by
-- anyone but a superuser, and later differences become adjustment notes
-- that reference it and ride on the next invoice.

CREATE SEQUENCE @extschema@.invoice_id_seq;
CREATE TABLE @extschema@.invoices (
	client_id bigint NOT NULL REFERENCES @extschema@.clients,
	invoice_id bigint NOT NULL DEFAULT nextval('@extschema@.invoice_id_seq'),
	kind text NOT NULL CHECK (kind IN ('invoice', 'adjustment')),
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
	finalized_at timestamptz NOT NULL DEFAULT now(),
	finalized_by name NOT NULL DEFAULT session_user,
	PRIMARY KEY (client_id, invoice_id),
	FOREIGN KEY (client_id, adjusts_invoice_id) REFERENCES @extschema@.invoices,
	CHECK ((kind = 'adjustment') = (adjusts_invoice_id IS NOT NULL)),
	CHECK ((kind = 'adjustment') = (apply_period IS NOT NULL))
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
	action text NOT NULL CHECK (action IN ('finalize', 'override', 'adjust')),
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
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT (row_number() OVER (ORDER BY a.invoice_id))::integer, NULL::bigint,
		   format('Adjustment %s to invoice %s for %s to %s: %s', a.invoice_id, a.adjusts_invoice_id,
				  lower(a.period), upper(a.period) - 1, a.reason),
		   1::numeric, a.total, a.total, 'adjustment'
	  FROM invoices a
	 WHERE a.client_id = msp_adjustment_lines.client_id AND a.kind = 'adjustment'
	   AND a.apply_period = msp_adjustment_lines.period
	 ORDER BY a.invoice_id;
END;
COMMENT ON FUNCTION @extschema@.msp_adjustment_lines(bigint, daterange) IS
	'adjustment notes carried by the invoice of a period, one line each';

-- The finalized invoice of a client and period, or NULL.
CREATE FUNCTION @extschema@.msp_finalized_invoice(client_id bigint, period daterange)
RETURNS @extschema@.invoices
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT i FROM invoices i
	 WHERE i.client_id = msp_finalized_invoice.client_id AND i.period = msp_finalized_invoice.period
	   AND i.kind = 'invoice';
END;
COMMENT ON FUNCTION @extschema@.msp_finalized_invoice(bigint, daterange) IS
	'the finalized invoice of a client and period, or NULL';

-- The same, for what only makes sense once finalized.
CREATE FUNCTION @extschema@.msp_require_finalized(client_id bigint, period daterange)
RETURNS @extschema@.invoices
LANGUAGE plpgsql STABLE
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
LANGUAGE plpgsql STABLE
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
LANGUAGE plpgsql STABLE
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
LANGUAGE plpgsql STABLE
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

CREATE FUNCTION @extschema@.msp_finalize_invoice(client_id bigint, period daterange DEFAULT NULL,
												 override text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	inv invoice;
	failing text[];
	unknown text[];
BEGIN
	period := msp_period(client_id, period);
	-- one finalization per client and period at a time, in any session
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.finalize'), hashtext(client_id::text || period::text));
	id := (msp_finalized_invoice(client_id, period)).invoice_id;
	IF id IS NOT NULL THEN
		RETURN id;
	END IF;

	unknown := ARRAY(SELECT unnest(coalesce(override, '{}'))
					 EXCEPT SELECT unnest('{period_not_over,device_silent,day_without_logons,unmapped_account,logon_outside_contract}'::text[]));
	IF cardinality(unknown) > 0 THEN
		RAISE EXCEPTION 'unknown data-quality gate %', unknown[1]
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Gates are period_not_over, device_silent, day_without_logons, unmapped_account and logon_outside_contract.';
	END IF;
	failing := ARRAY(SELECT DISTINCT q.gate FROM msp_data_quality(client_id, period) q
					  WHERE NOT q.gate = ANY (coalesce(override, '{}')) ORDER BY 1);
	IF cardinality(failing) > 0 THEN
		RAISE EXCEPTION 'data-quality gates failed for client % in %: %', client_id, period,
						array_to_string(failing, ', ')
			USING ERRCODE = 'check_violation',
				  DETAIL = 'See SELECT * FROM mspbill.msp_data_quality(client_id, period) for each finding.',
				  HINT = format('Fix the data, or finalize anyway with override => ''%s''; the override is recorded.',
								array_to_string(failing, ','));
	END IF;

	inv := msp_compute_invoice(client_id, period);
	INSERT INTO invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency,
			coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]'),
			coalesce(override, '{}'))
	RETURNING invoice_id INTO id;
	INSERT INTO invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM msp_price_lines(client_id, period, NULL) l;
	INSERT INTO audit_log (client_id, action, invoice_id, detail)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total));
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		INSERT INTO audit_log (client_id, action, invoice_id, detail)
		VALUES (client_id, 'override', id, jsonb_build_object('gates', override,
				'findings', (SELECT jsonb_agg(to_jsonb(q)) FROM msp_data_quality(client_id, period) q
							  WHERE q.gate = ANY (override))));
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]) IS
	'stores the invoice of a period with its lines and evidence and returns its id; finalizing again returns the same id';

-- What changed since an invoice was finalized, line by line (lines are
-- matched by contract and basis; earlier adjustments count as billed).
CREATE FUNCTION @extschema@.msp_invoice_drift(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, basis text, description text, billed_quantity numeric,
			   current_quantity numeric, billed numeric, current numeric, difference numeric)
LANGUAGE plpgsql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
BEGIN
	period := msp_period(client_id, period);
	id := (msp_require_finalized(client_id, period)).invoice_id;
	RETURN QUERY
	WITH billed AS (
		SELECT it.contract_id, it.basis, min(it.description) FILTER (WHERE i.kind = 'invoice') AS description,
			   sum(it.quantity) FILTER (WHERE i.kind = 'invoice') AS quantity, sum(it.amount) AS amount
		  FROM invoices i JOIN invoice_items it ON it.client_id = i.client_id AND it.invoice_id = i.invoice_id
		 WHERE i.client_id = client_id AND (i.invoice_id = id OR i.adjusts_invoice_id = id)
		   AND it.basis <> 'adjustment'
		 GROUP BY it.contract_id, it.basis),
	now_ AS (
		SELECT l.contract_id, l.basis, min(l.description) AS description, sum(l.quantity) AS quantity,
			   sum(l.amount) AS amount
		  FROM msp_price_lines(client_id, period, NULL) l
		 WHERE l.basis <> 'adjustment'
		 GROUP BY l.contract_id, l.basis)
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
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	id bigint;
	original invoices;
	carrier daterange;
	total numeric;
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
	INSERT INTO invoices (client_id, kind, period, adjusts_invoice_id, apply_period, reason, total, currency)
	VALUES (client_id, 'adjustment', period, original.invoice_id, carrier, reason, total, original.currency)
	RETURNING invoice_id INTO id;
	INSERT INTO invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, row_number() OVER (ORDER BY d.contract_id, d.basis), d.contract_id,
		   format('%s (billed %s, now %s)', d.description, d.billed, d.current),
		   d.current_quantity, NULL, d.difference, d.basis
	  FROM msp_invoice_drift(client_id, period) d WHERE d.difference <> 0;
	INSERT INTO audit_log (client_id, action, invoice_id, detail)
	VALUES (client_id, 'adjust', id, jsonb_build_object('adjusts', original.invoice_id, 'total', total,
														'reason', reason, 'carried_by', carrier::text));
	RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_issue_adjustment(bigint, daterange, text) IS
	'turns the drift of a finalized invoice into a credit or debit note that references it; the next invoice carries it';

CREATE FUNCTION @extschema@.msp_reconcile_licenses(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (category text, sku text, subject text, quantity numeric, amount numeric, note text)
LANGUAGE plpgsql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	active_ids bigint[];
	active integer;
	billed numeric;
	seats numeric;
	seat_cost numeric;
BEGIN
	period := msp_period(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.effective @> (upper(period) - 1);
	active_ids := ARRAY(SELECT DISTINCT u.person_id FROM msp_billable_users(client_id, period) u);
	active := cardinality(active_ids);
	SELECT coalesce(sum(l.quantity), 0) INTO billed FROM msp_invoice_lines(client_id, period) l WHERE l.basis = 'user';

	-- seats held per SKU (latest count before the period ends, per source)
	RETURN QUERY
	SELECT 'seats_held', lc.sku, NULL::text, lc.seats::numeric, lc.seats * lc.unit_cost,
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
	SELECT 'active_unlicensed', NULL::text, a.pseudonym, 1::numeric, seat_cost,
		   'Active in the period but holds no Microsoft 365 account: license them (or record the account).'
	  FROM people a
	 WHERE a.client_id = client_id AND a.person_id = ANY (active_ids)
	   AND NOT EXISTS (SELECT 1 FROM accounts x WHERE x.client_id = client_id AND x.person_id = a.person_id
						  AND x.realm = 'm365')
	 ORDER BY a.pseudonym;
	-- licensed people who did not work: seats to reclaim
	RETURN QUERY
	SELECT 'licensed_inactive', NULL::text, l.label, 1::numeric, seat_cost,
		   'Holds a Microsoft 365 account but was not active in the period: a seat to reclaim.'
	  FROM accounts x JOIN account_labels l USING (client_id, account_id)
	 WHERE x.client_id = client_id AND x.realm = 'm365' AND x.kind = 'individual'
	   AND NOT x.person_id = ANY (active_ids)
	 ORDER BY l.label;
	IF seats IS NOT NULL AND active > seats THEN
		RETURN QUERY SELECT 'seat_shortfall', NULL::text, NULL::text, (active - seats)::numeric,
							(active - seats) * seat_cost,
							format('%s people active but only %s seats held.', active, seats);
	END IF;
	IF billed < active AND k.model IN ('per_user', 'per_user_plus_support') THEN
		RETURN QUERY SELECT 'unbilled_users', NULL::text, NULL::text, active - billed,
							msp_round((active - billed) * k.price_per_user, c.minor_unit),
							format('%s people active, %s billed.', active, billed);
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_reconcile_licenses(bigint, daterange) IS
	'three-way license reconciliation: people active by logon, seats held per SKU, quantities billed, and the money at stake';
-- Loaders for real logon sources: Windows Security events (NXLog or
-- Winlogbeat JSON lines), Microsoft Entra ID sign-ins (Graph JSON lines)
-- and EMR/EHR access audits (CSV).  Each source is COPYed into its staging
-- table; its loader turns the client's staged rows into accounts, devices
-- and logons in one set-based pass, sends what it cannot use to
-- load_rejects with the reason and the raw record, and empties the stage.
-- Loading the same export twice adds nothing (source event ids are unique).
-- Staged rows take their client_id from the setting mspbill.client_id, so
-- that a plain COPY works:  SET mspbill.client_id = 7; COPY ... (raw) ...

-- The client staged rows belong to: the mspbill.client_id setting.
CREATE FUNCTION @extschema@.msp_staging_client() RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v text := current_setting('mspbill.client_id', true);
BEGIN
	IF coalesce(v, '') = '' THEN
		RAISE EXCEPTION 'no client for staged rows'
			USING ERRCODE = 'not_null_violation',
				  HINT = 'SET mspbill.client_id = <client id> before COPY, or give client_id explicitly.';
	END IF;
	RETURN v::bigint;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_staging_client() IS
	'the client_id that staged rows default to: the setting mspbill.client_id';

CREATE TABLE @extschema@.windows_event_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.windows_event_staging IS
	'one Windows event per row, as JSON text: COPY a JSON-lines export here, then call msp_load_windows_events()';

CREATE TABLE @extschema@.entra_signin_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	raw text NOT NULL
);
COMMENT ON TABLE @extschema@.entra_signin_staging IS
	'one Entra ID sign-in per row, as JSON text (Graph signIn objects): then call msp_load_entra_signins()';

CREATE TABLE @extschema@.emr_audit_staging (
	client_id bigint NOT NULL DEFAULT @extschema@.msp_staging_client(),
	line_no bigserial,
	user_name text,
	workstation text,
	event_time text,
	action text,
	event_id text,
	application text NOT NULL DEFAULT 'EMR'
);
COMMENT ON TABLE @extschema@.emr_audit_staging IS
	'EMR/EHR access audit rows (user, workstation, time, action, event id): COPY a CSV here, then call msp_load_emr_audit()';

CREATE TABLE @extschema@.load_rejects (
	client_id bigint NOT NULL,
	source text NOT NULL,
	line_no bigint,
	raw text,
	reason text NOT NULL,
	rejected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX load_rejects_client_idx ON @extschema@.load_rejects (client_id, rejected_at);
COMMENT ON TABLE @extschema@.load_rejects IS 'records a loader could not use, with the reason and the raw record';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.load_rejects', '');

-- The wanted top-level fields of a JSON object in one pass (src/json_fields.c).
CREATE FUNCTION @extschema@.msp_json_fields(doc text, keys text[]) RETURNS text[]
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.msp_json_fields(text, text[]) IS
	'the values of the given top-level keys of a JSON object (strings unescaped, nested values as JSON text); NULL when the text is not a JSON object';

-- The text parsed as jsonb, or NULL when it is not JSON.
CREATE FUNCTION @extschema@.msp_try_jsonb(raw text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN raw::jsonb;
EXCEPTION WHEN invalid_text_representation OR untranslatable_character OR numeric_value_out_of_range THEN
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_try_jsonb(text) IS
	'the text as jsonb, or NULL when it is not valid JSON (or holds a number jsonb cannot)';

-- The text as a timestamp with time zone, or NULL when it is not one.
CREATE FUNCTION @extschema@.msp_try_timestamptz(raw text) RETURNS timestamptz
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN raw::timestamptz;
EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR invalid_text_representation THEN
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_try_timestamptz(text) IS 'the text as timestamptz, or NULL when it is not one';

-- One account name for the forms Windows and Entra write: DOMAIN\user,
-- domain.tld\user and user@domain.tld all become DOMAIN\user.
-- (No SET clause, so that it inlines; every name in it is qualified.)
CREATE FUNCTION @extschema@.msp_canonical_account(domain text, username text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
	WHEN username IS NULL OR username OPERATOR(pg_catalog.=) ANY ('{"",-}'::text[]) THEN NULL
	WHEN pg_catalog.strpos(username, '@') OPERATOR(pg_catalog.>) 0
		THEN pg_catalog.upper(pg_catalog.split_part(pg_catalog.split_part(username, '@', 2), '.', 1))
			 OPERATOR(pg_catalog.||) '\' OPERATOR(pg_catalog.||) pg_catalog.lower(pg_catalog.split_part(username, '@', 1))
	WHEN pg_catalog.strpos(username, '\') OPERATOR(pg_catalog.>) 0
		THEN pg_catalog.upper(pg_catalog.split_part(pg_catalog.split_part(username, '\', 1), '.', 1))
			 OPERATOR(pg_catalog.||) '\' OPERATOR(pg_catalog.||) pg_catalog.lower(pg_catalog.split_part(username, '\', 2))
	WHEN domain IS NULL OR domain OPERATOR(pg_catalog.=) ANY ('{"",-}'::text[]) THEN pg_catalog.lower(username)
	ELSE pg_catalog.upper(pg_catalog.split_part(domain, '.', 1)) OPERATOR(pg_catalog.||) '\'
		 OPERATOR(pg_catalog.||) pg_catalog.lower(username)
END;
COMMENT ON FUNCTION @extschema@.msp_canonical_account(text, text) IS
	'DOMAIN\user for the domain\user, domain.tld\user and UPN forms of one account';

-- Shared last step of every loader: the normalized events of one load, in
-- pg_temp.msp_load_events, become accounts (kind unknown until mapped),
-- devices and logons.  Returns (loaded, duplicate).
CREATE FUNCTION @extschema@.msp_load_normalized(for_client bigint, load_source text,
												OUT loaded bigint, OUT duplicate bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO accounts (client_id, account_id, realm, name, kind, application)
	SELECT for_client,
		   coalesce((SELECT max(a.account_id) FROM accounts a WHERE a.client_id = for_client), 0)
			   + row_number() OVER (ORDER BY n.realm, n.account_name),
		   n.realm, n.account_name, 'unknown', n.application
	  FROM (SELECT DISTINCT e.realm, e.account_name, e.application FROM pg_temp.msp_load_events e) n
	 WHERE NOT EXISTS (SELECT 1 FROM accounts a
						WHERE a.client_id = for_client AND a.realm = n.realm
						  AND lower(a.name) = lower(n.account_name)
						  AND coalesce(a.application, '') = coalesce(n.application, ''));

	INSERT INTO devices (client_id, device_id, name, kind)
	SELECT for_client,
		   coalesce((SELECT max(d.device_id) FROM devices d WHERE d.client_id = for_client), 0)
			   + row_number() OVER (ORDER BY n.device_name),
		   n.device_name, 'other'
	  FROM (SELECT DISTINCT e.device_name FROM pg_temp.msp_load_events e
			 WHERE e.device_name IS NOT NULL AND e.create_device) n
	 WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.client_id = for_client
						  AND upper(d.name) = upper(n.device_name));

	-- small maps from names to ids, so the big insert joins on plain keys
	ANALYZE pg_temp.msp_load_events;
	CREATE TEMP TABLE msp_account_map ON COMMIT DROP AS
	SELECT n.realm, n.account_name, n.app, a.account_id
	  FROM (SELECT DISTINCT e.realm, e.account_name, coalesce(e.application, '') AS app
			  FROM pg_temp.msp_load_events e) n
	  JOIN accounts a ON a.client_id = for_client AND a.realm = n.realm
					 AND lower(a.name) = lower(n.account_name) AND coalesce(a.application, '') = n.app;
	CREATE TEMP TABLE msp_device_map ON COMMIT DROP AS
	SELECT n.device_name, d.device_id
	  FROM (SELECT DISTINCT e.device_name FROM pg_temp.msp_load_events e WHERE e.device_name IS NOT NULL) n
	  JOIN devices d ON d.client_id = for_client AND upper(d.name) = upper(n.device_name);
	ANALYZE pg_temp.msp_account_map;
	ANALYZE pg_temp.msp_device_map;

	WITH ins AS (
		INSERT INTO logons (client_id, account_id, device_id, at, ended, presence, source,
							source_event_id, session_key)
		SELECT for_client, m.account_id, dm.device_id, e.at, e.ended, true, load_source, e.source_event_id,
			   e.session_key
		  FROM pg_temp.msp_load_events e
		  JOIN pg_temp.msp_account_map m ON m.realm = e.realm AND m.account_name = e.account_name
										AND m.app = coalesce(e.application, '')
		  LEFT JOIN pg_temp.msp_device_map dm ON dm.device_name = e.device_name
		ON CONFLICT (client_id, source, source_event_id, at) DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	DROP TABLE pg_temp.msp_account_map, pg_temp.msp_device_map;
	duplicate := (SELECT count(*) FROM pg_temp.msp_load_events) - loaded;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_normalized(bigint, text) IS
	'internal: accounts, devices and logons from the normalized events of one load';

-- Every load starts here: the client must exist, and the load gets a fresh
-- scratch table for its normalized events.
CREATE FUNCTION @extschema@.msp_load_begin(for_client bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM clients c WHERE c.client_id = for_client) THEN
		RAISE EXCEPTION 'unknown client %', for_client
			USING ERRCODE = 'no_data_found',
				  HINT = 'Add the client to mspbill.clients first.';
	END IF;
	IF to_regclass('pg_temp.msp_load_events') IS NOT NULL THEN
		DROP TABLE pg_temp.msp_load_events;
	END IF;
	CREATE TEMP TABLE msp_load_events (
		realm text NOT NULL,
		application text,
		account_name text NOT NULL,
		device_name text,
		create_device boolean NOT NULL,
		at timestamptz NOT NULL,
		ended timestamptz,
		source_event_id text NOT NULL,
		session_key text
	) ON COMMIT DROP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_begin(bigint) IS 'internal: checks the client and gives a load its scratch table';

CREATE FUNCTION @extschema@.msp_load_windows_events(client_id bigint, source text DEFAULT 'windows',
													OUT loaded bigint, OUT duplicate bigint,
													OUT paired bigint, OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	PERFORM msp_load_begin(client_id);
	-- One pass over the stage keeps only the fields a logon needs, NXLog's
	-- top-level ones or Winlogbeat's (winlog.*), without building a jsonb of
	-- every (mostly irrelevant, often large) record.
	CREATE TEMP TABLE msp_win_class ON COMMIT DROP AS
	SELECT s.line_no, f IS NULL AS bad_json,
		   coalesce(f[1], wl.winlog->>'event_id') AS event_id,
		   coalesce(f[2], f[3]) AS at_text,
		   coalesce(f[4], wl.winlog->>'computer_name') AS host,
		   coalesce(f[5], wl.winlog->'event_data'->>'TargetUserName') AS username,
		   coalesce(f[6], wl.winlog->'event_data'->>'TargetDomainName') AS domain,
		   coalesce(f[7], wl.winlog->'event_data'->>'LogonType') AS logon_type,
		   coalesce(f[8], wl.winlog->'event_data'->>'TargetLogonId') AS logon_id,
		   coalesce(f[9], wl.winlog->>'record_id', md5(s.raw)) AS record,
		   NULL::text AS class, NULL::timestamptz AS at
	  FROM windows_event_staging s,
		   LATERAL msp_json_fields(s.raw, '{EventID,@timestamp,TimeCreated,Hostname,TargetUserName,TargetDomainName,LogonType,TargetLogonId,RecordNumber,winlog}') AS f,
		   -- a function in FROM runs once per row (a subquery would be pulled up)
		   LATERAL unnest(ARRAY[f[10]::jsonb]) AS wl(winlog)
	 WHERE s.client_id = client_id;
	UPDATE msp_win_class e SET class =
		   CASE
			   WHEN e.bad_json THEN 'reject:not valid JSON'
			   WHEN e.event_id IS NULL THEN 'reject:no EventID'
			   WHEN e.event_id NOT IN ('4624', '4634', '4647') THEN 'skip'
			   WHEN e.at_text IS NULL THEN 'reject:no @timestamp'
			   WHEN e.host IS NULL OR e.host IN ('', '-') THEN 'reject:no Hostname'
			   WHEN e.username IS NULL OR e.username IN ('', '-') THEN 'reject:no TargetUserName'
			   WHEN msp_is_machine_account(e.username) THEN 'skip'
			   WHEN e.event_id = '4624' AND e.logon_type IS NULL THEN 'reject:no LogonType'
			   WHEN e.event_id = '4624' AND e.logon_type NOT IN ('2', '7', '10', '11') THEN 'skip'
			   WHEN e.event_id = '4624' THEN 'logon'
			   ELSE 'logoff'
		   END;
	-- timestamps: the batch at once, per row only when one is malformed
	BEGIN
		UPDATE msp_win_class SET at = at_text::timestamptz WHERE class IN ('logon', 'logoff');
	EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR invalid_text_representation THEN
		UPDATE msp_win_class SET at = msp_try_timestamptz(at_text) WHERE class IN ('logon', 'logoff');
	END;
	UPDATE msp_win_class SET class = 'reject:invalid @timestamp' WHERE class IN ('logon', 'logoff') AND at IS NULL;

	INSERT INTO pg_temp.msp_load_events (realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT 'os', NULL, msp_canonical_account(c.domain, c.username), upper(split_part(c.host, '.', 1)), true,
		   c.at, NULL, upper(split_part(c.host, '.', 1)) || ':' || c.record,
		   CASE WHEN c.logon_id IS NOT NULL THEN upper(split_part(c.host, '.', 1)) || ':' || lower(c.logon_id) END
	  FROM msp_win_class c WHERE c.class = 'logon';
	SELECT * INTO loaded, duplicate FROM msp_load_normalized(client_id, source);

	-- pair logoffs (4634, 4647) with their logon by logon id on the same host
	WITH logoff AS (
		SELECT upper(split_part(c.host, '.', 1)) || ':' || lower(c.logon_id) AS session_key, min(c.at) AS at
		  FROM msp_win_class c WHERE c.class = 'logoff' AND c.logon_id IS NOT NULL GROUP BY 1),
	upd AS (
		UPDATE logons l SET ended = o.at
		  FROM logoff o
		 WHERE l.client_id = client_id AND l.session_key = o.session_key AND l.at <= o.at
		   AND (l.ended IS NULL OR l.ended > o.at)
		RETURNING l.session_key)
	SELECT count(DISTINCT upd.session_key) INTO paired FROM upd;

	INSERT INTO load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, c.line_no, s.raw, substr(c.class, 8)
	  FROM msp_win_class c JOIN windows_event_staging s ON s.client_id = client_id AND s.line_no = c.line_no
	 WHERE c.class LIKE 'reject:%';
	GET DIAGNOSTICS rejected = ROW_COUNT;
	SELECT count(*) INTO skipped FROM msp_win_class c WHERE c.class = 'skip' OR c.class = 'logoff';
	skipped := skipped - paired;
	DELETE FROM windows_event_staging s WHERE s.client_id = client_id;
	DROP TABLE msp_win_class;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_windows_events(bigint, text) IS
	'loads a client''s staged Windows Security events: interactive (2), unlock (7), remote interactive (10) and cached (11) logons count; logoffs close sessions; the rest is skipped or rejected';

CREATE FUNCTION @extschema@.msp_load_entra_signins(client_id bigint, source text DEFAULT 'entra',
												   OUT loaded bigint, OUT duplicate bigint,
												   OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	PERFORM msp_load_begin(client_id);
	CREATE TEMP TABLE msp_entra ON COMMIT DROP AS
	SELECT s.line_no, s.raw, msp_try_jsonb(s.raw) AS doc FROM entra_signin_staging s WHERE s.client_id = client_id;
	CREATE TEMP TABLE msp_entra_class ON COMMIT DROP AS
	SELECT e.line_no, e.raw, e.doc->>'id' AS id, e.doc->>'userPrincipalName' AS upn,
		   msp_try_timestamptz(e.doc->>'createdDateTime') AS at,
		   e.doc->'deviceDetail'->>'displayName' AS device,
		   CASE
			   WHEN e.doc IS NULL THEN 'reject:not valid JSON'
			   WHEN e.doc->>'id' IS NULL THEN 'reject:no id'
			   WHEN coalesce(e.doc->>'userPrincipalName', '') = '' THEN 'reject:no userPrincipalName'
			   WHEN msp_try_timestamptz(e.doc->>'createdDateTime') IS NULL THEN 'reject:no valid createdDateTime'
			   WHEN coalesce(e.doc->'status'->>'errorCode', '0') <> '0' THEN 'skip'
			   WHEN e.doc->>'isInteractive' = 'false' THEN 'skip'
			   ELSE 'signin'
		   END AS class
	  FROM msp_entra e;
	INSERT INTO pg_temp.msp_load_events (realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT 'm365', NULL, lower(c.upn), upper(nullif(c.device, '')), false, c.at, NULL, c.id, NULL
	  FROM msp_entra_class c WHERE c.class = 'signin';
	SELECT * INTO loaded, duplicate FROM msp_load_normalized(client_id, source);
	INSERT INTO load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, c.line_no, c.raw, substr(c.class, 8) FROM msp_entra_class c WHERE c.class LIKE 'reject:%';
	GET DIAGNOSTICS rejected = ROW_COUNT;
	SELECT count(*) INTO skipped FROM msp_entra_class c WHERE c.class = 'skip';
	DELETE FROM entra_signin_staging s WHERE s.client_id = client_id;
	DROP TABLE msp_entra, msp_entra_class;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_entra_signins(bigint, text) IS
	'loads a client''s staged Entra ID sign-ins: successful interactive sign-ins count as Microsoft 365 presence';

CREATE FUNCTION @extschema@.msp_load_emr_audit(client_id bigint, source text DEFAULT 'emr',
											   OUT loaded bigint, OUT duplicate bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	PERFORM msp_load_begin(client_id);
	CREATE TEMP TABLE msp_emr ON COMMIT DROP AS
	SELECT s.*, c.time_zone,
		   msp_try_timestamptz(s.event_time) AS at_any,
		   CASE
			   WHEN coalesce(s.user_name, '') = '' THEN 'no user'
			   WHEN coalesce(s.event_time, '') = '' THEN 'no time'
			   WHEN msp_try_timestamptz(s.event_time) IS NULL THEN 'invalid time'
		   END AS reason
	  FROM emr_audit_staging s JOIN clients c USING (client_id)
	 WHERE s.client_id = client_id;
	INSERT INTO pg_temp.msp_load_events (realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT 'app', e.application, lower(e.user_name), upper(nullif(e.workstation, '')), true,
		   -- a time without a zone is the client's local time
		   CASE WHEN e.event_time ~ '([+-]\d\d(:?\d\d)?|Z)$' THEN e.at_any
				ELSE e.event_time::timestamp AT TIME ZONE e.time_zone END,
		   NULL, coalesce(e.event_id, md5(concat_ws('|', e.user_name, e.workstation, e.event_time, e.action))), NULL
	  FROM msp_emr e WHERE e.reason IS NULL;
	SELECT * INTO loaded, duplicate FROM msp_load_normalized(client_id, source);
	INSERT INTO load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, e.line_no,
		   concat_ws(',', e.user_name, e.workstation, e.event_time, e.action, e.event_id), e.reason
	  FROM msp_emr e WHERE e.reason IS NOT NULL;
	GET DIAGNOSTICS rejected = ROW_COUNT;
	DELETE FROM emr_audit_staging s WHERE s.client_id = client_id;
	DROP TABLE msp_emr;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_emr_audit(bigint, text) IS
	'loads a client''s staged EMR access audit rows as application logons (times without a zone are the client''s local time)';
-- Privacy and tenancy: the HIPAA shared-logon audit, people's real names
-- behind a role, the extension's roles, and row-level security per client.
-- No function here is SECURITY DEFINER: readers act with their own rights,
-- and what they may see is decided by grants and policies.

CREATE TABLE @extschema@.applications (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	name text NOT NULL,
	holds_pii boolean NOT NULL DEFAULT true,
	PRIMARY KEY (client_id, name)
);
COMMENT ON TABLE @extschema@.applications IS
	'applications per client (as named in accounts.application) and whether they hold PII';

-- Real names live here only; billing needs the pseudonym in people.
CREATE TABLE @extschema@.person_identities (
	client_id bigint NOT NULL,
	person_id bigint NOT NULL,
	full_name text NOT NULL,
	email text,
	PRIMARY KEY (client_id, person_id),
	FOREIGN KEY (client_id, person_id) REFERENCES @extschema@.people ON DELETE CASCADE
);
COMMENT ON TABLE @extschema@.person_identities IS
	'people''s real names and addresses; readable only by mspbill_pii (and mspbill_admin)';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.applications', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.person_identities', '');

-- Shared-account sessions in which a PII-holding application was used
-- without an individual login to it: every use of the application on that
-- device within the session (widened by the window) came from a shared,
-- service or unmapped application account, or there was no login at all
-- while the application recorded activity.
CREATE FUNCTION @extschema@.msp_pii_audit(client_id bigint, period daterange DEFAULT NULL,
										  window_size interval DEFAULT '15 minutes')
RETURNS TABLE (device text, account text, application text, session_start timestamptz,
			   session_end timestamptz, uses integer, sessions bigint)
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH p AS (SELECT msp_period(client_id, period) AS period),
	z AS (SELECT c.time_zone, (lower(p.period)::timestamp AT TIME ZONE c.time_zone) AS t0,
				 (upper(p.period)::timestamp AT TIME ZONE c.time_zone) AS t1,
				 k.default_session
			FROM p CROSS JOIN clients c
			LEFT JOIN contracts k ON k.client_id = c.client_id AND k.effective @> (upper(p.period) - 1)
		   WHERE c.client_id = msp_pii_audit.client_id),
	shared_sessions AS (
		SELECT l.logon_id, l.device_id, l.account_id, l.at AS s0,
			   coalesce(l.ended, l.at + coalesce(z.default_session, interval '1 hour')) AS s1
		  FROM z JOIN logons l ON l.client_id = msp_pii_audit.client_id AND l.at >= z.t0 AND l.at < z.t1
		  JOIN accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
		 WHERE a.kind = 'shared' AND a.realm = 'os' AND l.presence AND l.device_id IS NOT NULL),
	uses AS (
		SELECT s.logon_id, ua.application, count(*)::integer AS uses,
			   bool_or(ua.kind = 'individual') AS individual_login
		  FROM shared_sessions s
		  JOIN logons u ON u.client_id = msp_pii_audit.client_id AND u.device_id = s.device_id
					   AND u.at >= s.s0 - window_size AND u.at <= s.s1 + window_size
		  JOIN accounts ua ON ua.client_id = u.client_id AND ua.account_id = u.account_id AND ua.realm = 'app'
		  JOIN applications ap ON ap.client_id = ua.client_id AND ap.name = ua.application AND ap.holds_pii
		 GROUP BY s.logon_id, ua.application)
	SELECT d.name, al.label, x.application, s.s0, s.s1, x.uses,
		   count(*) OVER (PARTITION BY d.name, al.label, x.application)
	  FROM uses x
	  JOIN shared_sessions s USING (logon_id)
	  JOIN devices d ON d.client_id = msp_pii_audit.client_id AND d.device_id = s.device_id
	  JOIN account_labels al ON al.client_id = msp_pii_audit.client_id AND al.account_id = s.account_id
	 WHERE NOT x.individual_login
	 ORDER BY d.name, s.s0;
END;
COMMENT ON FUNCTION @extschema@.msp_pii_audit(bigint, daterange, interval) IS
	'HIPAA check: shared-account sessions in which a PII application was used without an individual application login';

CREATE FUNCTION @extschema@.msp_pii_audit_summary(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (client_id bigint, shared_sessions bigint, violating_sessions bigint, devices bigint,
			   applications text[])
LANGUAGE sql STABLE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	WITH p AS (SELECT msp_period(msp_pii_audit_summary.client_id, period) AS period),
	c AS (SELECT cl.time_zone FROM clients cl WHERE cl.client_id = msp_pii_audit_summary.client_id),
	v AS (SELECT * FROM msp_pii_audit(msp_pii_audit_summary.client_id, period))
	SELECT msp_pii_audit_summary.client_id,
		   (SELECT count(*) FROM p, c, logons l JOIN accounts a USING (client_id, account_id)
			 WHERE l.client_id = msp_pii_audit_summary.client_id AND a.kind = 'shared' AND a.realm = 'os' AND l.presence
			   AND l.at >= (lower(p.period)::timestamp AT TIME ZONE c.time_zone)
			   AND l.at < (upper(p.period)::timestamp AT TIME ZONE c.time_zone)),
		   (SELECT count(*) FROM v),
		   (SELECT count(DISTINCT device) FROM v),
		   (SELECT coalesce(array_agg(DISTINCT application ORDER BY application), '{}') FROM v);
END;
COMMENT ON FUNCTION @extschema@.msp_pii_audit_summary(bigint, daterange) IS
	'per client: shared sessions, those that broke the individual-login rule, devices and applications involved';

-- Each role sees its own client mappings, which the policies below read
-- for every reader: so everyone may select, and sees only their own rows.
ALTER TABLE @extschema@.bi_client_access ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC;
CREATE POLICY own_rows ON @extschema@.bi_client_access
	USING ((SELECT @extschema@.msp_sees_all_clients()) OR pg_catalog.pg_has_role(role_name, 'MEMBER'));

-- Row-level security: every client-keyed table shows a reader only the
-- clients they may see (msp_can_see_client).  The checks run once per
-- query (initplans), not once per row.
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['clients', 'contracts', 'contract_tiers', 'devices', 'people', 'accounts',
							 'logons', 'support_contacts', 'cost_pools', 'license_counts', 'invoices',
							 'invoice_items', 'audit_log', 'load_rejects', 'windows_event_staging',
							 'entra_signin_staging', 'emr_audit_staging', 'applications', 'person_identities']
	LOOP
		EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', t);
	END LOOP;
END
$$;

-- The roles.  Roles belong to the whole cluster, not to one database, so
-- the extension does not create them on its own: a DBA runs
-- SELECT mspbill.msp_install_roles(); (again after upgrades; it is idempotent).
--   mspbill_admin    everything, every client
--   mspbill_billing  loads data, finalizes and adjusts, every client
--   mspbill_bi       reads billing data (not real names, not raw records) of
--                    the clients mapped in bi_client_access
--   mspbill_pii      may read real names (person_identities, account names)
CREATE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	r text;
	bi_tables text := 'clients, contracts, contract_tiers, devices, people, logons, support_contacts, '
					  'cost_pools, license_counts, invoices, invoice_items, applications';
BEGIN
	FOREACH r IN ARRAY ARRAY['mspbill_admin', 'mspbill_billing', 'mspbill_bi', 'mspbill_pii'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- every function may be called by anyone with schema usage; what it
	-- reads is still checked against the caller's grants and policies
	EXECUTE 'GRANT ALL ON ALL TABLES IN SCHEMA @extschema@ TO mspbill_admin';
	EXECUTE 'GRANT ALL ON ALL SEQUENCES IN SCHEMA @extschema@ TO mspbill_admin';
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';

	EXECUTE 'GRANT SELECT ON ALL TABLES IN SCHEMA @extschema@ TO mspbill_billing';
	EXECUTE 'REVOKE SELECT ON @extschema@.person_identities FROM mspbill_billing';
	EXECUTE 'GRANT INSERT, UPDATE, DELETE ON @extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers,
				 @extschema@.devices, @extschema@.people, @extschema@.accounts, @extschema@.logons,
				 @extschema@.support_contacts, @extschema@.cost_pools, @extschema@.license_counts,
				 @extschema@.applications, @extschema@.windows_event_staging, @extschema@.entra_signin_staging,
				 @extschema@.emr_audit_staging, @extschema@.load_rejects TO mspbill_billing';
	EXECUTE 'GRANT INSERT ON @extschema@.invoices, @extschema@.invoice_items, @extschema@.audit_log TO mspbill_billing';
	EXECUTE 'GRANT USAGE ON ALL SEQUENCES IN SCHEMA @extschema@ TO mspbill_billing';

	EXECUTE format('GRANT SELECT ON %s TO mspbill_bi',
				   (SELECT string_agg('@extschema@.' || btrim(t), ', ') FROM unnest(string_to_array(bi_tables, ',')) t));
	-- accounts without their names
	EXECUTE 'GRANT SELECT (client_id, account_id, realm, kind, person_id, application, is_machine)
				 ON @extschema@.accounts TO mspbill_bi';
	EXECUTE 'GRANT SELECT ON @extschema@.account_labels, @extschema@.bi_client_access TO mspbill_bi, mspbill_billing, mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.person_identities TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi and mspbill_pii are ready';
END
$$;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi and mspbill_pii; idempotent';
