"""Derive the flat facts that rules read from a validated case, measured from ``as_of``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from . import lang
from .case import Case


@dataclass(frozen=True)
class _Plan:
    findings: tuple[tuple[str, str], ...]
    dx: tuple[tuple[str, tuple[str, ...]], ...]
    on: tuple[tuple[str, tuple[str, ...]], ...]
    allergy: tuple[tuple[str, tuple[str, ...]], ...]
    counts: tuple[tuple[str, tuple[str, ...]], ...]
    days_on: tuple[tuple[str, str], ...]
    observations: dict[str, tuple[str, str, str, str]]  # code -> its h_, o_, d_ and p_ keys
    finding_keys: dict[str, str]  # finding -> its f_ key
    zeros: dict[str, object]  # every flag and count at 0 and every observation absent: set what holds


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

    _plan: _Plan | None = None

    def plan(self) -> _Plan:
        """The fact keys and prefix tuples, worked out once rather than for every case."""
        if self._plan is None:

            def flags(prefix: str, args: set[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
                return tuple((f"{prefix}{lang.sanitize(a)}", tuple(a.split("|"))) for a in sorted(args))

            findings = tuple((f"f_{f}", f) for f in sorted(self.findings))
            dx, on, allergy = flags("dx_", self.dx), flags("on_", self.on), flags("al_", self.allergy)
            counts = tuple(("n_" + "_".join(g), g) for g in sorted(self.counts))
            observations = {c: (f"h_{c}", f"o_{c}", f"d_{c}", f"p_{c}") for c in sorted(self.observations)}
            zero_keys = [k[0] for k in observations.values()] + [k for k, _ in (*findings, *dx, *on, *allergy, *counts)]
            self._plan = _Plan(
                findings=findings,
                dx=dx,
                on=on,
                allergy=allergy,
                counts=counts,
                days_on=tuple((f"s_{p}", p) for p in sorted(self.days_on)),
                observations=observations,
                finding_keys={f: k for k, f in findings},
                zeros=dict.fromkeys(zero_keys, 0),
            )
        return self._plan

    def add(self, expr: lang.Expr) -> None:
        self._plan = None
        for lit in lang.literals(expr):
            if isinstance(lit, lang.Cmp):
                n = lit.num
                if n.kind in ("obs", "prev", "days"):
                    self.observations.add(str(n.arg))
                elif n.kind == "count":
                    assert isinstance(n.arg, tuple)
                    self.counts.add(n.arg)
                elif n.kind == "days_on":
                    self.days_on.add(str(n.arg))
            elif isinstance(lit, lang.Present) and lit.kind == "obs":
                self.observations.add(lit.name)
            elif isinstance(lit, lang.Flag):
                {"finding": self.findings, "dx": self.dx, "on": self.on, "allergy": self.allergy}.get(lit.kind, set()).add(lit.arg)


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
    if obs:
        keyed = plan.observations
        by_code: dict[str, list[tuple[date, int, float]]] = {}
        for i, (code, value, when) in enumerate(obs):
            if code in keyed:
                by_code.setdefault(code, []).append((when, i, value))
        for code, series in by_code.items():
            h, o, d, p = keyed[code]
            facts[h] = 1
            if len(series) > 1:
                series.sort()
                facts[p] = series[-2][2]
            when, _, value = series[-1]
            facts[o] = value
            facts[d] = (as_of - when).days
    if case.findings:
        fkeys = plan.finding_keys
        for f in case.findings:
            key = fkeys.get(f)
            if key is not None:
                facts[key] = 1
    for c in case.conditions:  # a flag's arg is one prefix or several joined by '|'
        for key, prefixes in plan.dx:
            if c.startswith(prefixes):
                facts[key] = 1
    if case.allergies:
        for key, prefixes in plan.allergy:
            for a in case.allergies:
                if a.startswith(prefixes) or any(q.startswith(a) for q in prefixes):
                    facts[key] = 1
                    break
    if case.medications:
        atcs = [m.atc for m in case.medications]
        for a in atcs:
            for key, prefixes in plan.on:
                if a.startswith(prefixes):
                    facts[key] = 1
        for key, group in plan.counts:
            facts[key] = sum(1 for p in group if any(a.startswith(p) for a in atcs))
        for key, p in plan.days_on:
            starts = [m.since for m in case.medications if m.since is not None and m.atc.startswith(p)]
            if starts:
                facts[key] = (as_of - min(starts)).days
    return facts
