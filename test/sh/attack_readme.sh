#!/usr/bin/env bash
# The README's Privacy and Loading examples, run as written: each block
# marked "<!-- run as ROLE -->" by a login of the role it names (the DBA's
# block first, then the admin's, then the rest in README order), in a demo
# database, with the exports it names in the current directory.  A block
# must succeed; what a non-PII role prints holds no real name.  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
DB=mspbill_test_readme
work="$TOP/test/out/attack_readme"
rm -rf "$work"; mkdir -p "$work"
logins="ops_admin ops_clerk clinic_bi privacy_officer clinic_report"

drop_logins() {
	local r
	for r in $logins; do
		"$BINDIR/psql" -X -q -d postgres -c "DROP ROLE IF EXISTS $r" >/dev/null 2>&1
	done
}
drop_db "$DB" >/dev/null 2>&1
drop_logins
fresh_demo_db "$DB"
cp "$TOP/test/fixtures/windows_nxlog.jsonl" "$work/security.jsonl"
cp "$TOP/test/fixtures/entra_signins.jsonl" "$work/signins.jsonl"
cp "$TOP/test/fixtures/emr_audit.csv" "$work/emr_audit.csv"

# one file per marked block: NN-ROLE.sql, NN in README order
awk -v dir="$work" '
	/^<!-- run as [a-z_]+ -->$/ { role = $4; next }
	role != "" && /^```sql$/ { n++; file = sprintf("%s/%02d-%s.sql", dir, n, role); inblock = 1; next }
	inblock && /^```$/ { inblock = 0; role = ""; next }
	inblock { print > file }
' "$TOP/README.md"
mapfile -t blocks < <(cd "$work" && ls -- *.sql | awk -F'[-.]' '{ p = ($2 == "postgres") ? 0 : ($2 == "ops_admin") ? 1 : 2; print p " " $0 }' | sort -k1,1n -k2 | cut -d' ' -f2)
echo "1..$((${#blocks[@]} + 4))"
tap_check "the README marks blocks for every role" \
	"$(printf '%s\n' "${blocks[@]}" | sed -E 's/^[0-9]+-//; s/\.sql$//' | sort -u | tr '\n' ' ')" \
	"clinic_bi clinic_report ops_admin ops_clerk postgres privacy_officer "

for b in "${blocks[@]}"; do
	role=${b#*-}; role=${role%.sql}
	(cd "$work" && "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -U "$role" -d "$DB" -f "$b") >"$work/${b%.sql}.out" 2>&1
	rc=$?
	[ $rc -ne 0 ] && sed 's/^/# /' "$work/${b%.sql}.out" | tail -5
	tap_check "README block $b runs as $role" "$rc" 0
done

names() { cat "$work"/*-"$1".out 2>/dev/null | grep -ciE 'stolaf\\|@stolaf|nora nurse'; }
tap_check "nothing ops_clerk, clinic_bi or clinic_report printed holds a real name" \
	"$(( $(names ops_clerk) + $(names clinic_bi) + $(names clinic_report) ))" 0
tap_check "privacy_officer's block prints real names" "$([ "$(names privacy_officer)" -gt 0 ] && echo yes)" yes
tap_check "the invoice names the clerk's login" \
	"$("$BINDIR/psql" -X -q -At -d "$DB" -c "SELECT finalized_by FROM mspbill.invoices WHERE client_id = 1 AND kind = 'invoice'")" ops_clerk

drop_db "$DB" >/dev/null 2>&1
drop_logins
