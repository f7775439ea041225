#!/usr/bin/env bash
# Property suite: random clients (MODEL_CLIENTS, default 2000; MODEL_SEED,
# default 14) priced by mspbill and by the independent model of the
# README's rules in test/model/, compared to the cent.  Prints TAP.
#   MODEL_CLIENTS=20000 make test ONLY=invoice_model     # the long mode
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
DB=mspbill_test_model
PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -d postgres \
	-c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" || exit 1
"$BINDIR/psql" -X -q -d "$DB" -c "CREATE EXTENSION mspbill" || exit 1
# Debian's python3 has psycopg2 (python3-psycopg2); a pyenv shim may not
py=/usr/bin/python3
[ -x "$py" ] || py=python3
(cd "$TOP/test/model" && "$py" compare.py "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER" \
	"${MODEL_CLIENTS:-2000}" "${MODEL_SEED:-14}")
rc=$?
drop_db "$DB"
exit $rc
