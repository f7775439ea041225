# Shared by run-tests (make test) and installcheck (make installcheck): the
# suites that need only a server with mspbill and pgTAP installed, and the
# tally of their TAP output.  The caller sets BINDIR (psql, pg_dump) and
# the connection (PGHOST, PGPORT, PGUSER), and sources common.sh first.
# shellcheck shell=bash

passed=0
failed=0
skipped=0
selected() { [ -z "${ONLY:-}" ] || [[ $1 =~ $ONLY ]]; }

# Count TAP lines of one output file; a file whose plan was not met, or
# that failed in any other way ($2 = 1), counts as one more failure.
tally() {
	local file=$1 broken=$2 ok notok plan skip
	ok=$(grep -cE '^ ?ok [0-9]+' "$file" || true)
	skip=$(grep -ciE '^ ?ok [0-9]+.*# skip' "$file" || true)
	notok=$(grep -cE '^ ?not ok [0-9]+' "$file" || true)
	plan=$(sed -nE 's/^ ?1\.\.([0-9]+)$/\1/p' "$file" | head -1)
	if [ -z "$plan" ] || [ "$plan" -ne $((ok + notok)) ]; then broken=1; fi
	ok=$((ok - skip))
	skipped=$((skipped + skip))
	if [ "$skip" -gt 0 ]; then
		echo "SKIP $(basename "$(dirname "$file")")/$(basename "$file"): $skip skipped" >&2
		grep -iE '^ ?ok [0-9]+.*# skip' "$file" | head -3 >&2
		if [ "${CI:-}" = true ]; then failed=$((failed + skip)); fi
	fi
	passed=$((passed + ok))
	failed=$((failed + notok))
	if [ "$broken" = 1 ] && [ "$notok" -eq 0 ]; then failed=$((failed + 1)); fi
	if [ "$broken" = 1 ] || [ "$notok" -gt 0 ]; then
		echo "FAIL $(basename "$(dirname "$file")")/$(basename "$file"): $ok ok, $notok not ok${plan:+, plan $plan}" >&2
		# each failed assertion with its diagnostics, so the log says why
		# (awk stops printing after 40 lines but reads on: a head that
		# closed the pipe would kill it with SIGPIPE under pipefail)
		awk '/^ ?not ok /{p = 1; if (n++ < 40) print; next} /^ ?(ok|not ok) [0-9]/{p = 0}
			 p && /^ *#/ && n++ < 40 {print}' "$file" |
			sed 's/^/    /' >&2
	else
		echo "ok   $(basename "$(dirname "$file")")/$(basename "$file"): $ok assertions"
	fi
}

# pg_regress over sql/*.sql of tree $1 with expected/*.out, results in
# $1/results; old results are cleared so that a pg_regress that gives up
# cannot pass on the last run's files.
run_regress_suites() {
	local tree=$1 out=$2 pg_regress regress=() t name res exp broken rc=0
	pg_regress="$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress"
	rm -rf "$tree/results" "$tree/regression.diffs" "$tree/regression.out"
	for t in "$tree"/sql/*.sql; do
		name=$(basename "$t" .sql)
		selected "$name" && regress+=("$name")
	done
	[ ${#regress[@]} -gt 0 ] || return 0
	(cd "$tree" && "$pg_regress" --inputdir=. --outputdir=. --bindir="$BINDIR" \
		--dbname=contrib_regression --load-extension=pgtap --load-extension=mspbill \
		"${regress[@]}") >"$out/pg_regress.log" 2>&1 || rc=$?
	for name in "${regress[@]}"; do
		res="$tree/results/$name.out"
		broken=1
		if [ -f "$res" ]; then
			for exp in "$tree/expected/$name.out" "$tree"/expected/"$name"_[0-9].out; do
				[ -f "$exp" ] && cmp -s "$exp" "$res" && broken=0
			done
			tally "$res" "$broken"
		else
			echo "FAIL sql/$name.sql: no output" >&2
			failed=$((failed + 1))
		fi
	done
	if [ "$rc" -ne 0 ]; then
		echo "FAIL pg_regress exited with status $rc (see $out/pg_regress.log)" >&2
		tail -5 "$out/pg_regress.log" >&2
		failed=$((failed + 1))
	fi
	[ -f "$tree/regression.diffs" ] && echo "see $tree/regression.diffs" >&2
	return 0
}

# Every pgTAP suite of test/sql/ in a fresh database of its own, run from
# the suite's directory (suites read ../demo, ../fixtures, write ../out).
run_tap_sql_suites() {
	local tree=$1 out=$2 t name db broken
	for t in "$tree"/test/sql/*.sql; do
		[ -f "$t" ] || continue
		name=$(basename "$t" .sql)
		selected "$name" || continue
		db="mspbill_test_$name"
		PGOPTIONS="-c client_min_messages=warning" psql_q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
		broken=0
		psql_q -d "$db" -c "CREATE EXTENSION pgtap" -c "CREATE EXTENSION mspbill" >/dev/null || broken=1
		(cd "$tree/test/sql" && psql_q -d "$db" -At -f "$t") >"$out/$name.out" 2>&1 || broken=1
		tally "$out/$name.out" "$broken"
		[ "$broken" = 1 ] && tail -5 "$out/$name.out" >&2
		psql_q -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null || true
	done
}

summary() {
	# a filter that matches nothing is a mistake, not a pass
	if [ $((passed + failed + skipped)) -eq 0 ]; then
		echo "FAIL no suite ran${ONLY:+ (ONLY=$ONLY matches none)}" >&2
		failed=1
	fi
	echo "$passed passed, $failed failed, $skipped skipped"
	[ "$failed" -eq 0 ]
}
