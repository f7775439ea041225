-- Property: distinct_count and userset_agg equal COUNT(DISTINCT) on random
-- data of every shape, whole-table and grouped, serial and parallel.
\set ECHO none
\pset pager off
SET search_path = public, mspbill;
SELECT setseed(0.4242);
SELECT plan(13 * 6 + 3);

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

CREATE FUNCTION pg_temp.check_shape(n int, spread bigint, nulls float8, extremes boolean)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
  label text := format('n=%s spread=%s nulls=%s extremes=%s', n, spread, nulls, extremes);
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
  RETURN NEXT is((SELECT distinct_count(x) FROM data), (SELECT count(DISTINCT x) FROM data),
                 'parallel whole table, ' || label);
  RETURN NEXT set_eq('SELECT g, distinct_count(x) FROM data GROUP BY g',
                     'SELECT g, count(DISTINCT x) FROM data GROUP BY g',
                     'parallel GROUP BY, ' || label);
  RETURN NEXT is((SELECT userset_agg(x) FROM data),
                 (SELECT coalesce(userset(array_agg(DISTINCT x)), '{}') FROM data),
                 'parallel userset_agg holds exactly the distinct ids, ' || label);
END $$;

SELECT pg_temp.check_shape(n, spread, nulls, extremes) FROM shapes ORDER BY n, spread;

-- the parallel checks above really ran parallel plans
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
CREATE FUNCTION pg_temp.plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE l text; r text := '';
BEGIN
  FOR l IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP r := r || l || E'\n'; END LOOP;
  RETURN r;
END $$;
SELECT matches(pg_temp.plan_of('SELECT distinct_count(x) FROM data'),
               'Finalize Aggregate.*Gather.*Partial Aggregate', 'whole table: Finalize over Gather over Partial');
SELECT matches(pg_temp.plan_of('SELECT g, distinct_count(x) FROM data GROUP BY g'),
               'Partial (Hash|Group)?Aggregate', 'GROUP BY: partial aggregation in workers');

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
