# Shared by the scripts in test/bin: where PostgreSQL is, the dependencies,
# and the throwaway cluster in .pg/ at the top of the tree.
# shellcheck shell=bash

set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGROOT_DEFAULT="$TOP/.pg"

die() { echo "mspbill: $*" >&2; exit 1; }
note() { echo "mspbill: $*" >&2; }

# Everything below looks under $MSPBILL_ROOT (empty: this machine), so the
# dependency check can be tested against a bare tree.
MSPBILL_ROOT=${MSPBILL_ROOT:-}

# The newest PostgreSQL server installed, unless PG_CONFIG says otherwise.
pg_major() {
	if [ -n "${PG_CONFIG:-}" ] && [ -x "$PG_CONFIG" ]; then
		"$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/'
		return
	fi
	local best="" d
	for d in "$MSPBILL_ROOT"/usr/lib/postgresql/*/bin/postgres; do
		[ -x "$d" ] || continue
		d=${d#"$MSPBILL_ROOT"/usr/lib/postgresql/}; d=${d%%/*}
		if [ -z "$best" ] || [ "$d" -gt "$best" ]; then best=$d; fi
	done
	echo "$best"
}

# The Debian packages missing for the build and the tests, one per line:
# what is checked is the file each step needs, not a package's name.
missing_packages() {
	local major extra r=$MSPBILL_ROOT
	major=$(pg_major)
	if [ -z "$major" ]; then
		echo postgresql
	else
		# pg_config and pgxs.mk ship in the client package on Debian; the
		# build needs the server headers, which only server-dev carries
		[ -f "$r/usr/include/postgresql/$major/server/postgres.h" ] &&
			[ -f "$r/usr/lib/postgresql/$major/lib/pgxs/src/makefiles/pgxs.mk" ] ||
			echo "postgresql-server-dev-$major"
		[ -f "$r/usr/share/postgresql/$major/extension/pgtap.control" ] ||
			echo "postgresql-$major-pgtap"
	fi
	[ -x "$r/usr/bin/gcc" ] || echo gcc
	[ -x "$r/usr/bin/make" ] || echo make
	[ -f "$r/usr/include/stdio.h" ] || echo libc6-dev
	for extra in "$@"; do
		dpkg-query --admindir="$r/var/lib/dpkg" -W -f='${Status}\n' "$extra" 2>/dev/null |
			grep -q 'install ok installed' || echo "$extra"
	done
}

# Install what the build and the tests need, through apt, when it is absent.
ensure_deps() {
	local major missing
	major=$(pg_major)
	mapfile -t missing < <(missing_packages "$@")
	[ ${#missing[@]} -eq 0 ] && return 0

	if [ "$(id -u)" -ne 0 ]; then
		die "missing packages: ${missing[*]}
  install them as root:  apt-get update && apt-get install -y ${missing[*]}
  then run this command again."
	fi
	note "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null ||
		die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
	# a server package installed just now decides the major version
	if [ -z "$major" ]; then ensure_deps "$@"; fi
}

# Set PG_CONFIG, SYSBINDIR (the server's programs) and BINDIR: the private
# installation's copy of them once build_install has made it, so that the
# throwaway cluster loads the mspbill built here, never the system's.
find_pg() {
	local major
	major=$(pg_major)
	[ -n "$major" ] || die "no PostgreSQL server found; run: make demo (as root) to install one"
	PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$major/bin/pg_config}
	[ -x "$PG_CONFIG" ] || die "$PG_CONFIG not found: install postgresql-server-dev-$major"
	SYSBINDIR=$("$PG_CONFIG" --bindir)
	PREFIX="$(cluster_root)/install"
	BINDIR=$SYSBINDIR
	[ -x "$PREFIX$SYSBINDIR/postgres" ] && BINDIR=$PREFIX$SYSBINDIR
	export PG_CONFIG SYSBINDIR PREFIX BINDIR
}

# Link every entry of the system directory $1 into the private one $2,
# except mspbill's own files; directories listed in $3.. get the same
# treatment one level down (PGXS installs into extension/ and bitcode/).
link_tree() {
	local from=$1 to=$2 e name
	shift 2
	mkdir -p "$to"
	find "$to" -maxdepth 1 -xtype l -delete
	for e in "$from"/*; do
		name=$(basename "$e")
		case "$name" in mspbill*) continue ;; esac
		if [[ " $* " == *" $name "* ]]; then
			[ -L "$to/$name" ] && rm -f "$to/$name"
			link_tree "$e" "$to/$name"
		else
			ln -sfn "$e" "$to/$name"
		fi
	done
}

# Build without warnings and install the extension into a private copy of
# the server's installation under the cluster directory: programs copied (a
# server finds its share and lib directories relative to its own path),
# everything else linked.  Nothing outside the tree is written, so a
# non-root user needs no rights on the system's directories and other
# clusters on the machine keep the mspbill they had.
build_install() {
	local log sharedir libdir
	log=$(mktemp)
	if ! make -C "$TOP" -s PG_CONFIG="$PG_CONFIG" all >"$log" 2>&1; then
		cat "$log" >&2; rm -f "$log"; die "build failed"
	fi
	if grep -q 'warning:' "$log"; then
		cat "$log" >&2; rm -f "$log"; die "build has compiler warnings"
	fi
	rm -f "$log"
	sharedir=$("$PG_CONFIG" --sharedir)
	libdir=$("$PG_CONFIG" --pkglibdir)
	mkdir -p "$PREFIX$SYSBINDIR"
	cmp -s "$SYSBINDIR/postgres" "$PREFIX$SYSBINDIR/postgres" ||
		cp -a "$SYSBINDIR/." "$PREFIX$SYSBINDIR/"
	link_tree "$sharedir" "$PREFIX$sharedir" extension
	link_tree "$libdir" "$PREFIX$libdir" bitcode
	make -C "$TOP" -s PG_CONFIG="$PG_CONFIG" DESTDIR="$PREFIX" install >/dev/null ||
		die "make install into $PREFIX failed"
	BINDIR=$PREFIX$SYSBINDIR
}

# Run a command as the cluster's owner: postgres when we are root.
as_owner() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# Where the cluster lives: .pg/ in the tree, unless postgres cannot reach it
# (a tree under /root) or the socket path would be too long.
cluster_root() {
	local root="$PGROOT_DEFAULT"
	if [ "${#root}" -gt 80 ] ||
		{ [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$TOP"; }; then
		root="/tmp/mspbill-pg-$(echo "$TOP" | md5sum | cut -c1-8)"
	fi
	echo "$root"
}

# Is something already answering on this port, anywhere we would collide?
port_taken() {
	local p=$1
	[ -e "/tmp/.s.PGSQL.$p" ] || [ -e "/var/run/postgresql/.s.PGSQL.$p" ] && return 0
	(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && return 0
	return 1
}

# Start the throwaway cluster (or reuse a running one): unix socket in the
# tree, and loopback TCP for the JDBC test (JDBC has no unix sockets); sets PGHOST, PGPORT,
# PGUSER and STARTED_CLUSTER=1 when this call started it.
cluster_start() {
	find_pg
	PGROOT=$(cluster_root)
	local data="$PGROOT/data" port
	STARTED_CLUSTER=0
	mkdir -p "$PGROOT"
	[ "$(id -u)" -eq 0 ] && chown postgres: "$PGROOT"
	if [ -f "$PGROOT/port" ] && as_owner "$BINDIR/pg_ctl" -D "$data" status >/dev/null 2>&1; then
		port=$(cat "$PGROOT/port")
	else
		if [ ! -f "$data/PG_VERSION" ] ||
			[ "$(cat "$data/PG_VERSION")" != "$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')" ]; then
			rm -rf "$data"
			as_owner "$BINDIR/initdb" -D "$data" -U postgres -A trust -E UTF8 \
				--locale=C --no-sync >"$PGROOT/initdb.log" 2>&1 ||
				{ cat "$PGROOT/initdb.log" >&2; die "initdb failed"; }
		fi
		port=54329
		while port_taken "$port"; do port=$((port + 1)); done
		cat >"$PGROOT/mspbill.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGROOT'
port = $port
fsync = off
synchronous_commit = off
full_page_writes = off
max_parallel_workers_per_gather = 2
logging_collector = off
lc_messages = 'C'
CONF
		[ "$(id -u)" -eq 0 ] && chown postgres: "$PGROOT/mspbill.conf"
		grep -q "include_if_exists = '$PGROOT/mspbill.conf'" "$data/postgresql.conf" ||
			echo "include_if_exists = '$PGROOT/mspbill.conf'" | as_owner tee -a "$data/postgresql.conf" >/dev/null
		# backends that connect out (dblink in the tests) log in as postgres,
		# not as the system user the server runs as
		PGUSER=postgres as_owner "$BINDIR/pg_ctl" -D "$data" -l "$PGROOT/server.log" -w -t 60 start >/dev/null ||
			{ tail -20 "$PGROOT/server.log" >&2; die "the throwaway cluster did not start"; }
		echo "$port" >"$PGROOT/port"
		STARTED_CLUSTER=1
	fi
	export PGHOST="$PGROOT" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
	export PGROOT STARTED_CLUSTER
}

cluster_stop() {
	find_pg
	PGROOT=$(cluster_root)
	if [ -d "$PGROOT/data" ] && as_owner "$BINDIR/pg_ctl" -D "$PGROOT/data" status >/dev/null 2>&1; then
		as_owner "$BINDIR/pg_ctl" -D "$PGROOT/data" -m fast -w stop >/dev/null
	fi
}

# psql with the settings every script wants.
psql_q() {
	"$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 "$@"
}

# TAP for the scripts in test/sh: tap_check description got want.  An empty
# value never passes: a query that failed on both sides proves nothing.
TAP_N=0
tap_check() {
	TAP_N=$((TAP_N + 1))
	if [ -n "$2" ] && [ "$2" = "$3" ]; then
		echo "ok $TAP_N - $1"
	else
		echo "not ok $TAP_N - $1"
		echo "# got '$2', want '$3'"
	fi
}

# A fresh database with mspbill and the demo clinics loaded.
fresh_demo_db() {
	PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -d postgres \
		-c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"
	"$BINDIR/psql" -X -q -d "$1" -c "CREATE EXTENSION mspbill" -c "ALTER DATABASE $1 SET search_path = public, mspbill"
	(cd "$TOP/test/demo" && "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -d "$1" -f clinics.sql >/dev/null)
}

drop_db() {
	PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -d postgres -c "DROP DATABASE IF EXISTS $1"
}

# A fresh database on every node of the Citus cluster (test/bin/citus), with
# citus, the workers registered and mspbill created from the coordinator.
citus_fresh_db() {
	local db=$1 port
	for port in "$CITUS_PORT" $((CITUS_PORT + 1)) $((CITUS_PORT + 2)); do
		PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -h "$CITUS_HOST" -p "$port" -U postgres -d postgres \
			-c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null || return 1
		"$BINDIR/psql" -X -q -h "$CITUS_HOST" -p "$port" -U postgres -d "$db" -c "CREATE EXTENSION citus" >/dev/null || return 1
	done
	"$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$CITUS_HOST" -p "$CITUS_PORT" -U postgres -d "$db" \
		-c "SELECT citus_set_coordinator_host('$CITUS_HOST', $CITUS_PORT)" \
		-c "SELECT citus_add_node('$CITUS_HOST', $((CITUS_PORT + 1)))" \
		-c "SELECT citus_add_node('$CITUS_HOST', $((CITUS_PORT + 2)))" \
		-c "CREATE EXTENSION mspbill" >/dev/null
}

# Bytes per logon row, heap (toast included) and each index, over the leaf
# partitions of mspbill.logons given ($1: SQL array of their names) and the
# rows counted by $2 (SQL giving n): one query for every bench that
# reports storage, so that their rows measure the same thing.  Prints it;
# its rows are (what, bytes), what being heap, an index's name, total or rows.
logon_bytes_sql() {
	cat <<SQL
	WITH parts AS (SELECT p::regclass AS relid FROM unnest($1::text[]) p),
	n AS ($2)
	SELECT 'heap', round(sum(pg_table_size(p.relid))::numeric / n.n, 1) FROM parts p, n GROUP BY n.n
	UNION ALL
	SELECT regexp_replace(pi.indexrelid::regclass::text, '^mspbill\.', ''), round(sum(pg_relation_size(ix.indexrelid))::numeric / n.n, 1)
	  FROM pg_index pi JOIN pg_inherits h ON h.inhparent = pi.indexrelid JOIN pg_index ix ON ix.indexrelid = h.inhrelid
	  JOIN parts ON parts.relid = ix.indrelid, n
	 WHERE pi.indrelid = 'mspbill.logons'::regclass GROUP BY pi.indexrelid, n.n
	UNION ALL
	SELECT 'total', round(sum(pg_total_relation_size(p.relid))::numeric / n.n, 1) FROM parts p, n GROUP BY n.n
	UNION ALL
	SELECT 'rows', n FROM n
SQL
}
