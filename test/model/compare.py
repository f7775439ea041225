"""Property suite: random clients priced by mspbill and by the independent
model (rules.py), compared to the cent.  Prints TAP.

    compare.py DSN [clients [seed]]

Every disagreement is printed with the client's id, what each side says,
and the client's data, so that the case can be kept as a regression test.
"""

import io
import sys
import threading
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import psycopg2

from generate import generate
from rules import Model

TABLES = {
    "clients": "client_id, name, currency, minor_unit, time_zone",
    "contracts": "client_id, contract_id, effective, model, price_per_user, price_per_device, price_per_seat, "
                 "markup, minimum_fee, minimum_quantity, tier_mode, prorate, count_realms, min_active_days, "
                 "support_rule, shared_billing, attribution_window, default_session",
    "contract_tiers": "client_id, contract_id, from_quantity, unit_price",
    "devices": "client_id, device_id, name, kind, active",
    "people": "client_id, person_id, pseudonym, is_technician, do_not_bill, bill_to_client_id, active",
    "accounts": "client_id, account_id, realm, name, kind, person_id, application",
    "logons": "client_id, account_id, device_id, at, ended, presence",
    "support_contacts": "client_id, contact_id, person_id, at",
    "cost_pools": "client_id, pool_id, category, description, amount, currency, period, basis",
    "license_counts": "client_id, sku, seats, source, as_of",
    "contract_lines": "client_id, contract_id, line_no, description, source, device_kind, sku, pool_category, "
                      "meter, meter_rule, unit_price, markup, tier_mode, minimum_quantity, minimum_fee, prorate, "
                      "discount_percent, discount_amount, discount_period",
    "contract_line_tiers": "client_id, contract_id, line_no, from_quantity, unit_price",
    "meter_readings": "client_id, meter, day, quantity",
}
ORDER = ["clients", "contracts", "contract_tiers", "devices", "people", "accounts", "logons",
         "support_contacts", "cost_pools", "license_counts", "contract_lines", "contract_line_tiers",
         "meter_readings"]


def text(v):
    if v is None:
        return "\\N"
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, tuple):
        return "[%s,%s)" % (v[0] or "", v[1] or "")
    if isinstance(v, timedelta):
        return "%d seconds" % v.total_seconds()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v).replace("\\", "\\\\").replace("\t", "\\t")


def load(cur, rows):
    for t in ORDER:
        buf = io.StringIO()
        for r in rows[t]:
            buf.write("\t".join(text(v) for v in r) + "\n")
        buf.seek(0)
        cur.copy_expert("COPY mspbill.%s (%s) FROM STDIN" % (t, TABLES[t]), buf)


