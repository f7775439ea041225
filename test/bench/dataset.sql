-- Benchmark dataset: 10M logons in one month, 500 clients of skewed size,
-- ~100k distinct people (each belongs to one client), and 1M allocation
-- rows in 10k cost pools.  Deterministic (fixed seed).
SELECT setseed(0.2026);
CREATE TABLE bench_logons (client_id int NOT NULL, day date NOT NULL, person_id bigint NOT NULL);
INSERT INTO bench_logons
SELECT floor(power(p / 100000.0, 3) * 500)::int, date '2026-10-01' + floor(random() * 31)::int, p
  FROM (SELECT floor(random() * 100000)::bigint AS p FROM generate_series(1, 10000000)) s;
ANALYZE bench_logons;

CREATE TABLE bench_items (pool int NOT NULL, k int NOT NULL, total numeric NOT NULL, w numeric NOT NULL);
INSERT INTO bench_items
SELECT i % 10000, i / 10000, (10000 + (i % 10000) * 7) * 100.00 / 100, 1 + (i * 7919) % 13
  FROM generate_series(0, 999999::bigint) i;
ANALYZE bench_items;
