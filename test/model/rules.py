"""An independent model of mspbill's pricing rules, written from the rule
text in README.md ("Who is billable", "Pricing rules"), not from
src/billing/*.sql.  Plain Python: exact fractions for quantities, Decimal for
money, zoneinfo for the client's days.

The data is a dict of plain records (see generate.py); every function here
takes what it needs and returns plain values, so a disagreement with the
database can be traced rule by rule.
"""

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, ROUND_HALF_UP
from fractions import Fraction
from math import ceil
from zoneinfo import ZoneInfo

MACHINE_NAMES = {"SYSTEM", "LOCAL SERVICE", "NETWORK SERVICE", "ANONYMOUS LOGON"}


def is_machine(name):
    """Windows machine and service identities (README: never billable)."""
    up = name.upper()
    return name.endswith("$") or up in MACHINE_NAMES or up.startswith("DWM-") or up.startswith("UMFD-")


def local_midnight(day, zone):
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)


def local_day(at, zone):
    return at.astimezone(ZoneInfo(zone)).date()


def days(r):
    """Length in days of a half-open date range (lo, hi); None hi = open."""
    return (r[1] - r[0]).days


def intersect(a, b):
    """Intersection of half-open date ranges; bounds None = unbounded."""
    lo = a[0] if b[0] is None or (a[0] is not None and a[0] >= b[0]) else b[0]
    if a[1] is None:
        hi = b[1]
    elif b[1] is None:
        hi = a[1]
    else:
        hi = min(a[1], b[1])
    if lo is not None and hi is not None and lo >= hi:
        return None
    return (lo, hi)


def contains(r, day):
    return r is None or ((r[0] is None or r[0] <= day) and (r[1] is None or day < r[1]))


def round_money(x, minor):
    """Half away from zero to a whole number of minor units (amounts >= 0)."""
    units = Fraction(x) / Fraction(minor)
    n = int(units + Fraction(1, 2)) if units >= 0 else -int(-units + Fraction(1, 2))
    return Decimal(n) * minor


def hamilton(total, weights, minor):
    """Largest remainder: shares of total (a multiple of minor) by weight,
    leftover units to the largest remainders, ties to the earlier weight."""
    units = int(Fraction(total) / Fraction(minor))
    w = sum(weights)
    if w == 0:
        raise ValueError("weights sum to zero")
    base = [units * x // w for x in weights]
    rem = [units * x % w for x in weights]
    left = units - sum(base)
    order = sorted(range(len(weights)), key=lambda i: (-rem[i], i))
    for i in order[:left]:
        base[i] += 1
    return [Decimal(b) * minor for b in base]


@dataclass
class Line:
    contract_id: int
    basis: str
    quantity: Fraction
    unit_price: Decimal
    amount: Decimal

    def shown(self):
        q = Decimal(self.quantity.numerator) / Decimal(self.quantity.denominator) \
            if isinstance(self.quantity, Fraction) else Decimal(self.quantity)
        return (self.contract_id, self.basis,
                q.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP).normalize(),
                None if self.unit_price is None else Decimal(self.unit_price).normalize(),
                Decimal(self.amount).normalize())


@dataclass
class Billed:
    contract_id: int
    home: int
    person_id: int
    rule: str
    days_active: int
    contacts: int


