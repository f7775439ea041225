#!/usr/bin/env bash
# The README's "Getting started" setup and "Your first client" walk-through,
# run as written: the setup lines of Getting started in a new database, then
# (in a new session, so that the search path comes from ALTER DATABASE) the
# walk-through's shell block, which writes the export, and its SQL block,
# through psql from that directory, once as the superuser and once as a
# login in mspbill_admin.  What psql prints must contain the invoice the
# README shows.  Also the README's claims about the cross-client rollup on
# the demo database.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
work="$TOP/test/out/first_client"
rm -rf "$work"; mkdir -p "$work"
admin=mspbill_test_first_admin
py=/usr/bin/python3
[ -x "$py" ] || py=python3
q() { local db=$1; shift; PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }

# the blocks, as files: setup.sql (Getting started up to its first SET),
# export.sh, walk.sql and expected.txt (Your first client)
"$py" - "$TOP/README.md" "$work" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
out = sys.argv[2]
def section(heading):
    start = text.index(heading + "\n")
    nxt = re.search(r"^#{2,3} ", text[start + len(heading):], re.M)
    return text[start:start + len(heading) + (nxt.start() if nxt else len(text))]
def blocks(sec, lang):
    return re.findall(r"^```" + lang + r"\n(.*?)^```$", sec, re.S | re.M)
gs = blocks(section("## Getting started"), "sql")[0]
setup = []
for line in gs.splitlines():
    setup.append(line)
    if line.startswith("SET search_path"):
        break
open(out + "/setup.sql", "w").write("\n".join(setup) + "\n")
fc = section("### Your first client")
open(out + "/export.sh", "w").write(blocks(fc, "sh")[0])
open(out + "/walk.sql", "w").write(blocks(fc, "sql")[0])
open(out + "/expected.txt", "w").write(blocks(fc, "text")[0])
PY
echo "1..17"
tap_check "the README has the setup, the export, the walk-through and its output" \
	"$(cd "$work" && [ -s setup.sql ] && [ -s export.sh ] && [ -s walk.sql ] && [ -s expected.txt ] && grep -c 'ALTER DATABASE' setup.sql)" "1"

# the printed output contains the expected block (trailing blanks aside)
contains() {
	"$py" - "$1" "$work/expected.txt" <<'PY'
import sys
got = [l.rstrip() for l in open(sys.argv[1]).read().splitlines()]
want = [l.rstrip() for l in open(sys.argv[2]).read().splitlines()]
print("yes" if any(got[i:i + len(want)] == want for i in range(len(got))) else "no")
PY
}

