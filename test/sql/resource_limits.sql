-- Resource limits: aggregates over 10^7 distinct ids finish exactly, and
-- respect statement_timeout and cancellation from another session.
\set ECHO none
\pset pager off
\set QUIET on
SET search_path = public, mspbill;
CREATE EXTENSION dblink;
SELECT plan(13);

SET max_parallel_workers_per_gather = 0;
SELECT is(distinct_count(i), 10000000::bigint, '10^7 serial ids (a bitmap)') FROM generate_series(1, 10000000::bigint) i;
SELECT is(distinct_count(i * 1000003), 10000000::bigint, '10^7 scattered ids (the hash table)')
  FROM generate_series(1, 10000000::bigint) i;

-- every set that can be built also outputs and reads back; one whose text
-- form would pass 512 MB is refused when built, not when dumped
CREATE TEMP TABLE ten_million AS SELECT userset_agg(i * 7 + 1000000000) AS s FROM generate_series(1, 10000000::bigint) i;
SELECT is((SELECT s::text::userset = s AND userset_from_binary(userset_send(s)) = s FROM ten_million), true,
          '10^7 members output as text and binary and read back');
SELECT is((SELECT length(s::text) FROM ten_million), 110000001, 'its text form is 110 MB');
SELECT throws_ok('SELECT cardinality(userset_agg(i + 1000000000000000000)) FROM generate_series(1, 27000000::bigint) i',
                 '54000', 'userset would exceed the maximum value size',
                 '27M 19-digit members (540 MB of text) are refused when the set is built');
DROP TABLE ten_million;

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

-- Cancellation inside one long C call: the inputs are built first, so the
-- timed statement spends its time in the C function itself.  A call that
-- runs for seconds must stop within a fraction of that: the timeout
-- reaches the loop, not the next row.
CREATE FUNCTION pg_temp.run_ms(q text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
  EXECUTE q;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
CREATE FUNCTION pg_temp.cancel_ms(q text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
  EXECUTE q;
  RETURN -1;
EXCEPTION WHEN query_canceled THEN
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
-- (the texts are stored compressed: fetching them is quick, and
-- decompressing checks no interrupts, so only the function's own loop can
-- notice the timeout early)
CREATE TEMP TABLE huge (members_text text, doc text, a userset, b userset);
INSERT INTO huge
SELECT '{' || repeat('7,', 40000000) || '7}',
       '{"a":[' || repeat('[[[[[[[[1]]]]]]]],', 8000000) || '1],"k":"v"}',
       (SELECT userset_agg(i * 3) FROM generate_series(1, 40000000::bigint) i),
       (SELECT userset_agg(i * 5) FROM generate_series(1, 20000000::bigint) i);
-- each call's full time, then the same call under a 100 ms timeout
CREATE TEMP TABLE calls (name text, q text, full_ms float8, cancel_ms float8);
INSERT INTO calls (name, q) VALUES
  ('userset_in of a 40M-member text', 'SELECT cardinality(members_text::userset) FROM huge'),
  ('userset_union of a 40M-member set', 'SELECT cardinality(userset_union(a)) FROM huge'),
  ('the | of a 40M-member and a 20M-member set', 'SELECT cardinality(a | b) FROM huge'),
  ('msp_json_fields on a 144 MB document', 'SELECT msp_json_fields(doc, ''{a,k}'') FROM huge');
UPDATE calls SET full_ms = pg_temp.run_ms(q);
SET statement_timeout = '100ms';
SELECT pg_temp.cancel_ms(q) AS ms FROM calls WHERE name LIKE 'userset_in%' \gset
UPDATE calls SET cancel_ms = :ms WHERE name LIKE 'userset_in%';
SELECT pg_temp.cancel_ms(q) AS ms FROM calls WHERE name LIKE 'userset_union%' \gset
UPDATE calls SET cancel_ms = :ms WHERE name LIKE 'userset_union%';
SELECT pg_temp.cancel_ms(q) AS ms FROM calls WHERE name LIKE 'the |%' \gset
UPDATE calls SET cancel_ms = :ms WHERE name LIKE 'the |%';
SELECT pg_temp.cancel_ms(q) AS ms FROM calls WHERE name LIKE 'msp_json%' \gset
UPDATE calls SET cancel_ms = :ms WHERE name LIKE 'msp_json%';
RESET statement_timeout;
-- (a third: userset_union's work is two C calls, adding and flattening,
-- with the executor's own check between them)
SELECT ok(cancel_ms >= 0 AND cancel_ms < full_ms / 3,
          format('%s stops inside the C loop: %s ms cancelled, %s ms in full', name, round(cancel_ms), round(full_ms)))
  FROM calls ORDER BY name;
SELECT is((SELECT msp_json_fields(doc, '{k}') FROM huge), '{v}', 'uncancelled, msp_json_fields reads the document');

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
