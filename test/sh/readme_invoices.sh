#!/usr/bin/env bash
# The README's monthly reporting view and its walk-through of finalization,
# late data and adjustments ("Invoices you can stand behind"), run as
# written on the demo database:
# every statement must run, and every "-- → result" must be what it prints.
# Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
DB=mspbill_test_readme_invoices
fresh_demo_db "$DB" || exit 1
py=/usr/bin/python3
[ -x "$py" ] || py=python3
"$py" - "$TOP/README.md" "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER" <<'PY'
import re, sys
import psycopg2

readme, dsn = sys.argv[1], sys.argv[2]
text = open(readme, encoding="utf-8").read()
steps = []
for heading in ("Every month's invoice figures for a BI tool", "## Invoices you can stand behind"):
    section = text[text.index(heading):]
    block = re.search(r"```sql\n(.*?)```", section, re.S).group(1)
    stmt = ""
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("--"):
            continue
        code, _, want = line.partition("-- →")
        stmt += code.rstrip() + "\n"
        if code.rstrip().endswith(";"):
            want = re.split(r"\s{3}\(", want.strip())[0].strip() if want else None
            steps.append((stmt.strip(), want))
            stmt = ""

conn = psycopg2.connect(dsn)
conn.autocommit = True
cur = conn.cursor()
fmt = lambda v: "" if v is None else ("t" if v is True else "f" if v is False else str(v))
print("1..%d" % (len(steps) + 1))
n = 0
checked = 0
for stmt, want in steps:
    n += 1
    try:
        cur.execute(stmt)
        got = "; ".join(" | ".join(fmt(v) for v in row) for row in cur.fetchall()) if cur.description else ""
    except psycopg2.Error as e:
        got = "ERROR: " + e.diag.message_primary
    if want is None:
        ok = not got.startswith("ERROR")
    else:
        checked += 1
        ok = got.startswith(want[:-1]) if want.endswith("…") else got == want
    print(("ok" if ok else "not ok") + " %d - %s" % (n, " ".join(stmt.split())[:90]))
    if not ok:
        print("#   got:  %s\n#   want: %s" % (got, want if want is not None else "no error"))
print(("ok" if checked >= 11 else "not ok") + " %d - the walk-through states %d results" % (n + 1, checked))
PY
rc=$?
drop_db "$DB"
exit $rc
