-- Regressions of the counting core (issue 13): the text-id hash against an
-- independent implementation, id spacings that once stalled the bitmap,
-- header-only cardinality, soft input errors, keys x keys JSON lookups.
\set ECHO none
\pset pager off
\set QUIET on
SET search_path = public, mspbill;
SELECT setseed(0.5151);
SELECT plan(10);

-- The documented text-id hash, FNV-1a 64 then fmix64, written again in
-- plain SQL with numeric arithmetic modulo 2^64: any change to the C hash
-- (or a byte-order dependence) shows here.
CREATE FUNCTION pg_temp.mul64(a numeric, b numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS
  $$ SELECT mod(a * b, 18446744073709551616) $$;
CREATE FUNCTION pg_temp.xor_shift33(h numeric) RETURNS numeric LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE bits bit(64) := (h - CASE WHEN h >= 9223372036854775808 THEN 18446744073709551616 ELSE 0 END)::bigint::bit(64);
DECLARE v bigint := (bits # (bits >> 33))::bigint;
BEGIN
  RETURN CASE WHEN v < 0 THEN v + 18446744073709551616 ELSE v END;
END $$;
CREATE FUNCTION pg_temp.text_id(t text) RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  b bytea := convert_to(t, 'UTF8');
  h numeric := 14695981039346656037;   -- 0xcbf29ce484222325
  i int;
  lo bit(64);
BEGIN
  FOR i IN 0 .. length(b) - 1 LOOP
    lo := (h - CASE WHEN h >= 9223372036854775808 THEN 18446744073709551616 ELSE 0 END)::bigint::bit(64);
    h := ((lo # get_byte(b, i)::bigint::bit(64))::bigint)::numeric;
    IF h < 0 THEN h := h + 18446744073709551616; END IF;
    h := pg_temp.mul64(h, 1099511628211);   -- 0x100000001b3
  END LOOP;
  h := pg_temp.xor_shift33(h);
  h := pg_temp.mul64(h, 18397679294719823053);   -- 0xff51afd7ed558ccd
  h := pg_temp.xor_shift33(h);
  h := pg_temp.mul64(h, 14181476777654086739);   -- 0xc4ceb9fe1a85ec53
  h := pg_temp.xor_shift33(h);
  RETURN (h - CASE WHEN h >= 9223372036854775808 THEN 18446744073709551616 ELSE 0 END)::bigint;
END $$;
SELECT is(userset_text_id('alice'), 3821251815001557236::bigint, 'userset_text_id(''alice'') is the documented constant');
SELECT is(pg_temp.text_id('alice'), 3821251815001557236::bigint, 'and so is the plain-SQL reference');
SELECT is((SELECT count(*) FROM (SELECT md5(i::text) || repeat(chr(233), i % 3) || substr('STOLAF\nurse', 1, i % 12) AS t
                                   FROM generate_series(1, 300) i) s
            WHERE userset_text_id(t) <> pg_temp.text_id(t)), 0::bigint,
          'userset_text_id equals the plain-SQL FNV-1a/fmix64 on 300 texts (ASCII and UTF-8)');
SELECT is(distinct_count(t), count(DISTINCT pg_temp.text_id(t)), 'distinct_count(text) counts those ids')
  FROM (SELECT 'user' || (i % 97) AS t FROM generate_series(1, 500) i) s;

-- Id spacings at the bitmap's edges count exactly (their speed beside the
-- hash path is a row of `make bench BENCH_ONLY=spacing`, not a timed test).
CREATE TABLE ids AS SELECT g::bigint AS g FROM generate_series(1, 1000000) g;
ANALYZE ids;
SELECT is((SELECT distinct_count(g * k) FROM ids), 1000000::bigint, 'and each count is exact: spacing ' || k)
  FROM unnest(ARRAY[127, 128]) k;

-- cardinality() reads only the header: 2,000 calls on a 40 MB stored set
CREATE TABLE big_set (s userset);
ALTER TABLE big_set ALTER s SET STORAGE EXTERNAL;
INSERT INTO big_set SELECT userset_agg(i * 1000) FROM generate_series(1, 20000000::bigint) i;
-- the buffers one call touches, counted by the executor (the whole set is
-- over 5,000 toast pages)
CREATE FUNCTION pg_temp.blocks(q text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE plan json;
BEGIN
  EXECUTE 'EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, FORMAT JSON) ' || q INTO plan;
  RETURN (plan->0->'Plan'->>'Shared Hit Blocks')::bigint + (plan->0->'Plan'->>'Shared Read Blocks')::bigint;
END $$;
SELECT ok(pg_temp.blocks('SELECT mspbill.cardinality(s) FROM big_set') < 10
          AND pg_temp.blocks('SELECT length(mspbill.userset_send(s)) FROM big_set') > 1000,
          'cardinality() of a 40 MB set reads only its header: ' || pg_temp.blocks('SELECT mspbill.cardinality(s) FROM big_set')
          || ' buffers, against ' || pg_temp.blocks('SELECT length(mspbill.userset_send(s)) FROM big_set') || ' to read it whole');

-- soft input errors where the server has them (PostgreSQL 16), hard ones before
SELECT current_setting('server_version_num')::int >= 160000 AS soft_errors \gset
\if :soft_errors
SELECT is(pg_input_is_valid('{1,x}', 'mspbill.userset'), false, 'pg_input_is_valid() sees a malformed userset');
\else
SELECT throws_ok($$SELECT '{1,x}'::userset$$, '22P02', NULL, 'before PostgreSQL 16 a malformed userset is a hard 22P02');
\endif

-- msp_json_fields was keys x keys: 100,000 keys wanted from 100,000
CREATE TEMP TABLE wide AS
SELECT '{' || string_agg(format('"k%s":%s', i, i), ',') || '}' AS doc, array_agg('k' || i ORDER BY i DESC) AS keys
  FROM generate_series(1, 100000) i;
SET statement_timeout = '5s';
SELECT is((SELECT (msp_json_fields(doc, keys))[1] FROM wide), '100000',
          '100,000 keys from a 100,000-key document in well under 5 s');
RESET statement_timeout;

-- userset_union hashed over 200,000 groups: a memory context per group
-- made every new group walk all the others' (quadratic)
SET enable_sort = off;
SET statement_timeout = '20s';
SELECT is((SELECT count(*) FROM (SELECT g, userset_union(s) FROM (SELECT i AS g, userset(ARRAY[i, -i]) AS s
                                                                   FROM generate_series(1, 200000) i) x GROUP BY g) y),
          200000::bigint, 'userset_union over 200,000 hashed groups in well under 20 s');
RESET statement_timeout;
RESET enable_sort;

SELECT * FROM finish();
