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
