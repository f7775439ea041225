-- Counting aggregates: NULLs, empty input, text ids, rollups, parallel plans.
\set ECHO none
\pset format unaligned
\pset tuples_only true
\pset pager off
SET search_path = public, mspbill;
SELECT plan(29);

CREATE TABLE logons (client_id int, day date, person_id bigint, login text);
INSERT INTO logons
SELECT i % 7, date '2026-10-01' + (i % 31), CASE WHEN i % 97 = 0 THEN NULL ELSE (i * 7919) % 5003 - 2500 END,
       'user' || ((i * 31) % 1201)
  FROM generate_series(1, 60000) i;
ANALYZE logons;

CREATE FUNCTION pg_temp.plan_has(q text, node text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE l text;
BEGIN
  FOR l IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
    IF l LIKE '%' || node || '%' THEN RETURN true; END IF;
  END LOOP;
  RETURN false;
END $$;

-- no input and NULL input
SELECT is(distinct_count(x), 0::bigint, 'distinct_count of no rows is 0, like COUNT')
  FROM (SELECT 1::bigint WHERE false) v(x);
SELECT is(distinct_count(x), 0::bigint, 'distinct_count ignores NULLs')
  FROM (VALUES (NULL::bigint), (NULL)) v(x);
SELECT is(userset_agg(x)::text, '{}', 'userset_agg of no rows is the empty set')
  FROM (SELECT 1::bigint WHERE false) v(x);
SELECT is(userset_union(s)::text, '{}', 'userset_union of no rows is the empty set')
  FROM (SELECT '{1}'::userset WHERE false) v(s);
SELECT is(userset_agg(x)::text, '{-1,0,1}', 'userset_agg keeps 0 and negatives, drops NULL')
  FROM (VALUES (1::bigint), (0), (NULL), (-1), (0)) v(x);
SELECT is(distinct_count(x), 3::bigint, 'distinct_count on text ids')
  FROM (VALUES ('a'), ('b'), (NULL), ('a'), ('c')) v(x);
SELECT is(userset_agg(x), userset(ARRAY[userset_text_id('a'), userset_text_id('b')]),
          'userset_agg(text) holds the documented text ids')
  FROM (VALUES ('a'), ('b'), ('a')) v(x);

-- exactness against COUNT(DISTINCT), serial plans
SET max_parallel_workers_per_gather = 0;
SELECT is(distinct_count(person_id), count(DISTINCT person_id), 'whole table equals COUNT(DISTINCT)') FROM logons;
SELECT is(distinct_count(login), count(DISTINCT login), 'text ids equal COUNT(DISTINCT)') FROM logons;
SELECT results_eq(
  'SELECT client_id, distinct_count(person_id) FROM logons GROUP BY 1 ORDER BY 1',
  'SELECT client_id, count(DISTINCT person_id) FROM logons GROUP BY 1 ORDER BY 1',
  'GROUP BY equals COUNT(DISTINCT)');

-- dense ids become a bitmap; at the ends of the bigint range too
SELECT is(distinct_count(9223372036854775807 - (i % 30000)), 30000::bigint, 'dense ids at the top of bigint')
  FROM generate_series(1, 90000) i;
SELECT is(userset_agg(-9223372036854775808 + (i % 30000)),
          (SELECT userset(array_agg(-9223372036854775808 + i)) FROM generate_series(0, 29999) i),
          'dense ids at the bottom of bigint, exactly')
  FROM generate_series(1, 90000) i;
SELECT is(distinct_count(CASE WHEN i % 3 = 0 THEN i::bigint * 1000003 ELSE i % 20000 END),
          count(DISTINCT CASE WHEN i % 3 = 0 THEN i::bigint * 1000003 ELSE i % 20000 END),
          'dense ids with sparse outliers')
  FROM generate_series(1, 100000) i;

-- rollups from daily sets
CREATE TABLE daily AS
  SELECT client_id, day, userset_agg(person_id) AS people FROM logons GROUP BY 1, 2;
SELECT results_eq(
  'SELECT client_id, cardinality(userset_union(people)) FROM daily GROUP BY 1 ORDER BY 1',
  'SELECT client_id, count(DISTINCT person_id) FROM logons GROUP BY 1 ORDER BY 1',
  'monthly cardinality from daily sets equals the raw count');
SELECT results_eq(
  'SELECT client_id, userset_at_least(people, 20) FROM daily GROUP BY 1 ORDER BY 1',
  $$SELECT c.client_id, coalesce(x.s, '{}') FROM (SELECT DISTINCT client_id FROM logons) c
      LEFT JOIN (SELECT client_id, userset_agg(person_id) s FROM
                   (SELECT client_id, person_id FROM logons WHERE person_id IS NOT NULL
                     GROUP BY 1, 2 HAVING count(DISTINCT day) >= 20) a GROUP BY 1) x
      USING (client_id) ORDER BY 1$$,
  'userset_at_least equals the plain-SQL count of active days');
SELECT is(userset_union(s)::text, '{1,2,3}', 'userset_union skips NULL sets')
  FROM (VALUES ('{1,2}'::userset), (NULL), ('{2,3}')) v(s);
SELECT throws_ok($$SELECT userset_at_least(s, 0) FROM (VALUES ('{1}'::userset)) v(s)$$,
                 '22023', NULL, 'userset_at_least refuses a threshold below 1');
SELECT throws_ok($$SELECT userset_at_least(s, n) FROM (VALUES ('{1}'::userset, 1), ('{2}', 2)) v(s, n)$$,
                 '22023', NULL, 'userset_at_least refuses a changing threshold');
SELECT is(array_agg(cardinality(u) ORDER BY d), ARRAY[1,2,3]::bigint[],
          'userset_union works as a running window aggregate')
  FROM (SELECT d, userset_union(s) OVER (ORDER BY d) u
          FROM (VALUES (1, '{1}'::userset), (2, '{2}'), (3, '{3,1}')) v(d, s)) w;

-- parallel plans: each result is materialized by the statement whose own
-- EXPLAIN ANALYZE shows two workers and a Partial Aggregate (pgTAP's
-- functions are parallel unsafe, so a query inside them would run serially)
-- tables big enough that both workers get rows before either runs out;
-- the leader stays out, so there are always two partial states to combine
CREATE TABLE many AS
  SELECT (i::bigint * 7919) % 400009 - 200000 AS person_id, 'u' || (i * 31) % 12007 AS login
    FROM generate_series(1, 1000000) i;
ANALYZE many;
CREATE TABLE sets AS
  SELECT i % 5000 AS g, userset(ARRAY[i % 3000, i % 1700 + 5000, -(i % 11), i + 100000]::bigint[]) AS s
    FROM generate_series(1, 600000) i;
ANALYZE sets;
CREATE TABLE sessions AS
  SELECT i % 10 AS room, tstzrange(timestamptz '2026-10-01' + i * interval '1 minute',
                                   timestamptz '2026-10-01' + i * interval '1 minute' + (i % 37) * interval '1 minute') AS r
    FROM generate_series(1, 600000) i;
ANALYZE sessions;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
CREATE FUNCTION pg_temp.parallel_ctas(tbl text, q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE l text; plan text := '';
BEGIN
  FOR l IN EXECUTE format('EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) CREATE TEMP TABLE %I AS %s', tbl, q) LOOP
    plan := plan || l || E'\n';
  END LOOP;
  RETURN plan;
END $$;
SELECT matches(pg_temp.parallel_ctas('p_logons',
                 'SELECT distinct_count(person_id) AS n, userset_agg(person_id) AS s, distinct_count(login) AS t FROM many'),
               'Workers Launched: 2.*Partial Aggregate', 'distinct_count and userset_agg ran in two workers');
SELECT matches(pg_temp.parallel_ctas('p_sets', 'SELECT userset_union(s) AS u, userset_at_least(s, 300) AS a FROM sets'),
               'Workers Launched: 2.*Partial Aggregate', 'userset_union and userset_at_least ran in two workers');
SELECT matches(pg_temp.parallel_ctas('p_peak', 'SELECT peak_concurrency(r) AS p FROM sessions'),
               'Workers Launched: 2.*Partial Aggregate', 'peak_concurrency ran in two workers');
RESET max_parallel_workers_per_gather;
RESET parallel_leader_participation;
SELECT is(n, (SELECT count(DISTINCT person_id) FROM many), 'parallel distinct_count equals COUNT(DISTINCT)') FROM p_logons;
SELECT is(t, (SELECT count(DISTINCT login) FROM many), 'parallel distinct_count(text) equals COUNT(DISTINCT)') FROM p_logons;
SELECT is(userset_to_array(s), (SELECT array_agg(DISTINCT person_id ORDER BY person_id) FROM many),
          'parallel userset_agg holds exactly the distinct ids') FROM p_logons;
-- the sets' members, as plain SQL: one member per set is in no other set,
-- and the members i % 1700 + 5000 reach 300 sets only with both workers' rows
CREATE TABLE set_members AS
  SELECT DISTINCT i, m FROM generate_series(1, 600000) i,
         LATERAL (VALUES (i % 3000), (i % 1700 + 5000), (-(i % 11)), (i + 100000)) v(m0), LATERAL (SELECT m0::bigint AS m) b;
SELECT is(userset_to_array(u), (SELECT array_agg(DISTINCT m ORDER BY m) FROM set_members),
          'parallel userset_union holds every member of every set') FROM p_sets;
SELECT is(userset_to_array(a), (SELECT array_agg(m ORDER BY m) FROM (SELECT m FROM set_members GROUP BY m HAVING count(*) >= 300) x),
          'parallel userset_at_least holds the members of at least 300 sets') FROM p_sets;
-- every bound is on the minute, so the peak is the busiest minute
SELECT is(p, (SELECT max(c)::int FROM (SELECT t, count(*) c FROM sessions,
                generate_series(lower(r), upper(r) - interval '1 minute', interval '1 minute') t GROUP BY t) x),
          'parallel peak_concurrency equals the busiest minute') FROM p_peak;

-- cancellation reaches long aggregates
-- (pgTAP's throws_ok cannot catch query_canceled; this helper can)
CREATE FUNCTION pg_temp.cancelled(q text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  RETURN false;
EXCEPTION WHEN query_canceled THEN
  RETURN true;
END $$;
SET statement_timeout = '300ms';
SELECT pg_temp.cancelled('SELECT distinct_count(i) FROM generate_series(1, 1000000000) i') AS cancelled \gset
RESET statement_timeout;
SELECT ok(:'cancelled'::boolean, 'statement_timeout cancels distinct_count over 10^9 rows');

SELECT * FROM finish();
