"""Derive the flat facts that rules read from a validated case, measured from ``as_of``."""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TypeVar

from . import lang
from .case import Case, Medication

T = TypeVar("T")


@dataclass(frozen=True)
class _Plan:
    allergy: tuple[tuple[str, tuple[str, ...]], ...]  # al_ key -> ATC prefixes (matched both ways)
    counts: tuple[tuple[str, tuple[str, ...]], ...]  # n_ key -> the classes it counts (a code, or a set's codes joined by |)
    observations: dict[str, tuple[str, str, str, str, str, str]]  # code -> its h_, o_, d_, p_, r_ and rp_ keys
    windows: dict[str, tuple[int, str]]  # code -> (days its values stay current, its l_ key): only codes with a window
    finding_keys: dict[str, str]  # finding -> its f_ key
    zeros: dict[str, object]  # every flag and count at 0 and every observation absent: set what holds
    dx_index: dict[str, tuple[str, ...]]  # ICD prefix -> the dx_ flags it sets
    med_index: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]  # ATC prefix -> (on_ flags, count classes, s_ keys)
    after: dict[str, tuple[tuple[str, str], ...]]  # s_ key -> the a_ keys that are d_ key minus it, with their d_ keys
    since_start: tuple[tuple[str, str, str, tuple[str, ...]], ...]  # b_ and bp_ keys, observation, the s_ keys of the start
    visits: tuple[tuple[lang.Visits, tuple[tuple[str, str, str], ...]], ...]  # each visits literal, with its observations' (code, o_, h_)


def _index(pairs: Iterable[tuple[T, tuple[str, ...]]]) -> dict[str, tuple[T, ...]]:
    """Each item under every one of its index keys (prefix -> flags; drug start -> facts)."""
    out: dict[str, tuple[T, ...]] = {}
    for key, prefixes in pairs:
        for p in prefixes:
            out[p] = (*out.get(p, ()), key)
    return out


