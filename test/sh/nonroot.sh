#!/usr/bin/env bash
# A non-root user runs the README's two commands in a checkout of their
# own: make demo, then make test (two suites: a pg_regress one, and the
# dump/restore suite, whose server-side connections must log in as the
# cluster's superuser, not as the system user the server runs as).  Nothing
# may be written to the server's system directories.  Run as root, the
# script creates the user mspbill_nonroot for this and removes it again;
# run as another user, it runs as that user.  The copy keeps the objects
# already built, so the build is a quick no-op.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
log="$TOP/test/out/nonroot"
rm -rf "$log"; mkdir -p "$log"
# the checkout lives under /tmp: the real tree may sit where another user
# cannot go (under /root)
work=$(mktemp -d "${TMPDIR:-/tmp}/mspbill-nonroot.XXXXXX")
chmod 755 "$work"
echo "1..7"

user=$(id -un)
created=0
if [ "$(id -u)" -eq 0 ]; then
	user=mspbill_nonroot
	if ! id "$user" >/dev/null 2>&1; then
		useradd --system --no-create-home --home-dir "$work/home" --shell /bin/bash "$user" && created=1
	fi
	mkdir -p "$work/home"
fi
tar -C "$TOP" --exclude=./.git --exclude=./.pg --exclude=./test/out --exclude=./results \
	--exclude='./regression.*' -cf - . | (mkdir -p "$work/tree" && tar -C "$work/tree" -xf -)
[ "$(id -u)" -eq 0 ] && chown -R "$user": "$work/tree" "$work/home"

# what the system's directories hold before
sys_state() {
	ls -la --time-style=+%s "$("$PG_CONFIG" --sharedir)/extension" "$("$PG_CONFIG" --pkglibdir)" 2>&1 | md5sum
}
before=$(sys_state)

as_user() {
	local cmd="cd '$work/tree' && $*"
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$user" -- env -i HOME="$work/home" PATH="$PATH" LANG=C.UTF-8 bash -c "$cmd"
	else
		env -i HOME="${HOME:-$work}" PATH="$PATH" LANG=C.UTF-8 bash -c "$cmd"
	fi
}

as_user make demo >"$log/demo.log" 2>&1
tap_check "make demo as $user succeeds" "$?" "0"
tap_check "and prints the hospital's invoice" "$(grep -c '498\.00' "$log/demo.log" | awk '{print ($1 > 0)}')" "1"
as_user make test "ONLY='^(userset_type|dump_restore)\$'" >"$log/test.log" 2>&1
tap_check "make test as $user succeeds" "$?" "0"
tap_check "both suites ran and passed" "$(grep -cE '^ok   (results/userset_type|out/dump_restore)\.out' "$log/test.log")" "2"
data="$work/tree/.pg/data"
[ -d "$data" ] || data="/tmp/mspbill-pg-$(echo "$work/tree" | md5sum | cut -c1-8)/data"
tap_check "its cluster's files belong to $user" "$(stat -c %U "$data" 2>&1)" "$user"
# a system-wide make install would not matter: the private installation
# links the server's files but never the system's mspbill
tap_check "the private installation has its own mspbill files, none linked to the system's" \
	"$(find "$(dirname "$data")/install" -name 'mspbill*' -type f | grep -c . | awk '{print ($1 > 0)}') $(find "$(dirname "$data")/install" -name 'mspbill*' -type l | grep -c .)" "1 0"
as_user make stop >/dev/null 2>&1
tap_check "nothing written to the server's system directories" "$(sys_state)" "$before"

rm -rf "$work"
[ "$created" = 1 ] && userdel "$user" 2>/dev/null
exit 0
