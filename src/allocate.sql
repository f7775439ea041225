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
