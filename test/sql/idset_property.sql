-- Property: the counting aggregates equal COUNT(DISTINCT) on thousands of
-- generated datasets that mix dense ranges at every id spacing (1, 2, 127,
-- 128, 129, 1000, random), sparse ids, 0 and both bigint extremes, in
-- random order; grouped, serial and truly parallel (each parallel result
-- is materialized by the very statement whose plan shows the workers).
-- MSPBILL_LONG=1 in the environment runs 100,000 datasets instead of 3,000.
\set ECHO none
\pset pager off
\set QUIET on
SET search_path = public, mspbill;
SELECT setseed(0.1313);
\set datasets 3000
\getenv long MSPBILL_LONG
\if :{?long}
\set datasets 100000
\endif
SELECT plan(23);
SELECT pg_postmaster_start_time() AS started \gset

-- one row per dataset: where its dense range starts, its spacing and size,
-- how many sparse ids, whether the extremes and 0 join in
CREATE TABLE shapes AS
SELECT ds,
       (ARRAY[1, 2, 127, 128, 129, 1000, 1 + floor(random() * 5000)::int])[1 + floor(random() * 7)::int]::bigint AS spacing,
       CASE WHEN r < 0.02 THEN 4000 WHEN r < 0.07 THEN 1000 WHEN r < 0.22 THEN 200
            ELSE floor(random() * 40)::int END AS n,
       floor(random() * 4)::int AS zone,
       floor(random() * 12)::int AS sparse,
       random() < 0.5 AS extremes,
       random() < 0.3 AS zero
  FROM (SELECT ds, random() AS r FROM generate_series(1, :datasets) ds) s;

-- the dense range sits at the bottom or top of bigint, around 0, or anywhere;
-- start + spacing * n never leaves bigint
CREATE TABLE data (ds int, chunk int, x bigint);
INSERT INTO data
SELECT ds, floor(random() * 4)::int, x FROM (
  SELECT s.ds, s.start + s.spacing * k AS x
    FROM (SELECT *, CASE zone
                      WHEN 0 THEN -9223372036854775808 + floor(random() * 1000)::bigint
                      WHEN 1 THEN 9223372036854775807 - spacing * n - floor(random() * 1000)::bigint
                      WHEN 2 THEN -floor(random() * spacing * n)::bigint
                      ELSE floor((random() - 0.5) * 1.8e18)::bigint END AS start
            FROM shapes) s, generate_series(0, s.n - 1) k
  UNION ALL                                          -- some ids twice
  SELECT s.ds, s.start + s.spacing * k
    FROM (SELECT ds, spacing, n, -floor(random() * 1e6)::bigint AS start FROM shapes WHERE n > 0 AND ds % 5 = 0) s,
         generate_series(0, s.n / 3) k
  UNION ALL                                          -- sparse ids anywhere
  SELECT ds, floor((random() - 0.5) * 1.8e19)::bigint FROM shapes, generate_series(1, sparse)
  UNION ALL
  SELECT ds, e FROM shapes, unnest(ARRAY[-9223372036854775808, 9223372036854775807, -9223372036854775808]) e WHERE extremes
  UNION ALL
  SELECT ds, 0 FROM shapes WHERE zero
  UNION ALL
  SELECT ds, NULL FROM shapes WHERE ds % 7 = 0) g
ORDER BY random();                                   -- random arrival order
ANALYZE data;

-- the expected answers, from PostgreSQL alone, for every dataset with rows
CREATE TABLE expected AS
SELECT ds, count(DISTINCT x) AS n,
       coalesce(array_agg(DISTINCT x ORDER BY x) FILTER (WHERE x IS NOT NULL), '{}') AS members
  FROM data GROUP BY ds;
CREATE TABLE expected_2of4 AS
SELECT ds, array_agg(x ORDER BY x) AS members
  FROM (SELECT ds, x FROM data WHERE x IS NOT NULL GROUP BY ds, x HAVING count(DISTINCT chunk) >= 2) m GROUP BY ds;

SELECT ok((SELECT count(*) FROM data) > :datasets * 20, 'the datasets hold ' || (SELECT count(*) FROM data) || ' rows');
SELECT ok((SELECT count(DISTINCT spacing) FROM shapes WHERE n >= 200) >= 7, 'every spacing occurs in large datasets');

