#!/usr/bin/env bash
# The dependency check of `make demo`/`make test` asks for what the build
# needs by file, not by what this machine happens to have: run against
# bare trees, it must name the packages a fresh Debian machine lacks.
# Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
unset PG_CONFIG
echo "1..4"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
list() { MSPBILL_ROOT=$1 missing_packages unzip | tr '\n' ' ' | sed 's/ $//'; }

tap_check "an empty machine needs a server, a compiler and the extras" \
	"$(list "$root")" "postgresql gcc make libc6-dev unzip"

# only the server, as on a machine with postgresql-15 installed: pg_config
# and pgxs.mk come with the client package, the headers do not
mkdir -p "$root/usr/lib/postgresql/15/bin" "$root/usr/lib/postgresql/15/lib/pgxs/src/makefiles" \
	"$root/usr/bin" "$root/usr/include"
for f in usr/lib/postgresql/15/bin/postgres usr/lib/postgresql/15/bin/pg_config usr/bin/gcc usr/bin/make; do
	printf '#!/bin/sh\n' >"$root/$f"; chmod +x "$root/$f"
done
touch "$root/usr/lib/postgresql/15/lib/pgxs/src/makefiles/pgxs.mk" "$root/usr/include/stdio.h"
tap_check "a server with pg_config and pgxs.mk but no postgres.h still needs server-dev" \
	"$(list "$root")" "postgresql-server-dev-15 postgresql-15-pgtap unzip"

mkdir -p "$root/usr/include/postgresql/15/server" "$root/usr/share/postgresql/15/extension"
touch "$root/usr/include/postgresql/15/server/postgres.h" "$root/usr/share/postgresql/15/extension/pgtap.control"
tap_check "headers and pgTAP present: only the missing extra package" \
	"$(list "$root")" "unzip"

# the newest major wins
mkdir -p "$root/usr/lib/postgresql/17/bin"
printf '#!/bin/sh\n' >"$root/usr/lib/postgresql/17/bin/postgres"; chmod +x "$root/usr/lib/postgresql/17/bin/postgres"
tap_check "the newest server's major decides which headers are needed" \
	"$(list "$root")" "postgresql-server-dev-17 postgresql-17-pgtap unzip"
