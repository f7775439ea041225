"""Random clients for the property suite: every contract set-up the README
describes, in small sizes so that thousands fit in a minute.  Deterministic
for a seed.  Returns the data as plain records (for the model) and as rows
(for COPY into the database)."""

import random
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

ZONES = ["UTC", "America/Chicago", "Europe/Berlin", "Asia/Kolkata", "Pacific/Auckland",
         "America/St_Johns", "Australia/Lord_Howe"]
PERIODS = [(date(2026, 2, 1), date(2026, 3, 1)), (date(2026, 3, 1), date(2026, 4, 1)),
           (date(2025, 10, 1), date(2025, 11, 1)), (date(2026, 4, 1), date(2026, 5, 1))]
MODELS = ["per_user", "per_device", "per_seat", "cost_plus", "per_user_plus_support"]
REALMS = ["os", "app", "m365"]


def money(rng, lo, hi, places=2):
    return Decimal(rng.randint(int(lo * 10 ** places), int(hi * 10 ** places))) / (10 ** places)


def rand_range(rng, period, open_ok=True):
    """A date range around the period: often NULL (always), else starting
    or ending inside it."""
    p0, p1 = period
    n = (p1 - p0).days
    r = rng.random()
    if r < 0.5:
        return None
    lo = p0 + timedelta(days=rng.randint(-5, n - 1))
    if r < 0.8 and open_ok:
        return (lo, None)
    hi = lo + timedelta(days=rng.randint(1, n + 5))
    return (lo, hi)


def generate(seed, n_clients):
    rng = random.Random(seed)
    d = {"clients": {}, "contracts": {}, "devices": {}, "accounts": {}, "logons_by_account": {},
         "support": {}, "pools": {}, "licenses": {}, "tiers": {}, "all_people": [], "people_by_key": {},
         "period": {}, "lines": {}, "meters": {}}
    rows = {t: [] for t in ["clients", "contracts", "contract_tiers", "devices", "people", "accounts",
                            "logons", "support_contacts", "cost_pools", "license_counts", "contract_lines",
                            "contract_line_tiers", "meter_readings"]}
    cid = 0
    while cid < n_clients:
        family = list(range(cid + 1, min(cid + 1 + rng.choice([1, 1, 2, 3]), n_clients + 1)))
        cid = family[-1]
        period = rng.choice(PERIODS)
        for c in family:
            client(rng, d, rows, c, period)
        # sister clients: some people of one member are billed to another
        if len(family) > 1:
            for p in d["all_people"]:
                if p["client_id"] in family and rng.random() < 0.3:
                    p["bill_to"] = rng.choice(family)
    for p in d["all_people"]:
        rows["people"].append((p["client_id"], p["person_id"], p["pseudonym"], p["technician"], p["do_not_bill"],
                               p["bill_to"], p["active"]))
    return d, rows


