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
