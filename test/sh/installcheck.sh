#!/usr/bin/env bash
# make installcheck against an existing server (here the throwaway
# cluster, as a packager's would be): it runs pg_regress's suites and the
# pgTAP suites of test/sql alike, and refuses a non-superuser up front with
# what to run instead.  Runs in a copy of the tree so that the runner's own
# results are left alone.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
work="$TOP/test/out/installcheck"
rm -rf "$work"; mkdir -p "$work/tree"
cp -a "$TOP/Makefile" "$TOP/mspbill.control" "$TOP/sql" "$TOP/expected" "$work/tree/"
mkdir -p "$work/tree/test"
cp -a "$TOP/test/bin" "$TOP/test/sql" "$TOP/test/demo" "$TOP/test/fixtures" "$work/tree/test/"
echo "1..6"

# ONLY as a make argument: the runner's own ONLY reaches sub-makes through MAKEFLAGS
PGUSER=postgres make -s -C "$work/tree" PG_CONFIG="$PG_CONFIG" installcheck ONLY='^(userset_type|invoice_cases)$' \
	>"$work/super.log" 2>&1
tap_check "installcheck as a superuser succeeds" "$?" "0"
tap_check "it ran a pg_regress suite" "$(grep -c '^ok   results/userset_type.out' "$work/super.log")" "1"
tap_check "it ran a pgTAP suite of test/sql" "$(grep -c '^ok   out/invoice_cases.out' "$work/super.log")" "1"
tap_check "it ends with the tally" "$(grep -cE '^[0-9]+ passed, 0 failed, 0 skipped$' "$work/super.log")" "1"

PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -d postgres -c "DROP ROLE IF EXISTS mspbill_test_nosuper" -c "CREATE ROLE mspbill_test_nosuper LOGIN CREATEDB"
PGUSER=mspbill_test_nosuper make -s -C "$work/tree" PG_CONFIG="$PG_CONFIG" installcheck ONLY=userset_type >"$work/nosuper.log" 2>&1
tap_check "as a non-superuser it fails" "$?" "2"
tap_check "and says to run it as the server's superuser" \
	"$(grep -c 'is not a superuser.*\|sudo -u postgres make installcheck' "$work/nosuper.log")" "2"
"$BINDIR/psql" -X -q -d postgres -c "DROP ROLE mspbill_test_nosuper"
