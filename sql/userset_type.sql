-- userset: text and binary forms, canonical output, set operators, errors.
\set ECHO none
\pset format unaligned
\pset tuples_only true
\pset pager off
SET search_path = public, mspbill;
SELECT plan(37);

-- text form is canonical: sorted, unique, no spaces
SELECT is('{3,1,2,2,-5}'::userset::text, '{-5,1,2,3}', 'text input sorts and removes duplicates');
SELECT is(' { 7 , 7 } '::userset::text, '{7}', 'whitespace around members is accepted');
SELECT is('{}'::userset::text, '{}', 'empty set');
SELECT is('{-9223372036854775808,0,9223372036854775807}'::userset::text,
          '{-9223372036854775808,0,9223372036854775807}', 'bigint extremes and zero round-trip');
SELECT is(cardinality('{}'::userset), 0::bigint, 'cardinality of the empty set');
SELECT is(cardinality('{5,1,5,9}'::userset), 3::bigint, 'cardinality counts distinct members');
SELECT ok('{1,2,3}'::userset = '{3,2,1}'::userset, 'equality ignores input order');
SELECT ok('{1,2}'::userset <> '{1,3}'::userset, 'inequality');
SELECT ok(NOT ('{1,2}'::userset = '{1,2,3}'::userset), 'a subset is not equal');
SELECT is(('{1,2,3}'::userset | '{3,4}'::userset)::text, '{1,2,3,4}', 'union operator');
SELECT is(('{1,2,3}'::userset & '{3,4}'::userset)::text, '{3}', 'intersection operator');
SELECT is(('{1,2,3}'::userset - '{3,4}'::userset)::text, '{1,2}', 'difference operator');
SELECT is(('{}'::userset | '{}'::userset)::text, '{}', 'union of empty sets');
SELECT ok(userset_contains('{-4,10,99}', 10), 'contains a member');
SELECT ok(NOT userset_contains('{-4,10,99}', 11), 'does not contain a non-member');
SELECT ok(NOT userset_contains('{}', 0), 'the empty set contains nothing');
SELECT is(array_agg(m ORDER BY m), ARRAY[-4,10,99]::bigint[], 'userset_members lists the members')
  FROM userset_members('{99,-4,10}') m;
SELECT is(ARRAY[3,NULL,1,3]::bigint[]::userset::text, '{1,3}', 'cast from bigint[] skips NULLs');
SELECT is('{3,1}'::userset::bigint[], ARRAY[1,3]::bigint[], 'cast to bigint[]');
SELECT is(userset_send('{1,2}'), '\x010000000200000000000000010000000000000002'::bytea,
          'binary form: version, count, members as int8');
SELECT is(count(*)::int, 2, 'GROUP BY userset works through the hash opclass')
  FROM (SELECT s FROM (VALUES ('{1,2}'::userset), ('{2,1}'), ('{3}')) v(s) GROUP BY s) g;
-- the documented hash (FNV-1a 64, then fmix64), as computed outside PostgreSQL
SELECT is(userset_text_id('alice'), 3821251815001557236::bigint, 'text id of alice is the documented constant');
SELECT is(userset_text_id(''), -1166397803181037274::bigint, 'text id of the empty text');
SELECT is(userset_text_id(convert_from('\xc3a9', 'UTF8')), -7109551338664069573::bigint, 'text ids hash the UTF-8 bytes');
SELECT isnt(userset_text_id('alice'), userset_text_id('Alice'), 'text ids are case-sensitive bytes');

-- malformed text raises invalid_text_representation
SELECT throws_ok($$SELECT '1,2'::userset$$, '22P02', NULL, 'missing brace');
SELECT throws_ok($$SELECT '{1,,2}'::userset$$, '22P02', NULL, 'empty member');
SELECT throws_ok($$SELECT '{1 2}'::userset$$, '22P02', NULL, 'missing comma');
SELECT throws_ok($$SELECT '{1}x'::userset$$, '22P02', NULL, 'junk after the set');
SELECT throws_ok($$SELECT '{abc}'::userset$$, '22P02', NULL, 'non-numeric member');
SELECT throws_ok($$SELECT '{1'::userset$$, '22P02', NULL, 'unterminated set');
SELECT throws_ok($$SELECT '{9223372036854775808}'::userset$$, '22003', NULL, 'member beyond bigint');
SELECT throws_ok($$SELECT '{1.5}'::userset$$, '22P02', NULL, 'fractional member');
SELECT throws_ok($$SELECT userset_union_trans('{1}', '{2}')$$, '0A000', NULL,
                 'support functions refuse direct calls');

-- a stored set holding both bigint extremes and a dense run, rolled up
SELECT is(cardinality(userset_union(s)), 1004::bigint, 'userset_union over stored sets with both extremes and a dense run')
  FROM (VALUES ('{-9223372036854775808,9223372036854775807}'::userset),
               ((SELECT userset_agg(i) FROM generate_series(1, 1000) i)),
               ('{-9223372036854775808,0,5000}')) v(s);
SELECT is(cardinality(s), 3::bigint, 'cardinality reads the header of a stored set')
  FROM (VALUES ('{-9223372036854775808,0,9223372036854775807}'::userset)) v(s);
-- input errors name a long input only by its start
SELECT throws_ok('SELECT (''{'' || repeat(''1,'', 1000) || ''x}'')::userset', '22P02',
                 'invalid input syntax for type userset: "{' || repeat('1,', 49) || '1..."',
                 'a long malformed input is quoted by its first 100 characters');

SELECT * FROM finish();
