#!/usr/bin/env bash
# Clients read reporting money exactly: pandas (read_sql_query with
# coerce_float=False: Decimal, never float) and psycopg 3 with mspbill's
# composite types registered, both connected as a BI login of client 1; KPI
# columns arrive as types a tool knows (bigint[] rather than userset).
# Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
ensure_deps python3-pandas python3-psycopg python3-psycopg2
find_pg
DB=mspbill_test_reporting_clients
BI=mspbill_test_rclient
work="$TOP/test/out/reporting_clients"
rm -rf "$work"; mkdir -p "$work"
q() { "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
echo "1..10"

fresh_demo_db "$DB"
q -c "SET client_min_messages = warning" -c "SELECT msp_install_roles()" -c "SELECT msp_refresh_rollups()" \
	-c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$BI') THEN CREATE ROLE $BI LOGIN; END IF; END \$\$" \
	-c "GRANT mspbill_bi TO $BI" -c "INSERT INTO bi_client_access VALUES ('$BI', 1)" >/dev/null

cat >"$work/read_reports.py" <<'PY'
import sys
import datetime
from decimal import Decimal
import warnings
warnings.simplefilter("ignore")  # pandas 1.5 prefers SQLAlchemy; a DB-API connection works
import pandas as pd
import psycopg2
import psycopg
from psycopg.types.composite import CompositeInfo, register_composite

host, port, db, user = sys.argv[1:5]
n = 0
def check(what, ok):
    global n
    n += 1
    print(("ok " if ok else "not ok ") + str(n) + " - " + what)

# pandas: numeric columns stay Decimal with coerce_float=False
c2 = psycopg2.connect(host=host, port=port, dbname=db, user=user)
sql = "SELECT client_id, month, revenue, margin, margin_per_user FROM mspbill.kpi_margin"
df = pd.read_sql_query(sql, c2, coerce_float=False)
# the rollup holds the billing truth (the refresh sees every client), 498.00
# with Dr. Gray of the sister client; the BI login's own preview below
# leaves her out (README: a BI role's preview leaves out sister clients' people)
check("pandas: revenue arrives as Decimal('498.00')", df["revenue"].tolist() == [Decimal("498.00")]
      and all(isinstance(v, Decimal) for v in df["revenue"]))
df_default = pd.read_sql_query(sql, c2)
check("pandas: (without coerce_float=False the same column is float64)", str(df_default["revenue"].dtype) == "float64")
users = pd.read_sql_query("SELECT person_id, revenue, cost, margin FROM mspbill.kpi_margin_per_user", c2, coerce_float=False)
check("pandas: per-user margins sum exactly to the client's margin",
      sum(users["margin"], Decimal(0)) == df["margin"][0] and isinstance(users["margin"][0], Decimal))
check("pandas: the BI login reads client 1 only", df["client_id"].tolist() == [1])
ids = pd.read_sql_query("SELECT person_ids FROM mspbill.kpi_daily_activity ORDER BY day LIMIT 1", c2)["person_ids"][0]
check("pandas: person_ids arrive as a list of ints", isinstance(ids, list) and all(isinstance(i, int) for i in ids) and len(ids) > 0)

# psycopg 3 with the invoice composite registered
with psycopg.connect(host=host, port=port, dbname=db, user=user) as c3:
    register_composite(CompositeInfo.fetch(c3, "mspbill.invoice"), c3)
    inv = c3.execute("SELECT mspbill.msp_invoice(1)").fetchone()[0]
    check("psycopg 3: msp_invoice() is a composite with named fields",
          (inv.client_name, inv.users, inv.seats) == ("St. Olaf Hospital", 8, 4))
    check("psycopg 3: its total is Decimal('456.00')", isinstance(inv.total, Decimal) and str(inv.total) == "456.00")
    check("psycopg 3: its period is a range of dates, one month long",
          isinstance(inv.period.lower, datetime.date) and (inv.period.upper - inv.period.lower).days in (28, 29, 30, 31))
    row = c3.execute("SELECT b.total, b.billable_person_ids, p.billable FROM mspbill.kpi_billable_users b "
                     "JOIN mspbill.period_invoices p ON p.client_id = b.client_id AND lower(p.period) = b.month").fetchone()
    # the client's own people; Dr. Gray (person 5 of client 2) is counted apart
    check("psycopg 3: KPI money is Decimal, person ids a list of ints",
          isinstance(row[0], Decimal) and row[1] == [1, 2, 3, 11, 12, 13, 14, 21])
    check("psycopg 3: a raw userset column (a type it does not know) still arrives as its text form",
          row[2] == "{1,2,3,11,12,13,14,21}")
PY
/usr/bin/python3 "$work/read_reports.py" "$PGHOST" "$PGPORT" "$DB" "$BI" 2>&1

drop_db "$DB"
"$BINDIR/psql" -X -q -d postgres -c "DROP OWNED BY $BI" -c "DROP ROLE $BI" >/dev/null 2>&1
