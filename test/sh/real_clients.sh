#!/usr/bin/env bash
# Real clients: invoices, usersets and money read through JDBC (Debian's
# PostgreSQL JDBC driver) and psycopg2, as BI tools read them; amounts must
# arrive exactly (BigDecimal and Decimal, never floats).  Prints TAP.
set -uo pipefail
. "$TOP/test/bin/common.sh"
set +e
find_pg
DB=mspbill_test_clients
work="$TOP/test/out/real_clients"
rm -rf "$work"; mkdir -p "$work"
echo "1..9"

fresh_demo_db "$DB"
"$BINDIR/psql" -X -q -At -d "$DB" -c "SELECT msp_finalize_invoice(2, NULL, '{device_silent}')" >/dev/null

cat >"$work/RealClient.java" <<'JAVA'
import java.math.BigDecimal;
import java.sql.*;

public class RealClient {
    static int n = 4;
    static void check(String what, boolean ok) {
        System.out.println((ok ? "ok " : "not ok ") + (++n) + " - jdbc: " + what);
    }
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(
                "jdbc:postgresql://127.0.0.1:" + args[0] + "/" + args[1], "postgres", "")) {
            try (Statement s = c.createStatement();
                 ResultSet r = s.executeQuery(
                     "SELECT (msp_invoice(1)).total, (msp_invoice(2)).total, " +
                     "(SELECT userset_agg(person_id) FROM accounts WHERE client_id = 1 AND kind = 'individual'), " +
                     "allocate(100, ARRAY[1,1,1]::numeric[])")) {
                r.next();
                check("hospital total arrives as 498.00 exactly", r.getBigDecimal(1).equals(new BigDecimal("498.00")));
                check("dental total (finalized) arrives as 942.00 exactly", r.getBigDecimal(2).equals(new BigDecimal("942.00")));
                check("a userset arrives in its text form", "{1,2,3,11,12,13,14,15,16,31}".equals(r.getString(3)));
                Object[] shares = (Object[]) r.getArray(4).getArray();
                check("allocate() shares arrive as exact decimals",
                      new BigDecimal("33.34").equals(shares[0]) && new BigDecimal("33.33").equals(shares[2]));
            }
            try (PreparedStatement p = c.prepareStatement("SELECT sum(amount) FROM msp_invoice_lines(?)")) {
                p.setLong(1, 1);
                try (ResultSet r = p.executeQuery()) {
                    r.next();
                    check("prepared: the lines sum to 498.00", r.getBigDecimal(1).equals(new BigDecimal("498.00")));
                }
            }
        }
    }
}
JAVA
cat >"$work/real_client.py" <<'PY'
import sys
from decimal import Decimal
import psycopg2

n = 0
def check(what, ok):
    global n
    n += 1
    print(("ok " if ok else "not ok ") + str(n) + " - psycopg2: " + what)

c = psycopg2.connect(host=sys.argv[1], port=sys.argv[2], dbname=sys.argv[3], user="postgres")
cur = c.cursor()
cur.execute("SELECT (msp_invoice(1)).total, (msp_invoice(2)).total, "
            "(SELECT userset_agg(person_id) FROM accounts WHERE client_id = 1 AND kind = 'individual')")
h, d, s = cur.fetchone()
check("hospital total is Decimal('498.00')", isinstance(h, Decimal) and str(h) == "498.00")
check("dental total is Decimal('942.00')", isinstance(d, Decimal) and str(d) == "942.00")
check("a userset arrives in its text form", s == "{1,2,3,11,12,13,14,15,16,31}")
cur.execute("SELECT amount FROM msp_invoice_lines(%s) ORDER BY line_no", (1,))
check("invoice lines are Decimals", [str(r[0]) for r in cur.fetchall()] == ["378.00", "120.00"])
PY
/usr/bin/python3 "$work/real_client.py" "$PGHOST" "$PGPORT" "$DB" 2>&1
CLASSPATH=/usr/share/java/postgresql.jar
javac -d "$work" -cp "$CLASSPATH" "$work/RealClient.java" 2>&1 &&
	java -cp "$work:$CLASSPATH" RealClient "$PGPORT" "$DB" 2>&1

drop_db "$DB"