run_walk() {	# db, user, log name
	local db=$1 user=$2 log=$3
	drop_db "$db" >/dev/null 2>&1
	q postgres -c "CREATE DATABASE $db"
	# the Getting started lines, as written, as the superuser
	(cd "$work" && "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -d "$db" -f setup.sql) >"$work/$log.setup" 2>&1
	tap_check "$log: Getting started's setup lines run as written" "$?" "0"
	if [ "$user" != "$PGUSER" ]; then
		q "$db" -c "SELECT msp_install_roles()" >/dev/null
		q postgres -c "DROP ROLE IF EXISTS $user" -c "CREATE ROLE $user LOGIN IN ROLE mspbill_admin"
	fi
	rm -rf "$work/$log"; mkdir -p "$work/$log"
	(cd "$work/$log" && bash ../export.sh && "$BINDIR/psql" -X -v ON_ERROR_STOP=1 -U "$user" -d "$db" -f ../walk.sql) \
		>"$work/$log.out" 2>&1
	local rc=$?
	tap_check "$log: the walk-through runs as written as $user" "$rc" "0"
	[ "$rc" = 0 ] || tail -5 "$work/$log.out" | sed 's/^/# /'
	tap_check "$log: it prints the invoice the README shows" "$(contains "$work/$log.out")" "yes"
	tap_check "$log: the load reports 3 | 0 | 0" \
		"$(grep -cE '^ +3 \| +0 \| +0$' "$work/$log.out")" "1"
}

DB=mspbill_test_first_client
run_walk "$DB" "$PGUSER" superuser
tap_check "a new session finds msp_* through ALTER DATABASE's search path" \
	"$(q "$DB" -c "SHOW search_path")" "public, mspbill"
tap_check "msp_data_quality: the weekdays without a logon and the two silent workstations" \
	"$(q "$DB" -c "SELECT string_agg(DISTINCT gate, ',') || ' ' || count(*) FILTER (WHERE gate = 'device_silent')
	               FROM msp_data_quality(1, '[2026-10-01,2026-11-01)')")" "day_without_logons,device_silent 2"
tap_check "the ids were chosen by the database: one client, three people, three accounts, two devices" \
	"$(q "$DB" -c "SELECT format('%s %s %s %s', (SELECT string_agg(client_id::text, ',') FROM clients),
	                      (SELECT string_agg(person_id::text, ',' ORDER BY person_id) FROM people),
	                      (SELECT string_agg(account_id::text, ',' ORDER BY account_id) FROM accounts),
	                      (SELECT string_agg(device_id::text, ',' ORDER BY device_id) FROM devices))")" "1 1,2,3 1,2,3 1,2"

# pg_dump keeps the identity sequences (registered as configuration)
DBR=mspbill_test_first_client_restored
drop_db "$DBR" >/dev/null 2>&1
q postgres -c "CREATE DATABASE $DBR"
"$BINDIR/pg_dump" -d "$DB" -f "$work/dump.sql" 2>/dev/null && q "$DBR" -f "$work/dump.sql" >"$work/restore.log" 2>&1
tap_check "a restored database goes on numbering where the original stopped" \
	"$(q "$DBR" -c "INSERT INTO mspbill.people (client_id, pseudonym) VALUES (1, 'dana') RETURNING person_id" \
	             -c "INSERT INTO mspbill.clients (name) VALUES ('Second Clinic') RETURNING client_id" | tr '\n' ' ')" "4 2 "
drop_db "$DBR" >/dev/null 2>&1

DB2=mspbill_test_first_client_admin
run_walk "$DB2" "$admin" admin
drop_db "$DB2" >/dev/null 2>&1
q postgres -c "DROP ROLE IF EXISTS $admin"
drop_db "$DB" >/dev/null 2>&1

# Counting users: the rollup on the demo, whose ids are chosen per client
DB3=mspbill_test_first_client_demo
fresh_demo_db "$DB3"
q "$DB3" -c "CREATE VIEW person_logons AS
             SELECT l.*, a.person_id FROM logons l JOIN accounts a USING (client_id, account_id)"
tap_check "on the demo the README's rollup returns 12 ..." \
	"$(q "$DB3" -c "SELECT cardinality(userset_union(s))
	                 FROM (SELECT client_id, userset_agg(person_id) s FROM person_logons GROUP BY client_id) per_client")" "12"
tap_check "... for the 16 people who logged on" \
	"$(q "$DB3" -c "SELECT count(DISTINCT (client_id, person_id)) FROM person_logons WHERE person_id IS NOT NULL")" "16"
tap_check "both clinics have people 1, 2, 3 and 31" \
	"$(q "$DB3" -c "SELECT string_agg(a.person_id::text, ',' ORDER BY a.person_id)
	                 FROM people a JOIN people b ON a.person_id = b.person_id AND a.client_id = 1 AND b.client_id = 2")" "1,2,3,31"
# Ids: the README's setval line moves the sequence past hand-chosen ids
setval=$(grep -m1 "^SELECT setval(pg_get_serial_sequence('mspbill.people'" "$TOP/README.md")
q "$DB3" -c "ALTER SEQUENCE mspbill.people_person_id_seq RESTART" -c "$setval" >/dev/null
tap_check "after the README's setval the database chooses past the hand-chosen people ids" \
	"$(q "$DB3" -c "INSERT INTO people (client_id, pseudonym) VALUES (1, 'new1') RETURNING person_id")" "32"
drop_db "$DB3" >/dev/null 2>&1