class Model:
    def __init__(self, data):
        self.d = data

    # --- periods and contracts -------------------------------------------
    def segments(self, cid, period):
        out = []
        for k in sorted(self.d["contracts"][cid], key=lambda k: k["effective"][0]):
            seg = intersect(k["effective"], period)
            if seg:
                out.append((k, seg))
        return out

    # --- who is billable ---------------------------------------------------
    def eligible(self, cid, seg):
        out = []
        for p in self.d["all_people"]:
            own = p["client_id"] == cid and p["bill_to"] in (None, cid)
            sister = p["bill_to"] == cid and p["client_id"] != cid
            if not (own or sister) or p["technician"] or p["do_not_bill"]:
                continue
            if p["active"] is not None and intersect(p["active"], seg) is None:
                continue
            out.append(p)
        return out

    def segment_users(self, cid, k, seg):
        zone = self.d["clients"][cid]["tz"]
        t0, t1 = local_midnight(seg[0], zone), local_midnight(seg[1], zone)
        billed = []
        for p in self.eligible(cid, seg):
            home = p["client_id"]
            accounts = [a for a in self.d["accounts"][home] if a["person_id"] == p["person_id"]
                        and a["kind"] == "individual" and not is_machine(a["name"])]
            events = []  # (at, by_logon)
            for a in accounts:
                for l in self.d["logons_by_account"][home].get(a["account_id"], ()):
                    if not (l["presence"] and t0 <= l["at"] < t1 and contains(p["active"], local_day(l["at"], zone))):
                        continue
                    if a["realm"] in k["count_realms"]:
                        events.append((l["at"], True))
                    if (a["realm"] == "app" and k["shared_billing"] == "attribute"
                            and self.attributed(home, k, l, t0, t1)):
                        events.append((l["at"], False))
            contacts = [s for s in self.d["support"][home] if s["person_id"] == p["person_id"]
                        and t0 <= s["at"] < t1 and contains(p["active"], local_day(s["at"], zone))]
            day_set = {local_day(at, zone) for at, _ in events}
            active_days = len(day_set)
            present = active_days >= k["min_active_days"]
            rule = k["support_rule"]
            if rule == "none":
                ok = present
            elif rule == "sufficient":
                ok = present or len(contacts) > 0
            else:
                ok = present and len(contacts) > 0
            if not ok:
                continue
            by_logon = any(b for _, b in events)
            if present:
                name = "logon" if by_logon else "shared-attributed"
                if contacts and rule != "none":
                    name += "+support"
            else:
                name = "support"
            billed.append(Billed(k["contract_id"], home, p["person_id"], name, active_days, len(contacts)))
        return billed

    def attributed(self, home, k, il, t0, t1):
        """An application logon inside (or within the window of) a shared
        session on the same device, both in the period."""
        if il["device_id"] is None:
            return False
        for sa in self.d["accounts"][home]:
            if sa["kind"] != "shared" or is_machine(sa["name"]) or sa["realm"] not in k["count_realms"]:
                continue
            for sl in self.d["logons_by_account"][home].get(sa["account_id"], ()):
                if not (sl["presence"] and sl["device_id"] == il["device_id"] and t0 <= sl["at"] < t1):
                    continue
                end = sl["ended"] if sl["ended"] is not None else sl["at"] + k["default_session"]
                if sl["at"] - k["attribution_window"] <= il["at"] <= end + k["attribution_window"]:
                    return True
        return False

    # --- quantities --------------------------------------------------------
    def covered(self, active, seg, period_days, prorate):
        if not prorate:
            return Fraction(1)
        r = intersect(active if active is not None else seg, seg)
        return Fraction(days(r), period_days)

    def seat_count(self, cid, k, seg):
        if k["shared_billing"] not in ("seat", "peak"):
            return 0
        zone = self.d["clients"][cid]["tz"]
        t0, t1 = local_midnight(seg[0], zone), local_midnight(seg[1], zone)
        n = 0
        for a in self.d["accounts"][cid]:
            if a["kind"] != "shared" or is_machine(a["name"]) or a["realm"] not in k["count_realms"]:
                continue
            sessions = [l for l in self.d["logons_by_account"][cid].get(a["account_id"], ())
                        if l["presence"] and t0 <= l["at"] < t1]
            if not sessions:
                continue
            if k["shared_billing"] == "seat":
                n += 1
            else:
                n += max(1, peak([(l["at"], l["ended"] if l["ended"] is not None else l["at"] + k["default_session"])
                                  for l in sessions]))
        return n

    def license_count(self, cid, seg, sku=None):
        last_day = seg[1] - timedelta(days=1)
        best = {}
        for lc in self.d["licenses"][cid]:
            if lc["as_of"] > last_day or sku not in (None, lc["sku"]):
                continue
            key = (lc["as_of"], _neg_str(lc["source"]))
            if lc["sku"] not in best or key > best[lc["sku"]][0]:
                best[lc["sku"]] = (key, lc["seats"])
        return sum(v[1] for v in best.values())

    def pool_share(self, cid, pool, period, seg):
        minor = self.d["clients"][cid]["minor"]
        amount = round_money(pool["amount"], minor)
        pp = pool["period"]
        months = []
        m = date(pp[0].year, pp[0].month, 1)
        while m < pp[1]:
            nxt = date(m.year + (m.month == 12), m.month % 12 + 1, 1)
            months.append((m, days(intersect((m, nxt), pp))))
            m = nxt
        shares = hamilton(amount, [w for _, w in months], minor)
        month_share = dict(zip([m for m, _ in months], shares)).get(period[0], Decimal(0))
        parts = []
        for _, s in self.segments(cid, period):
            r = intersect(s, pp)
            if r:
                parts.append((s, days(r)))
        rest = days(intersect(period, pp)) - sum(w for _, w in parts)
        weights = [w for _, w in parts] + [rest]
        split = hamilton(month_share, weights, minor)
        for (s, _), sh in zip(parts, split):
            if s == seg:
                return sh
        return Decimal(0)

    # --- pricing -------------------------------------------------------------
    def bands(self, k, n, flat):
        return tier_bands(k["tier_mode"], self.d["tiers"].get((k["client_id"], k["contract_id"]), []), n, flat)

    # --- contract lines (model 'lines') ------------------------------------
    def line_items(self, cid, k, seg, period, users, seats):
        """README "Contract lines": each line's units and the part of the
        month they cover, its tiers, minimums, then its discount."""
        minor = self.d["clients"][cid]["minor"]
        period_days = days(period)
        seg_days = days(seg)
        out = []
        for ln in sorted(self.d["lines"].get((cid, k["contract_id"]), []), key=lambda x: x["line_no"]):
            src = ln["source"]
            prorated = ln["prorate"] and not (src == "meter" and ln["meter_rule"] == "sum")
            f = Fraction(seg_days, period_days) if prorated else Fraction(1)
            total = Decimal(0)
            if src == "cost_pool":
                for p in sorted(self.d["pools"][cid], key=lambda p: p["pool_id"]):
                    if intersect(p["period"], seg) and ln["pool_category"] in (None, p["category"]):
                        amt = round_money(Fraction(self.pool_share(cid, p, period, seg)) * (1 + Fraction(ln["markup"])),
                                          minor)
                        out.append(Line(k["contract_id"], "cost", Fraction(1), amt, amt))
                        total += amt
            else:
                if src == "users":
                    n = len(users)
                    qty = sum((self.covered(self.person(u)["active"], seg, period_days, prorated) for u in users),
                              Fraction(0))
                elif src == "devices":
                    devs = [d for d in self.d["devices"][cid]
                            if (d["active"] is None or intersect(d["active"], seg))
                            and ln["device_kind"] in (None, d["kind"])]
                    n = len(devs)
                    qty = sum((self.covered(d["active"], seg, period_days, prorated) for d in devs), Fraction(0))
                else:
                    if src == "seats":
                        n = seats
                    elif src == "licenses":
                        n = self.license_count(cid, seg, ln["sku"])
                    elif src == "meter":
                        n = self.meter(cid, ln["meter"], ln["meter_rule"], seg)
                    else:  # fixed
                        n = 1
                    qty = Fraction(n) * f
                minq = Fraction(ln["minimum_quantity"])
                big_n = max(Fraction(n), minq)
                big_q = max(qty, minq * f)
                basis = {"users": "user", "seats": "seat", "devices": "device", "licenses": "license"}.get(src, src)
                # README: a seats line with no seat is left off the invoice
                no_seats = src == "seats" and big_n == 0
                for units, price in [] if no_seats else tier_bands(ln["tier_mode"], ln["tiers"], big_n, ln["unit_price"]):
                    charged = Fraction(units) * big_q / big_n if big_n > 0 else Fraction(0)
                    amt = round_money(charged * Fraction(price), minor)
                    out.append(Line(k["contract_id"], basis, charged, price, amt))
                    total += amt
            floor_fee = round_money(Fraction(ln["minimum_fee"]) * f, minor)
            if total < floor_fee:
                out.append(Line(k["contract_id"], "minimum", Fraction(1), floor_fee - total, floor_fee - total))
                total = floor_fee
            if ln["discount_percent"] is not None or ln["discount_amount"] is not None:
                part = intersect(seg, ln["discount_period"]) if ln["discount_period"] else seg
                dd = days(part) if part else 0
                if dd > 0 and total > 0:
                    if ln["discount_percent"] is not None:
                        off = round_money(Fraction(total) * Fraction(ln["discount_percent"]) * dd / (100 * seg_days), minor)
                    elif prorated:
                        off = round_money(Fraction(ln["discount_amount"]) * dd / period_days, minor)
                    else:
                        off = round_money(Fraction(ln["discount_amount"]), minor)
                    off = min(off, total)
                    if off > 0:
                        out.append(Line(k["contract_id"], "discount", Fraction(1), -off, -off))
        return out

    def meter(self, cid, meter, rule, seg):
        rs = [r for r in self.d["meters"].get(cid, []) if r["meter"] == meter]
        if rule == "last":
            before = [r for r in rs if r["day"] < seg[1]]
            return max(before, key=lambda r: r["day"])["quantity"] if before else Decimal(0)
        inside = [r["quantity"] for r in rs if seg[0] <= r["day"] < seg[1]]
        if rule == "peak":
            return max(inside, default=Decimal(0))
        return sum(inside, Decimal(0))


    def main_lines(self, cid, k, count, qty, f, flat, basis):
        minor = self.d["clients"][cid]["minor"]
        minq = Fraction(k["minimum_quantity"])
        n = max(Fraction(count), minq)
        q = max(qty, minq * f)
        r = q / n if n > 0 else Fraction(0)
        out = []
        for units, price in self.bands(k, n, flat):
            charged = Fraction(units) * r
            out.append(Line(k["contract_id"], basis, charged, price, round_money(charged * Fraction(price), minor)))
        return out

    def invoice(self, cid, period):
        """(lines, billed people, summary) of a client's period."""
        client = self.d["clients"][cid]
        minor = client["minor"]
        period_days = days(period)
        lines, people, seats_max = [], [], 0
        for k, seg in self.segments(cid, period):
            f = Fraction(days(seg), period_days) if k["prorate"] else Fraction(1)
            users = self.segment_users(cid, k, seg)
            people += users
            seg_lines = []
            model = k["model"]
            seats = self.seat_count(cid, k, seg)
            seats_max = max(seats_max, seats)
            if model in ("per_user", "per_user_plus_support"):
                qty = sum((self.covered(self.person(u)["active"], seg, period_days, k["prorate"]) for u in users),
                          Fraction(0))
                seg_lines += self.main_lines(cid, k, len(users), qty, f, k["price_per_user"], "user")
                if seats > 0:
                    price = k["price_per_seat"] if k["price_per_seat"] is not None else k["price_per_user"]
                    sq = seats * f
                    seg_lines.append(Line(k["contract_id"], "seat", sq, price, round_money(sq * Fraction(price), minor)))
                if model == "per_user_plus_support":
                    support = sum((self.pool_share(cid, p, period, seg) for p in self.d["pools"][cid]
                                   if p["category"] == "support" and intersect(p["period"], seg)), Decimal(0))
                    if support > 0:
                        amt = round_money(Fraction(support) * (1 + Fraction(k["markup"])), minor)
                        seg_lines.append(Line(k["contract_id"], "cost", Fraction(1), amt, amt))
            elif model == "per_device":
                devs = [d for d in self.d["devices"][cid] if d["active"] is None or intersect(d["active"], seg)]
                qty = sum((self.covered(d["active"], seg, period_days, k["prorate"]) for d in devs), Fraction(0))
                seg_lines += self.main_lines(cid, k, len(devs), qty, f, k["price_per_device"], "device")
            elif model == "per_seat":
                n = self.license_count(cid, seg)
                seg_lines += self.main_lines(cid, k, n, n * f, f, k["price_per_seat"], "license")
            elif model == "lines":
                seg_lines += self.line_items(cid, k, seg, period, users, seats)
            elif model == "cost_plus":
                for p in sorted(self.d["pools"][cid], key=lambda p: p["pool_id"]):
                    if intersect(p["period"], seg):
                        cost = self.pool_share(cid, p, period, seg)
                        amt = round_money(Fraction(cost) * (1 + Fraction(k["markup"])), minor)
                        seg_lines.append(Line(k["contract_id"], "cost", Fraction(1), amt, amt))
            total = sum((l.amount for l in seg_lines), Decimal(0))
            floor_fee = round_money(Fraction(k["minimum_fee"]) * f, minor)
            if total < floor_fee:
                seg_lines.append(Line(k["contract_id"], "minimum", Fraction(1), floor_fee - total, floor_fee - total))
            lines += seg_lines
        summary = {
            "users": len({(u.home, u.person_id) for u in people}),
            "seats": seats_max,
            "devices": sum(1 for d in self.d["devices"][cid] if d["active"] is None or intersect(d["active"], period)),
            "subtotal": sum((l.amount for l in lines if l.basis != "minimum"), Decimal(0)),
            "total": sum((l.amount for l in lines), Decimal(0)),
        }
        return lines, people, summary

    def person(self, u):
        return self.d["people_by_key"][(u.home, u.person_id)]