-- serial plans
SET max_parallel_workers_per_gather = 0;
SELECT is((SELECT count(*) FROM (SELECT ds, distinct_count(x) AS n FROM data GROUP BY ds) r
             JOIN expected e USING (ds) WHERE r.n <> e.n), 0::bigint,
          'serial: distinct_count equals COUNT(DISTINCT) in every dataset');
SELECT is((SELECT count(*) FROM (SELECT ds, userset_to_array(userset_agg(x)) AS m FROM data GROUP BY ds) r
             JOIN expected e USING (ds) WHERE r.m <> e.members), 0::bigint,
          'serial: userset_agg holds exactly the distinct ids of every dataset');

-- the chunks of a dataset lie far apart (stored in chunk order, with empty
-- sets between), so that each parallel worker holds part of every group
CREATE TABLE stored AS
SELECT ds, chunk, s FROM (SELECT ds, chunk, userset_agg(x) AS s FROM data GROUP BY ds, chunk
                          UNION ALL SELECT ds, chunk, '{}' FROM shapes, generate_series(0, 3) chunk, generate_series(1, 5)) c
 ORDER BY chunk, random();
ANALYZE stored;
SELECT is((SELECT count(*) FROM (SELECT ds, userset_union(s) AS u FROM stored GROUP BY ds) r
             JOIN expected e USING (ds) WHERE userset_to_array(r.u) <> e.members), 0::bigint,
          'serial: userset_union of the stored chunks is the set of every dataset');
SELECT is((SELECT count(*) FROM (SELECT ds, userset_at_least(s, 2) AS u FROM stored GROUP BY ds) r
             LEFT JOIN expected_2of4 e USING (ds) WHERE userset_to_array(r.u) <> coalesce(e.members, '{}')), 0::bigint,
          'serial: userset_at_least(2) holds the ids of at least two chunks');

