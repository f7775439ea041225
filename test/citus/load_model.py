"""Load the random clients of test/model/generate.py (fixed seed) into a
database, as the property suite does, and keep each client's period in
public.model_periods; the distributed suite loads a single-node database
and a Citus one the same way and compares what mspbill says about them.

    load_model.py DSN clients seed [first-day]

With a first day (YYYY-MM-DD), every client is billed for the month that
starts then (the batch measurement prices them all in one call).
"""

import io
import os
import sys

from datetime import date

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "model"))
import generate as model  # noqa: E402
from compare import load  # noqa: E402


def main():
    dsn, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:
        d0 = date.fromisoformat(sys.argv[4])
        model.PERIODS = [(d0, date(d0.year + d0.month // 12, d0.month % 12 + 1, 1))]
    data, rows = model.generate(seed, n)
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    cur.execute("SET search_path = mspbill, public")
    # the pairs of clients people name in bill_to_client_id, declared
    # before the people (on Citus a foreign key asks for them; on one node
    # the trigger of people would add them)
    pairs = sorted({(r[0], r[5]) for r in rows["people"] if r[5] is not None})
    load(cur, {t: (rows[t] if t == "clients" else []) for t in rows})
    cur.executemany("INSERT INTO mspbill.sister_clients (client_id, bill_to_client_id) VALUES (%s, %s)", pairs)
    load(cur, {t: ([] if t == "clients" else rows[t]) for t in rows})
    cur.execute("CREATE TABLE public.model_periods (client_id bigint PRIMARY KEY, period daterange NOT NULL)")
    buf = io.StringIO("".join("%d\t[%s,%s)\n" % (c, p[0], p[1]) for c, p in sorted(data["period"].items())))
    cur.copy_expert("COPY public.model_periods FROM STDIN", buf)
    conn.commit()


if __name__ == "__main__":
    main()
