-- peak_concurrency: half-open sessions, bound kinds, NULL and empty ranges.
\set ECHO none
\pset format unaligned
\pset tuples_only true
\pset pager off
SET search_path = public, mspbill;
SET timezone = 'UTC';
SELECT plan(9);

SELECT is(peak_concurrency(r), 0, 'no rows: no seat')
  FROM (SELECT NULL::tstzrange WHERE false) v(r);
SELECT is(peak_concurrency(r), 1, 'back-to-back [) sessions share one seat')
  FROM (VALUES (tstzrange('2026-01-01 09:00', '2026-01-01 10:00')),
               (tstzrange('2026-01-01 10:00', '2026-01-01 11:00'))) v(r);
SELECT is(peak_concurrency(r), 2, 'inclusive upper bound touches the next session')
  FROM (VALUES (tstzrange('2026-01-01 09:00', '2026-01-01 10:00', '[]')),
               (tstzrange('2026-01-01 10:00', '2026-01-01 11:00'))) v(r);
SELECT is(peak_concurrency(r), 1, 'exclusive lower bound does not touch an inclusive upper one')
  FROM (VALUES (tstzrange('2026-01-01 09:00', '2026-01-01 10:00', '[]')),
               (tstzrange('2026-01-01 10:00', '2026-01-01 11:00', '()'))) v(r);
SELECT is(peak_concurrency(r), 3, 'nested sessions')
  FROM (VALUES (tstzrange('2026-01-01 08:00', '2026-01-01 18:00')),
               (tstzrange('2026-01-01 09:00', '2026-01-01 12:00')),
               (tstzrange('2026-01-01 10:00', '2026-01-01 11:00')),
               (tstzrange('2026-01-01 12:00', '2026-01-01 13:00'))) v(r);
SELECT is(peak_concurrency(r), 1, 'NULL and empty ranges are ignored')
  FROM (VALUES (NULL::tstzrange), ('empty'::tstzrange),
               (tstzrange('2026-01-01 09:00', '2026-01-01 10:00'))) v(r);
SELECT is(peak_concurrency(r), 2, 'unbounded sessions overlap everything')
  FROM (VALUES (tstzrange(NULL, '2026-01-01 10:00')),
               (tstzrange('2026-01-01 09:00', NULL)),
               (tstzrange('2026-01-01 11:00', '2026-01-01 12:00'))) v(r);
SELECT is(peak_concurrency(r), 2, 'identical sessions both count')
  FROM (VALUES (tstzrange('2026-01-01 09:00', '2026-01-01 10:00')),
               (tstzrange('2026-01-01 09:00', '2026-01-01 10:00'))) v(r);
SELECT results_eq(
  $$SELECT room, peak_concurrency(r) FROM (VALUES
      ('OR1', tstzrange('2026-01-01 07:00', '2026-01-01 09:00')),
      ('OR1', tstzrange('2026-01-01 08:00', '2026-01-01 10:00')),
      ('OR2', tstzrange('2026-01-01 07:00', '2026-01-01 08:00'))) v(room, r)
    GROUP BY room ORDER BY room$$,
  $$VALUES ('OR1', 2), ('OR2', 1)$$,
  'peak per room under GROUP BY');

SELECT * FROM finish();