def _neg_str(s):
    """Sort key under which the alphabetically first source is the largest."""
    return tuple(-ord(ch) for ch in s) + (1,)


def peak(sessions):
    """Most half-open [start, end) sessions covering one instant."""
    events = []
    for s, e in sessions:
        if e > s:
            events.append((s, 1))
            events.append((e, -1))
    events.sort(key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def tier_bands(mode, tiers, n, flat):
    """Bands (units, price) a count fills: README "Prices and tiers"."""
    tiers = sorted(tiers, key=lambda t: t[0])
    los = [(max(f - 1, 0), price) for f, price in tiers]
    bands = []
    if los:
        bands.append((0, los[0][0], flat))
        for i, (lo, price) in enumerate(los):
            bands.append((lo, los[i + 1][0] if i + 1 < len(los) else None, price))
    else:
        bands.append((0, None, flat))
    bands = [b for b in bands if b[1] is None or b[1] > b[0]]
    if mode == "volume" or n <= 0:
        u = max(ceil(n), 1)
        for lo, hi, price in reversed(bands):
            if u > lo and (hi is None or u <= hi):
                return [(n, price)]
        return []
    out = []
    for lo, hi, price in bands:
        if n > lo:
            out.append((min(n, hi if hi is not None else n) - lo, price))
    return out
