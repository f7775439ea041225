-- Backup: pg_dump in custom and plain formats restores to identical
-- invoices, usersets, finalized records and configuration.
\set ECHO none
\pset pager off
\set QUIET on
\i ../demo/clinics.sql
SET search_path = public, mspbill;
CREATE EXTENSION dblink;
SELECT plan(12);

-- data worth keeping: a finalized invoice, an adjustment, stored usersets
SET client_min_messages = warning;
SELECT msp_finalize_invoice(2, NULL, '{device_silent}') AS invoice_id \gset
CREATE TABLE public.daily_people AS
  SELECT l.client_id, (l.at AT TIME ZONE 'America/Chicago')::date AS day, userset_agg(a.person_id) AS people
    FROM logons l JOIN accounts a USING (client_id, account_id) WHERE a.kind = 'individual' GROUP BY 1, 2;
CREATE TABLE public.before AS
  SELECT (SELECT string_agg(people::text, ';' ORDER BY client_id, day) FROM public.daily_people) AS sets,
         (msp_invoice(1)).total AS hospital, (msp_invoice(2)).total AS dental,
         (SELECT count(*) FROM logons) AS logons, (SELECT count(*) FROM accounts) AS accounts,
         (SELECT count(*) FROM contracts) AS contracts, (SELECT count(*) FROM invoice_items) AS items;
SELECT current_database() AS db, current_setting('unix_socket_directories') AS sock, current_setting('port') AS port \gset
\setenv MSP_DB :db
-- (pg_dump warns that invoices references itself: adjustments point at invoices)
\! "$BINDIR/pg_dump" -Fc -f ../out/dump_restore.custom "$MSP_DB" 2> ../out/dump_restore_dump.log
\! "$BINDIR/pg_dump" -Fp -f ../out/dump_restore.sql "$MSP_DB" 2>> ../out/dump_restore_dump.log
\! PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -d postgres -c "DROP DATABASE IF EXISTS ${MSP_DB}_c" -c "DROP DATABASE IF EXISTS ${MSP_DB}_p" -c "CREATE DATABASE ${MSP_DB}_c" -c "CREATE DATABASE ${MSP_DB}_p"
\! "$BINDIR/pg_restore" -d "${MSP_DB}_c" ../out/dump_restore.custom > ../out/dump_restore_c.log 2>&1; echo "custom restore exit $?" >> ../out/dump_restore_c.log
\! "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -d "${MSP_DB}_p" -f ../out/dump_restore.sql > ../out/dump_restore_p.log 2>&1; echo "plain restore exit $?" >> ../out/dump_restore_p.log
RESET client_min_messages;

CREATE FUNCTION pg_temp.restored(fmt text) RETURNS TABLE (sets text, hospital numeric, dental numeric, logons bigint,
                                                          accounts bigint, contracts bigint, items bigint)
LANGUAGE sql AS $$
  SELECT * FROM dblink(format('host=%s port=%s dbname=%s', current_setting('unix_socket_directories'),
                              current_setting('port'), current_database() || '_' || fmt),
    $q$SET search_path = public, mspbill;
       SELECT (SELECT string_agg(people::text, ';' ORDER BY client_id, day) FROM public.daily_people),
              (msp_invoice(1)).total, (msp_invoice(2)).total, (SELECT count(*) FROM logons),
              (SELECT count(*) FROM accounts), (SELECT count(*) FROM contracts), (SELECT count(*) FROM invoice_items)$q$)
    AS t(sets text, hospital numeric, dental numeric, logons bigint, accounts bigint, contracts bigint, items bigint)
$$;
SELECT is((SELECT sets FROM pg_temp.restored('c')), (SELECT sets FROM public.before), 'custom: usersets identical');
SELECT is((SELECT hospital FROM pg_temp.restored('c')), 498.00, 'custom: the preview invoice is identical');
SELECT is((SELECT dental FROM pg_temp.restored('c')), (SELECT dental FROM public.before), 'custom: the finalized invoice is identical');
SELECT is((SELECT row(logons, accounts, contracts, items)::text FROM pg_temp.restored('c')),
          (SELECT row(logons, accounts, contracts, items)::text FROM public.before), 'custom: configuration and logons complete');
SELECT is((SELECT sets FROM pg_temp.restored('p')), (SELECT sets FROM public.before), 'plain: usersets identical');
SELECT is((SELECT hospital FROM pg_temp.restored('p')), 498.00, 'plain: the preview invoice is identical');
SELECT is((SELECT dental FROM pg_temp.restored('p')), (SELECT dental FROM public.before), 'plain: the finalized invoice is identical');
SELECT is((SELECT row(logons, accounts, contracts, items)::text FROM pg_temp.restored('p')),
          (SELECT row(logons, accounts, contracts, items)::text FROM public.before), 'plain: configuration and logons complete');
SELECT is((SELECT n FROM dblink(format('host=%s port=%s dbname=%s_c', :'sock', :'port', :'db'),
                                'SELECT nextval(''mspbill.invoice_id_seq'')') AS t(n bigint)) > :invoice_id, true,
          'custom: invoice numbers continue, none is reused');
SELECT is((SELECT x FROM dblink(format('host=%s port=%s dbname=%s_c', :'sock', :'port', :'db'),
                                'SELECT count(*) FROM mspbill.audit_log') AS t(x bigint)), 2::bigint,
          'custom: the audit trail came along');
\set c_exit `tail -n 1 ../out/dump_restore_c.log`
\set p_exit `tail -n 1 ../out/dump_restore_p.log`
SELECT is(:'c_exit'::text, 'custom restore exit 0', 'pg_restore of the custom dump succeeds');
SELECT is(:'p_exit'::text, 'plain restore exit 0', 'psql replay of the plain dump succeeds (ON_ERROR_STOP)');
\! PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -d postgres -c "DROP DATABASE IF EXISTS ${MSP_DB}_c" -c "DROP DATABASE IF EXISTS ${MSP_DB}_p"
SELECT * FROM finish();
