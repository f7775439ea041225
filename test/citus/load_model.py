"""Load the random clients of test/model/generate.py (fixed seed) into a
database, as the property suite does, and keep each client's period in
public.model_periods; the distributed suite loads a single-node database
and a Citus one the same way and compares what mspbill says about them.

    load_model.py DSN clients seed
"""

import io
import os
import sys

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "model"))
from compare import load  # noqa: E402
from generate import generate  # noqa: E402


def main():
    dsn, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data, rows = generate(seed, n)
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    cur.execute("SET search_path = mspbill, public")
    load(cur, rows)
    cur.execute("CREATE TABLE public.model_periods (client_id bigint PRIMARY KEY, period daterange NOT NULL)")
    buf = io.StringIO("".join("%d\t[%s,%s)\n" % (c, p[0], p[1]) for c, p in sorted(data["period"].items())))
    cur.copy_expert("COPY public.model_periods FROM STDIN", buf)
    conn.commit()


if __name__ == "__main__":
    main()