-- parallel plans, materialized by the statement whose plan is checked
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET enable_sort = off;   -- hash the groups, so every worker holds part of each
SET work_mem = '256MB';
SET parallel_leader_participation = off;   -- two partial states, both with rows
CREATE FUNCTION pg_temp.parallel_ctas(tbl text, q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE l text; plan text := '';
BEGIN
  EXECUTE format('DROP TABLE IF EXISTS %I', tbl);
  FOR l IN EXECUTE format('EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) CREATE TEMP TABLE %I AS %s', tbl, q) LOOP
    plan := plan || l || E'\n';
  END LOOP;
  RETURN plan;
END $$;
SELECT matches(pg_temp.parallel_ctas('p_count', 'SELECT ds, distinct_count(x) AS n FROM data GROUP BY ds'),
               'Workers Launched: 2.*Partial HashAggregate', 'parallel distinct_count ran in two workers');
SELECT is((SELECT count(*) FROM p_count r FULL JOIN expected e USING (ds) WHERE r.n IS DISTINCT FROM e.n), 0::bigint,
          'parallel: distinct_count equals COUNT(DISTINCT) in every dataset');
SELECT matches(pg_temp.parallel_ctas('p_set', 'SELECT ds, userset_agg(x) AS s FROM data GROUP BY ds'),
               'Workers Launched: 2.*Partial HashAggregate', 'parallel userset_agg ran in two workers');
SELECT is((SELECT count(*) FROM p_set r FULL JOIN expected e USING (ds) WHERE userset_to_array(r.s) IS DISTINCT FROM e.members), 0::bigint,
          'parallel: userset_agg holds exactly the distinct ids of every dataset');
SELECT matches(pg_temp.parallel_ctas('p_union', 'SELECT ds, userset_union(s) AS u FROM stored GROUP BY ds'),
               'Workers Launched: 2.*Partial HashAggregate', 'parallel userset_union ran in two workers');
SELECT is((SELECT count(*) FROM p_union r LEFT JOIN expected e USING (ds) WHERE userset_to_array(r.u) <> coalesce(e.members, '{}')), 0::bigint,
          'parallel: userset_union of the stored chunks is the set of every dataset');
-- (hashing its 8 kB states per group looks too dear to the planner)
SET enable_sort = on;
SET enable_hashagg = off;
SELECT matches(pg_temp.parallel_ctas('p_atleast', 'SELECT ds, userset_at_least(s, 2) AS u FROM stored GROUP BY ds'),
               'Workers Launched: 2.*Partial GroupAggregate', 'parallel userset_at_least ran in two workers');
SELECT is((SELECT count(*) FROM p_atleast r LEFT JOIN expected_2of4 e USING (ds)
            WHERE userset_to_array(r.u) <> coalesce(e.members, '{}')), 0::bigint,
          'parallel: userset_at_least(2) holds the ids of at least two chunks');
RESET enable_hashagg;

-- whole-table parallel aggregates over everything at once: one state per
-- process, combined in the leader
SELECT matches(pg_temp.parallel_ctas('p_whole', 'SELECT distinct_count(x) AS n, userset_agg(x) AS s FROM data'),
               'Workers Launched: 2.*Partial Aggregate', 'whole-table parallel aggregates ran in two workers');
SELECT is((SELECT n FROM p_whole), (SELECT count(DISTINCT x) FROM data), 'parallel whole table: distinct_count equals COUNT(DISTINCT)');
SELECT is((SELECT userset_to_array(s) FROM p_whole), (SELECT array_agg(DISTINCT x ORDER BY x) FROM data WHERE x IS NOT NULL),
          'parallel whole table: userset_agg holds exactly the distinct ids');
RESET enable_sort;
RESET work_mem;

-- the issue's two statements, and a stored set with both extremes poisoning nothing
SELECT is(distinct_count(x), 24::bigint, 'dense ids then both extremes then more ids: no crash, exact')
  FROM unnest('{1,2,3,4,5,6,7,8,9,10,11,12,-9223372036854775808,9223372036854775807,100,200,300,400,500,600,700,800,900,1000}'::bigint[]) x;
SELECT is(distinct_count(x), 14::bigint, 'both extremes first, then dense ids: exact')
  FROM unnest(ARRAY[-9223372036854775808,9223372036854775807,1,2,3,4,5,6,7,8,9,10,11,12]::bigint[]) x;
SELECT is(cardinality(userset_union(s)), 1002::bigint, 'userset_union over a stored set holding both extremes')
  FROM (VALUES ('{-9223372036854775808,9223372036854775807}'::userset),
               ((SELECT userset_agg(i) FROM generate_series(1, 1000) i))) v(s);

-- partitionwise aggregation combines partial states inside one process,
-- where userset_union's combine meets the other state as it is in memory
-- (not flattened, as between parallel workers)
CREATE TABLE stored_parted (part int, ds int, s userset) PARTITION BY LIST (part);
CREATE TABLE stored_parted_1 PARTITION OF stored_parted FOR VALUES IN (1);
CREATE TABLE stored_parted_2 PARTITION OF stored_parted FOR VALUES IN (2);
INSERT INTO stored_parted
SELECT p, i % 3, userset(ARRAY[p * 1000 + (i * 7) % 500, i]::bigint[])
  FROM generate_series(1, 2) p, generate_series(1, 20000) i;
ANALYZE stored_parted;
SET enable_partitionwise_aggregate = on;
SET enable_sort = off;
SET max_parallel_workers_per_gather = 0;
SELECT matches(pg_temp.parallel_ctas('pw_union',
                 'SELECT ds, userset_to_array(userset_union(s)) AS m FROM stored_parted GROUP BY ds'),
               'Finalize HashAggregate.*Partial HashAggregate.*Partial HashAggregate',
               'partitionwise: two partial userset_union states combined in one process');
SELECT is((SELECT count(*) FROM pw_union r
            FULL JOIN (SELECT ds, array_agg(DISTINCT m ORDER BY m) AS m
                         FROM (SELECT ds, userset_members(s) AS m FROM stored_parted) x GROUP BY ds) e USING (ds)
           WHERE r.m IS DISTINCT FROM e.m), 0::bigint,
          'partitionwise: userset_union of the combined states equals the distinct members');
RESET enable_partitionwise_aggregate;
RESET enable_sort;
RESET max_parallel_workers_per_gather;

SELECT is(pg_postmaster_start_time(), :'started'::timestamptz, 'the server never restarted (0 crashes in ' || :datasets || ' datasets)');
SELECT * FROM finish();
