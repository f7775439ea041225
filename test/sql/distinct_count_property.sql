-- Property: distinct_count and userset_agg equal COUNT(DISTINCT) on random
-- data of every shape, whole-table and grouped, serial and parallel.  The
-- parallel results are materialized by the very statement whose EXPLAIN
-- ANALYZE shows the workers (pgTAP's functions are parallel unsafe, so a
-- query written inside them would plan serially).
\set ECHO none
\pset pager off
SET search_path = public, mspbill;
SELECT setseed(0.4242);
SELECT plan(13 * 6 + 9 * 2 + 1);   -- plan checks on the 9 shapes big enough to go parallel

CREATE TABLE data (g int, x bigint, t text);

-- One dataset per row: size, id spread, NULL share, whether to add extremes.
CREATE TABLE shapes (n int, spread bigint, nulls float8, extremes boolean);
INSERT INTO shapes VALUES
  (0, 10, 0, false), (1, 10, 0, false), (2, 1, 0, false), (10, 3, 0.5, false),
  (100, 1000000, 0, true), (1000, 5, 0.1, false), (1000, 9000000000000000000, 0, true),
  (10000, 100, 0.2, true), (10000, 1000000, 0, false), (100000, 50000, 0.01, true),
  (100000, 9000000000000000000, 0, false), (300000, 1000, 0, true), (1000000, 100000, 0.05, true);

CREATE FUNCTION pg_temp.fill(n int, spread bigint, nulls float8, extremes boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE data;
  INSERT INTO data
  SELECT (random() * 7)::int,
         CASE WHEN random() < nulls THEN NULL
              ELSE (floor((random() - 0.5) * spread))::bigint END,
         NULL
    FROM generate_series(1, n);
  IF extremes THEN
    INSERT INTO data VALUES (1, -9223372036854775808, NULL), (2, 9223372036854775807, NULL),
                            (3, 0, NULL), (1, -9223372036854775808, NULL), (4, NULL, NULL);
  END IF;
  UPDATE data SET t = 'u' || (x % 997) WHERE x IS NOT NULL;
  ANALYZE data;
END $$;

CREATE FUNCTION pg_temp.parallel_ctas(tbl text, q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE l text; plan text := '';
BEGIN
  EXECUTE format('DROP TABLE IF EXISTS %I', tbl);
  FOR l IN EXECUTE format('EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) CREATE TEMP TABLE %I AS %s', tbl, q) LOOP
    plan := plan || l || E'\n';
  END LOOP;
  RETURN plan;
END $$;

CREATE FUNCTION pg_temp.check_shape(n int, spread bigint, nulls float8, extremes boolean)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
  label text := format('n=%s spread=%s nulls=%s extremes=%s', n, spread, nulls, extremes);
  plan text;
BEGIN
  PERFORM pg_temp.fill(n, spread, nulls, extremes);

  SET LOCAL max_parallel_workers_per_gather = 0;
  RETURN NEXT is((SELECT distinct_count(x) FROM data), (SELECT count(DISTINCT x) FROM data),
                 'serial whole table, ' || label);
  RETURN NEXT set_eq('SELECT g, distinct_count(x) FROM data GROUP BY g',
                     'SELECT g, count(DISTINCT x) FROM data GROUP BY g',
                     'serial GROUP BY, ' || label);
  RETURN NEXT is((SELECT distinct_count(t) FROM data), (SELECT count(DISTINCT t) FROM data),
                 'text ids, ' || label);

  SET LOCAL max_parallel_workers_per_gather = 2;
  SET LOCAL parallel_setup_cost = 0;
  SET LOCAL parallel_tuple_cost = 0;
  SET LOCAL min_parallel_table_scan_size = 0;
  SET LOCAL client_min_messages = warning;
  plan := pg_temp.parallel_ctas('p_whole', 'SELECT distinct_count(x) AS n, userset_agg(x) AS s FROM data');
  IF n >= 100 THEN
    RETURN NEXT matches(plan, 'Workers Launched: [1-9].*Partial Aggregate', 'parallel whole table ran in workers, ' || label);
  END IF;
  RETURN NEXT is((SELECT p.n FROM p_whole p), (SELECT count(DISTINCT x) FROM data),
                 'parallel whole table, ' || label);
  RETURN NEXT is((SELECT p.s FROM p_whole p),
                 (SELECT coalesce(userset(array_agg(DISTINCT x)), '{}') FROM data),
                 'parallel userset_agg holds exactly the distinct ids, ' || label);
  plan := pg_temp.parallel_ctas('p_grouped', 'SELECT g, distinct_count(x) AS n FROM data GROUP BY g');
  IF n >= 100 THEN
    RETURN NEXT matches(plan, 'Workers Launched: [1-9].*Partial (Hash|Group)?Aggregate', 'parallel GROUP BY ran in workers, ' || label);
  END IF;
  RETURN NEXT set_eq('SELECT p.g, p.n FROM p_grouped p',
                     'SELECT g, count(DISTINCT x) FROM data GROUP BY g',
                     'parallel GROUP BY, ' || label);
END $$;

SELECT pg_temp.check_shape(n, spread, nulls, extremes) FROM shapes ORDER BY n, spread;

-- rollup identity on a month of random logons
CREATE TABLE logons AS
  SELECT (random() * 20)::int AS client_id, date '2026-10-01' + (random() * 30)::int AS day,
         (random() * 3000)::bigint AS person_id
    FROM generate_series(1, 200000);
CREATE TABLE daily AS SELECT client_id, day, userset_agg(person_id) AS people FROM logons GROUP BY 1, 2;
SELECT set_eq('SELECT client_id, cardinality(userset_union(people)) FROM daily GROUP BY 1',
              'SELECT client_id, count(DISTINCT person_id) FROM logons GROUP BY 1',
              'monthly rollup of daily sets equals the raw monthly count, per client');

SELECT * FROM finish();
