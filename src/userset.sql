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
