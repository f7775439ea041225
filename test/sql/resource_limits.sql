-- Resource limits: aggregates over 10^7 distinct ids finish exactly, and
-- respect statement_timeout and cancellation from another session.
\set ECHO none
\pset pager off
\set QUIET on
SET search_path = public, mspbill;
CREATE EXTENSION dblink;
SELECT plan(5);

SET max_parallel_workers_per_gather = 0;
SELECT is(distinct_count(i), 10000000::bigint, '10^7 serial ids (a bitmap)') FROM generate_series(1, 10000000::bigint) i;
SELECT is(distinct_count(i * 1000003), 10000000::bigint, '10^7 scattered ids (the hash table)')
  FROM generate_series(1, 10000000::bigint) i;

CREATE FUNCTION pg_temp.cancelled(q text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  RETURN false;
EXCEPTION WHEN query_canceled THEN
  RETURN true;
END $$;
SET statement_timeout = '500ms';
SELECT pg_temp.cancelled('SELECT distinct_count(i * 1000003) FROM generate_series(1, 10000000::bigint) i') AS by_timeout \gset
SELECT pg_temp.cancelled('SELECT cardinality(userset_agg(i * 1000003)) FROM generate_series(1, 10000000::bigint) i') AS by_timeout_set \gset
RESET statement_timeout;
SELECT ok(:'by_timeout'::boolean, 'statement_timeout stops distinct_count over 10^7 ids');
SELECT ok(:'by_timeout_set'::boolean, 'statement_timeout stops userset_agg over 10^7 ids');

-- another session cancels a running aggregate
\o /dev/null
SELECT dblink_connect('worker', format('host=%s port=%s dbname=%s', current_setting('unix_socket_directories'),
                                       current_setting('port'), current_database()));
SELECT dblink_send_query('worker', 'SELECT mspbill.distinct_count(i * 1000003) FROM generate_series(1, 100000000::bigint) i');
SELECT pg_sleep(0.3);
SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT mspbill.distinct_count(i * 1000003)%' AND pid <> pg_backend_pid();
\o
SELECT ok(pg_temp.cancelled($$SELECT * FROM dblink_get_result('worker') AS t(n bigint)$$),
          'pg_cancel_backend from another session stops it');
\o /dev/null
SELECT dblink_disconnect('worker');
\o
SELECT * FROM finish();
