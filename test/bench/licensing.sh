#!/usr/bin/env bash
# BENCH_ONLY=licensing (make bench): each licensing loader on N records
# that all produce rows (default 100000), timed from the staged rows to the
# loaded ones, as records per second; then the floor under them: the
# same number of rows inserted alone into each table the loaders write,
# with their foreign keys and without.  Run by test/bin/bench after it has
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
-- only the table below is printed
\o /dev/null
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
-- floors: the rows alone, one INSERT ... SELECT per table from a ready
-- temporary table, with the table's keys and foreign keys (each foreign
-- key is checked row by row, by a trigger), then again on fresh keys with
-- the foreign keys dropped (this database is thrown away)
CREATE TEMP TABLE f AS SELECT i, 'floor' || i || '@bench.example' AS upn FROM generate_series(1, $N) i;
ANALYZE f;
SELECT pg_temp.timed('floor: INSERT accounts (keys, 2 FKs)', $N,
	\$q\$WITH i AS (INSERT INTO accounts (client_id, account_id, realm, name, kind) SELECT 1, 10000000 + f.i, 'm365', f.upn, 'unknown' FROM f RETURNING 1) SELECT count(*) FROM i\$q\$);
SELECT pg_temp.timed('floor: INSERT m365_license_assignments (key, 1 FK)', $N,
	\$q\$WITH i AS (INSERT INTO m365_license_assignments (client_id, as_of, account_id, product, account_enabled, source) SELECT 1, '2026-03-01', 10000000 + f.i, 'Microsoft 365 Business Standard', true, 'graph' FROM f RETURNING 1) SELECT count(*) FROM i\$q\$);
SELECT pg_temp.timed('floor: INSERT pax8_subscriptions (key, 1 FK)', $N,
	\$q\$WITH i AS (INSERT INTO pax8_subscriptions (client_id, as_of, subscription_id, company, product, quantity, unit_cost, unit_price, billing_term, status, start_date, source) SELECT 1, '2026-03-01', 'sub-' || f.i, 'Bench', 'Microsoft 365 Business Standard', 1 + f.i % 20, 11.25, 15.00, 'Monthly', 'Active', '2025-01-05', 'pax8' FROM f RETURNING 1) SELECT count(*) FROM i\$q\$);
SELECT pg_temp.timed('floor: INSERT psa_tickets (key, 2 FKs)', $N,
	\$q\$WITH i AS (INSERT INTO psa_tickets (client_id, psa, ticket_id, at, company, contact, board, channel) SELECT 1, 'autotask', f.i::text, '2026-01-10 10:00Z', 'Bench', f.upn, 'Help Desk', 'phone' FROM f RETURNING 1) SELECT count(*) FROM i\$q\$);
ALTER TABLE accounts DROP CONSTRAINT accounts_client_id_fkey, DROP CONSTRAINT accounts_client_id_person_id_fkey;
ALTER TABLE m365_license_assignments DROP CONSTRAINT m365_license_assignments_client_id_account_id_fkey;
ALTER TABLE pax8_subscriptions DROP CONSTRAINT pax8_subscriptions_client_id_fkey;
ALTER TABLE psa_tickets DROP CONSTRAINT psa_tickets_client_id_fkey, DROP CONSTRAINT psa_tickets_client_id_person_id_fkey;
SELECT pg_temp.timed('floor: INSERT accounts, FKs dropped', $N,
	\$q\$WITH i AS (INSERT INTO accounts (client_id, account_id, realm, name, kind) SELECT 1, 20000000 + f.i, 'm365', 'x' || f.upn, 'unknown' FROM f RETURNING 1) SELECT count(*) FROM i\$q\$);
SELECT pg_temp.timed('floor: INSERT m365_license_assignments, FK dropped', $N,
	\$q\$WITH i AS (INSERT INTO m365_license_assignments (client_id, as_of, account_id, product, account_enabled, source) SELECT 1, '2026-03-02', 20000000 + f.i, 'Microsoft 365 Business Standard', true, 'graph' FROM f RETURNING 1) SELECT count(*) FROM i\$q\$);
SELECT pg_temp.timed('floor: INSERT pax8_subscriptions, FK dropped', $N,
	\$q\$WITH i AS (INSERT INTO pax8_subscriptions (client_id, as_of, subscription_id, company, product, quantity, unit_cost, unit_price, billing_term, status, start_date, source) SELECT 1, '2026-03-02', 'sub-' || f.i, 'Bench', 'Microsoft 365 Business Standard', 1 + f.i % 20, 11.25, 15.00, 'Monthly', 'Active', '2025-01-05', 'pax8' FROM f RETURNING 1) SELECT count(*) FROM i\$q\$);
SELECT pg_temp.timed('floor: INSERT psa_tickets, FKs dropped', $N,
	\$q\$WITH i AS (INSERT INTO psa_tickets (client_id, psa, ticket_id, at, company, contact, board, channel) SELECT 1, 'halopsa', f.i::text, '2026-01-10 10:00Z', 'Bench', f.upn, 'Help Desk', 'phone' FROM f RETURNING 1) SELECT count(*) FROM i\$q\$);
\o
SELECT loader || ' | ' || records || ' | ' || round(ms) || ' ms | ' || round(records / (ms / 1000)) || '/s' FROM r;
SQL
PGOPTIONS="-c client_min_messages=warning" psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null
