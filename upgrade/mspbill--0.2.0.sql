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
COMMENT ON FUNCTION @extschema@.userset_in(cstring) IS
	'internal: text input of userset, e.g. {3,17,42} (checked)';
COMMENT ON FUNCTION @extschema@.userset_out(@extschema@.userset) IS
	'internal: text output of userset, members ascending';
COMMENT ON FUNCTION @extschema@.userset_recv(internal) IS
	'internal: binary input of userset (checked)';
COMMENT ON FUNCTION @extschema@.userset_send(@extschema@.userset) IS
	'binary form of a userset as bytea (read back with userset_from_binary)';

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
	'the 64-bit id a text member is counted under: FNV-1a 64 of its bytes, then fmix64 (the same on every machine)';
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

-- Not STRICT, like the window form: a NULL total gives NULL, a NULL
-- minor unit is an error.
CREATE FUNCTION @extschema@.allocate(total numeric, weights numeric[], minor_unit numeric DEFAULT 0.01)
	RETURNS numeric[]
	AS 'MODULE_PATHNAME', 'allocate_array' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.allocate(numeric, numeric[], numeric) IS
	'shares of total by weights, largest remainder, ties to the earlier element';
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
	client_id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	name text NOT NULL CONSTRAINT clients_name_not_empty CHECK (name <> ''),
	currency char(3) NOT NULL DEFAULT 'USD' CONSTRAINT clients_currency_iso_code CHECK (currency ~ '^[A-Z]{3}$'),
	minor_unit numeric NOT NULL DEFAULT 0.01 CONSTRAINT clients_minor_unit_positive CHECK (minor_unit > 0),
	time_zone text NOT NULL DEFAULT 'UTC'
		CONSTRAINT clients_time_zone_known CHECK (@extschema@.msp_valid_time_zone(time_zone)),
	created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.clients IS
	'clients of the MSP; the time zone decides where their days and months start';

CREATE TABLE @extschema@.contracts (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	contract_id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
	effective daterange NOT NULL
		CONSTRAINT contracts_effective_has_start CHECK (NOT isempty(effective) AND NOT lower_inf(effective)),
	-- pricing
	model text NOT NULL
		CONSTRAINT contracts_model_known
		CHECK (model IN ('per_user', 'per_device', 'per_seat', 'cost_plus', 'per_user_plus_support')),
	price_per_user numeric CONSTRAINT contracts_price_per_user_not_negative CHECK (price_per_user >= 0),
	price_per_device numeric CONSTRAINT contracts_price_per_device_not_negative CHECK (price_per_device >= 0),
	price_per_seat numeric CONSTRAINT contracts_price_per_seat_not_negative CHECK (price_per_seat >= 0),
	markup numeric NOT NULL DEFAULT 0 CONSTRAINT contracts_markup_not_negative CHECK (markup >= 0),
	minimum_fee numeric NOT NULL DEFAULT 0 CONSTRAINT contracts_minimum_fee_not_negative CHECK (minimum_fee >= 0),
	minimum_quantity numeric NOT NULL DEFAULT 0
		CONSTRAINT contracts_minimum_quantity_not_negative CHECK (minimum_quantity >= 0),
	tier_mode text NOT NULL DEFAULT 'volume'
		CONSTRAINT contracts_tier_mode_known CHECK (tier_mode IN ('volume', 'graduated')),
	prorate boolean NOT NULL DEFAULT true,
	-- billable-user policy
	count_realms text[] NOT NULL DEFAULT '{os,m365}'
		CONSTRAINT contracts_count_realms_known
		CHECK (count_realms <@ '{os,app,m365}' AND cardinality(count_realms) > 0),
	min_active_days integer NOT NULL DEFAULT 1
		CONSTRAINT contracts_min_active_days_at_least_1 CHECK (min_active_days >= 1),
	support_rule text NOT NULL DEFAULT 'sufficient'
		CONSTRAINT contracts_support_rule_known CHECK (support_rule IN ('none', 'sufficient', 'required')),
	shared_billing text NOT NULL DEFAULT 'seat'
		CONSTRAINT contracts_shared_billing_known CHECK (shared_billing IN ('none', 'seat', 'peak', 'attribute')),
	attribution_window interval NOT NULL DEFAULT '15 minutes'
		CONSTRAINT contracts_attribution_window_not_negative CHECK (attribution_window >= '0'),
	default_session interval NOT NULL DEFAULT '1 hour'
		CONSTRAINT contracts_default_session_positive CHECK (default_session > '0'),
	PRIMARY KEY (client_id, contract_id),
	-- named for the column the model needs, so that the error names it
	CONSTRAINT contracts_price_per_user_required
		CHECK (model NOT IN ('per_user', 'per_user_plus_support') OR price_per_user IS NOT NULL),
	CONSTRAINT contracts_price_per_device_required CHECK (model <> 'per_device' OR price_per_device IS NOT NULL),
	CONSTRAINT contracts_price_per_seat_required CHECK (model <> 'per_seat' OR price_per_seat IS NOT NULL),
	-- one contract in effect per day (range types have = in their GiST opclass)
	CONSTRAINT contracts_no_overlap EXCLUDE USING gist (int8range(client_id, client_id, '[]') WITH =, effective WITH &&)
);
COMMENT ON TABLE @extschema@.contracts IS
	'agreed terms per client and date range: pricing model, prices, minimums and the billable-user policy';

CREATE TABLE @extschema@.contract_tiers (
	client_id bigint NOT NULL,
	contract_id bigint NOT NULL,
	from_quantity numeric NOT NULL CONSTRAINT contract_tiers_from_quantity_not_negative CHECK (from_quantity >= 0),
	unit_price numeric NOT NULL CONSTRAINT contract_tiers_unit_price_not_negative CHECK (unit_price >= 0),
	PRIMARY KEY (client_id, contract_id, from_quantity),
	FOREIGN KEY (client_id, contract_id) REFERENCES @extschema@.contracts ON DELETE CASCADE
);
COMMENT ON TABLE @extschema@.contract_tiers IS
	'volume or graduated unit prices for the contract''s main quantity, from a quantity up';

CREATE TABLE @extschema@.devices (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	device_id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
	name text NOT NULL,
	kind text NOT NULL DEFAULT 'desktop'
		CONSTRAINT devices_kind_known CHECK (kind IN ('desktop', 'laptop', 'server', 'room', 'other')),
	active daterange CONSTRAINT devices_active_not_empty CHECK (active IS NULL OR NOT isempty(active)),
	PRIMARY KEY (client_id, device_id),
	UNIQUE (client_id, name)
);
COMMENT ON TABLE @extschema@.devices IS
	'computers and rooms under management; active bounds the days a device is billed (NULL: always)';

CREATE TABLE @extschema@.people (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	person_id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
	pseudonym text NOT NULL,
	is_technician boolean NOT NULL DEFAULT false,
	do_not_bill boolean NOT NULL DEFAULT false,
	bill_to_client_id bigint REFERENCES @extschema@.clients,
	active daterange CONSTRAINT people_active_not_empty CHECK (active IS NULL OR NOT isempty(active)),
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
	account_id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
	realm text NOT NULL CONSTRAINT accounts_realm_known CHECK (realm IN ('os', 'app', 'm365')),
	name text NOT NULL CONSTRAINT accounts_name_not_empty CHECK (name <> ''),
	kind text NOT NULL
		CONSTRAINT accounts_kind_known CHECK (kind IN ('individual', 'shared', 'service', 'unknown')),
	person_id bigint,
	application text,
	is_machine boolean GENERATED ALWAYS AS (@extschema@.msp_is_machine_account(name)) STORED,
	PRIMARY KEY (client_id, account_id),
	FOREIGN KEY (client_id) REFERENCES @extschema@.clients ON DELETE CASCADE,
	FOREIGN KEY (client_id, person_id) REFERENCES @extschema@.people,
	-- an individual account has a person_id, no other kind has one
	CONSTRAINT accounts_person_id_iff_individual CHECK ((kind = 'individual') = (person_id IS NOT NULL)),
	-- an application account names its application, no other realm does
	CONSTRAINT accounts_application_iff_app_realm CHECK ((realm = 'app') = (application IS NOT NULL))
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
	ended timestamptz CONSTRAINT logons_ended_not_before_at CHECK (ended >= at),
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
	contact_id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
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
	pool_id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
	category text NOT NULL
		CONSTRAINT cost_pools_category_known
		CHECK (category IN ('licensing', 'backup', 'server', 'hardware', 'support', 'other')),
	description text NOT NULL,
	amount numeric NOT NULL CONSTRAINT cost_pools_amount_not_negative CHECK (amount >= 0),
	currency char(3) NOT NULL,
	period daterange NOT NULL
		CONSTRAINT cost_pools_period_bounded CHECK (NOT isempty(period) AND NOT lower_inf(period) AND NOT upper_inf(period)),
	basis text NOT NULL DEFAULT 'device' CONSTRAINT cost_pools_basis_known CHECK (basis IN ('device', 'seat', 'user')),
	PRIMARY KEY (client_id, pool_id)
);
COMMENT ON TABLE @extschema@.cost_pools IS
	'what serving a client costs the MSP in a period, and what to spread it over (devices, seats or users)';

