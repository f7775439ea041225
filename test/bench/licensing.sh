#!/usr/bin/env bash
# BENCH_ONLY=licensing (make bench): each licensing loader on N records
# that all produce rows (default 100000), timed from the staged rows to the
# loaded ones, as records per second.  Run by test/bin/bench after it has
# built, installed and started the cluster.
set -euo pipefail
. "$TOP/test/bin/common.sh"
find_pg
N=${BENCH_LICENSING_N:-100000}
DB=mspbill_bench_licensing
PGOPTIONS="-c client_min_messages=warning" psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
psql_q -d "$DB" -c "CREATE EXTENSION mspbill" >/dev/null
psql_q -d "$DB" -At <<SQL | sed 's/^/| /; s/$/ |/'
SET search_path = public, mspbill;
SET client_min_messages = warning;
INSERT INTO clients (client_id, name) VALUES (1, 'Bench');
CREATE TEMP TABLE r (loader text, records bigint, ms numeric);
CREATE FUNCTION pg_temp.timed(loader text, records bigint, q text) RETURNS void LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp(); got record;
BEGIN
	EXECUTE q INTO got;
	INSERT INTO r VALUES (loader, records, extract(epoch FROM clock_timestamp() - t0) * 1000);
END \$\$;
-- Graph users (one licence each), JSON lines
INSERT INTO m365_graph_staging (client_id, raw)
SELECT 1, '{"id":"u' || i || '","userPrincipalName":"user' || i || '@bench.example","accountEnabled":true,"assignedLicenses":[{"disabledPlans":[],"skuId":"f245ecc8-75af-4f8e-b61f-27d8114de5f3"}]}'
  FROM generate_series(1, $N) i;
SELECT pg_temp.timed('msp_load_m365_graph (users, JSON lines)', $N, 'SELECT * FROM msp_load_m365_graph(1, ''2026-01-31'')');
INSERT INTO m365_users_csv_staging (client_id, raw) VALUES (1, 'Block credential,Display name,Licenses,User principal name');
INSERT INTO m365_users_csv_staging (client_id, raw)
SELECT 1, 'False,"User ' || i || '",Microsoft 365 Business Standard,csv' || i || '@bench.example' FROM generate_series(1, $N) i;
SELECT pg_temp.timed('msp_load_m365_users_csv', $N, 'SELECT * FROM msp_load_m365_users_csv(1, ''2026-02-01'')');
INSERT INTO m365_activity_staging (client_id, raw) VALUES (1, 'Report Refresh Date,User Principal Name,Is Deleted,Exchange Last Activity Date');
INSERT INTO m365_activity_staging (client_id, raw)
SELECT 1, '2026-01-31,act' || i || '@bench.example,False,2026-01-' || lpad((1 + i % 28)::text, 2, '0') FROM generate_series(1, $N) i;
SELECT pg_temp.timed('msp_load_m365_activity', $N, 'SELECT * FROM msp_load_m365_activity(1)');
INSERT INTO pax8_staging (client_id, raw) VALUES (1, 'Company,Product,Subscription Id,Quantity,Partner Cost,Price,Billing Term,Status,Start Date,End Date');
INSERT INTO pax8_staging (client_id, raw)
SELECT 1, 'Bench,Microsoft 365 Business Standard,sub-' || i || ',' || (1 + i % 20) || ',11.25,15.00,Monthly,Active,2025-01-05,' FROM generate_series(1, $N) i;
SELECT pg_temp.timed('msp_load_pax8_subscriptions (CSV)', $N, 'SELECT * FROM msp_load_pax8_subscriptions(1, ''2026-01-31'')');
INSERT INTO pax8_staging (client_id, raw)
SELECT 1, '{"id":"api-' || i || '","companyId":"c-1","productId":"f245ecc8-75af-4f8e-b61f-27d8114de5f3","quantity":' || (1 + i % 20) || ',"partnerCost":11.25,"price":15.0,"billingTerm":"Monthly","status":"Active","startDate":"2025-01-05"}'
  FROM generate_series(1, $N) i;
SELECT pg_temp.timed('msp_load_pax8_subscriptions (API JSON lines)', $N, 'SELECT * FROM msp_load_pax8_subscriptions(1, ''2026-02-01'')');
INSERT INTO psa_ticket_staging (client_id, raw)
SELECT 1, '{"id":' || i || ',"company":{"identifier":"Bench"},"contactEmailAddress":"user' || (i % 1000) || '@bench.example","board":{"name":"Help Desk"},"source":{"name":"Phone"},"_info":{"dateEntered":"2026-01-' || lpad((1 + i % 28)::text, 2, '0') || 'T10:00:00Z"}}'
  FROM generate_series(1, $N) i;
SELECT pg_temp.timed('msp_load_psa_tickets (ConnectWise)', $N, 'SELECT * FROM msp_load_psa_tickets(1, ''connectwise'')');
SELECT loader || ' | ' || records || ' | ' || round(ms) || ' ms | ' || round(records / (ms / 1000)) || '/s' FROM r;
SQL
PGOPTIONS="-c client_min_messages=warning" psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null
