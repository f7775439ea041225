-- Property: allocate() on thousands of random pools agrees with a plain-SQL
-- largest-remainder reference (window and array forms each), sums exactly,
-- keeps the quota rule, monotonicity and the tie-break to the earlier row,
-- and refuses a total or minor unit that changes within a partition.
\set ECHO none
\pset pager off
SET search_path = public, mspbill;
SELECT setseed(0.1717);
SELECT plan(14);

CREATE TABLE pools (pool int PRIMARY KEY, total numeric, minor numeric);
CREATE TABLE items (pool int, k int, w numeric, PRIMARY KEY (pool, k));

INSERT INTO pools
SELECT p, units * minor * CASE WHEN random() < 0.15 THEN -1 ELSE 1 END, minor
  FROM (SELECT p,
               CASE WHEN random() < 0.05 THEN 0
                    WHEN random() < 0.05 THEN floor(random() * 1e20)
                    ELSE floor(random() * 1e7) END AS units,
               (ARRAY[0.01, 0.01, 0.01, 0.05, 1, 0.001])[1 + floor(random() * 6)::int] AS minor
          FROM generate_series(1, 4000) p) s;
INSERT INTO items
SELECT p, k,
       CASE WHEN k = 1 THEN 1 + floor(random() * 5)
            WHEN r < 0.15 THEN 0
            WHEN r < 0.55 THEN floor(random() * 20)
            WHEN r < 0.90 THEN round((random() * 100)::numeric, 2)
            WHEN r < 0.97 THEN floor(random() * 5)   -- many ties
            WHEN r < 0.99 THEN floor(random() * 1e20)   -- beyond int64
            ELSE round((random() * 1e-15)::numeric, 20) END   -- finer than int64
  FROM (SELECT p, generate_series(1, 1 + floor(random() * 40)::int) AS k, random() AS r
          FROM generate_series(1, 4000) p) s;
ANALYZE pools;
ANALYZE items;

-- The reference: largest remainder in plain SQL with exact numeric div/mod.
CREATE VIEW reference AS
WITH b AS (
  SELECT i.pool, i.k, i.w, p.total, p.minor, abs(p.total) / p.minor AS u,
         sum(i.w) OVER (PARTITION BY i.pool) AS wsum
    FROM items i JOIN pools p USING (pool)),
q AS (SELECT *, div(u * w, wsum) AS fl, mod(u * w, wsum) AS rem FROM b),
r AS (SELECT *, u - sum(fl) OVER (PARTITION BY pool) AS left_over,
             row_number() OVER (PARTITION BY pool ORDER BY rem DESC, k) AS rk FROM q)
SELECT pool, k, sign(total) * (fl + CASE WHEN rk <= left_over THEN 1 ELSE 0 END) * minor AS share
  FROM r;

CREATE TABLE shares AS
SELECT i.pool, i.k, i.w, p.total, p.minor,
       allocate(p.total, i.w, p.minor) OVER (PARTITION BY i.pool ORDER BY i.k) AS share
  FROM items i JOIN pools p USING (pool);

SELECT is((SELECT count(*) FROM shares), (SELECT count(*) FROM items), 'one share per row');
SELECT is((SELECT count(*) FROM shares s JOIN reference r USING (pool, k) WHERE s.share <> r.share),
          0::bigint, 'every share equals the plain-SQL reference');
SELECT is((SELECT count(*) FROM (SELECT pool, sum(share) s, min(total) t FROM shares GROUP BY pool) x
            WHERE s <> t), 0::bigint, 'shares sum exactly to the total in every pool');
SELECT is((SELECT count(*) FROM shares WHERE mod(share, minor) <> 0), 0::bigint,
          'every share is a whole number of minor units');
SELECT is((SELECT count(*) FROM (SELECT *, sum(w) OVER (PARTITION BY pool) AS wsum FROM shares) x
            WHERE abs(share * wsum - total * w) >= minor * wsum), 0::bigint,
          'quota rule: every share is within one minor unit of its exact share');
SELECT is((WITH g AS (SELECT pool, w, min(abs(share)) mn, max(abs(share)) mx FROM shares GROUP BY pool, w),
                h AS (SELECT *, max(mx) OVER (PARTITION BY pool ORDER BY w
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max
                        FROM g)
           SELECT count(*) FROM h WHERE mn < prev_max), 0::bigint,
          'monotonicity: a larger weight never gets a smaller share');
SELECT is((SELECT count(*) FROM shares WHERE w = 0 AND share <> 0), 0::bigint, 'weight 0 gets 0');
SELECT is((SELECT count(*) FROM (
             SELECT s.pool, array_agg(s.share ORDER BY s.k) AS win,
                    allocate(min(p.total), array_agg(s.w ORDER BY s.k), min(p.minor)) AS arr
               FROM shares s JOIN pools p USING (pool) GROUP BY s.pool) x WHERE win <> arr),
          0::bigint, 'window and array forms agree');

-- the array form against the same reference, element by element
SELECT is((SELECT count(*) FROM (
             SELECT p.pool, allocate(p.total, array_agg(i.w ORDER BY i.k), p.minor) AS arr
               FROM items i JOIN pools p USING (pool) GROUP BY p.pool, p.total, p.minor) a
             CROSS JOIN LATERAL unnest(a.arr) WITH ORDINALITY u(share, k)
             JOIN reference r ON r.pool = a.pool AND r.k = u.k
            WHERE u.share <> r.share), 0::bigint, 'the array form equals the plain-SQL reference');
-- ties: among rows of equal weight the earlier never gets less, and at
-- most one minor unit more
SELECT is((SELECT count(*) FROM (
             SELECT *, lag(share) OVER (PARTITION BY pool, w ORDER BY k) AS earlier FROM shares) x
            WHERE abs(earlier) < abs(share) OR abs(earlier) - abs(share) > minor), 0::bigint,
          'equal weights: extra units go to the earlier rows, one each');
-- every pool, re-run with its last row's minor unit (or total) changed, is refused
CREATE FUNCTION pg_temp.refused(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  RETURN 'accepted';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ' ' || SQLERRM;
END $$;
SELECT is(pg_temp.refused($$SELECT allocate(p.total, i.w, CASE WHEN i.k = 2 THEN p.minor * 10 ELSE p.minor END)
                                      OVER (PARTITION BY i.pool ORDER BY i.k)
                              FROM items i JOIN pools p USING (pool) WHERE i.pool <= 300$$),
          '22023 allocate minor_unit changes within one partition', 'a minor unit changing within a partition is refused');
SELECT is(pg_temp.refused($$SELECT allocate(p.total + CASE WHEN i.k = 2 THEN p.minor ELSE 0 END, i.w, p.minor)
                                      OVER (PARTITION BY i.pool ORDER BY i.k)
                              FROM items i JOIN pools p USING (pool) WHERE i.pool <= 300$$),
          '22023 allocate total changes within one partition', 'a total changing within a partition is refused');

-- one pool of 10^6 rows with a total of 10^15 in cents
SELECT is((SELECT sum(s) FROM (SELECT allocate(1000000000000000.00, (i % 13)::numeric) OVER (ORDER BY i) s
                                 FROM generate_series(1, 1000000) i) x),
          1000000000000000.00, 'a million-row pool of 10^15 sums to the cent');
SELECT is((SELECT count(DISTINCT s) FROM (SELECT allocate(1000000.00, 1) OVER (ORDER BY i) s
                                            FROM generate_series(1, 1000000) i) x),
          1::bigint, 'a million equal weights over a multiple get equal shares');

SELECT * FROM finish();