def client(rng, d, rows, cid, period):
    p0, p1 = period
    n = (p1 - p0).days
    zone = rng.choice(ZONES)
    minor = rng.choice([Decimal("0.01")] * 6 + [Decimal("1"), Decimal("0.05")])
    currency = {Decimal("1"): "JPY", Decimal("0.05"): "CHF"}.get(minor, "USD")
    d["clients"][cid] = {"tz": zone, "minor": minor}
    d["period"][cid] = period
    rows["clients"].append((cid, "client %d" % cid, currency, minor, zone))

    # contracts: one for the month, one starting or ending inside it, or a
    # change of terms (price, model, policy) mid-month
    shape = rng.choice(["whole", "whole", "starts", "ends", "change", "change"])
    cut = p0 + timedelta(days=rng.randint(1, n - 1))
    if shape == "whole":
        spans = [(p0 - timedelta(days=rng.randint(0, 400)), None if rng.random() < 0.7 else p1 + timedelta(days=3))]
    elif shape == "starts":
        spans = [(cut, None)]
    elif shape == "ends":
        spans = [(p0 - timedelta(days=30), cut)]
    else:
        spans = [(p0 - timedelta(days=30), cut), (cut, None)]
    d["contracts"][cid] = []
    base = contract_terms(rng)
    for i, span in enumerate(spans, 1):
        k = contract_terms(rng) if rng.random() < 0.5 else dict(base, price_per_user=money(rng, 5, 60),
                                                                     price_per_device=money(rng, 5, 90))
        k.update(client_id=cid, contract_id=i, effective=span)
        fix_prices(rng, k)
        d["contracts"][cid].append(k)
        rows["contracts"].append((cid, i, span, k["model"], k["price_per_user"], k["price_per_device"],
                                  k["price_per_seat"], k["markup"], k["minimum_fee"], k["minimum_quantity"],
                                  k["tier_mode"], k["prorate"], "{%s}" % ",".join(k["count_realms"]),
                                  k["min_active_days"], k["support_rule"], k["shared_billing"],
                                  k["attribution_window"], k["default_session"]))
        if k["model"] == "lines":
            contract_lines(rng, d, rows, cid, i, period)
        elif rng.random() < 0.4:
            froms = sorted(rng.sample([0, 1, 2, 3, 4, 5, 6, 8], rng.randint(1, 3)))
            tiers = [(f, money(rng, 1, 50)) for f in froms]
            d["tiers"][(cid, i)] = tiers
            for f, price in tiers:
                rows["contract_tiers"].append((cid, i, f, price))

    devices = []
    for dev in range(1, rng.randint(0, 5) + 1):
        active = rand_range(rng, period)
        kind = rng.choice(["desktop", "room", "laptop", "server"])
        devices.append({"device_id": dev, "active": active, "kind": kind})
        rows["devices"].append((cid, dev, "PC%d" % dev, kind, active))
    d["devices"][cid] = devices

    people = []
    for pid in range(1, rng.randint(0, 6) + 1):
        p = {"client_id": cid, "person_id": pid, "pseudonym": "p%d" % pid,
             "technician": rng.random() < 0.08, "do_not_bill": rng.random() < 0.08, "bill_to": None,
             "active": rand_range(rng, period)}
        people.append(p)
        d["all_people"].append(p)
        d["people_by_key"][(cid, pid)] = p

    accounts = []
    aid = 0
    for p in people:
        for _ in range(rng.randint(0, 3)):
            aid += 1
            realm = rng.choice(REALMS)
            name = "u%d.%d%s" % (p["person_id"], aid, "$" if rng.random() < 0.05 else "")
            accounts.append({"account_id": aid, "realm": realm, "name": name, "kind": "individual",
                             "person_id": p["person_id"]})
    for _ in range(rng.randint(0, 3)):
        aid += 1
        realm = rng.choice(["os", "os", "os", "m365"])
        name = rng.choice(["ROOM%d" % aid, "KIOSK%d" % aid, "DWM-%d" % aid])
        accounts.append({"account_id": aid, "realm": realm, "name": name, "kind": "shared", "person_id": None})
    for kind, name in [("service", "SYSTEM"), ("service", "PC1$"), ("unknown", "guest")]:
        if rng.random() < 0.3:
            aid += 1
            accounts.append({"account_id": aid, "realm": "os", "name": name + str(aid) if kind == "unknown" else name,
                             "kind": kind, "person_id": None})
    seen_names = set()
    d["accounts"][cid] = []
    for a in accounts:
        key = (a["realm"], a["name"].lower())
        if key in seen_names:
            continue
        seen_names.add(key)
        d["accounts"][cid].append(a)
        rows["accounts"].append((cid, a["account_id"], a["realm"], a["name"], a["kind"], a["person_id"],
                                 "EMR" if a["realm"] == "app" else None))

    # logons: a few per account, around the period (a few days either side),
    # in sessions; application logons often inside a shared session
    zone_t0 = datetime.combine(p0, datetime.min.time(), tzinfo=timezone.utc) - timedelta(days=2)
    span_minutes = (n + 4) * 24 * 60
    by_account = {}
    shared_sessions = []
    for a in d["accounts"][cid]:
        for _ in range(rng.randint(0, 5)):
            at = zone_t0 + timedelta(minutes=rng.randrange(span_minutes))
            ended = at + timedelta(minutes=rng.randint(1, 600)) if rng.random() < 0.6 else None
            dev = rng.choice(devices)["device_id"] if devices and rng.random() < 0.8 else None
            l = {"at": at, "ended": ended, "presence": rng.random() < 0.9, "device_id": dev}
            by_account.setdefault(a["account_id"], []).append(l)
            if a["kind"] == "shared" and dev is not None:
                shared_sessions.append(l)
    for a in d["accounts"][cid]:
        if a["realm"] == "app" and shared_sessions:
            for _ in range(rng.randint(1, 4)):
                s = rng.choice(shared_sessions)
                at = s["at"] + timedelta(minutes=rng.randint(-30, 120))
                by_account.setdefault(a["account_id"], []).append(
                    {"at": at, "ended": None, "presence": rng.random() < 0.9, "device_id": s["device_id"]})
    d["logons_by_account"][cid] = by_account
    for account_id, ls in by_account.items():
        for l in ls:
            rows["logons"].append((cid, account_id, l["device_id"], l["at"], l["ended"], l["presence"]))

    support = []
    for i in range(rng.randint(0, 3)):
        if not people:
            break
        p = rng.choice(people)
        at = zone_t0 + timedelta(minutes=rng.randrange(span_minutes))
        support.append({"person_id": p["person_id"], "at": at})
        rows["support_contacts"].append((cid, i + 1, p["person_id"], at))
    d["support"][cid] = support

    pools = []
    for pid in range(1, rng.randint(0, 3) + 1):
        shape = rng.choice(["month", "quarter", "quarter", "odd"])
        if shape == "month":
            pp = period
        elif shape == "quarter":
            q0 = date(p0.year, ((p0.month - 1) // 3) * 3 + 1, 1)
            q1 = date(q0.year + (q0.month + 3 > 12), (q0.month + 2) % 12 + 1, 1)
            pp = (q0, q1)
        else:
            lo = p0 + timedelta(days=rng.randint(-40, n - 1))
            pp = (lo, max(lo + timedelta(days=rng.randint(1, 80)), p0 + timedelta(days=1)))
        amount = money(rng, 0, 400, rng.choice([2, 2, 3]))
        pool = {"pool_id": pid, "category": rng.choice(["licensing", "backup", "support", "support", "other"]),
                "amount": amount, "period": pp, "basis": rng.choice(["device", "seat", "user"])}
        pools.append(pool)
        rows["cost_pools"].append((cid, pid, pool["category"], "pool %d" % pid, amount, currency, pp, pool["basis"]))
    d["pools"][cid] = pools

    licenses = []
    for sku in rng.sample(["M365 Standard", "M365 Premium", "Defender"], rng.randint(0, 2)):
        for _ in range(rng.randint(1, 3)):
            lc = {"sku": sku, "seats": rng.randint(0, 12), "source": rng.choice(["pax8", "manual"]),
                  "as_of": p0 + timedelta(days=rng.randint(-40, n + 5))}
            if any(x["sku"] == sku and x["source"] == lc["source"] and x["as_of"] == lc["as_of"] for x in licenses):
                continue
            licenses.append(lc)
            rows["license_counts"].append((cid, sku, lc["seats"], lc["source"], lc["as_of"]))
    d["licenses"][cid] = licenses

    # meter readings (e.g. backup GB) on some days around the period
    readings = []
    for meter in ["backup_gb", "storage"]:
        if rng.random() < 0.6:
            for day in sorted(rng.sample(range(-40, n + 5), rng.randint(1, 12))):
                r = {"meter": meter, "day": p0 + timedelta(days=day), "quantity": money(rng, 0, 2000, rng.choice([0, 1, 2]))}
                readings.append(r)
                rows["meter_readings"].append((cid, meter, r["day"], r["quantity"]))
    d["meters"][cid] = readings


def contract_terms(rng):
    model = "lines" if rng.random() < 0.35 else rng.choice(MODELS)
    realms = [r for r in REALMS if rng.random() < 0.6] or [rng.choice(REALMS)]
    shared = rng.choice(["none", "seat", "peak", "attribute"])
    if shared == "attribute" and rng.random() < 0.7:
        # attribution matters most where application logons do not count alone
        realms = [r for r in realms if r != "app"] or ["os"]
    return {
        "model": model,
        "price_per_user": money(rng, 5, 60) if rng.random() < 0.7 else None,
        "price_per_device": money(rng, 5, 90) if rng.random() < 0.7 else None,
        "price_per_seat": money(rng, 5, 40) if rng.random() < 0.6 else None,
        "markup": rng.choice([Decimal(0), Decimal("0.2"), Decimal("0.175")]),
        "minimum_fee": rng.choice([Decimal(0), Decimal(0), money(rng, 10, 300)]),
        "minimum_quantity": rng.choice([Decimal(0), Decimal(0), Decimal(rng.randint(1, 6)), Decimal("2.5")]),
        "tier_mode": rng.choice(["volume", "graduated"]),
        "prorate": rng.random() < 0.8,
        "count_realms": realms,
        "min_active_days": rng.choice([1, 1, 2, 3]),
        "support_rule": rng.choice(["none", "sufficient", "required"]),
        "shared_billing": shared,
        "attribution_window": timedelta(minutes=rng.choice([0, 15, 60])),
        "default_session": timedelta(minutes=rng.choice([30, 60, 480])),
    }


def fix_prices(rng, k):
    need = {"per_user": "price_per_user", "per_user_plus_support": "price_per_user",
            "per_device": "price_per_device", "per_seat": "price_per_seat"}.get(k["model"])
    if need and k[need] is None:
        k[need] = money(rng, 5, 50)


SOURCES = ["users", "seats", "devices", "licenses", "cost_pool", "fixed", "meter"]


def discount_range(rng, period):
    """A discount's days: always, or starting or ending inside the period,
    or wholly before it (no effect)."""
    p0, p1 = period
    n = (p1 - p0).days
    shape = rng.choice(["always", "starts", "ends", "inside", "before", "open"])
    if shape == "always":
        return None
    if shape == "before":
        return (p0 - timedelta(days=60), p0 - timedelta(days=rng.randint(0, 10)))
    lo = p0 + timedelta(days=rng.randint(-20, n - 1))
    if shape == "open":
        return (lo, None)
    if shape == "starts":
        return (p0 + timedelta(days=rng.randint(1, n - 1)), p1 + timedelta(days=300))
    if shape == "ends":
        return (p0 - timedelta(days=300), p0 + timedelta(days=rng.randint(1, n - 1)))
    return (lo, lo + timedelta(days=rng.randint(1, n)))


def contract_lines(rng, d, rows, cid, contract_id, period):
    """1 to 4 random lines of a contract of model 'lines'."""
    out = []
    for no in range(1, rng.randint(1, 4) + 1):
        src = rng.choice(SOURCES)
        ln = {"line_no": no, "source": src, "device_kind": None, "sku": None, "pool_category": None,
              "meter": None, "meter_rule": "peak", "unit_price": None, "markup": Decimal(0),
              "tier_mode": rng.choice(["volume", "graduated"]), "tiers": [], "minimum_quantity": Decimal(0),
              "minimum_fee": Decimal(0), "prorate": rng.random() < 0.75, "discount_percent": None,
              "discount_amount": None, "discount_period": None}
        if src == "devices" and rng.random() < 0.6:
            ln["device_kind"] = rng.choice(["desktop", "laptop", "server", "room"])
        if src == "licenses" and rng.random() < 0.5:
            ln["sku"] = rng.choice(["M365 Standard", "M365 Premium", "Defender"])
        if src == "cost_pool":
            ln["markup"] = rng.choice([Decimal(0), Decimal("0.2"), Decimal("0.175")])
            if rng.random() < 0.5:
                ln["pool_category"] = rng.choice(["licensing", "backup", "support", "other"])
        else:
            ln["unit_price"] = rng.choice([money(rng, 5, 60), money(rng, 0, 1, 3), Decimal("0.10"), Decimal("0.005")])
        if src == "meter":
            ln["meter"] = rng.choice(["backup_gb", "storage", "absent"])
            ln["meter_rule"] = rng.choice(["peak", "last", "sum"])
        if src not in ("cost_pool", "fixed"):
            if rng.random() < 0.3:
                froms = sorted(rng.sample([0, 1, 2, 3, 5, 8, 100, 500], rng.randint(1, 3)))
                ln["tiers"] = [(f, money(rng, 0, 50)) for f in froms]
            if rng.random() < 0.2:
                ln["minimum_quantity"] = rng.choice([Decimal(1), Decimal(3), Decimal("2.5"), Decimal(200)])
        if rng.random() < 0.15:
            ln["minimum_fee"] = money(rng, 10, 300)
        r = rng.random()
        if r < 0.25:
            ln["discount_percent"] = rng.choice([Decimal(10), Decimal(25), Decimal(100), Decimal("33.33"), Decimal("0.5")])
        elif r < 0.45:
            ln["discount_amount"] = rng.choice([money(rng, 1, 50), money(rng, 100, 2000), Decimal("0.005")])
        if r < 0.45 and rng.random() < 0.7:
            ln["discount_period"] = discount_range(rng, period)
        out.append(ln)
        rows["contract_lines"].append((cid, contract_id, no, "line %d" % no, src, ln["device_kind"], ln["sku"],
                                       ln["pool_category"], ln["meter"], ln["meter_rule"], ln["unit_price"],
                                       ln["markup"], ln["tier_mode"], ln["minimum_quantity"], ln["minimum_fee"],
                                       ln["prorate"], ln["discount_percent"], ln["discount_amount"],
                                       ln["discount_period"]))
        for f, price in ln["tiers"]:
            rows["contract_line_tiers"].append((cid, contract_id, no, f, price))
    d["lines"][(cid, contract_id)] = out
