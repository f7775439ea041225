#!/usr/bin/env bash
# The counting layer on Citus: a distributed table of logons (by client_id,
# random ids with dense runs, sparse ids and both bigint extremes) gives the
# same per-client counts, sets and cross-client rollups as an ordinary table
# of the same rows, and the plans have the shapes the README describes.
# Needs the cluster of test/bin/citus; prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
eval "$(bash "$TOP/test/bin/citus" env)"
DB=mspbill_citus_counting
c() { PGOPTIONS="-c search_path=public,mspbill" "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$CITUS_HOST" -p "$CITUS_PORT" -U postgres -d "$DB" "$@"; }
echo "1..10"

citus_fresh_db "$DB"
c <<'SQL' >/dev/null
SET search_path = public, mspbill;
SELECT setseed(0.17);
CREATE TABLE ref_logons AS
SELECT (1 + (random() * 40)::int)::bigint AS client_id,
       CASE WHEN k < 0.05 THEN (ARRAY[-9223372036854775808, 9223372036854775807])[1 + (random() > 0.5)::int]
            WHEN k < 0.35 THEN (random() * 9e18)::bigint * (CASE WHEN random() < 0.5 THEN -1 ELSE 1 END)
            ELSE (random() * 5000)::bigint END AS person_id
  FROM (SELECT random() AS k FROM generate_series(1, 200000)) g;
CREATE TABLE logons_d (LIKE ref_logons);
SELECT create_distributed_table('logons_d', 'client_id', shard_count => 8);
INSERT INTO logons_d SELECT * FROM ref_logons;
SQL
tap_check "the distributed table holds every row" "$(c -c "SELECT count(*) FROM logons_d")" "200000"

q_ref="SELECT string_agg(client_id || ':' || n, ',' ORDER BY client_id) FROM (SELECT client_id, count(DISTINCT person_id) n FROM ref_logons GROUP BY 1) s"
q_dc="SELECT string_agg(client_id || ':' || n, ',' ORDER BY client_id) FROM (SELECT client_id, mspbill.distinct_count(person_id) n FROM logons_d GROUP BY 1) s"
tap_check "per client: distinct_count on Citus = COUNT(DISTINCT) on one node" "$(c -c "$q_dc")" "$(c -c "$q_ref")"

q_set_ref="SELECT md5(string_agg(client_id || ':' || s::text, ',' ORDER BY client_id)) FROM (SELECT client_id, mspbill.userset_agg(person_id) s FROM ref_logons GROUP BY 1) x"
q_set_d="SELECT md5(string_agg(client_id || ':' || s::text, ',' ORDER BY client_id)) FROM (SELECT client_id, mspbill.userset_agg(person_id) s FROM logons_d GROUP BY 1) x"
tap_check "per client: userset_agg sets on Citus = on one node" "$(c -c "$q_set_d")" "$(c -c "$q_set_ref")"

plan=$(c -c "EXPLAIN (VERBOSE, COSTS OFF) SELECT client_id, mspbill.distinct_count(person_id) FROM logons_d GROUP BY 1")
tap_check "per client: the aggregate runs on the workers (8 tasks, distinct_count in the shard query)" \
	"$(grep -c 'Task Count: 8' <<<"$plan")/$(grep -c 'Query: SELECT client_id, mspbill.distinct_count(person_id) .* GROUP BY client_id' <<<"$plan")" "1/1"

rollup="SELECT cardinality(mspbill.userset_union(s)) FROM (SELECT client_id, mspbill.userset_agg(person_id) s FROM logons_d GROUP BY client_id) per_client"
tap_check "two-level rollup: userset_union of per-client sets = COUNT(DISTINCT) over all rows" \
	"$(c -c "$rollup")" "$(c -c "SELECT count(DISTINCT person_id) FROM ref_logons")"
plan=$(c -c "EXPLAIN (VERBOSE, COSTS OFF) $rollup")
tap_check "two-level rollup: workers send one partial union per shard (worker_partial_agg)" \
	"$(grep -c 'Query: SELECT worker_partial_agg(.mspbill.userset_union' <<<"$plan")/$(grep -c 'coord_combine_agg' <<<"$plan")" "1/1"

tap_check "whole table: distinct_count on Citus = COUNT(DISTINCT)" \
	"$(c -c "SELECT mspbill.distinct_count(person_id) FROM logons_d")" \
	"$(c -c "SELECT count(DISTINCT person_id) FROM ref_logons")"
plan=$(c -c "EXPLAIN (VERBOSE, COSTS OFF) SELECT mspbill.distinct_count(person_id) FROM logons_d")
tap_check "whole table: distinct_count gathers the rows on the coordinator (internal state), as the README says" \
	"$(grep -c 'Query: SELECT person_id AS distinct_count FROM' <<<"$plan")" "1"
tap_check "whole table: userset_union over stored per-client sets = COUNT(DISTINCT)" \
	"$(c -c "CREATE TABLE sets_d AS SELECT client_id, mspbill.userset_agg(person_id) s FROM logons_d GROUP BY 1" \
		-c "SELECT create_distributed_table('sets_d', 'client_id', shard_count => 8)" \
		-c "SELECT cardinality(mspbill.userset_union(s)) FROM sets_d" | tail -1)" \
	"$(c -c "SELECT count(DISTINCT person_id) FROM ref_logons")"
tap_check "the extension is the same version on every node" \
	"$(c -c "SELECT count(DISTINCT result) FROM run_command_on_all_nodes(\$\$SELECT extversion FROM pg_extension WHERE extname = 'mspbill'\$\$)")" "1"
