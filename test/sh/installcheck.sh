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
echo "1..9"

# ONLY as a make argument: the runner's own ONLY reaches sub-makes through MAKEFLAGS
PGUSER=postgres make -s -C "$work/tree" PG_CONFIG="$PG_CONFIG" installcheck ONLY='^(userset_type|catalog)$' \
	>"$work/super.log" 2>&1
tap_check "installcheck as a superuser succeeds" "$?" "0"
tap_check "it ran a pg_regress suite" "$(grep -c '^ok   results/userset_type.out' "$work/super.log")" "1"
tap_check "it ran a pgTAP suite of test/sql" "$(grep -c '^ok   out/catalog.out' "$work/super.log")" "1"
tap_check "it ends with the tally" "$(grep -cE '^[0-9]+ passed, 0 failed, 0 skipped$' "$work/super.log")" "1"

PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -d postgres -c "DROP ROLE IF EXISTS mspbill_test_nosuper" -c "CREATE ROLE mspbill_test_nosuper LOGIN CREATEDB"
PGUSER=mspbill_test_nosuper make -s -C "$work/tree" PG_CONFIG="$PG_CONFIG" installcheck ONLY=userset_type >"$work/nosuper.log" 2>&1
tap_check "as a non-superuser it fails" "$?" "2"
tap_check "and says to run it as the server's superuser" \
	"$(grep -c 'is not a superuser.*\|sudo -u postgres make installcheck' "$work/nosuper.log")" "2"
"$BINDIR/psql" -X -q -d postgres -c "DROP ROLE mspbill_test_nosuper"

# peer authentication, as on Debian: a cluster of its own that trusts no
# one but the matching system user, and a root-owned tree postgres may read
# but not write (under /tmp: the real tree may sit where postgres cannot go)
if [ "$(id -u)" -ne 0 ]; then
	for d in "as root with PGUSER=postgres it becomes postgres" "and runs the suites" "from a scratch copy"; do
		TAP_N=$((TAP_N + 1)); echo "ok $TAP_N # SKIP not root: $d"
	done
	exit 0
fi
peer=$(mktemp -d); chmod 755 "$peer"
trap 'as_owner "$BINDIR/pg_ctl" -D "$peer/data" -m immediate -w stop >/dev/null 2>&1; rm -rf "$peer"' EXIT
cp -a "$work/tree" "$peer/tree"; chown -R root: "$peer/tree"; chmod -R go-w "$peer/tree"
mkdir "$peer/data"; chown postgres: "$peer/data" "$peer"
port=55432
while port_taken "$port"; do port=$((port + 1)); done
as_owner "$BINDIR/initdb" -D "$peer/data" -U postgres -A peer --locale=C --no-sync >/dev/null 2>&1
as_owner "$BINDIR/pg_ctl" -D "$peer/data" -o "-k $peer -p $port -c listen_addresses=''" -l "$peer/server.log" -w start >/dev/null
PGHOST=$peer PGPORT=$port PGUSER=postgres make -s -C "$peer/tree" PG_CONFIG="$PG_CONFIG" installcheck ONLY='^(userset_type|catalog)$' \
	>"$work/peer.log" 2>&1
tap_check "as root with PGUSER=postgres under peer authentication it becomes postgres" \
	"$(grep -c 'peer authentication: running as the postgres system user' "$work/peer.log")" "1"
tap_check "and runs the suites" "$(grep -cE '^[0-9]+ passed, 0 failed, 0 skipped$' "$work/peer.log")" "1"
tap_check "from a scratch copy, the tree not being postgres's to write" "$(grep -c 'is not writable: running from a copy' "$work/peer.log")" "1"
