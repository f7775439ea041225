-- Billing data for the benchmark: the 500 clients of bench_logons, one
-- person and one Windows account per person id, the 10M logons in the
-- October 2026 partition.  Foreign keys are not checked during this bulk
-- load (session_replication_role = replica); the data satisfies them.
SET search_path = public, mspbill;
BEGIN;
INSERT INTO clients (client_id, name, time_zone)
SELECT c, 'Bench client ' || c, 'UTC' FROM generate_series(0, 499) c;
INSERT INTO contracts (client_id, contract_id, effective, model, price_per_user)
SELECT c, 1, '[2026-01-01,)', 'per_user', 40.00 FROM generate_series(0, 499) c;
INSERT INTO people (client_id, person_id, pseudonym)
SELECT DISTINCT client_id, person_id, 'p' || person_id FROM bench_logons;
INSERT INTO accounts (client_id, account_id, realm, name, kind, person_id)
SELECT client_id, person_id, 'os', 'BENCH\u' || person_id, 'individual', person_id FROM people;
SELECT msp_add_logon_partitions('2026-10-01', 1);
SET session_replication_role = replica;
INSERT INTO logons (client_id, account_id, at)
SELECT client_id, person_id, day + make_interval(mins => (person_id % 600)::int)
  FROM bench_logons;
RESET session_replication_role;
COMMIT;
VACUUM ANALYZE;
