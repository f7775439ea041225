-- Fuzzing: 10,000 generated malformed (and some valid) inputs each to the
-- userset text input, its binary input and allocate().  Every one must end
-- in a valid value or a clean error with an expected SQLSTATE, and the
-- server must never restart.
\set ECHO none
\pset pager off
\set QUIET on
SET search_path = public, mspbill;
SELECT setseed(0.9191);
SELECT plan(19);
SELECT pg_postmaster_start_time() AS started \gset

-- text built from the pieces a userset is made of, and others
CREATE FUNCTION pg_temp.random_text() RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT string_agg((ARRAY['{','}',',','-','+',' ','0','1','9','7','a','x','.','9223372036854775807',
                           '9223372036854775808','-9223372036854775808','{1,2','}}','{{',E'\t','''','"'])
                    [1 + floor(random() * 22)::int], '')
    FROM generate_series(1, 1 + floor(random() * 12)::int)
$$;
-- ok: a value whose text form reads back to itself; else the SQLSTATE
CREATE FUNCTION pg_temp.try_text(input text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s userset;
BEGIN
  s := input::userset;
  RETURN CASE WHEN s::text::userset = s AND s::text = s::text::userset::text THEN 'ok' ELSE 'bad roundtrip' END;
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;
CREATE TEMP TABLE text_results AS
  SELECT i, pg_temp.try_text(CASE WHEN i % 10 = 0 THEN '{' || (i * 7919) || ',' || i || '}' ELSE pg_temp.random_text() END) AS state
    FROM generate_series(1, 10000) i;
SELECT is((SELECT count(*) FROM text_results), 10000::bigint, '10,000 text inputs tried');
SELECT is((SELECT array_agg(DISTINCT state ORDER BY state) FROM text_results WHERE state <> 'ok'),
          ARRAY['22003', '22P02'], 'text: every failure is invalid_text_representation or out of range');
SELECT ok((SELECT count(*) FROM text_results WHERE state = 'ok') >= 1000, 'text: the valid ones round-trip');

-- bytes: random, and mutations of real binary forms
CREATE FUNCTION pg_temp.try_binary(input bytea) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s userset;
BEGIN
  s := userset_from_binary(input);
  RETURN CASE WHEN userset_send(s) = input THEN 'ok' ELSE 'bad roundtrip' END;
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;
CREATE FUNCTION pg_temp.random_bytes(n integer) RETURNS bytea LANGUAGE sql VOLATILE AS $$
  SELECT coalesce(string_agg(set_byte('\x00'::bytea, 0, floor(random() * 256)::int), ''), '') FROM generate_series(1, n)
$$;
CREATE FUNCTION pg_temp.mutate(b bytea) RETURNS bytea LANGUAGE sql VOLATILE AS $$
  SELECT CASE floor(random() * 5)::int
    WHEN 0 THEN substr(b, 1, floor(random() * length(b))::int)                              -- truncated
    WHEN 1 THEN set_byte(b, floor(random() * length(b))::int, floor(random() * 256)::int)   -- one byte changed
    WHEN 2 THEN b || pg_temp.random_bytes(1 + floor(random() * 9)::int)                     -- oversized
    WHEN 3 THEN set_byte(b, 0, 2 + floor(random() * 250)::int)                               -- wrong version
    ELSE overlay(b placing '\x00000005'::bytea from 2)                                        -- wrong count
  END
$$;
CREATE TEMP TABLE binary_results AS
  SELECT i, pg_temp.try_binary(CASE WHEN i % 2 = 0 THEN pg_temp.random_bytes(floor(random() * 40)::int)
                                    WHEN i % 7 = 0 THEN userset_send(userset(ARRAY[i, i * 3, -i]::bigint[]))
                                    ELSE pg_temp.mutate(userset_send(userset(ARRAY[i, i + 1, i * 1000]::bigint[]))) END) AS state
    FROM generate_series(1, 10000) i;
SELECT is((SELECT count(*) FROM binary_results), 10000::bigint, '10,000 binary inputs tried');
SELECT is((SELECT array_agg(DISTINCT state ORDER BY state) FROM binary_results WHERE state <> 'ok'),
          ARRAY['22P03'], 'binary: every failure is invalid_binary_representation');
SELECT ok((SELECT count(*) FROM binary_results WHERE state = 'ok') >= 700, 'binary: the valid ones round-trip');
-- members must be strictly ascending: a repeated member is refused, not kept twice
SELECT throws_ok($$SELECT userset_from_binary('\x010000000200000000000000070000000000000007'::bytea)$$, '22P03', NULL,
                 'binary: a repeated member is refused');

-- allocate(): random totals, weights and minor units, valid or not
CREATE FUNCTION pg_temp.try_allocate(total numeric, weights numeric[], minor numeric) RETURNS text LANGUAGE plpgsql AS $$
DECLARE shares numeric[];
BEGIN
  shares := allocate(total, weights, minor);
  RETURN CASE WHEN (SELECT sum(x) FROM unnest(shares) x) = total
               AND (SELECT bool_and(mod(x, minor) = 0) FROM unnest(shares) x) THEN 'ok' ELSE 'wrong split' END;
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;
CREATE FUNCTION pg_temp.random_numeric() RETURNS numeric LANGUAGE sql VOLATILE AS $$
  SELECT (ARRAY[0, -1, 1, 0.01, 0.05, -0.5, 1e20, -1e20, 'NaN', 'Infinity', '-Infinity', 123.456, 1e-20, 7, 100])
         [1 + floor(random() * 15)::int]::numeric * CASE WHEN random() < 0.5 THEN 1 ELSE round(random()::numeric * 1000, 2) END
$$;
-- a function, so that every call draws new weights (a subquery would be run once)
CREATE FUNCTION pg_temp.random_weights() RETURNS numeric[] LANGUAGE sql VOLATILE AS $$
  SELECT ARRAY(SELECT pg_temp.random_numeric() FROM generate_series(0, floor(random() * 5)::int)
               UNION ALL SELECT NULL WHERE random() < 0.05)
$$;
CREATE TEMP TABLE allocate_results AS
  SELECT i, pg_temp.try_allocate(pg_temp.random_numeric(), pg_temp.random_weights(), pg_temp.random_numeric()) AS state
    FROM generate_series(1, 10000) i;
SELECT ok((SELECT count(DISTINCT state) FROM allocate_results) >= 3, 'allocate: valid and invalid calls both occur');
SELECT is((SELECT count(*) FROM allocate_results), 10000::bigint, '10,000 allocate() calls tried');
SELECT is((SELECT array_agg(DISTINCT state ORDER BY state) FROM allocate_results WHERE state <> 'ok'),
          ARRAY['22004', '22023'], 'allocate: every failure is a clean invalid-parameter or null-value error');

-- msp_json_fields against PostgreSQL's own JSON parser, on JSON-ish text
CREATE FUNCTION pg_temp.random_json() RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT string_agg((ARRAY['{','}','[',']','"a"','"EventID"',':',',','1','-0.5e3','4624','true','null',
                           '"x\u00e9"','"\ud83d\ude00"','"\u0000"',' ','"bad\q"','01','"open','"\"q\""',
                           '{"a":','"a":1}','{"EventID":4624,"a":"v"}','fals','"\ud800"',E'"\t"',E'"tab	here"'])
                    [1 + floor(random() * 28)::int], '')
    FROM generate_series(1, 1 + floor(random() * 10)::int)
$$;
-- numbers beyond numeric's range are valid JSON that jsonb cannot hold:
-- such inputs are left out of the comparison
CREATE FUNCTION pg_temp.jsonb_overflows(t text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM t::jsonb;
  RETURN false;
EXCEPTION WHEN numeric_value_out_of_range THEN
  RETURN true;
WHEN OTHERS THEN
  RETURN false;
END $$;
CREATE FUNCTION pg_temp.random_value() RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT (ARRAY['1', '-0.5e3', 'true', 'false', 'null', '"x\u00e9"', '"\ud83d\ude00"', '"\"q\""', '"a\\b\/c"',
                '[1, {"b": [null, "s"]}]', '{"b": {"c": "d"}}', '""', ' "spaced" ', '12345678901234567890'])
         [1 + floor(random() * 14)::int]
$$;
CREATE TEMP TABLE json_results AS
  SELECT t, msp_json_fields(t, '{a,EventID}') AS f, msp_try_jsonb(t) AS doc, pg_temp.jsonb_overflows(t) AS overflows
    FROM (SELECT CASE WHEN i % 3 = 0 THEN '{"a":' || pg_temp.random_value() || ', "z": ' || pg_temp.random_value()
                                          || ',"EventID":' || i || '}'
                      WHEN i % 3 = 1 THEN '{"a":' || pg_temp.random_json() || ',"EventID":' || i || '}'
                      ELSE pg_temp.random_json() END AS t
            FROM generate_series(1, 10000) i) g;
SELECT is((SELECT count(*) FROM json_results
            WHERE NOT overflows AND (f IS NOT NULL) <> coalesce(jsonb_typeof(doc) = 'object', false)),
          0::bigint, 'msp_json_fields accepts exactly the JSON objects PostgreSQL accepts (10,000 inputs)');
SELECT is((SELECT count(*) FROM json_results, LATERAL (VALUES (1, 'a'), (2, 'EventID')) k(i, key)
            WHERE f IS NOT NULL AND NOT overflows AND CASE jsonb_typeof(doc -> key)
                    WHEN 'string' THEN f[i] IS DISTINCT FROM doc ->> key
                    WHEN 'number' THEN f[i]::numeric <> (doc ->> key)::numeric
                    WHEN 'boolean' THEN f[i] IS DISTINCT FROM doc ->> key
                    WHEN 'null' THEN f[i] IS NOT NULL
                    WHEN NULL THEN f[i] IS NOT NULL
                    ELSE f[i]::jsonb IS DISTINCT FROM doc -> key END),
          0::bigint, 'and returns the same values');
SELECT ok((SELECT count(*) FROM json_results WHERE f IS NOT NULL) > 1000, 'with plenty of valid objects among them');
SELECT is(msp_json_fields('{"a": "\u00e9", "b": 1}', '{a,b,a}'), ARRAY['é', '1', 'é'], 'a key asked for twice gets its value twice');
SELECT ok(msp_json_fields('{"a":' || repeat('[', 100000) || repeat(']', 100000) || '}', '{a}') IS NULL,
          'absurdly deep nesting is refused, not a crash');

-- msp_json_records on the same inputs: a JSON object (no "value" page) is
-- itself one record; whatever it returns as JSON PostgreSQL parses; and
-- the inputs as the lines of one export (pages, arrays, broken documents
-- mixed) never crash it
SELECT is((SELECT count(*) FROM json_results
            WHERE NOT overflows AND jsonb_typeof(doc) = 'object' AND NOT doc ? 'value'
              AND (SELECT array_agg(ROW(r.first_line, r.record::jsonb, r.is_json)) FROM msp_json_records(ARRAY[t]) r)
                  IS DISTINCT FROM ARRAY[ROW(1, doc, true)]),
          0::bigint, 'msp_json_records: each JSON object line is itself one record');
SELECT is((SELECT count(*) FROM json_results, LATERAL msp_json_records(ARRAY[t]) r
            WHERE r.is_json AND NOT pg_temp.jsonb_overflows(r.record) AND msp_try_jsonb(r.record) IS NULL),
          0::bigint, 'msp_json_records: every record it calls JSON is JSON to PostgreSQL');
SELECT is((SELECT count(*) FROM (SELECT array_agg(t ORDER BY random()) AS lines FROM json_results GROUP BY random() < 0.5) x,
                  LATERAL msp_json_records(x.lines) r
            WHERE r.is_json AND NOT pg_temp.jsonb_overflows(r.record) AND msp_try_jsonb(r.record) IS NULL),
          0::bigint, 'msp_json_records: 10,000 such lines as two exports, the same');

SELECT is(pg_postmaster_start_time(), :'started'::timestamptz, 'the server never restarted');
SELECT * FROM finish();
