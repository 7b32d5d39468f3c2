"""Steering: editing a draft so that a condition (a rule's, or an invariant's given) holds, which is
how rare conjunctions (pregnant, hypertensive, potassium recent and normal, not yet on a RAS
blocker) get generated at all. :meth:`Steerer.steer` walks the condition in NNF, keeping what is
already true (:func:`.draft.truth`), picking one branch of a false OR, and making each literal true
with one edit (:meth:`Steerer.apply`); every choice is a Hypothesis draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from .. import lang
from ..derive import rises
from ..lang import And, Cmp, Const, Enum, Expr, Flag, Not, Or, Present
from .draft import Draft, truth
from .draws import BOOL, GRADE, AnyValue, Draws, satisfies
from .harvest import DAY_BASE, complete_atc, complete_icd, literals, prefixes, rnd


class Steerer:
    """Edits drafts towards conditions, drawing from ``draws`` (and its harvest)."""

    def __init__(self, draws: Draws) -> None:
        self.draws = draws
        self.h = draws.h

    def steer(
        self,
        draw: st.DrawFn,
        d: Draft,
        target: Expr,
        conditions: Sequence[str] | AnyValue,
        pregnant: bool | AnyValue | None,
        setting: str | AnyValue,
    ) -> None:
        """Edit the draft until ``target`` (NNF) holds, best effort: a walk that keeps what is already true,
        picks one branch of a false OR, and gives an AND a second pass to repair items a later edit broke."""

        def make_true(e: Expr, depth: int = 0) -> None:
            if truth(d, e) is True or depth > 40:
                return
            if isinstance(e, And):
                for _ in range(2):
                    for i in e.items:
                        make_true(i, depth + 1)
            elif isinstance(e, Or):
                make_true(draw(self.draws.sample(e.items)), depth + 1)
            elif not isinstance(e, (Const, Not)):
                self.apply(draw, d, e, conditions, pregnant, setting)

        make_true(target)

    def apply(
        self,
        draw: st.DrawFn,
        d: Draft,
        lit: lang.Literal,
        conditions: Sequence[str] | AnyValue,
        pregnant: bool | AnyValue | None,
        setting: str | AnyValue,
    ) -> None:
        """Edit the draft so one literal holds."""
        if isinstance(lit, Cmp):
            self.steer_cmp(draw, d, lit)
        elif isinstance(lit, Enum):
            if lit.field == "setting":
                if isinstance(setting, AnyValue) and lit.values:
                    d.setting = draw(self.draws.sample(sorted(lit.values)))
            elif lit.field == "sex" and lit.values:
                d.sex = draw(self.draws.sample(sorted(lit.values)))
        elif isinstance(lit, lang.Visits) and lit.value and lit.cond is not None:
            self.steer_visits(draw, d, lit, conditions, pregnant, setting)
        elif isinstance(lit, Flag):
            self.steer_flag(draw, d, lit, conditions, pregnant)
        elif isinstance(lit, Present):
            self.steer_present(draw, d, lit, pregnant)

    def steer_visits(
        self,
        draw: st.DrawFn,
        d: Draft,
        lit: lang.Visits,
        conditions: Sequence[str] | AnyValue,
        pregnant: bool | AnyValue | None,
        setting: str | AnyValue,
    ) -> None:
        """consecutive_visits(N, COND, apart D, since SET): COND made true on the latest readings, then
        those readings repeated at N-1 earlier visits D (or a little more) days apart, all after a
        start of a drug of SET placed before the earliest one (the latest visit stays current)."""
        assert lit.cond is not None
        self.steer(draw, d, lang.nnf(lit.cond), conditions, pregnant, setting)
        codes = sorted({str(x.num.arg) for x in literals(lit.cond) if isinstance(x, Cmp) and x.num.kind == "obs"})
        codes = [c for c in codes if d.readings.get(c)]
        if not codes:
            return
        day = min(d.readings[c][0][0] for c in codes)
        windows = [w for c in codes if (w := self.h.vocab.observations[c].current) is not None]
        if windows and day > min(windows):
            day = float(draw(st.integers(0, min(windows))))
        days = [day]
        for _ in range(lit.n - 1):
            days.append(days[-1] + lit.apart + draw(st.integers(0, 10)))
        for c in codes:
            value = d.readings[c][0][1]
            d.readings[c] = [[t, value] for t in days] + [r for r in d.readings[c][1:] if r[0] > days[-1]]
        if lit.since:
            start = days[-1] + draw(st.integers(1, 60))
            ps = prefixes("|".join(lit.since))
            kept = [m for m in d.meds if str(m[0]).startswith(ps)]
            if kept:
                for m in kept:
                    m[1] = start
            else:
                d.meds.append([draw(self.draws.sample(complete_atc(draw(self.draws.sample(ps))))), start])

    def steer_rise(self, draw: st.DrawFn, d: Draft, lit: Cmp) -> None:
        """Two readings whose difference (latest minus previous; for rise_pct, as a percentage of the
        previous) makes ``rise(code) op x`` or ``rise_pct(code) op x`` hold."""
        code, op, x = str(lit.num.arg), lit.op, lit.value
        if code not in self.h.vocab.observations:
            return
        od = self.h.vocab.observations[code]
        rs = d.readings.setdefault(code, [])
        if not rs:
            rs.append(self.draws.reading(draw, code))
        if len(rs) < 2:
            rs.append([rs[0][0] + draw(self.draws.sample([1, 7, 30])), draw(self.draws.value(code))])
        step = self.h.steps.get(code, 0.1)
        if lit.num.kind == "rise_pct":
            pct = self.draws.pick(draw, [0.0, x - 5, x - 1, x, x + 1, x + 5], op, x)
            if pct is None or rs[1][1] <= 0:
                return
            delta = rs[1][1] * pct / 100.0
            # rounded to the value's step the percentage can slip past x: step it outward until it holds
            for _ in range(1000):
                latest = rnd(rs[1][1] + delta, step)
                if not od.lo <= latest <= od.hi:
                    return
                pct = rises(rs[1][1], latest)[1]
                if pct is not None and satisfies(pct, op, x):
                    rs[0][1] = latest
                    return
                delta += step if op in (">", ">=") else -step
            return
        v = self.draws.pick(draw, [0.0, x - 10 * step, x - step, x, x + step, x + 10 * step], op, x)
        if v is None:
            return
        if od.lo <= rs[1][1] + v <= od.hi:
            rs[0][1] = rnd(rs[1][1] + v, step)
        elif od.lo <= rs[0][1] - v <= od.hi:
            rs[1][1] = rnd(rs[0][1] - v, step)

    def taking(self, draw: st.DrawFn, d: Draft, atc: tuple[str, ...]) -> list[list[Any]]:
        """The draft's drugs matching any of the ATC prefixes; one is added when there is none."""
        mine = [m for m in d.meds if str(m[0]).startswith(atc)]
        if not mine:
            prefix = atc[0] if len(atc) == 1 else draw(self.draws.sample(atc))
            mine = [[draw(self.draws.sample(complete_atc(prefix))), None]]
            d.meds.append(mine[0])
        return mine

    def steer_since_start(self, draw: st.DrawFn, d: Draft, lit: Cmp) -> None:
        """A drug of the class started S days ago, a baseline reading on or before that day, the latest
        after it, sometimes a reading in between (so that the baseline is not the previous reading)
        and every other reading older than the baseline; then the baseline and the latest steered as
        rise() steers two readings."""
        code, *atc = lit.num.started
        if code not in self.h.vocab.observations:
            return
        mine = self.taking(draw, d, tuple(atc))
        start = int(draw(self.draws.sample([s for s in self.h.since if s >= 1] or [28])))
        for m in mine:
            m[1] = start
        rs = d.readings.setdefault(code, [])
        while len(rs) < 2:
            self.h.add_values(code, self.h.vocab.observations[code].lo, self.h.vocab.observations[code].hi)
            rs.append(self.draws.reading(draw, code))
        latest, base = rs[0], rs[1]
        latest[0] = float(draw(self.draws.sample([0, start // 2, start - 1])))
        base[0] = float(start + draw(self.draws.sample([0, 7, 30])))
        for r in rs[2:]:
            r[0] = max(r[0], base[0])
        between = latest[0] + 1 < start and draw(BOOL)
        kind = "rise" if lit.num.kind == "srise" else "rise_pct"
        d.readings[code] = [latest, base]  # steer_rise edits the values of the first two readings
        try:
            self.steer_rise(draw, d, Cmp(lang.Num(kind, code), lit.op, lit.value, lit.unit, lit.span))
        finally:
            d.readings[code] = rs
        if between:  # on treatment, halfway in time and value: rise() alone now sees only part of it
            step = self.h.steps.get(code, 0.1)
            mid = [float((latest[0] + start) // 2), rnd((base[1] + latest[1]) / 2, step)]
            rs.insert(1, mid)

    def steer_after(self, draw: st.DrawFn, d: Draft, lit: Cmp) -> None:
        """days_after_start(code, ATC) op x: the latest reading dated that many days after the
        latest start of a matching drug (negative: before it), keeping both on or before as_of."""
        code, prefix = lit.num.pair
        if code not in self.h.vocab.observations:
            return
        v = self.draws.pick(draw, [-30, -1, 0, 1, 7, lit.value - 1, lit.value, lit.value + 1], lit.op, lit.value)
        if v is None:
            return
        mine = self.taking(draw, d, prefixes(prefix))  # a code set: its ATC prefixes joined by "|"
        rs = d.readings.setdefault(code, [])
        if not rs:
            self.h.add_values(code, self.h.vocab.observations[code].lo, self.h.vocab.observations[code].hi)
            rs.append(self.draws.reading(draw, code))
        on = int(draw(self.draws.sample(self.h.since)))
        if on - v < 0:  # the reading would be after as_of: start the drug earlier
            on = int(v)
        for m in mine:
            m[1] = on  # every matching drug started that day, so the latest start is the one steered
        rs[0][0] = on - v
        for r in rs[1:]:
            r[0] = max(r[0], on - v)

    def steer_cmp(self, draw: st.DrawFn, d: Draft, lit: Cmp) -> None:
        """Make a comparison hold: a value, a difference, an age in days, a field, a count or a start."""
        h = self.h
        n, op, x = lit.num, lit.op, lit.value
        if n.kind in ("rise", "rise_pct"):
            self.steer_rise(draw, d, lit)
        elif n.kind == "after":
            self.steer_after(draw, d, lit)
        elif n.kind in ("srise", "srise_pct"):
            self.steer_since_start(draw, d, lit)
        elif n.kind in ("obs", "prev", "days"):
            code = str(n.arg)
            if code not in h.vocab.observations:
                return
            h.add_values(code, x)
            rs = d.readings.setdefault(code, [])
            if not rs:
                rs.append(self.draws.reading(draw, code))
            od = h.vocab.observations[code]
            if od.current is not None and rs[0][0] > od.current and draw(st.integers(0, 7)) < 7:
                rs[0][0] = float(draw(st.integers(0, od.current)))  # mostly a current reading (a stale one is unknown)
            if n.kind == "prev" and len(rs) < 2:
                rs.append([rs[0][0] + draw(self.draws.sample([0, 7, 30])), draw(self.draws.value(code))])
            step = h.steps[code]
            if n.kind == "days":
                v = self.draws.pick(draw, [*h.days.get(code, DAY_BASE), x - 1, x, x + 1], op, x)
                if v is not None and v >= 0:
                    rs[0][0] = v
                    for r in rs[1:]:
                        r[0] = max(r[0], v)
                return
            cands = [c for c in (*h.values[code], rnd(x - step, step), x, rnd(x + step, step)) if od.lo <= c <= od.hi]
            v = self.draws.pick(draw, cands, op, x)
            if v is not None:
                rs[0 if n.kind == "obs" else 1][1] = v
        elif n.kind == "field":
            name = str(n.arg)
            lo, hi = lang.NUMERIC_FIELDS.get(name, (0.0, 130.0))
            v = self.draws.pick(draw, [c for c in (*h.fields.get(name, ()), x - 1, x, x + 1) if lo <= c <= hi], op, x)
            if v is not None:
                if name == "age":
                    d.age = int(v)
                elif name == "smi_risk_grade":
                    d.smi = int(v)
        elif n.kind == "count":
            assert isinstance(n.arg, tuple)
            group = list(n.arg)
            k = self.draws.pick(draw, range(len(group) + 1), op, x)
            if k is None:
                return
            chosen = draw(st.permutations(group))[: int(k)]
            d.meds = [m for m in d.meds if not any(str(m[0]).startswith(prefixes(g)) for g in group)]
            for g in chosen:
                d.meds.append([draw(self.draws.sample(complete_atc(draw(self.draws.sample(prefixes(g)))))), None])
        elif n.kind == "days_on":
            v = self.draws.pick(draw, [*h.since, x - 1, x, x + 1], op, x)
            if v is None or v < 0:
                return
            mine = self.taking(draw, d, prefixes(str(n.arg)))
            for m in mine:
                m[1] = int(v)

    def steer_flag(
        self, draw: st.DrawFn, d: Draft, lit: Flag, conditions: Sequence[str] | AnyValue, pregnant: bool | AnyValue | None
    ) -> None:
        """Make a flag hold: pregnant (unless pinned), a finding, a diagnosis (unless pinned), a drug, an allergy."""
        ps = prefixes(lit.arg)
        a = draw(self.draws.sample(ps)) if lit.value and len(ps) > 1 else ps[0]
        if lit.kind == "pregnant":
            if isinstance(pregnant, AnyValue):
                d.pregnant = lit.value
                if lit.value and d.sex == "male":
                    d.sex = "female"
        elif lit.kind == "finding":
            if lit.value and a not in d.findings:
                d.findings.append(a)
            elif not lit.value:
                d.findings = [f for f in d.findings if f != a]
        elif lit.kind == "dx":
            if not isinstance(conditions, AnyValue):
                return
            if lit.value and not any(c.startswith(ps) for c in d.conditions):
                d.conditions.append(draw(self.draws.sample(complete_icd(a))))
            elif not lit.value:
                d.conditions = [c for c in d.conditions if not c.startswith(ps)]
        elif lit.kind == "on":
            if lit.value and not any(str(m[0]).startswith(ps) for m in d.meds):
                d.meds.append([draw(self.draws.sample(complete_atc(a))), draw(self.draws.since_short)])
            elif not lit.value:
                d.meds = [m for m in d.meds if not str(m[0]).startswith(ps)]
        elif lit.kind == "allergy":
            if lit.value and not any(x.startswith(ps) or any(q.startswith(x) for q in ps) for x in d.allergies):
                d.allergies.append(draw(self.draws.sample([a, *complete_atc(a)])))
            elif not lit.value:
                d.allergies = [x for x in d.allergies if not (x.startswith(ps) or any(q.startswith(x) for q in ps))]

    def steer_present(self, draw: st.DrawFn, d: Draft, lit: Present, pregnant: bool | AnyValue | None) -> None:
        """Make a value present (drawing one when missing) or missing."""
        h = self.h
        if lit.kind == "obs":
            if lit.name not in h.vocab.observations:
                return
            if lit.value and lit.name not in d.readings and lit.name in h.values:
                d.readings[lit.name] = [self.draws.reading(draw, lit.name)]
            elif not lit.value:
                d.readings.pop(lit.name, None)
            return
        if lit.name == "age":
            d.age = (d.age if d.age is not None else draw(self.draws.sample(h.fields["age"]))) if lit.value else None
        elif lit.name == "sex":
            d.sex = (d.sex if d.sex not in (None, "unknown") else draw(self.draws.sample(["female", "male"]))) if lit.value else None
        elif lit.name == "smi_risk_grade":
            d.smi = (d.smi if d.smi is not None else draw(GRADE)) if lit.value else None
        elif lit.name == "pregnant" and isinstance(pregnant, AnyValue):
            d.pregnant = (d.pregnant if d.pregnant is not None else draw(BOOL)) if lit.value else None