CREATE TABLE @extschema@.license_counts (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	sku text NOT NULL,
	seats integer NOT NULL CONSTRAINT license_counts_seats_not_negative CHECK (seats >= 0),
	unit_cost numeric CONSTRAINT license_counts_unit_cost_not_negative CHECK (unit_cost >= 0),
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
-- the identity sequences, so that a restored database goes on numbering
-- where it stopped
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clients_client_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.contracts_contract_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.devices_device_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.people_person_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.accounts_account_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.support_contacts_contact_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.cost_pools_pool_id_seq', '');

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
-- Invoices you can stand behind: finalization, drift, adjustments, license
-- reconciliation, data-quality gates and the audit trail.
-- A finalized invoice is a fact: its rows cannot be changed or deleted by
-- anyone but a superuser, and later differences become adjustment notes
-- that reference it and ride on the next invoice.
-- Nobody may write invoices, their lines or the audit log directly:
-- msp_finalize_invoice and msp_issue_adjustment do, as the extension's
-- owner (SECURITY DEFINER, callable by mspbill_billing and mspbill_admin),
-- so that every stored invoice passed the gates and every audit row names
-- the session's login and the server's clock.  They run with
-- mspbill.pseudonymous on, so that stored evidence and findings carry
-- account labels, never real names (which only mspbill_pii reads).

CREATE SEQUENCE @extschema@.invoice_id_seq;
CREATE TABLE @extschema@.invoices (
	client_id bigint NOT NULL REFERENCES @extschema@.clients,
	invoice_id bigint NOT NULL DEFAULT nextval('@extschema@.invoice_id_seq'),
	kind text NOT NULL CONSTRAINT invoices_kind_known CHECK (kind IN ('invoice', 'adjustment')),
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
	-- the clock, as audit_log.at: a finalization late in a long transaction
	-- is stamped when it happened, not when the transaction began
	finalized_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	finalized_by name NOT NULL DEFAULT session_user,
	PRIMARY KEY (client_id, invoice_id),
	FOREIGN KEY (client_id, adjusts_invoice_id) REFERENCES @extschema@.invoices,
	CONSTRAINT invoices_adjusts_invoice_id_iff_adjustment CHECK ((kind = 'adjustment') = (adjusts_invoice_id IS NOT NULL)),
	CONSTRAINT invoices_apply_period_iff_adjustment CHECK ((kind = 'adjustment') = (apply_period IS NOT NULL)),
	-- no two finalized invoices of a client bill the same day (range types
	-- have = in their GiST opclass, so btree_gist is not needed)
	CONSTRAINT invoices_no_overlap
		EXCLUDE USING gist (int8range(client_id, client_id, '[]') WITH =, period WITH &&) WHERE (kind = 'invoice')
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
	action text NOT NULL CONSTRAINT audit_log_action_known CHECK (action IN ('finalize', 'override', 'adjust')),
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
LANGUAGE sql STABLE STRICT PARALLEL SAFE
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
LANGUAGE sql STABLE STRICT PARALLEL SAFE
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
LANGUAGE plpgsql STABLE PARALLEL SAFE
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
LANGUAGE plpgsql STABLE PARALLEL SAFE
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
LANGUAGE plpgsql STABLE PARALLEL SAFE
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
LANGUAGE plpgsql STABLE PARALLEL SAFE
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
	-- no contract (or a gap between two) is the first thing to fix: raise
	-- it before weekdays without logons and the like bury it
	PERFORM count(*) FROM msp_contract_segments(client_id, period);
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
	-- one reading of the clock for the invoice and its audit entries
	stamp := clock_timestamp();
	INSERT INTO @extschema@.invoices (client_id, kind, period, model, users, seats, devices, subtotal, total,
						  currency, evidence, overrides, finalized_at)
	VALUES (client_id, 'invoice', period, inv.model, inv.users, inv.seats, inv.devices, inv.subtotal,
			inv.total, inv.currency,
			coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM msp_billable_users(client_id, period) u), '[]'),
			coalesce(override, '{}'), stamp)
	RETURNING invoice_id INTO id;
	INSERT INTO @extschema@.invoice_items (client_id, invoice_id, line_no, contract_id, description, quantity,
							   unit_price, amount, basis)
	SELECT client_id, id, l.line_no, l.contract_id, l.description, l.quantity, l.unit_price, l.amount, l.basis
	  FROM msp_price_lines(client_id, period, NULL) l;
	INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, detail, at)
	VALUES (client_id, 'finalize', id, jsonb_build_object('period', period::text, 'total', inv.total), stamp);
	IF cardinality(coalesce(override, '{}')) > 0 THEN
		INSERT INTO @extschema@.audit_log (client_id, action, invoice_id, at, detail)
		VALUES (client_id, 'override', id, stamp, jsonb_build_object('gates', override,
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
LANGUAGE plpgsql STABLE PARALLEL SAFE
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
	stamp := clock_timestamp();
	INSERT INTO @extschema@.invoices (client_id, kind, period, adjusts_invoice_id, apply_period, reason, total, currency,
						  evidence, finalized_at)
	VALUES (client_id, 'adjustment', period, original.invoice_id, carrier, reason, total, original.currency,
			coalesce((SELECT jsonb_agg(to_jsonb(u)) FROM @extschema@.msp_billable_users(client_id, period) u), '[]'), stamp)
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

CREATE FUNCTION @extschema@.msp_reconcile_licenses(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (category text, sku text, subject text, quantity numeric, amount numeric, note text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	c clients;
	k contracts;
	fin invoices;
	active_ids bigint[];
	active integer;
	billed numeric;
	seats numeric;
	seat_cost numeric;
BEGIN
	period := msp_period(client_id, period);
	SELECT * INTO c FROM clients WHERE clients.client_id = client_id;
	SELECT * INTO k FROM contracts WHERE contracts.client_id = client_id AND contracts.effective @> (upper(period) - 1);
	active_ids := ARRAY(SELECT DISTINCT u.person_id FROM msp_billable_users(client_id, period) u
						 WHERE u.home_client_id = client_id);
	active := (SELECT count(DISTINCT (u.home_client_id, u.person_id)) FROM msp_billable_users(client_id, period) u);
	-- people billed: a preview bills everyone active; once finalized, those in
	-- the evidence of the invoice or of an adjustment to it
	fin := msp_finalized_invoice(client_id, period);
	IF fin.invoice_id IS NULL THEN
		billed := active;
	ELSE
		billed := (SELECT count(*) FROM (
					 SELECT DISTINCT coalesce((e->>'home_client_id')::bigint, i.client_id), (e->>'person_id')::bigint
					   FROM invoices i, jsonb_array_elements(i.evidence) e
					  WHERE i.client_id = client_id
						AND (i.invoice_id = fin.invoice_id OR i.adjusts_invoice_id = fin.invoice_id)
					 INTERSECT
					 SELECT u.home_client_id, u.person_id FROM msp_billable_users(client_id, period) u) b);
	END IF;

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
-- Staged records are raw personal data and COPY FROM cannot write a table
-- with row-level security: so the loading roles (mspbill_billing,
-- mspbill_admin) may only INSERT into the stage, nobody else may touch it,
-- and the loaders read it as the extension's owner (SECURITY DEFINER, a
-- pinned search_path, callable only by those two roles), taking only the
-- rows of the client they were asked to load.

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

-- the loaders read and the retries of msp_load_guarded look up lines by client
CREATE INDEX windows_event_staging_line_idx ON @extschema@.windows_event_staging (client_id, line_no);
CREATE INDEX entra_signin_staging_line_idx ON @extschema@.entra_signin_staging (client_id, line_no);
CREATE INDEX emr_audit_staging_line_idx ON @extschema@.emr_audit_staging (client_id, line_no);
COMMENT ON INDEX @extschema@.windows_event_staging_line_idx IS 'a client''s staged lines, by line number';
COMMENT ON INDEX @extschema@.entra_signin_staging_line_idx IS 'a client''s staged lines, by line number';
COMMENT ON INDEX @extschema@.emr_audit_staging_line_idx IS 'a client''s staged lines, by line number';

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
-- PARALLEL RESTRICTED: its EXCEPTION block is a subtransaction, which a
-- parallel worker cannot start.
CREATE FUNCTION @extschema@.msp_try_jsonb(raw text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN raw::jsonb;
EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
	-- not JSON, a number jsonb cannot hold, nesting too deep for the stack
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_try_jsonb(text) IS
	'the text as jsonb, or NULL when it is not valid JSON (or holds a number jsonb cannot)';

-- The text read as timestamptz with the session zone at UTC+14 (no
-- daylight saving).  A loader running in UTC compares this with its own
-- reading: the two are the same instant exactly when the text names its
-- own zone (any offset, Z, a zone name or abbreviation, in every form
-- PostgreSQL reads), and 14 hours apart when it names none.  So PostgreSQL
-- itself decides whether a time has a zone; nothing is dropped silently.
CREATE FUNCTION @extschema@.msp_timestamptz_plus14(raw text) RETURNS timestamptz
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'Etc/GMT-14'
RETURN raw::timestamptz;
COMMENT ON FUNCTION @extschema@.msp_timestamptz_plus14(text) IS
	'internal: the text as timestamptz read with the session zone UTC+14 (equal to the UTC reading exactly when the text has its own zone)';

-- A parsed time a logon can have: the input is a date and time (not one of
-- the special words now, today, tomorrow, yesterday, epoch, allballs or
-- infinity, which PostgreSQL reads as times), and the instant lies from
-- 1990-01-01 UTC up to one day after now() (a clock slightly ahead is
-- tolerated).  Anything else is no logon an MSP bills, and would only
-- overflow later date arithmetic (the client's local day of 4714 BC).
-- Returns NULL when the time is plausible, else why not.
CREATE FUNCTION @extschema@.msp_implausible_time(raw text, at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
	WHEN raw OPERATOR(pg_catalog.~*) '\m(now|today|tomorrow|yesterday|epoch|allballs|infinity)\M'
		 OR NOT pg_catalog.isfinite(at) THEN 'not a time'
	WHEN at OPERATOR(pg_catalog.<) '1990-01-01 00:00:00+00'::timestamptz
		 OR at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.+) '1 day'::interval)
		THEN 'outside 1990-01-01 to a day after now'
END;
COMMENT ON FUNCTION @extschema@.msp_implausible_time(text, timestamptz) IS
	'internal: why a parsed logon time is not plausible (a special word such as now or infinity, before 1990-01-01 UTC, more than a day after now()), or NULL';

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
-- The source's event id is unique per client, whatever the time: of the
-- events of one load with the same id the first by line loads, and an
-- event whose id is already in logons (this client, this source; found
-- through the leading columns of logons_source_event_key) is a duplicate,
-- even with another time.  The unique index cannot say so itself: logons
-- is partitioned by time, so its key must include at.  Loads of a client
-- take turns (msp_load_begin), so this check-then-insert cannot race.
CREATE FUNCTION @extschema@.msp_load_normalized(for_client bigint, load_source text,
												OUT loaded bigint, OUT duplicate bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	-- New accounts and devices take their ids from the identity columns, so
	-- that ids are unique across clients.  Ids chosen by hand for this
	-- client may lie ahead of the sequence: move it past them first (the
	-- load holds the client's lock; the sequence only moves forward).
	PERFORM setval(pg_get_serial_sequence('@extschema@.accounts', 'account_id'), m.id)
	   FROM (SELECT max(a.account_id) AS id FROM @extschema@.accounts a WHERE a.client_id = for_client) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.accounts', 'account_id')), 0);
	PERFORM setval(pg_get_serial_sequence('@extschema@.devices', 'device_id'), m.id)
	   FROM (SELECT max(d.device_id) AS id FROM @extschema@.devices d WHERE d.client_id = for_client) m
	  WHERE m.id > coalesce(pg_sequence_last_value(pg_get_serial_sequence('@extschema@.devices', 'device_id')), 0);

	INSERT INTO @extschema@.accounts (client_id, realm, name, kind, application)
	SELECT for_client, n.realm, n.account_name, 'unknown', n.application
	  FROM (SELECT DISTINCT e.realm, e.account_name, e.application FROM pg_temp.msp_load_events e) n
	 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.accounts a
						WHERE a.client_id = for_client AND a.realm = n.realm
						  AND lower(a.name) = lower(n.account_name)
						  AND coalesce(a.application, '') = coalesce(n.application, ''))
	 ORDER BY n.realm, n.account_name;

	-- a device found in an export is billable from the day it was first seen
	INSERT INTO @extschema@.devices (client_id, name, kind, active)
	SELECT for_client, n.device_name, 'other',
		   daterange((n.first_at AT TIME ZONE (SELECT c.time_zone FROM @extschema@.clients c WHERE c.client_id = for_client))::date, NULL)
	  FROM (SELECT e.device_name, min(e.at) AS first_at FROM pg_temp.msp_load_events e
			 WHERE e.device_name IS NOT NULL AND e.create_device GROUP BY e.device_name) n
	 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.devices d WHERE d.client_id = for_client
						  AND upper(d.name) = upper(n.device_name))
	 ORDER BY n.device_name;

	-- small maps from names to ids, so the big insert joins on plain keys
	ANALYZE pg_temp.msp_load_events;
	CREATE TEMP TABLE msp_account_map ON COMMIT DROP AS
	SELECT n.realm, n.account_name, n.app, a.account_id
	  FROM (SELECT DISTINCT e.realm, e.account_name, coalesce(e.application, '') AS app
			  FROM pg_temp.msp_load_events e) n
	  JOIN @extschema@.accounts a ON a.client_id = for_client AND a.realm = n.realm
					 AND lower(a.name) = lower(n.account_name) AND coalesce(a.application, '') = n.app;
	CREATE TEMP TABLE msp_device_map ON COMMIT DROP AS
	SELECT n.device_name, d.device_id
	  FROM (SELECT DISTINCT e.device_name FROM pg_temp.msp_load_events e WHERE e.device_name IS NOT NULL) n
	  JOIN @extschema@.devices d ON d.client_id = for_client AND upper(d.name) = upper(n.device_name);
	ANALYZE pg_temp.msp_account_map;
	ANALYZE pg_temp.msp_device_map;

	WITH ins AS (
		INSERT INTO @extschema@.logons (client_id, account_id, device_id, at, ended, presence, source,
							source_event_id, session_key)
		SELECT for_client, m.account_id, dm.device_id, e.at, e.ended, true, load_source, e.source_event_id,
			   e.session_key
		  FROM (SELECT DISTINCT ON (f.source_event_id) f.*
				  FROM pg_temp.msp_load_events f
				 ORDER BY f.source_event_id, f.line_no) e
		  JOIN pg_temp.msp_account_map m ON m.realm = e.realm AND m.account_name = e.account_name
										AND m.app = coalesce(e.application, '')
		  LEFT JOIN pg_temp.msp_device_map dm ON dm.device_name = e.device_name
		 WHERE NOT EXISTS (SELECT 1 FROM @extschema@.logons l
							WHERE l.client_id = for_client AND l.source = load_source
							  AND l.source_event_id = e.source_event_id)
		ON CONFLICT (client_id, source, source_event_id, at) DO NOTHING
		RETURNING 1)
	SELECT count(*) INTO loaded FROM ins;
	DROP TABLE pg_temp.msp_account_map, pg_temp.msp_device_map;
	duplicate := (SELECT count(*) FROM pg_temp.msp_load_events) - loaded;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_normalized(bigint, text) IS
	'internal: accounts, devices and logons from the normalized events of one load';

-- The last step of a load, guarded like the others: one statement for the
-- whole load; should it fail on some record's data (a data exception, a
-- limit, a constraint, raised by the step or by a trigger) it is retried
-- on each half of the events' lines, down to single lines, which reject
-- marks (EXECUTE reject USING client, line, message, sqlstate).  So no
-- record can fail a load and leave its stage behind.
CREATE FUNCTION @extschema@.msp_load_normalized_guarded(for_client bigint, load_source text, reject text,
														OUT loaded bigint, OUT duplicate bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	todo bigint[];
	a bigint;
	b bigint;
	l bigint;
	d bigint;
	msg text;
	state text;
BEGIN
	BEGIN
		SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized(for_client, load_source);
		RETURN;
	EXCEPTION WHEN data_exception OR program_limit_exceeded OR integrity_constraint_violation THEN
		NULL;
	END;
	loaded := 0;
	duplicate := 0;
	CREATE TEMP TABLE msp_load_all ON COMMIT DROP AS SELECT * FROM pg_temp.msp_load_events;
	todo := ARRAY[(SELECT min(e.line_no) FROM pg_temp.msp_load_all e), (SELECT max(e.line_no) FROM pg_temp.msp_load_all e)];
	WHILE cardinality(todo) > 0 LOOP
		a := todo[cardinality(todo) - 1];
		b := todo[cardinality(todo)];
		todo := todo[1:cardinality(todo) - 2];
		BEGIN
			DELETE FROM pg_temp.msp_load_events;
			INSERT INTO pg_temp.msp_load_events SELECT * FROM pg_temp.msp_load_all e WHERE e.line_no BETWEEN a AND b;
			IF FOUND THEN
				SELECT n.loaded, n.duplicate INTO l, d FROM @extschema@.msp_load_normalized(for_client, load_source) n;
				loaded := loaded + l;
				duplicate := duplicate + d;
			END IF;
		EXCEPTION WHEN data_exception OR program_limit_exceeded OR integrity_constraint_violation THEN
			IF a = b THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
				EXECUTE reject USING for_client, a, msg, state;
			ELSE
				todo := todo || ARRAY[a + (b - a) / 2 + 1, b, a, a + (b - a) / 2];
			END IF;
		END;
	END LOOP;
	DROP TABLE pg_temp.msp_load_all;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_normalized_guarded(bigint, text, text) IS
	'internal: msp_load_normalized for the whole load, and per record only where a record makes it fail';

-- Every load starts here: the client must exist, loads of one client take
-- turns (new accounts and devices must not race for the same names, and a
-- second load of the same stage must find it consumed), and the
-- load gets a fresh scratch table for its normalized events.
CREATE FUNCTION @extschema@.msp_load_begin(for_client bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM @extschema@.clients c WHERE c.client_id = for_client) THEN
		RAISE EXCEPTION 'unknown client %', for_client
			USING ERRCODE = 'no_data_found',
				  HINT = 'Add the client to mspbill.clients first.';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.load'), hashtext(for_client::text));
	IF to_regclass('pg_temp.msp_load_events') IS NOT NULL THEN
		DROP TABLE pg_temp.msp_load_events;
	END IF;
	CREATE TEMP TABLE msp_load_events (
		line_no bigint NOT NULL,
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

-- One step of a load, run over the staged lines lo..hi of a client
-- (EXECUTE step USING client, lo, hi).  When the step fails on some
-- record's data (any data exception, nesting too deep, a value too large
-- for an index) it is retried on each half of its lines, down to single
-- lines, which reject then marks (EXECUTE reject USING client, line,
-- message, sqlstate).  A clean batch costs one set-based statement; a bad
-- record costs a few more (about two per halving), never the load.
CREATE FUNCTION @extschema@.msp_load_guarded(step text, reject text, for_client bigint, lo bigint, hi bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	todo bigint[] := ARRAY[lo, hi];
	a bigint;
	b bigint;
	n bigint := 0;
	msg text;
	state text;
BEGIN
	IF lo IS NULL OR hi IS NULL THEN
		RETURN 0;
	END IF;
	WHILE cardinality(todo) > 0 LOOP
		a := todo[cardinality(todo) - 1];
		b := todo[cardinality(todo)];
		todo := todo[1:cardinality(todo) - 2];
		BEGIN
			EXECUTE step USING for_client, a, b;
		EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
			IF a = b THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
				EXECUTE reject USING for_client, a, msg, state;
				n := n + 1;
			ELSE
				todo := todo || ARRAY[a + (b - a) / 2 + 1, b, a, a + (b - a) / 2];
			END IF;
		END;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_guarded(text, text, bigint, bigint, bigint) IS
	'internal: runs a load step set-based, and per record only where a record''s data makes it fail';

CREATE FUNCTION @extschema@.msp_load_windows_events(client_id bigint, source text DEFAULT 'windows',
													OUT loaded bigint, OUT duplicate bigint,
													OUT paired bigint, OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_variable
DECLARE
	lo bigint;
	hi bigint;
BEGIN
	-- a NULL source would make every event id unique (NULLs are distinct)
	source := coalesce(source, 'windows');
	PERFORM @extschema@.msp_load_begin(client_id);
	SELECT min(s.line_no), max(s.line_no) INTO lo, hi FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id;
	CREATE TEMP TABLE msp_win_class (
		line_no bigint PRIMARY KEY,
		event_id text,
		at_text text,
		host text,
		username text,
		domain text,
		logon_type text,
		logon_id text,
		record text,
		class text NOT NULL,
		at timestamptz
	) ON COMMIT DROP;
	-- One pass over the stage keeps only the fields a logon needs, NXLog's
	-- top-level ones or Winlogbeat's (winlog.*), without building a jsonb of
	-- every (mostly irrelevant, often large) record.
	PERFORM @extschema@.msp_load_guarded($step$
		INSERT INTO pg_temp.msp_win_class (line_no, event_id, at_text, host, username, domain, logon_type,
										   logon_id, record, class)
		SELECT e.line_no, e.event_id, e.at_text, e.host, e.username, e.domain, e.logon_type, e.logon_id, e.record,
			   CASE
				   WHEN e.bad_json THEN 'reject:not valid JSON'
				   WHEN e.event_id IS NULL THEN 'reject:no EventID'
				   WHEN e.event_id NOT IN ('4624', '4634', '4647') THEN 'skip'
				   WHEN e.at_text IS NULL THEN 'reject:no @timestamp'
				   WHEN e.host IS NULL OR e.host IN ('', '-') THEN 'reject:no Hostname'
				   WHEN e.username IS NULL OR btrim(e.username, E' \t\r\n') IN ('', '-') THEN 'reject:no TargetUserName'
				   -- names and keys go into btree indexes, which cap a row's size
				   WHEN length(e.host) > 255 OR length(e.username) > 255 OR length(e.domain) > 255
						OR length(e.record) > 255 OR length(e.logon_id) > 255 THEN 'reject:field too long'
				   WHEN @extschema@.msp_is_machine_account(e.username) THEN 'skip'
				   WHEN e.event_id = '4624' AND e.logon_type IS NULL THEN 'reject:no LogonType'
				   WHEN e.event_id = '4624' AND e.logon_type NOT IN ('2', '7', '10', '11') THEN 'skip'
				   WHEN e.event_id = '4624' THEN 'logon'
				   ELSE 'logoff'
			   END
		  FROM (SELECT s.line_no, f IS NULL AS bad_json,
					   coalesce(f[1], wl.winlog->>'event_id') AS event_id,
					   coalesce(f[2], f[3]) AS at_text,
					   coalesce(f[4], wl.winlog->>'computer_name') AS host,
					   coalesce(f[5], wl.winlog->'event_data'->>'TargetUserName') AS username,
					   coalesce(f[6], wl.winlog->'event_data'->>'TargetDomainName') AS domain,
					   coalesce(f[7], wl.winlog->'event_data'->>'LogonType') AS logon_type,
					   coalesce(f[8], wl.winlog->'event_data'->>'TargetLogonId') AS logon_id,
					   coalesce(f[9], wl.winlog->>'record_id', md5(s.raw)) AS record
				  FROM @extschema@.windows_event_staging s,
					   LATERAL @extschema@.msp_json_fields(s.raw, '{EventID,@timestamp,TimeCreated,Hostname,TargetUserName,TargetDomainName,LogonType,TargetLogonId,RecordNumber,winlog}') AS f,
					   -- a function in FROM runs once per row (a subquery would be pulled up)
					   LATERAL unnest(ARRAY[f[10]::jsonb]) AS wl(winlog)
				 WHERE s.client_id = $1 AND s.line_no BETWEEN $2 AND $3) e
	$step$, $reject$
		INSERT INTO pg_temp.msp_win_class (line_no, class) VALUES ($2, 'reject:unreadable record: ' || $3)
	$reject$, client_id, lo, hi);
	-- timestamps: the batch at once, per record only where one is malformed
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_win_class SET at = at_text::timestamptz
		 WHERE class IN ('logon', 'logoff') AND line_no BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_win_class SET class = 'reject:invalid @timestamp' WHERE line_no = $2
	$reject$, client_id, lo, hi);
	UPDATE pg_temp.msp_win_class
	   SET class = 'reject:invalid @timestamp' || coalesce(': ' || @extschema@.msp_implausible_time(at_text, at), '')
	 WHERE class IN ('logon', 'logoff') AND (at IS NULL OR @extschema@.msp_implausible_time(at_text, at) IS NOT NULL);

	INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT c.line_no, 'os', NULL, @extschema@.msp_canonical_account(c.domain, c.username), upper(split_part(c.host, '.', 1)), true,
		   c.at, NULL, upper(split_part(c.host, '.', 1)) || ':' || c.record,
		   CASE WHEN c.logon_id IS NOT NULL THEN upper(split_part(c.host, '.', 1)) || ':' || lower(c.logon_id) END
	  FROM pg_temp.msp_win_class c WHERE c.class = 'logon';
	SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
		UPDATE pg_temp.msp_win_class SET class = 'reject:unloadable record: ' || $3 WHERE line_no = $2
	$reject$);

	-- pair logoffs (4634, 4647) with their logon by logon id on the same host
	WITH logoff AS (
		SELECT upper(split_part(c.host, '.', 1)) || ':' || lower(c.logon_id) AS session_key, min(c.at) AS at
		  FROM pg_temp.msp_win_class c WHERE c.class = 'logoff' AND c.logon_id IS NOT NULL GROUP BY 1),
	upd AS (
		UPDATE @extschema@.logons l SET ended = o.at
		  FROM logoff o
		 WHERE l.client_id = client_id AND l.session_key = o.session_key AND l.at <= o.at
		   AND (l.ended IS NULL OR l.ended > o.at)
		RETURNING l.session_key)
	SELECT count(DISTINCT upd.session_key) INTO paired FROM upd;

	INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, c.line_no, s.raw, substr(c.class, 8)
	  FROM pg_temp.msp_win_class c JOIN @extschema@.windows_event_staging s ON s.client_id = client_id AND s.line_no = c.line_no
	 WHERE c.class LIKE 'reject:%';
	GET DIAGNOSTICS rejected = ROW_COUNT;
	SELECT count(*) INTO skipped FROM pg_temp.msp_win_class c WHERE c.class = 'skip' OR c.class = 'logoff';
	skipped := skipped - paired;
	DELETE FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_win_class;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_windows_events(bigint, text) IS
	'loads a client''s staged Windows Security events: interactive (2), unlock (7), remote interactive (10) and cached (11) logons count; logoffs close sessions; the rest is skipped or rejected';

CREATE FUNCTION @extschema@.msp_load_entra_signins(client_id bigint, source text DEFAULT 'entra',
												   OUT loaded bigint, OUT duplicate bigint,
												   OUT skipped bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_variable
DECLARE
	lo bigint;
	hi bigint;
BEGIN
	source := coalesce(source, 'entra');
	PERFORM @extschema@.msp_load_begin(client_id);
	SELECT min(s.line_no), max(s.line_no) INTO lo, hi FROM @extschema@.entra_signin_staging s WHERE s.client_id = client_id;
	CREATE TEMP TABLE msp_entra_class (
		line_no bigint PRIMARY KEY,
		id text,
		upn text,
		created text,
		device text,
		class text NOT NULL,
		at timestamptz
	) ON COMMIT DROP;
	PERFORM @extschema@.msp_load_guarded($step$
		INSERT INTO pg_temp.msp_entra_class (line_no, id, upn, created, device, class)
		SELECT e.line_no, e.doc->>'id', e.doc->>'userPrincipalName', e.doc->>'createdDateTime',
			   e.doc->'deviceDetail'->>'displayName',
			   CASE
				   WHEN e.doc->>'id' IS NULL THEN 'reject:no id'
				   WHEN coalesce(btrim(e.doc->>'userPrincipalName', E' \t\r\n'), '') = '' THEN 'reject:no userPrincipalName'
				   WHEN e.doc->>'createdDateTime' IS NULL THEN 'reject:no valid createdDateTime'
				   -- names and keys go into btree indexes, which cap a row's size
				   WHEN length(e.doc->>'id') > 255 OR length(e.doc->>'userPrincipalName') > 255
						OR length(e.doc->'deviceDetail'->>'displayName') > 255 THEN 'reject:field too long'
				   WHEN coalesce(e.doc->'status'->>'errorCode', '0') <> '0' THEN 'skip'
				   WHEN e.doc->>'isInteractive' = 'false' THEN 'skip'
				   ELSE 'signin'
			   END
		  FROM (SELECT s.line_no, s.raw::jsonb AS doc FROM @extschema@.entra_signin_staging s
				 WHERE s.client_id = $1 AND s.line_no BETWEEN $2 AND $3) e
	$step$, $reject$
		INSERT INTO pg_temp.msp_entra_class (line_no, class)
		VALUES ($2, CASE WHEN $4 = '22P02' THEN 'reject:not valid JSON' ELSE 'reject:unreadable record: ' || $3 END)
	$reject$, client_id, lo, hi);
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_entra_class SET at = created::timestamptz
		 WHERE class NOT LIKE 'reject:%' AND line_no BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_entra_class SET class = 'reject:no valid createdDateTime' WHERE line_no = $2
	$reject$, client_id, lo, hi);
	UPDATE pg_temp.msp_entra_class
	   SET class = 'reject:no valid createdDateTime' || coalesce(': ' || @extschema@.msp_implausible_time(created, at), '')
	 WHERE class NOT LIKE 'reject:%' AND (at IS NULL OR @extschema@.msp_implausible_time(created, at) IS NOT NULL);

	INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT c.line_no, 'm365', NULL, lower(c.upn), upper(nullif(c.device, '')), false, c.at, NULL, c.id, NULL
	  FROM pg_temp.msp_entra_class c WHERE c.class = 'signin';
	SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
		UPDATE pg_temp.msp_entra_class SET class = 'reject:unloadable record: ' || $3 WHERE line_no = $2
	$reject$);
	INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, c.line_no, s.raw, substr(c.class, 8)
	  FROM pg_temp.msp_entra_class c JOIN @extschema@.entra_signin_staging s ON s.client_id = client_id AND s.line_no = c.line_no
	 WHERE c.class LIKE 'reject:%';
	GET DIAGNOSTICS rejected = ROW_COUNT;
	SELECT count(*) INTO skipped FROM pg_temp.msp_entra_class c WHERE c.class = 'skip';
	DELETE FROM @extschema@.entra_signin_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_entra_class;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_entra_signins(bigint, text) IS
	'loads a client''s staged Entra ID sign-ins: successful interactive sign-ins count as Microsoft 365 presence';

CREATE FUNCTION @extschema@.msp_load_emr_audit(client_id bigint, source text DEFAULT 'emr',
											   OUT loaded bigint, OUT duplicate bigint, OUT rejected bigint)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET DateStyle = 'ISO, MDY'
SET timezone_abbreviations = 'Default'
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_variable
DECLARE
	lo bigint;
	hi bigint;
BEGIN
	source := coalesce(source, 'emr');
	PERFORM @extschema@.msp_load_begin(client_id);
	SELECT min(s.line_no), max(s.line_no) INTO lo, hi FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id;
	CREATE TEMP TABLE msp_emr ON COMMIT DROP AS
	SELECT s.line_no, s.user_name, s.workstation, s.event_time, s.action, s.event_id, s.application, c.time_zone,
		   CASE
			   WHEN coalesce(btrim(s.user_name, E' \t\r\n'), '') = '' THEN 'no user'
			   WHEN coalesce(s.event_time, '') = '' THEN 'no time'
			   -- names and keys go into btree indexes, which cap a row's size
			   WHEN length(s.user_name) > 255 OR length(s.workstation) > 255 OR length(s.event_id) > 255
					OR length(s.application) > 255 THEN 'field too long'
		   END AS reason,
		   NULL::timestamptz AS at
	  FROM @extschema@.emr_audit_staging s JOIN @extschema@.clients c USING (client_id)
	 WHERE s.client_id = client_id;
	ALTER TABLE pg_temp.msp_emr ADD PRIMARY KEY (line_no);
	-- A time with a zone (an offset, Z or z, a zone name or abbreviation)
	-- is that instant; a time without one is the client's local time.
	-- Whether it has one is PostgreSQL's reading, not a pattern: read in
	-- UTC (this function's zone) and in UTC+14, a time with its own zone is
	-- the same instant.  A zone PostgreSQL cannot read is an invalid time.
	PERFORM @extschema@.msp_load_guarded($step$
		UPDATE pg_temp.msp_emr
		   SET at = CASE WHEN event_time::timestamptz = @extschema@.msp_timestamptz_plus14(event_time)
						 THEN event_time::timestamptz
						 ELSE event_time::timestamp AT TIME ZONE time_zone END
		 WHERE reason IS NULL AND line_no BETWEEN $2 AND $3
	$step$, $reject$
		UPDATE pg_temp.msp_emr SET reason = 'invalid time' WHERE line_no = $2
	$reject$, client_id, lo, hi);
	UPDATE pg_temp.msp_emr SET reason = 'invalid time' || coalesce(': ' || @extschema@.msp_implausible_time(event_time, at), '')
	 WHERE reason IS NULL AND (at IS NULL OR @extschema@.msp_implausible_time(event_time, at) IS NOT NULL);

	INSERT INTO pg_temp.msp_load_events (line_no, realm, application, account_name, device_name, create_device, at,
										 ended, source_event_id, session_key)
	SELECT e.line_no, 'app', e.application, lower(e.user_name), upper(nullif(e.workstation, '')), true, e.at,
		   NULL, coalesce(e.event_id, md5(concat_ws('|', e.user_name, e.workstation, e.event_time, e.action))), NULL
	  FROM pg_temp.msp_emr e WHERE e.reason IS NULL;
	SELECT * INTO loaded, duplicate FROM @extschema@.msp_load_normalized_guarded(client_id, source, $reject$
		UPDATE pg_temp.msp_emr SET reason = 'unloadable record: ' || $3 WHERE line_no = $2
	$reject$);
	INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
	SELECT client_id, source, e.line_no,
		   concat_ws(',', e.user_name, e.workstation, e.event_time, e.action, e.event_id), e.reason
	  FROM pg_temp.msp_emr e WHERE e.reason IS NOT NULL;
	GET DIAGNOSTICS rejected = ROW_COUNT;
	DELETE FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id;
	DROP TABLE pg_temp.msp_emr;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_load_emr_audit(bigint, text) IS
	'loads a client''s staged EMR access audit rows as application logons (a time with an offset, Z or a zone name is that instant; one without is the client''s local time)';

-- The loading roles may only INSERT into the stage, so without this only
-- the owner could empty it.  A loader rejects each bad record and empties
-- the stage, so a load that fails should not happen; if one ever does (a
-- bug, a constraint added later), the stage stays as it was and every
-- later load of the client fails the same way: this sets the client's
-- staged rows aside in load_rejects (reason 'discarded', with the raw
-- record, as who discarded them) so the next export can load.
CREATE FUNCTION @extschema@.msp_discard_staged(client_id bigint, OUT windows bigint, OUT entra bigint, OUT emr bigint)
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	why text := 'discarded by ' || session_user;
BEGIN
	-- a load of the same client in progress finishes first
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.load'), hashtext(client_id::text));
	WITH gone AS (DELETE FROM @extschema@.windows_event_staging s WHERE s.client_id = client_id RETURNING s.line_no, s.raw),
	ins AS (INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
			SELECT client_id, 'windows', g.line_no, g.raw, why FROM gone g RETURNING 1)
	SELECT count(*) INTO windows FROM ins;
	WITH gone AS (DELETE FROM @extschema@.entra_signin_staging s WHERE s.client_id = client_id RETURNING s.line_no, s.raw),
	ins AS (INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
			SELECT client_id, 'entra', g.line_no, g.raw, why FROM gone g RETURNING 1)
	SELECT count(*) INTO entra FROM ins;
	WITH gone AS (DELETE FROM @extschema@.emr_audit_staging s WHERE s.client_id = client_id
				  RETURNING s.line_no, concat_ws(',', s.user_name, s.workstation, s.event_time, s.action, s.event_id) AS raw),
	ins AS (INSERT INTO @extschema@.load_rejects (client_id, source, line_no, raw, reason)
			SELECT client_id, 'emr', g.line_no, g.raw, why FROM gone g RETURNING 1)
	SELECT count(*) INTO emr FROM ins;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_discard_staged(bigint) IS
	'sets a client''s staged rows aside in load_rejects (reason discarded) when a load cannot consume them; for mspbill_admin and mspbill_billing';
-- Privacy and tenancy: the HIPAA shared-logon audit, people's real names
-- behind a role, the extension's roles, and row-level security per client.
-- Readers act with their own rights: what they may see is decided by
-- grants and policies.  The few functions that write what their callers may
-- not write themselves (loaders, finalization, adjustments) are SECURITY
-- DEFINER, callable only by mspbill_billing and mspbill_admin.

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
LANGUAGE sql STABLE PARALLEL SAFE
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
LANGUAGE sql STABLE PARALLEL SAFE
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
		   (SELECT coalesce(array_agg(DISTINCT application ORDER BY application), '{}') FROM v)
	  -- no row for a client the reader may not see
	  FROM c;
END;
COMMENT ON FUNCTION @extschema@.msp_pii_audit_summary(bigint, daterange) IS
	'per client: shared sessions, those that broke the individual-login rule, devices and applications involved';

-- Each role sees its own client mappings, which the policies below read
-- for every reader: so everyone may select, and sees only their own rows.
-- Roles are matched through pg_roles, so that a row naming a dropped role
-- is simply nobody's (pg_has_role on a missing name would be an error in
-- every reader's query).
ALTER TABLE @extschema@.bi_client_access ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC;
CREATE POLICY own_rows ON @extschema@.bi_client_access
	USING ((SELECT @extschema@.msp_sees_all_clients())
		   OR role_name = ANY (ARRAY(SELECT r.rolname FROM pg_catalog.pg_roles r
									  WHERE pg_catalog.pg_has_role(r.oid, 'MEMBER'))));
COMMENT ON POLICY own_rows ON @extschema@.bi_client_access IS
	'each role sees the mappings of the roles it belongs to; admins and billing see all';

-- Row-level security: every client-keyed table shows a reader only the
-- clients they may see (msp_can_see_client).  The checks run once per
-- query (initplans), not once per row.  The staging tables are the
-- exception: COPY FROM cannot write a table with row-level security, so
-- nobody but the loaders (SECURITY DEFINER) may read them at all.
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['clients', 'contracts', 'contract_tiers', 'devices', 'people', 'accounts',
							 'logons', 'logons_default', 'support_contacts', 'cost_pools', 'license_counts',
							 'invoices', 'invoice_items', 'audit_log', 'load_rejects', 'applications',
							 'person_identities']
	LOOP
		EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', t);
		EXECUTE format('COMMENT ON POLICY client_rows ON @extschema@.%I IS %L', t,
					   'the rows of the clients the reader may see (msp_sees_all_clients, else bi_client_access)');
	END LOOP;
END
$$;

-- A view runs with its owner's rights: without a barrier, a cheap function
-- of the reader's in the WHERE clause would run before the view's own
-- client filter and see every client's accounts.
ALTER VIEW @extschema@.account_labels SET (security_barrier = true);

-- Reports for the sealed BI role (mspbill_report), which holds no grant on
-- any table: so EXPLAIN ANALYZE, statistics views and error messages have
-- no base table of its to describe.  These run as the owner and check the
-- login: a SECURITY DEFINER function cannot see its caller's current role,
-- only session_user, so clients are mapped to the login (or a role the
-- login belongs to) in bi_client_access.
CREATE FUNCTION @extschema@.msp_report_clients() RETURNS bigint[]
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
RETURN ARRAY(SELECT b.client_id FROM @extschema@.bi_client_access b
			   JOIN pg_catalog.pg_roles r ON r.rolname = b.role_name
			  WHERE pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER')
			  ORDER BY b.client_id);
COMMENT ON FUNCTION @extschema@.msp_report_clients() IS
	'the clients mapped in bi_client_access to the session''s login or a role it belongs to';

-- An unmapped client is as unknown as one that does not exist.
CREATE FUNCTION @extschema@.msp_report_require(client_id bigint) RETURNS void
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	IF client_id IS NULL OR NOT client_id = ANY (msp_report_clients()) THEN
		RAISE EXCEPTION 'unknown client %', client_id
			USING ERRCODE = 'no_data_found',
				  HINT = 'Map the login to the client in mspbill.bi_client_access.';
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_require(bigint) IS
	'an error unless the session''s login is mapped to the client';

CREATE FUNCTION @extschema@.msp_report_invoices()
RETURNS TABLE (client_id bigint, invoice_id bigint, kind text, period daterange, adjusts_invoice_id bigint,
			   apply_period daterange, reason text, model text, users integer, seats integer, devices integer,
			   subtotal numeric, total numeric, currency char(3), evidence jsonb, finalized_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
BEGIN ATOMIC
	SELECT i.client_id, i.invoice_id, i.kind, i.period, i.adjusts_invoice_id, i.apply_period, i.reason, i.model,
		   i.users, i.seats, i.devices, i.subtotal, i.total, i.currency, i.evidence, i.finalized_at
	  FROM @extschema@.invoices i
	 WHERE i.client_id = ANY (@extschema@.msp_report_clients())
	 ORDER BY i.client_id, i.invoice_id;
END;
COMMENT ON FUNCTION @extschema@.msp_report_invoices() IS
	'for mspbill_report: the finalized invoices and adjustment notes of the clients mapped to the login';

CREATE FUNCTION @extschema@.msp_report_invoice(client_id bigint, period daterange DEFAULT NULL)
RETURNS @extschema@.invoice
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	PERFORM msp_report_require(client_id);
	RETURN msp_invoice(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_invoice(bigint, daterange) IS
	'for mspbill_report: msp_invoice() of a client mapped to the login';

CREATE FUNCTION @extschema@.msp_report_invoice_lines(client_id bigint, period daterange DEFAULT NULL)
RETURNS SETOF @extschema@.invoice_line
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	PERFORM msp_report_require(client_id);
	RETURN QUERY SELECT * FROM msp_invoice_lines(client_id, period);
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_invoice_lines(bigint, daterange) IS
	'for mspbill_report: msp_invoice_lines() of a client mapped to the login';

CREATE FUNCTION @extschema@.msp_report_billable_users(client_id bigint, period daterange DEFAULT NULL)
RETURNS TABLE (contract_id bigint, person_id bigint, pseudonym text, rule text, first_seen timestamptz,
			   last_seen timestamptz, days_active integer, support_contacts integer, accounts text[],
			   home_client_id bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
BEGIN
	PERFORM msp_report_require(client_id);
	-- home_client_id names a sister client whose person this client pays
	-- for: the client's own invoice evidence carries it too
	RETURN QUERY SELECT u.contract_id, u.person_id, u.pseudonym, u.rule, u.first_seen, u.last_seen,
						u.days_active, u.support_contacts, u.accounts, u.home_client_id
				   FROM msp_billable_users(client_id, period) u;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_report_billable_users(bigint, daterange) IS
	'for mspbill_report: msp_billable_users() of a client mapped to the login, with pseudonymous account labels';

-- The functions that write on their callers' behalf.
REVOKE EXECUTE ON FUNCTION @extschema@.msp_finalize_invoice(bigint, daterange, text[]),
	@extschema@.msp_issue_adjustment(bigint, daterange, text),
	@extschema@.msp_load_windows_events(bigint, text),
	@extschema@.msp_load_entra_signins(bigint, text),
	@extschema@.msp_load_emr_audit(bigint, text),
	@extschema@.msp_discard_staged(bigint),
	@extschema@.msp_load_begin(bigint),
	@extschema@.msp_load_normalized(bigint, text),
	@extschema@.msp_load_guarded(text, text, bigint, bigint, bigint),
	@extschema@.msp_load_normalized_guarded(bigint, text, text),
	@extschema@.msp_report_invoices(),
	@extschema@.msp_report_invoice(bigint, daterange),
	@extschema@.msp_report_invoice_lines(bigint, daterange),
	@extschema@.msp_report_billable_users(bigint, daterange)
	FROM PUBLIC;

-- The roles.  Roles belong to the whole cluster, not to one database, so
-- the extension does not create them on its own: a DBA runs
-- SELECT mspbill.msp_install_roles(); (again after upgrades; it is idempotent).
-- Each role gets the verbs its workflow needs and no more: nobody but the
-- owner holds TRIGGER, REFERENCES or TRUNCATE (a trigger runs with the
-- rights of whoever fires it), and nobody writes invoices, their lines or
-- the audit log except through msp_finalize_invoice and msp_issue_adjustment.
--   mspbill_admin    maintains every client's data, loads, finalizes and
--                    adjusts; maps BI roles; is mspbill_pii
--   mspbill_billing  the same without real names: no accounts.name, no raw
--                    records (staging, load_rejects.raw), no person_identities
--   mspbill_bi       reads billing data (not real names, not raw records) of
--                    the clients mapped in bi_client_access
--   mspbill_pii      may read real names (person_identities, account names,
--                    rejected raw records) of the clients mapped to it
--   mspbill_report   a sealed BI role: no table at all, only the msp_report_*
--                    functions, for the clients mapped to the login
CREATE FUNCTION @extschema@.msp_install_roles() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
DECLARE
	r text;
	roles text := 'mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii, mspbill_report';
	-- the tables people maintain by hand (or by script)
	data_tables text := '@extschema@.clients, @extschema@.contracts, @extschema@.contract_tiers, '
						'@extschema@.devices, @extschema@.people, @extschema@.logons, @extschema@.support_contacts, '
						'@extschema@.cost_pools, @extschema@.license_counts, @extschema@.applications';
	billed_tables text := '@extschema@.invoices, @extschema@.invoice_items';
	staging text := '@extschema@.windows_event_staging, @extschema@.entra_signin_staging, @extschema@.emr_audit_staging';
	staging_seqs text := '@extschema@.windows_event_staging_line_no_seq, @extschema@.entra_signin_staging_line_no_seq, '
						 '@extschema@.emr_audit_staging_line_no_seq';
	writers text := '@extschema@.msp_finalize_invoice(bigint, daterange, text[]), '
					'@extschema@.msp_issue_adjustment(bigint, daterange, text), '
					'@extschema@.msp_load_windows_events(bigint, text), '
					'@extschema@.msp_load_entra_signins(bigint, text), '
					'@extschema@.msp_load_emr_audit(bigint, text), '
					'@extschema@.msp_discard_staged(bigint)';
	reports text := '@extschema@.msp_report_invoices(), @extschema@.msp_report_invoice(bigint, daterange), '
					'@extschema@.msp_report_invoice_lines(bigint, daterange), '
					'@extschema@.msp_report_billable_users(bigint, daterange)';
	account_cols text := 'client_id, account_id, realm, kind, person_id, application, is_machine';
	-- reporting (src/reporting.sql): rollups and KPI views to read, and the
	-- definer functions that alone write the rollups
	reporting text := '@extschema@.daily_activity, @extschema@.period_invoices, @extschema@.pii_findings, '
					  '@extschema@.reporting_clients, @extschema@.kpi_daily_activity, @extschema@.kpi_billable_users, '
					  '@extschema@.kpi_license_utilization, @extschema@.kpi_margin, @extschema@.kpi_margin_per_user, '
					  '@extschema@.kpi_hipaa_findings, @extschema@.kpi_data_quality';
	refreshers text := '@extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups()';
BEGIN
	FOREACH r IN ARRAY string_to_array(replace(roles, ' ', ''), ',') LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
		EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', r);
	END LOOP;
	-- start from nothing, so that a rerun after an upgrade also takes back
	-- what earlier versions granted (GRANT ALL, writes to invoices)
	EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', roles);
	EXECUTE format('REVOKE ALL ON FUNCTION %s, %s, %s FROM %s', writers, reports, refreshers, roles);
	EXECUTE 'GRANT SELECT ON @extschema@.bi_client_access TO PUBLIC';

	-- admin: every client's data, real names and raw records
	EXECUTE 'GRANT mspbill_pii TO mspbill_admin';
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, @extschema@.accounts, @extschema@.person_identities, '
				   '@extschema@.bi_client_access, @extschema@.load_rejects TO mspbill_admin', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_admin', billed_tables);
	EXECUTE format('GRANT INSERT ON %s TO mspbill_admin, mspbill_billing', staging);
	EXECUTE format('GRANT USAGE ON %s, @extschema@.logons_logon_id_seq TO mspbill_admin, mspbill_billing', staging_seqs);
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', writers);

	-- billing: the same workflow on pseudonyms only
	EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO mspbill_billing', data_tables);
	EXECUTE format('GRANT SELECT ON %s, @extschema@.audit_log TO mspbill_billing', billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_billing', account_cols);
	-- new accounts may be named (write-only), mapped and removed
	EXECUTE 'GRANT INSERT, DELETE ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT UPDATE (kind, person_id) ON @extschema@.accounts TO mspbill_billing';
	EXECUTE 'GRANT SELECT (client_id, source, line_no, reason, rejected_at), DELETE ON @extschema@.load_rejects TO mspbill_billing';

	-- bi: billing data of its clients, read-only, without names
	EXECUTE format('GRANT SELECT ON %s, %s TO mspbill_bi', data_tables, billed_tables);
	EXECUTE format('GRANT SELECT (%s) ON @extschema@.accounts TO mspbill_bi', account_cols);

	-- pii: real names and raw records of its clients
	EXECUTE 'GRANT SELECT ON @extschema@.person_identities, @extschema@.load_rejects TO mspbill_pii';
	EXECUTE 'GRANT SELECT (client_id, account_id, name) ON @extschema@.accounts TO mspbill_pii';

	EXECUTE 'GRANT SELECT ON @extschema@.account_labels TO mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii';

	-- reporting: the roles that read billing data read the rollups and KPI
	-- views (rows of their clients only); those who write logons mark
	-- days (the logons trigger runs as them; marked_at is the server's) and
	-- refresh, as cron would, through the definer functions only
	EXECUTE format('GRANT SELECT ON %s TO mspbill_admin, mspbill_billing, mspbill_bi', reporting);
	EXECUTE 'GRANT INSERT (client_id, day) ON @extschema@.rollup_dirty TO mspbill_admin, mspbill_billing';
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_admin, mspbill_billing', refreshers);

	-- report: functions only (see msp_report_invoices)
	EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO mspbill_report', reports);
	RETURN 'roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report are ready';
END
$$;
-- for DBAs only: it creates roles and grants
REVOKE EXECUTE ON FUNCTION @extschema@.msp_install_roles() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_install_roles() IS
	'creates (if missing) and grants the roles mspbill_admin, mspbill_billing, mspbill_bi, mspbill_pii and mspbill_report; idempotent';
-- Reporting a BI tool can be given: rollup tables the extension keeps
-- current, with the same row-level security as the base tables, and KPI
-- views over them that show a reader only the clients they may see.
--
-- Rollups:  daily_activity   per client and local day: people, devices,
--                            shared-account sessions (usersets)
--           period_invoices  per client and calendar month: the invoice
--                            figures, status and drift, the billable people
--           pii_findings     per client and month: the HIPAA audit's findings
-- Loaders and late data mark the (client, day) pairs they touch in
-- rollup_dirty (statement triggers with transition tables, so set-based
-- loads stay set-based); msp_refresh_rollups() recomputes only those, and
-- msp_rebuild_rollups() recomputes everything with the same code.
--
-- The dependency on the tenancy helpers (msp_sees_all_clients,
-- msp_visible_clients) lives in two places only: the policy loop and the
-- reporting_clients view below.

-- An append-only log, not a set: with a unique key, two loads of the same
-- day (or a load and a finalization) would wait for each other's commit.
-- A mark commits with the change it marks, so a refresh either sees both
-- or leaves the mark for the next run.
CREATE TABLE @extschema@.rollup_dirty (
	client_id bigint NOT NULL,
	day date NOT NULL,
	marked_at timestamptz NOT NULL DEFAULT now(),
	-- a mark of a day no logon or period can have (300000-01-01) would make
	-- every refresh fail until a rebuild; the loaders accept no time before
	-- 1990-01-01 UTC, whose local day is 1989-12-31 west of Greenwich, and
	-- 9999-12-31 keeps every day's arithmetic far from overflow
	CONSTRAINT rollup_dirty_day_plausible CHECK (day >= '1989-12-31' AND day <= '9999-12-31')
);
COMMENT ON CONSTRAINT rollup_dirty_day_plausible ON @extschema@.rollup_dirty IS
	'marked days lie from 1989-12-31 to 9999-12-31, so that no mark can make a refresh fail';
CREATE INDEX rollup_dirty_pair_idx ON @extschema@.rollup_dirty (client_id, day);
COMMENT ON TABLE @extschema@.rollup_dirty IS
	'(client, local day) pairs whose rollups are stale, one row per marking statement; msp_refresh_rollups() consumes them';

CREATE TABLE @extschema@.daily_activity (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	day date NOT NULL,
	people @extschema@.userset NOT NULL,
	devices @extschema@.userset NOT NULL,
	shared_accounts @extschema@.userset NOT NULL,
	shared_sessions integer NOT NULL,
	logons bigint NOT NULL,
	PRIMARY KEY (client_id, day)
);
COMMENT ON TABLE @extschema@.daily_activity IS
	'rollup per client and local day: people with presence logons of their own accounts, devices seen, shared accounts used and their sessions, logons';

CREATE TABLE @extschema@.period_invoices (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	period daterange NOT NULL,
	status text NOT NULL CONSTRAINT period_invoices_status_known
		CHECK (status IN ('preview', 'finalized', 'unpriced')),
	model text,
	users integer,
	seats integer,
	devices integer,
	subtotal numeric,
	total numeric,
	currency char(3),
	drift numeric,
	billable @extschema@.userset,
	sister_billable jsonb,
	note text,
	PRIMARY KEY (client_id, period)
);
COMMENT ON TABLE @extschema@.period_invoices IS
	'rollup per client and calendar month: msp_invoice() figures, preview or finalized, drift since finalization, the billable people (billable: the client''s own, by person_id; sister_billable: sister clients'' people it pays for, as [{home_client_id, person_id, pseudonym}]); unpriced with the reason when the month cannot be billed';

CREATE TABLE @extschema@.pii_findings (
	client_id bigint NOT NULL REFERENCES @extschema@.clients ON DELETE CASCADE,
	period daterange NOT NULL,
	device text NOT NULL,
	account text NOT NULL,
	application text NOT NULL,
	session_start timestamptz NOT NULL,
	session_end timestamptz NOT NULL,
	uses integer NOT NULL
);
-- not unique: two sessions of one shared account may start at the same instant
CREATE INDEX pii_findings_period_idx ON @extschema@.pii_findings (client_id, period);
COMMENT ON TABLE @extschema@.pii_findings IS
	'rollup per client and month of msp_pii_audit(): shared-account sessions that used a PII application without an individual login';

-- Rollups are derived, but a restore should not start from nothing; the
-- dirty pairs are not kept (restored logons mark their days again).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.daily_activity', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.period_invoices', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.pii_findings', '');

-- The clients' own policy on every rollup, as on the base tables.
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['rollup_dirty', 'daily_activity', 'period_invoices', 'pii_findings']
	LOOP
		EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY client_rows ON @extschema@.%I USING ((SELECT @extschema@.msp_sees_all_clients()) OR client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[])))', t);
		EXECUTE format('COMMENT ON POLICY client_rows ON @extschema@.%I IS %L', t,
					   'a reader sees the rows of the clients they may see, as on the base tables');
	END LOOP;
END
$$;

-- Mark the local days of changed logons (msp_local_day's expression,
-- written out: a function call per row would slow bulk loads).  It runs
-- as whoever writes the logons: the loaders, which run as the owner
-- already, or mspbill_admin and mspbill_billing, who are granted INSERT
-- on rollup_dirty's two columns for it (a mark only asks for a
-- recomputation), so it needs no SECURITY DEFINER.
CREATE FUNCTION @extschema@.msp_mark_logon_days() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	-- the logon's own client, and the client that pays for its person (a
	-- sister client's person is billed there, on the payer's local day)
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
		INSERT INTO rollup_dirty AS d (client_id, day)
		SELECT DISTINCT n.client_id, (n.at AT TIME ZONE c.time_zone)::date
		  FROM new_rows n JOIN clients c ON c.client_id = n.client_id
		UNION
		SELECT p.bill_to_client_id, (n.at AT TIME ZONE c.time_zone)::date
		  FROM new_rows n
		  JOIN accounts a ON a.client_id = n.client_id AND a.account_id = n.account_id
		  JOIN people p ON p.client_id = a.client_id AND p.person_id = a.person_id
		  JOIN clients c ON c.client_id = p.bill_to_client_id
		 WHERE p.bill_to_client_id <> n.client_id
		 ORDER BY 1, 2;
	END IF;
	IF TG_OP IN ('DELETE', 'UPDATE') THEN
		INSERT INTO rollup_dirty AS d (client_id, day)
		SELECT DISTINCT o.client_id, (o.at AT TIME ZONE c.time_zone)::date
		  FROM old_rows o JOIN clients c ON c.client_id = o.client_id
		UNION
		SELECT p.bill_to_client_id, (o.at AT TIME ZONE c.time_zone)::date
		  FROM old_rows o
		  JOIN accounts a ON a.client_id = o.client_id AND a.account_id = o.account_id
		  JOIN people p ON p.client_id = a.client_id AND p.person_id = a.person_id
		  JOIN clients c ON c.client_id = p.bill_to_client_id
		 WHERE p.bill_to_client_id <> o.client_id
		 ORDER BY 1, 2;
	END IF;
	RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_mark_logon_days() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_mark_logon_days() IS
	'trigger: marks the (client, local day) pairs of inserted, updated or deleted logons, and those of the clients paying for their people, for msp_refresh_rollups()';

CREATE TRIGGER mark_rollups_insert AFTER INSERT ON @extschema@.logons
	REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_mark_logon_days();
CREATE TRIGGER mark_rollups_update AFTER UPDATE ON @extschema@.logons
	REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_mark_logon_days();
CREATE TRIGGER mark_rollups_delete AFTER DELETE ON @extschema@.logons
	REFERENCING OLD TABLE AS old_rows
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_mark_logon_days();
COMMENT ON TRIGGER mark_rollups_insert ON @extschema@.logons IS 'marks the days of inserted logons for msp_refresh_rollups()';
COMMENT ON TRIGGER mark_rollups_update ON @extschema@.logons IS 'marks the old and new days of updated logons for msp_refresh_rollups()';
COMMENT ON TRIGGER mark_rollups_delete ON @extschema@.logons IS 'marks the days of deleted logons for msp_refresh_rollups()';

-- Finalizing or adjusting changes a month's status, drift or total: mark
-- the first day of the period (and of the period an adjustment rides on).
-- Invoices are written only by msp_finalize_invoice and
-- msp_issue_adjustment, which run as the owner: no SECURITY DEFINER here.
CREATE FUNCTION @extschema@.msp_mark_invoice_periods() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp
AS $$
BEGIN
	INSERT INTO rollup_dirty AS d (client_id, day)
	SELECT DISTINCT n.client_id, x.day
	  FROM new_rows n,
		   LATERAL (VALUES (lower(n.period)), (lower(n.apply_period))) x(day)
	 WHERE x.day IS NOT NULL
	 ORDER BY 1, 2;
	RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION @extschema@.msp_mark_invoice_periods() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.msp_mark_invoice_periods() IS
	'trigger: marks the months of finalized invoices and adjustment notes for msp_refresh_rollups()';

CREATE TRIGGER mark_rollups AFTER INSERT ON @extschema@.invoices
	REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.msp_mark_invoice_periods();
COMMENT ON TRIGGER mark_rollups ON @extschema@.invoices IS 'marks the months of finalized invoices and adjustments for msp_refresh_rollups()';

-- Anything else that changes what a month bills (contracts, people,
-- devices, accounts, cost pools, licences, applications) is marked by
-- calling this; msp_rebuild_rollups() needs no marks at all.
CREATE FUNCTION @extschema@.msp_mark_rollups_dirty(client_id bigint, days daterange)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	n integer;
BEGIN
	-- an infinite bound (''[2026-10-01,infinity)'') is not upper_inf, and
	-- would generate days until statement_timeout
	IF isempty(days) OR lower_inf(days) OR upper_inf(days) OR NOT isfinite(lower(days)) OR NOT isfinite(upper(days)) THEN
		RAISE EXCEPTION 'days % are empty or unbounded', days
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass a bounded range such as daterange(''2026-10-01'', ''2026-11-01'').';
	END IF;
	IF lower(days) < '1989-12-31' OR upper(days) > '10000-01-01' THEN
		RAISE EXCEPTION 'days % lie outside 1989-12-31 to 9999-12-31', days
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'No logon before 1990 is loaded, and rollups are kept for days up to 9999-12-31.',
				  HINT = 'Mark only the days whose billing changed.';
	END IF;
	INSERT INTO rollup_dirty AS d (client_id, day)
	SELECT client_id, g::date FROM generate_series(lower(days), upper(days) - 1, interval '1 day') g;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_mark_rollups_dirty(bigint, daterange) IS
	'marks a client''s days for the next msp_refresh_rollups(), after changes the triggers do not see (contracts, accounts, cost pools...)';

-- The daily rows of a set of (client, day) pairs, from the logons.  Each
-- pair reads its day's logons by index, widened by three hours for the
-- daylight-saving shifts, and keeps exactly the logons whose local day it
-- is: the same rule the triggers mark by.
CREATE FUNCTION @extschema@.msp_daily_activity_of(client_ids bigint[], days date[])
RETURNS SETOF @extschema@.daily_activity
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = @extschema@, pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT p.client_id, p.day,
		   userset_agg(a.person_id) FILTER (WHERE l.presence AND a.kind = 'individual' AND NOT a.is_machine),
		   userset_agg(l.device_id),
		   userset_agg(l.account_id) FILTER (WHERE l.presence AND a.kind = 'shared' AND NOT a.is_machine),
		   (count(*) FILTER (WHERE l.presence AND a.kind = 'shared' AND NOT a.is_machine))::integer,
		   count(*)
	  FROM (SELECT DISTINCT u.client_id, u.day FROM unnest(client_ids, days) u(client_id, day)) p
	  JOIN clients c ON c.client_id = p.client_id
	  JOIN logons l ON l.client_id = p.client_id
				   AND l.at >= ((p.day::timestamp - interval '3 hours') AT TIME ZONE c.time_zone)
				   AND l.at < (((p.day + 1)::timestamp + interval '3 hours') AT TIME ZONE c.time_zone)
				   AND msp_local_day(l.at, c.time_zone) = p.day
	  JOIN accounts a ON a.client_id = l.client_id AND a.account_id = l.account_id
	 GROUP BY p.client_id, p.day;
END;
COMMENT ON FUNCTION @extschema@.msp_daily_activity_of(bigint[], date[]) IS
	'the daily_activity rows of the given (client, day) pairs, computed from the logons';

-- Recompute one client's month: the invoice figures, the billable people
-- and the HIPAA findings.  A month is kept while it has logons or a
-- finalized invoice.  A month that cannot be billed (no contract, a gap,
-- a currency mismatch) is kept as 'unpriced' with the reason, so that one
-- client's bad data never stops the others' refresh.
CREATE FUNCTION @extschema@.msp_rollup_period(client_id bigint, period daterange) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	fin invoices;
	inv invoice;
	who userset;
	sisters jsonb;
	drift numeric;
BEGIN
	-- two refreshes that reach the same month take turns
	PERFORM pg_advisory_xact_lock(hashtext('mspbill.rollup_period'), hashtext(client_id::text || period::text));
	DELETE FROM period_invoices p WHERE p.client_id = client_id AND p.period = period;
	DELETE FROM pii_findings f WHERE f.client_id = client_id AND f.period = period;
	fin := msp_finalized_invoice(client_id, period);
	IF fin.invoice_id IS NULL
	   AND NOT EXISTS (SELECT 1 FROM daily_activity d
					    WHERE d.client_id = client_id AND d.day >= lower(period) AND d.day < upper(period)) THEN
		RETURN;
	END IF;
	BEGIN
		inv := msp_invoice(client_id, period);
		-- person ids are per client: a sister client's person billed here is
		-- kept apart with its home client, or it could merge with (or
		-- stand for) one of this client's own people of the same id
		IF fin.invoice_id IS NOT NULL THEN
			SELECT userset_agg(b.person) FILTER (WHERE b.home = client_id),
				   coalesce(jsonb_agg(jsonb_build_object('home_client_id', b.home, 'person_id', b.person,
														 'pseudonym', b.pseudonym) ORDER BY b.home, b.person)
							FILTER (WHERE b.home <> client_id), '[]')
			  INTO who, sisters
			  FROM (SELECT DISTINCT coalesce((e ->> 'home_client_id')::bigint, client_id) AS home,
						   (e ->> 'person_id')::bigint AS person, e ->> 'pseudonym' AS pseudonym
					  FROM jsonb_array_elements(fin.evidence) e) b;
			drift := (SELECT coalesce(sum(d.difference), 0) FROM msp_invoice_drift(client_id, period) d);
		ELSE
			SELECT userset_agg(b.person) FILTER (WHERE b.home = client_id),
				   coalesce(jsonb_agg(jsonb_build_object('home_client_id', b.home, 'person_id', b.person,
														 'pseudonym', b.pseudonym) ORDER BY b.home, b.person)
							FILTER (WHERE b.home <> client_id), '[]')
			  INTO who, sisters
			  FROM (SELECT DISTINCT coalesce(u.home_client_id, client_id) AS home, u.person_id AS person,
						   u.pseudonym
					  FROM msp_billable_users(client_id, period) u) b;
		END IF;
		INSERT INTO period_invoices (client_id, period, status, model, users, seats, devices, subtotal, total,
									 currency, drift, billable, sister_billable)
		VALUES (client_id, period, CASE WHEN fin.invoice_id IS NULL THEN 'preview' ELSE 'finalized' END,
				inv.model, inv.users, inv.seats, inv.devices, inv.subtotal, inv.total, inv.currency, drift, who,
				sisters);
		INSERT INTO pii_findings (client_id, period, device, account, application, session_start, session_end, uses)
		SELECT client_id, period, a.device, a.account, a.application, a.session_start, a.session_end, a.uses
		  FROM msp_pii_audit(client_id, period) a;
	EXCEPTION WHEN data_exception OR no_data_found THEN
		INSERT INTO period_invoices (client_id, period, status, note)
		VALUES (client_id, period, 'unpriced', SQLERRM);
	END;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_rollup_period(bigint, daterange) IS
	'recomputes the period_invoices and pii_findings rows of one client and month';

-- Recompute the rollups of a set of (client, day) pairs, one client and
-- month at a time under that month's lock (taken in client and month
-- order, so that concurrent refreshes never deadlock): the days' rows,
-- then the month.  Two refreshes holding marks of the same day take turns,
-- and the second sees the first one's rows.
CREATE FUNCTION @extschema@.msp_rollup_days(client_ids bigint[], days date[], OUT days_done integer,
											OUT periods_done integer)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
DECLARE
	m record;
	period daterange;
BEGIN
	days_done := (SELECT count(DISTINCT (u.client_id, u.day)) FROM unnest(client_ids, days) u(client_id, day));
	periods_done := 0;
	FOR m IN
		SELECT u.client_id, date_trunc('month', u.day)::date AS first_day,
			   array_agg(DISTINCT u.day) AS month_days
		  FROM unnest(client_ids, days) u(client_id, day)
		  JOIN clients c ON c.client_id = u.client_id
		 GROUP BY 1, 2
		 ORDER BY 1, 2
	LOOP
		period := daterange(m.first_day, (m.first_day + interval '1 month')::date);
		PERFORM pg_advisory_xact_lock(hashtext('mspbill.rollup_period'), hashtext(m.client_id::text || period::text));
		DELETE FROM daily_activity a WHERE a.client_id = m.client_id AND a.day = ANY (m.month_days);
		INSERT INTO daily_activity
		SELECT * FROM msp_daily_activity_of(array_fill(m.client_id, ARRAY[cardinality(m.month_days)]), m.month_days);
		PERFORM msp_rollup_period(m.client_id, period);
		periods_done := periods_done + 1;
	END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_rollup_days(bigint[], date[]) IS
	'recomputes the daily rows of the given (client, day) pairs and the months they fall in';

-- Refreshing and rebuilding write the rollups, which BI readers trust as
-- they trust invoices: so, like invoices, they are written only through
-- these two functions, which run as the owner (SECURITY DEFINER: the owner
-- sees every client, so the figures never depend on who refreshes) and
-- are executable only by mspbill_admin and mspbill_billing (granted in
-- msp_install_roles), e.g. from cron.  Stored labels are pseudonymous, as
-- in finalized evidence, whoever runs them.  Names are schema-qualified;
-- the internals they call pin their own search_path.

-- Recompute the pairs marked dirty.  Safe to run from several sessions at
-- once: each takes the marks no one else holds (SKIP LOCKED); the marks of
-- loads not yet committed are not visible, and wait for the next run.
CREATE FUNCTION @extschema@.msp_refresh_rollups(OUT days integer, OUT periods integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
DECLARE
	cids bigint[];
	ds date[];
BEGIN
	-- shared with other refreshes, exclusive against a rebuild
	PERFORM pg_catalog.pg_advisory_xact_lock_shared(pg_catalog.hashtext('mspbill.rollups'));
	WITH taken AS (
		DELETE FROM @extschema@.rollup_dirty d
		 USING (SELECT x.ctid AS row_id FROM @extschema@.rollup_dirty x FOR UPDATE SKIP LOCKED) free
		 WHERE d.ctid OPERATOR(pg_catalog.=) free.row_id
		RETURNING d.client_id, d.day)
	SELECT coalesce(pg_catalog.array_agg(t.client_id), '{}'), coalesce(pg_catalog.array_agg(t.day), '{}')
	  INTO cids, ds FROM taken t;
	SELECT r.days_done, r.periods_done INTO days, periods FROM @extschema@.msp_rollup_days(cids, ds) r;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_refresh_rollups() IS
	'recomputes the rollups of the (client, day) pairs marked dirty since the last refresh; safe to run concurrently, e.g. from cron or pg_cron; for mspbill_admin and mspbill_billing';

CREATE FUNCTION @extschema@.msp_rebuild_rollups(OUT days integer, OUT periods integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @extschema@, pg_temp
SET mspbill.pseudonymous = on
AS $$
DECLARE
	cids bigint[];
	ds date[];
BEGIN
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('mspbill.rollups'));
	DELETE FROM @extschema@.rollup_dirty;
	DELETE FROM @extschema@.daily_activity;
	DELETE FROM @extschema@.period_invoices;
	DELETE FROM @extschema@.pii_findings;
	-- every day with logons, and the first day of every finalized month
	SELECT coalesce(pg_catalog.array_agg(x.client_id), '{}'), coalesce(pg_catalog.array_agg(x.day), '{}') INTO cids, ds
	  FROM (SELECT DISTINCT l.client_id, @extschema@.msp_local_day(l.at, c.time_zone) AS day
			  FROM @extschema@.logons l JOIN @extschema@.clients c ON c.client_id OPERATOR(pg_catalog.=) l.client_id
			UNION
			SELECT i.client_id, pg_catalog.date_trunc('month', pg_catalog.lower(i.period))::date
			  FROM @extschema@.invoices i WHERE i.kind OPERATOR(pg_catalog.=) 'invoice') x;
	SELECT r.days_done, r.periods_done INTO days, periods FROM @extschema@.msp_rollup_days(cids, ds) r;
END
$$;
COMMENT ON FUNCTION @extschema@.msp_rebuild_rollups() IS
	'recomputes every rollup from the base tables (the same rows an incremental refresh keeps); takes a lock that waits for running refreshes; for mspbill_admin and mspbill_billing';

-- the definer functions, and the internals that only they call
REVOKE EXECUTE ON FUNCTION @extschema@.msp_refresh_rollups(), @extschema@.msp_rebuild_rollups(),
	@extschema@.msp_rollup_days(bigint[], date[]), @extschema@.msp_rollup_period(bigint, daterange)
	FROM PUBLIC;

-- ---------------------------------------------------------------------
-- KPI views.  Each is security_barrier and joins reporting_clients, the one
-- place that asks which clients the reader may see; the views read the
-- rollups with their owner's rights, so this filter is what protects them.
-- No column is of type userset: sets come as bigint[] and counts, which any
-- BI tool reads.

CREATE VIEW @extschema@.reporting_clients WITH (security_barrier) AS
SELECT c.client_id, c.name AS client_name, c.currency, c.minor_unit, c.time_zone
  FROM @extschema@.clients c
 WHERE (SELECT @extschema@.msp_sees_all_clients())
	OR c.client_id = ANY (CAST((SELECT @extschema@.msp_visible_clients()) AS bigint[]));
COMMENT ON VIEW @extschema@.reporting_clients IS
	'the clients the current user may see, with name, currency and time zone; every KPI view joins it';

CREATE VIEW @extschema@.kpi_daily_activity WITH (security_barrier) AS
SELECT d.client_id, rc.client_name, d.day,
	   @extschema@.cardinality(d.people)::integer AS people_active,
	   @extschema@.cardinality(d.devices)::integer AS devices_seen,
	   d.shared_sessions,
	   @extschema@.cardinality(d.shared_accounts)::integer AS shared_accounts_used,
	   d.logons,
	   @extschema@.userset_to_array(d.people) AS person_ids
  FROM @extschema@.daily_activity d
  JOIN @extschema@.reporting_clients rc ON rc.client_id = d.client_id;
COMMENT ON VIEW @extschema@.kpi_daily_activity IS
	'per client and local day: people active, devices seen, shared-account sessions and logons; person_ids as bigint[]';

-- Who joined and who left are counted and listed on one set, the people
-- the invoice counts (billable_users): the client's own and the sister
-- clients' people it pays for (listed as 'gray (client 2)'), each keyed by
-- its home client, since person ids are per client.  So joined_count -
-- left_count = change.
CREATE VIEW @extschema@.kpi_billable_users WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month, p.status,
	   p.users AS billable_users, prev.users AS previous_billable_users, p.users - prev.users AS change,
	   CASE WHEN prev.client_id IS NOT NULL THEN ch.joined_count END AS joined_count,
	   CASE WHEN prev.client_id IS NOT NULL THEN ch.left_count END AS left_count,
	   CASE WHEN prev.client_id IS NOT NULL THEN ch.joined END AS joined,
	   CASE WHEN prev.client_id IS NOT NULL THEN ch.departed END AS departed,
	   @extschema@.userset_to_array(p.billable) AS billable_person_ids,
	   p.total, p.currency
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  LEFT JOIN @extschema@.period_invoices prev
	ON prev.client_id = p.client_id
   AND prev.period = daterange((lower(p.period) - interval '1 month')::date, lower(p.period))
  CROSS JOIN LATERAL (
	SELECT (count(*) FILTER (WHERE x.is_now AND NOT x.was_before))::integer AS joined_count,
		   (count(*) FILTER (WHERE x.was_before AND NOT x.is_now))::integer AS left_count,
		   coalesce(array_agg(x.label ORDER BY x.label) FILTER (WHERE x.is_now AND NOT x.was_before), '{}') AS joined,
		   coalesce(array_agg(x.label ORDER BY x.label) FILTER (WHERE x.was_before AND NOT x.is_now), '{}') AS departed
	  FROM (SELECT y.home_client_id, y.person_id, max(y.label) AS label, bool_or(y.is_now) AS is_now, bool_or(NOT y.is_now) AS was_before
			  FROM (SELECT q.*, true AS is_now FROM (SELECT p.client_id AS home_client_id, b.id AS person_id, coalesce(pe.pseudonym, 'person ' || b.id) AS label
					  FROM @extschema@.userset_members(p.billable) b(id)
					  LEFT JOIN @extschema@.people pe ON pe.client_id = p.client_id AND pe.person_id = b.id
					UNION ALL
					SELECT (s ->> 'home_client_id')::bigint, (s ->> 'person_id')::bigint,
						   format('%s (client %s)', s ->> 'pseudonym', s ->> 'home_client_id')
					  FROM jsonb_array_elements(coalesce(p.sister_billable, '[]')) s) q
					UNION ALL
					SELECT q.*, false FROM (SELECT prev.client_id AS home_client_id, b.id AS person_id, coalesce(pe.pseudonym, 'person ' || b.id) AS label
					  FROM @extschema@.userset_members(prev.billable) b(id)
					  LEFT JOIN @extschema@.people pe ON pe.client_id = prev.client_id AND pe.person_id = b.id
					UNION ALL
					SELECT (s ->> 'home_client_id')::bigint, (s ->> 'person_id')::bigint,
						   format('%s (client %s)', s ->> 'pseudonym', s ->> 'home_client_id')
					  FROM jsonb_array_elements(coalesce(prev.sister_billable, '[]')) s) q
					 WHERE prev.client_id IS NOT NULL) y
			 GROUP BY y.home_client_id, y.person_id) x) ch
 WHERE p.status <> 'unpriced';
COMMENT ON VIEW @extschema@.kpi_billable_users IS
	'billable users per client and month, the change from the month before, and who joined and who left (pseudonyms; sister clients'' people as ''pseudonym (client N)''; joined_count - left_count = change); NULL changes for a first month; billable_person_ids are the client''s own people';

-- Seats held: the latest marketplace count per SKU before the month ends
-- (as msp_reconcile_licenses reads it).
CREATE VIEW @extschema@.kpi_license_utilization WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month,
	   coalesce(lic.seats, 0)::integer AS seats_held,
	   coalesce(act.people_active, 0)::integer AS people_active,
	   p.users AS billable_users,
	   m365.accounts AS licensed_accounts,
	   m365.inactive AS seats_to_reclaim,
	   m365.inactive * lic.seat_cost AS reclaim_value,
	   greatest(p.users - coalesce(lic.seats, 0), 0)::integer AS seat_shortfall,
	   greatest(p.users - coalesce(lic.seats, 0), 0) * lic.seat_cost AS shortfall_cost,
	   CASE WHEN lic.seats > 0 THEN round(p.users::numeric / lic.seats, 4) END AS utilization,
	   lic.licence_cost, p.currency
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  LEFT JOIN LATERAL (
	SELECT sum(x.seats) AS seats, max(x.unit_cost) AS seat_cost, sum(x.seats * x.unit_cost) AS licence_cost
	  FROM (SELECT DISTINCT ON (lc.sku) lc.seats, lc.unit_cost
			  FROM @extschema@.license_counts lc
			 WHERE lc.client_id = p.client_id AND lc.as_of < upper(p.period)
			 ORDER BY lc.sku, lc.as_of DESC, lc.source) x) lic ON true
  LEFT JOIN LATERAL (
	SELECT @extschema@.cardinality(@extschema@.userset_union(d.people)) AS people_active
	  FROM @extschema@.daily_activity d
	 WHERE d.client_id = p.client_id AND d.day >= lower(p.period) AND d.day < upper(p.period)) act ON true
  LEFT JOIN LATERAL (
	SELECT count(*)::integer AS accounts,
		   (count(*) FILTER (WHERE NOT @extschema@.userset_contains(p.billable, a.person_id)))::integer AS inactive
	  FROM @extschema@.accounts a
	 WHERE a.client_id = p.client_id AND a.realm = 'm365' AND a.kind = 'individual') m365 ON true
 WHERE p.status <> 'unpriced';
COMMENT ON VIEW @extschema@.kpi_license_utilization IS
	'per client and month: licence seats held vs people active and billed, Microsoft 365 seats to reclaim and the shortfall, with money (unit cost from license_counts)';

CREATE VIEW @extschema@.kpi_margin WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month, p.status, p.users,
	   p.total AS revenue,
	   cost.pools AS pool_cost,
	   coalesce(lic.licence_cost, 0) AS licence_cost,
	   p.total - cost.pools - coalesce(lic.licence_cost, 0) AS margin,
	   CASE WHEN p.total > 0
			THEN round((p.total - cost.pools - coalesce(lic.licence_cost, 0)) / p.total * 100, 1) END AS margin_pct,
	   CASE WHEN p.users > 0
			THEN @extschema@.msp_round((p.total - cost.pools - coalesce(lic.licence_cost, 0)) / p.users, rc.minor_unit) END
		   AS margin_per_user,
	   p.currency
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  CROSS JOIN LATERAL (
	SELECT coalesce(sum(@extschema@.msp_round(@extschema@.msp_pool_part(cp.amount, cp.period, p.period), rc.minor_unit)), 0) AS pools
	  FROM @extschema@.cost_pools cp
	 WHERE cp.client_id = p.client_id AND cp.period && p.period) cost
  LEFT JOIN LATERAL (
	SELECT sum(x.seats * x.unit_cost) AS licence_cost
	  FROM (SELECT DISTINCT ON (lc.sku) lc.seats, lc.unit_cost
			  FROM @extschema@.license_counts lc
			 WHERE lc.client_id = p.client_id AND lc.as_of < upper(p.period)
			 ORDER BY lc.sku, lc.as_of DESC, lc.source) x) lic ON true
 WHERE p.status <> 'unpriced';
COMMENT ON VIEW @extschema@.kpi_margin IS
	'per client and month: billed revenue against the cost pools (prorated, rounded per pool) and licence costs; margin, margin % and margin per billable user';

-- Revenue and cost spread over the month's billable people to the cent
-- with allocate(), so that the per-user margins add up to kpi_margin.
CREATE VIEW @extschema@.kpi_margin_per_user WITH (security_barrier) AS
SELECT k.client_id, k.client_name, k.month, k.person_id, k.pseudonym, k.home_client_id,
	   @extschema@.allocate(k.revenue, 1, k.minor_unit) OVER w AS revenue,
	   @extschema@.allocate(k.cost, 1, k.minor_unit) OVER w AS cost,
	   @extschema@.allocate(k.revenue, 1, k.minor_unit) OVER w
		   - @extschema@.allocate(k.cost, 1, k.minor_unit) OVER w AS margin,
	   k.currency
  FROM (SELECT m.client_id, m.client_name, m.month, m.revenue, m.pool_cost + m.licence_cost AS cost,
			   rc.minor_unit, m.currency, u.home_client_id, u.person_id, u.pseudonym
		  FROM @extschema@.kpi_margin m
		  JOIN @extschema@.reporting_clients rc ON rc.client_id = m.client_id
		  JOIN @extschema@.period_invoices p ON p.client_id = m.client_id AND lower(p.period) = m.month
		  -- every person the invoice counts: its own and sister clients' people
		  CROSS JOIN LATERAL (
			SELECT p.client_id AS home_client_id, b.id AS person_id, pe.pseudonym
			  FROM @extschema@.userset_members(p.billable) b(id)
			  LEFT JOIN @extschema@.people pe ON pe.client_id = p.client_id AND pe.person_id = b.id
			UNION ALL
			SELECT (s ->> 'home_client_id')::bigint, (s ->> 'person_id')::bigint, s ->> 'pseudonym'
			  FROM jsonb_array_elements(coalesce(p.sister_billable, '[]')) s) u) k
WINDOW w AS (PARTITION BY k.client_id, k.month ORDER BY k.home_client_id, k.person_id);
COMMENT ON VIEW @extschema@.kpi_margin_per_user IS
	'per client, month and billable person (home_client_id: a sister client whose person it pays for): their share of revenue and cost to the cent (allocate), and the margin';

CREATE VIEW @extschema@.kpi_hipaa_findings WITH (security_barrier) AS
SELECT x.client_id, rc.client_name, x.day,
	   coalesce(d.shared_sessions, 0) AS shared_sessions,
	   coalesce(f.violating_sessions, 0)::integer AS violating_sessions,
	   coalesce(f.devices, 0)::integer AS devices,
	   coalesce(f.applications, '{}') AS applications
  FROM (SELECT a.client_id, a.day FROM @extschema@.daily_activity a WHERE a.shared_sessions > 0
		UNION
		SELECT pf.client_id, @extschema@.msp_local_day(pf.session_start, c.time_zone)
		  FROM @extschema@.pii_findings pf JOIN @extschema@.clients c ON c.client_id = pf.client_id) x
  JOIN @extschema@.reporting_clients rc ON rc.client_id = x.client_id
  LEFT JOIN @extschema@.daily_activity d ON d.client_id = x.client_id AND d.day = x.day
  LEFT JOIN LATERAL (
	SELECT count(*) AS violating_sessions, count(DISTINCT pf.device) AS devices,
		   array_agg(DISTINCT pf.application ORDER BY pf.application) AS applications
	  FROM @extschema@.pii_findings pf
	 WHERE pf.client_id = x.client_id
	   AND @extschema@.msp_local_day(pf.session_start, rc.time_zone) = x.day) f ON true;
COMMENT ON VIEW @extschema@.kpi_hipaa_findings IS
	'per client and local day: shared-account sessions and those that used a PII application without an individual login (msp_pii_audit)';

-- Live, not rolled up: the gates depend on today's date as well as on data.
CREATE VIEW @extschema@.kpi_data_quality WITH (security_barrier) AS
SELECT p.client_id, rc.client_name, lower(p.period) AS month, q.gate, q.subject, q.detail
  FROM @extschema@.period_invoices p
  JOIN @extschema@.reporting_clients rc ON rc.client_id = p.client_id
  CROSS JOIN LATERAL @extschema@.msp_data_quality(p.client_id, p.period) q
 WHERE p.status = 'preview';
COMMENT ON VIEW @extschema@.kpi_data_quality IS
	'data-quality findings of every month not finalized yet, per client (msp_data_quality, computed when read)';

-- No grant to PUBLIC: msp_install_roles grants reading the rollups and
-- views to mspbill_admin, mspbill_billing and mspbill_bi (their rows
-- filtered by the policies and the views' own filter), marking
-- (rollup_dirty's two columns) to admin and billing, and refreshing to them
-- through msp_refresh_rollups() and msp_rebuild_rollups().