@dataclass
class Features:
    """What the compiled rules read; the deriver computes exactly these facts."""

    observations: set[str] = field(default_factory=set)
    findings: set[str] = field(default_factory=set)
    dx: set[str] = field(default_factory=set)
    on: set[str] = field(default_factory=set)
    allergy: set[str] = field(default_factory=set)
    counts: set[tuple[str, ...]] = field(default_factory=set)
    days_on: set[str] = field(default_factory=set)
    after: set[tuple[str, str]] = field(default_factory=set)  # days_after_start: (observation, ATC prefix)
    since_start: set[tuple[str, ...]] = field(default_factory=set)  # rise(_pct)_since_start: (observation, ATC prefix, ...)
    sites: set[str] = field(default_factory=set)  # site capabilities read (site_has)
    visits: dict[str, lang.Visits] = field(default_factory=dict)  # consecutive_visits, by fact key
    current: dict[str, int] = field(default_factory=dict)  # the vocabulary's recency windows (ObsDef.current), in days
    site: frozenset[str] = frozenset()  # what the engine's site profile can do
    visit_reading: str = "last"  # which of a visit's same-day readings counts (Vocabulary.visit_reading)

    _plan: _Plan | None = None

    def plan(self) -> _Plan:
        """The fact keys and prefix tuples, worked out once rather than for every case."""
        if self._plan is None:

            def flags(prefix: str, args: set[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
                return tuple((f"{prefix}{lang.sanitize(a)}", tuple(a.split("|"))) for a in sorted(args))

            finding_keys = {f: f"f_{f}" for f in sorted(self.findings)}
            dx, on, allergy = flags("dx_", self.dx), flags("on_", self.on), flags("al_", self.allergy)
            counts = tuple((lang.Num("count", g).key, g) for g in sorted(self.counts))
            observations = {c: (f"h_{c}", f"o_{c}", f"d_{c}", f"p_{c}", f"r_{c}", f"rp_{c}") for c in sorted(self.observations)}
            zero_keys = [k[0] for k in observations.values()] + [*finding_keys.values()] + [k for k, _ in (*dx, *on, *allergy, *counts)]
            on_index = _index(on)
            in_count = _index((c, tuple(c.split("|"))) for c in sorted({c for _, g in counts for c in g}))  # prefix -> its classes
            started = {a: lang.Num("days_on", a).key for a in sorted(self.days_on)}  # a class: prefixes joined by |
            start_index = _index((key, tuple(a.split("|"))) for a, key in started.items())
            med_index = {
                p: (on_index.get(p, ()), in_count.get(p, ()), start_index.get(p, ())) for p in {*on_index, *in_count, *start_index}
            }
            zeros: dict[str, object] = dict.fromkeys(zero_keys, 0)
            zeros.update({f"c_{c}": int(c in self.site) for c in sorted(self.sites)})  # one site per engine: constant facts
            visits = tuple((v, tuple((c, f"o_{c}", f"h_{c}") for c in sorted(_visit_codes(v)))) for _, v in sorted(self.visits.items()))
            self._plan = _Plan(
                allergy=allergy,
                counts=counts,
                observations=observations,
                windows={c: (self.current[c], f"l_{c}") for c in observations if c in self.current},
                finding_keys=finding_keys,
                zeros=zeros,
                dx_index=_index(dx),
                med_index=med_index,
                after=_index(((lang.Num("after", (c, p)).key, f"d_{c}"), (started[p],)) for c, p in sorted(self.after)),
                since_start=tuple(
                    (lang.Num("srise", a).key, lang.Num("srise_pct", a).key, a[0], tuple(started[p] for p in a[1:]))
                    for a in sorted(self.since_start)
                ),
                visits=visits,
            )
        return self._plan

    def add(self, expr: lang.Expr) -> None:
        self._plan = None
        for lit in lang.literals(expr):
            if isinstance(lit, lang.Cmp):
                n = lit.num
                if n.kind in ("obs", "latest", "prev", "rise", "rise_pct", "days"):
                    self.observations.add(str(n.arg))
                elif n.kind == "count":
                    assert isinstance(n.arg, tuple)
                    self.counts.add(n.arg)
                elif n.kind == "days_on":
                    self.days_on.add(str(n.arg))
                elif n.kind == "after":  # needs the reading's days_since and the drug's days_on
                    code, prefix = n.pair
                    self.after.add((code, prefix))
                    self.observations.add(code)
                    self.days_on.add(prefix)
                elif n.kind in ("srise", "srise_pct"):  # needs the readings' dates and the drugs' starts
                    code, *prefixes = n.started
                    self.since_start.add(n.started)
                    self.observations.add(code)
                    self.days_on.update(prefixes)
            elif isinstance(lit, lang.Present) and lit.kind == "obs":
                self.observations.add(lit.name)
            elif isinstance(lit, lang.Visits):
                assert lit.cond is not None
                self.visits[lit.key] = lit
                self.add(lit.cond)  # what each visit reads: its observations, and the case's other facts
            elif isinstance(lit, lang.Flag):
                kinds = {"finding": self.findings, "dx": self.dx, "on": self.on, "allergy": self.allergy, "site": self.sites}
                kinds.get(lit.kind, set()).add(lit.arg)


def _visit_codes(v: lang.Visits) -> set[str]:
    assert v.cond is not None
    return {str(lit.num.arg) for lit in lang.literals(v.cond) if isinstance(lit, lang.Cmp) and lit.num.kind == "obs"}


def rises(before: float, latest: float) -> tuple[float, float | None]:
    """rise() and rise_pct() of two readings, without float dust; the percentage is unknown (None)
    from a reading of zero. The case generator steers with the same numbers."""
    return round(latest - before, 9), (round(100.0 * (latest - before) / before, 9) if before > 0 else None)


def derive(case: Case, obs: list[tuple[str, float, date]], feat: Features) -> dict[str, object]:
    """Flat facts; a key is absent when its value is unknown (never defaulted to normal).

    Every flag starts at 0 from the plan's template and is set where the case says so: one
    pass over what the case holds rather than a scan of the case per flag.
    """
    plan = feat.plan()
    as_of = case.as_of
    facts: dict[str, object] = plan.zeros.copy()
    facts["setting"] = case.setting
    facts["h_age"] = int(case.age is not None)
    if case.age is not None:
        facts["age"] = case.age
    known_sex = case.sex is not None and case.sex != "unknown"
    facts["h_sex"] = int(known_sex)
    if known_sex:
        facts["sex"] = case.sex
    facts["h_pregnant"] = int(case.pregnant is not None)
    if case.pregnant is not None:
        facts["pregnant"] = int(case.pregnant)
    facts["h_smi_risk_grade"] = int(case.smi_risk_grade is not None)
    if case.smi_risk_grade is not None:
        facts["smi_risk_grade"] = case.smi_risk_grade
    by_code: dict[str, list[tuple[date, int, float]]] = {}
    if obs:
        keyed = plan.observations
        for i, (code, value, when) in enumerate(obs):
            if code in keyed:
                by_code.setdefault(code, []).append((when, i, value))
        windows = plan.windows
        for code, series in by_code.items():
            h, o, d, p, r, rp = keyed[code]
            facts[h] = 1
            if len(series) > 1:
                series.sort()
            when, _, value = series[-1]
            days_old = facts[d] = (as_of - when).days
            window = windows.get(code) if windows else None
            if window is not None:
                facts[window[1]] = value  # latest(code): whatever its age
                if days_old > window[0]:  # stale: its value, and what is worked out from it, are unknown
                    continue
            facts[o] = value
            if len(series) > 1:
                before = series[-2][2]
                facts[p] = before
                facts[r], pct = rises(before, value)
                if pct is not None:
                    facts[rp] = pct
    if case.findings:
        fkeys = plan.finding_keys
        for f in case.findings:
            key = fkeys.get(f)
            if key is not None:
                facts[key] = 1
    # Codes are matched by prefix: look each prefix of a case's code up in the plan's index
    # (a handful of dict lookups) instead of testing every flag's prefixes against every code.
    dx_index = plan.dx_index
    for c in case.conditions:
        for k in range(len(c) + 1):
            keys = dx_index.get(c[:k])
            if keys:
                for key in keys:
                    facts[key] = 1
    if case.allergies:
        for key, prefixes in plan.allergy:
            for a in case.allergies:
                if a.startswith(prefixes) or any(q.startswith(a) for q in prefixes):
                    facts[key] = 1
                    break
    if case.medications:
        med_index = plan.med_index
        counted: set[str] = set()
        latest: dict[str, date] = {}  # s_ key -> the most recent start of a matching drug (days_on)
        earliest: dict[str, date] = {}  # ... and the first (the baseline of rise_since_start is before it)
        undated: set[str] = set()  # s_ keys with a matching drug whose start is not known
        for m in case.medications:
            a, since = m.atc, m.since
            for k in range(len(a) + 1):
                hit = med_index.get(a[:k])
                if hit is None:
                    continue
                on_keys, classes, start_keys = hit
                for key in on_keys:
                    facts[key] = 1
                for cls in classes:
                    counted.add(cls)
                for start_key in start_keys:
                    if since is None:
                        undated.add(start_key)
                        continue
                    was = latest.get(start_key)
                    if was is None or since > was:
                        latest[start_key] = since
                    was = earliest.get(start_key)
                    if was is None or since < was:
                        earliest[start_key] = since
        for key, group in plan.counts:
            facts[key] = sum(1 for cls in group if cls in counted)
        after = plan.after
        for s_key, since in latest.items():  # a drug of the class with no start: when the last start was is unknown
            if s_key not in undated:
                on = facts[s_key] = (as_of - since).days
                for key, d_key in after.get(s_key, ()):  # reading date - start date; unknown without a reading
                    ago = facts.get(d_key)
                    if isinstance(ago, int):
                        facts[key] = on - ago
        for b_key, bp_key, code, s_keys in plan.since_start:
            if code in plan.windows and plan.observations[code][1] not in facts:  # the latest reading is not current
                continue
            if not undated.intersection(s_keys):  # a drug of the classes with no start: its baseline is not known
                _since_start(facts, b_key, bp_key, by_code.get(code), [earliest[k] for k in s_keys if k in earliest])
    for v, codes in plan.visits:
        current = {c: as_of - timedelta(days=feat.current[c]) for c, _, _ in codes if c in feat.current}
        t = visits(v, codes, by_code, case.medications, facts, feat.visit_reading, current)
        if t is not None:
            facts[v.key] = int(t)
    return facts


def visits(
    v: lang.Visits,
    codes: Sequence[tuple[str, str, str]],
    by_code: Mapping[str, list[tuple[date, int, float]]],
    medications: Sequence[Medication],
    facts: lang.Facts,
    reading: str,
    current: Mapping[str, date] | None = None,
) -> bool | None:
    """consecutive_visits (lang.Visits): True, False or None (unknown).

    Visits are the dates with a reading of an observation the condition reads, after the latest
    start of a current drug of ``v.since`` (False when none is taken, unknown when one has no start
    date). From the latest visit back, each visit's value of an observation is its last reading that
    day (or the mean: ``reading``), the rest of the case as it is today; a visit counts when it is
    at least ``v.apart`` days before the one counted after it. True when ``v.n`` visits are counted
    and the condition holds at every visit on the way; False at the first visit where it fails;
    unknown when there are too few visits, or one on the way is unknown. ``current`` gives, per
    observation with a recency window, the oldest date still current: when the latest visit's
    reading of one is older, the answer is unknown (a run of old visits says nothing about today).
    """
    start: date | None = None
    if v.since:
        starts: list[date] = []
        for m in medications:
            if m.atc.startswith(v.since):
                if m.since is None:
                    return None
                starts.append(m.since)
        if not starts:
            return False
        start = max(starts)
    days: dict[date, dict[str, list[tuple[int, float]]]] = {}
    for code, _, _ in codes:
        for when, i, value in by_code.get(code, ()):
            if start is None or when > start:
                days.setdefault(when, {}).setdefault(code, []).append((i, value))
    truth: bool | None = True
    counted, last = 0, None
    for when in sorted(days, reverse=True):
        at = days[when]
        if last is None and current and any(when < current[c] for c in at if c in current):
            return None
        overlay: dict[str, object] = {}
        for code, o_key, h_key in codes:
            got = sorted(at.get(code, ()))
            if not got:
                overlay[o_key], overlay[h_key] = None, 0
            else:
                overlay[o_key] = got[-1][1] if reading == "last" else round(sum(x for _, x in got) / len(got), 9)
                overlay[h_key] = 1
        assert v.cond is not None
        t = lang.eval3(v.cond, ChainMap(overlay, facts))  # type: ignore[arg-type]
        if t is False:
            return False
        if t is None:
            truth = None
        if last is None or (last - when).days >= v.apart:
            counted, last = counted + 1, when
            if counted == v.n:
                return truth
    return None


def _since_start(
    facts: dict[str, object], b_key: str, bp_key: str, series: list[tuple[date, int, float]] | None, starts: list[date]
) -> None:
    """rise_since_start / rise_pct_since_start: the latest reading against the baseline, the latest
    reading on or before the (earliest) start; unknown without a start, a baseline or a reading after
    the start, and (the caller) when any current drug of the classes has no start date, since the
    baseline must come before all of them (``series`` is sorted oldest first when it has more than
    one reading)."""
    if not starts or not series or len(series) < 2:
        return
    start = min(starts)
    latest = series[-1]
    if latest[0] <= start:
        return
    baseline = next((r for r in reversed(series) if r[0] <= start), None)
    if baseline is None:
        return
    facts[b_key], pct = rises(baseline[2], latest[2])
    if pct is not None:
        facts[bp_key] = pct