def main():
    dsn = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 14
    started = time.time()
    data, rows = generate(seed, n)
    model = Model(data)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SET search_path = public, mspbill")
    load(cur, rows)
    cur.execute("ANALYZE")
    cur.execute("CREATE TEMP TABLE periods (client_id bigint, period daterange)")
    buf = io.StringIO("".join("%d\t[%s,%s)\n" % (c, p[0], p[1]) for c, p in data["period"].items()))
    cur.copy_expert("COPY periods FROM STDIN", buf)

    # the invoice summaries in a second session meanwhile (a core each)
    summaries = {}
    def fetch_summaries():
        c2 = psycopg2.connect(dsn)
        k2 = c2.cursor()
        k2.execute("SET search_path = public, mspbill")
        k2.execute("""SELECT p.client_id, i.users, i.seats, i.devices, i.subtotal, i.total
                        FROM unnest(%s::bigint[], %s::daterange[]) p(client_id, period),
                             LATERAL msp_compute_invoice(p.client_id, p.period) i""",
                   (list(data["period"]), ["[%s,%s)" % p for p in data["period"].values()]))
        for cid, *rest in k2.fetchall():
            summaries[cid] = tuple(rest)
        c2.close()
    worker = threading.Thread(target=fetch_summaries)
    worker.start()

    db_lines = defaultdict(list)
    cur.execute("""SELECT p.client_id, l.contract_id, l.basis, l.quantity, l.unit_price, l.amount
                     FROM periods p, LATERAL msp_invoice_lines(p.client_id, p.period) l
                    ORDER BY p.client_id, l.line_no""")
    for cid, k, basis, q, price, amount in cur.fetchall():
        db_lines[cid].append((k, basis, q.normalize(), None if price is None else price.normalize(), amount.normalize()))
    # every model priced as the preset lines msp_effective_lines shows
    preset_lines = defaultdict(list)
    cur.execute("""SELECT p.client_id, l.contract_id, l.basis, l.quantity, l.unit_price, l.amount
                     FROM periods p, LATERAL msp_price_lines(p.client_id, p.period, 'lines') l
                    ORDER BY p.client_id, l.line_no""")
    for cid, k, basis, q, price, amount in cur.fetchall():
        preset_lines[cid].append((k, basis, q.normalize(), None if price is None else price.normalize(),
                                  amount.normalize()))
    # what month-end stores: summary and lines priced together
    # (msp_price_invoice), against the preview's lines and msp_compute_invoice
    cur.execute("""SELECT count(*) FILTER (WHERE x.lines IS DISTINCT FROM y.lines),
                          count(*) FILTER (WHERE x.summary IS DISTINCT FROM z.summary), count(*)
                     FROM periods p,
                          LATERAL msp_price_invoice(p.client_id, p.period) x,
                          LATERAL (SELECT coalesce(array_agg(l ORDER BY l.line_no), '{}') AS lines
                                     FROM msp_invoice_lines(p.client_id, p.period) l) y,
                          LATERAL (SELECT i AS summary FROM msp_compute_invoice(p.client_id, p.period) i) z""")
    priced_lines_differ, priced_summary_differ, priced_n = cur.fetchone()
    db_users = defaultdict(set)
    cur.execute("""SELECT p.client_id, u.contract_id, u.home_client_id, u.person_id, u.rule, u.days_active,
                          u.support_contacts
                     FROM periods p, LATERAL msp_billable_users(p.client_id, p.period) u""")
    for cid, *rest in cur.fetchall():
        db_users[cid].add(tuple(rest))
    # the batch path: every client's people in one set-based pass of the
    # same rule text (msp_period_people_all), priced by msp_compute_invoices,
    # one call per distinct period
    batch_inv = {}
    cur.execute("""SELECT i.client_id, i.users, i.seats, i.devices, i.subtotal, i.total
                     FROM (SELECT period, array_agg(client_id) AS ids FROM periods GROUP BY period) p,
                          LATERAL msp_compute_invoices(p.period, p.ids) i""")
    for cid, *rest in cur.fetchall():
        batch_inv[cid] = tuple(rest)
    batch_users = defaultdict(set)
    cur.execute("""SELECT u.client_id, u.contract_id, u.home_client_id, u.person_id, u.rule, u.days_active,
                          u.support_contacts
                     FROM (SELECT period, array_agg(client_id) AS ids FROM periods GROUP BY period) p,
                          LATERAL msp_period_people_all(p.period, p.ids, true) u""")
    for cid, *rest in cur.fetchall():
        batch_users[cid].add(tuple(rest))
    # and row for row with the per-client path, evidence included
    cur.execute("""WITH b AS (SELECT u.client_id, u.contract_id, u.person_id, u.pseudonym, u.rule, u.first_seen,
                                     u.last_seen, u.days_active, u.support_contacts, u.accounts, u.home_client_id
                                FROM (SELECT period, array_agg(client_id) AS ids FROM periods GROUP BY period) p,
                                     LATERAL msp_period_people_all(p.period, p.ids, true) u),
                          o AS (SELECT p.client_id, u.* FROM periods p, LATERAL msp_billable_users(p.client_id, p.period) u)
                   SELECT (SELECT count(*) FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM o) x)
                          + (SELECT count(*) FROM (SELECT * FROM o EXCEPT ALL SELECT * FROM b) y), (SELECT count(*) FROM b)""")
    batch_rows_differ, batch_rows = cur.fetchone()
    worker.join()
    db_inv = summaries

    failures = defaultdict(list)
    lines_checked = users_checked = 0
    for cid in sorted(data["clients"]):
        period = data["period"][cid]
        m_lines, m_people, summary = model.invoice(cid, period)
        want = [l.shown() for l in m_lines]
        lines_checked += len(want)
        if want != db_lines[cid]:
            failures["lines"].append((cid, db_lines[cid], want))
        want_users = {(u.contract_id, u.home, u.person_id, u.rule, u.days_active, u.contacts) for u in m_people}
        users_checked += len(want_users)
        if want_users != db_users[cid]:
            failures["users"].append((cid, sorted(db_users[cid] - want_users), sorted(want_users - db_users[cid])))
        want_inv = (summary["users"], summary["seats"], summary["devices"], summary["subtotal"], summary["total"])
        if want_inv != db_inv[cid]:
            failures["invoice"].append((cid, db_inv[cid], want_inv))
        if want_inv != batch_inv.get(cid):
            failures["batch invoice"].append((cid, batch_inv.get(cid), want_inv))
        if want_users != batch_users[cid]:
            failures["batch users"].append((cid, sorted(batch_users[cid] - want_users),
                                            sorted(want_users - batch_users[cid])))

    # the generator must reach every rule, or agreement proves little
    rules = defaultdict(int)
    for cid in data["clients"]:
        for u in db_users[cid]:
            rules["rule " + u[3]] += 1
            if u[1] != cid:
                rules["sister-client person billed"] += 1
        bases = [l[1] for l in db_lines[cid]]
        for b in set(bases):
            rules["line " + b] += 1
        contracts = {k for k, *_ in db_lines[cid]}
        if len(contracts) > 1:
            rules["two contracts in the month"] += 1
        if any(bases.count(b) > len(contracts) and b in ("user", "device", "license") for b in set(bases)):
            rules["graduated bands"] += 1
        if any(p["period"][1] - p["period"][0] > timedelta(days=31) for p in data["pools"][cid]):
            rules["multi-month pool"] += 1
        if any(k["model"] == "lines" for k in data["contracts"][cid]):
            rules["contract of lines"] += 1
            if len({k["model"] for k in data["contracts"][cid]}) > 1:
                rules["preset and lines in one month"] += 1
        if any(l[1] == "discount" and i > 0 and l[4] == -db_lines[cid][i - 1][4]
               for i, l in enumerate(db_lines[cid])):
            rules["discount equal to what it discounts"] += 1
    wanted = ["rule logon", "rule logon+support", "rule support", "rule shared-attributed",
              "sister-client person billed", "line user", "line seat", "line device", "line license", "line cost",
              "line minimum", "two contracts in the month", "graduated bands", "multi-month pool",
              "contract of lines", "preset and lines in one month", "line fixed", "line meter", "line discount",
              "discount equal to what it discounts"]
    missing = [w for w in wanted if rules[w] < 5]

    # per_user_plus_support aside: its support line rounds the pools once,
    # a cost_pool line rounds each pool
    presets = [c for c in sorted(data["clients"])
               if not any(k["model"] == "per_user_plus_support" for k in data["contracts"][c])]
    preset_bad = [(c, preset_lines[c], db_lines[c]) for c in presets if preset_lines[c] != db_lines[c]]
    print("1..10")
    print("# %d clients (seed %d), %d lines, %d billed people, %.1f s"
          % (n, seed, lines_checked, users_checked, time.time() - started))
    checks = [("lines", "msp_invoice_lines equals the model to the cent"),
              ("users", "msp_billable_users equals the model (person, rule, days, contacts)"),
              ("invoice", "msp_compute_invoice users, seats, devices, subtotal and total equal the model")]
    for i, (key, what) in enumerate(checks, 1):
        bad = failures[key]
        print(("ok" if not bad else "not ok") + " %d - %s on %d clients%s"
              % (i, what, n, "" if not bad else " (%d disagree)" % len(bad)))
        for case in bad[:5]:
            print("#   client %d (period %s): database %s; model %s" % (case[0], data["period"][case[0]],
                                                                       case[1], case[2]))
    nontrivial = sum(1 for c in data["clients"] if db_lines[c] and any(l[4] != 0 for l in db_lines[c]))
    print(("ok" if nontrivial > n // 2 else "not ok")
          + " 4 - most generated clients are billed something (%d of %d)" % (nontrivial, n))
    print(("ok" if not missing else "not ok") + " 5 - every rule is exercised at least 5 times"
          + ("" if not missing else " (missing: %s)" % ", ".join(missing)))
    print(("ok" if not preset_bad and len(presets) > n // 2 else "not ok")
          + " 6 - every model but per_user_plus_support bills the same as its preset lines on %d clients%s"
          % (len(presets), "" if not preset_bad else " (%d disagree)" % len(preset_bad)))
    for case in preset_bad[:5]:
        print("#   client %d: as preset lines %s; as its model %s" % case)
    print(("ok" if priced_n == n and priced_lines_differ == 0 and priced_summary_differ == 0 else "not ok")
          + " 7 - msp_price_invoice (what month-end stores) gives msp_invoice_lines' lines and msp_compute_invoice's summary"
          + " on %d clients (%d lines, %d summaries differ)" % (priced_n, priced_lines_differ, priced_summary_differ))
    for i, (key, what) in enumerate([("batch invoice", "msp_compute_invoices (every client at once) users, seats, devices, subtotal and total equal the model"),
                                     ("batch users", "msp_period_people_all (every client at once) equals the model (person, rule, days, contacts)")], 8):
        bad = failures[key]
        print(("ok" if not bad else "not ok") + " %d - %s on %d clients%s"
              % (i, what, n, "" if not bad else " (%d disagree)" % len(bad)))
        for case in bad[:5]:
            print("#   client %d (period %s): database %s; model %s" % (case[0], data["period"][case[0]],
                                                                       case[1], case[2]))
    print(("ok" if batch_rows_differ == 0 and batch_rows == users_checked else "not ok")
          + " 10 - msp_period_people_all gives msp_billable_users' rows, evidence and first/last seen included"
          + " (%d rows, %d differ)" % (batch_rows, batch_rows_differ))
    print("# " + ", ".join("%s %d" % (w, rules[w]) for w in wanted))


if __name__ == "__main__":
    main()
