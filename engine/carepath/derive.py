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

            self._plan = _Plan(
                findings=tuple((f"f_{f}", f) for f in sorted(self.findings)),
                dx=flags("dx_", self.dx),
                on=flags("on_", self.on),
                allergy=flags("al_", self.allergy),
                counts=tuple(("n_" + "_".join(g), g) for g in sorted(self.counts)),
                days_on=tuple((f"s_{p}", p) for p in sorted(self.days_on)),
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
    """Flat facts; a key is absent when its value is unknown (never defaulted to normal)."""
    as_of = case.as_of
    facts: dict[str, object] = {"setting": case.setting}
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
    for i, (code, value, when) in enumerate(obs):
        if code in feat.observations:
            by_code.setdefault(code, []).append((when, i, value))
    for code in feat.observations:
        series = by_code.get(code)
        facts[f"h_{code}"] = int(bool(series))
        if series:
            series.sort()
            when, _, value = series[-1]
            facts[f"o_{code}"] = value
            facts[f"d_{code}"] = (as_of - when).days
            if len(series) > 1:
                facts[f"p_{code}"] = series[-2][2]
    plan = feat.plan()
    findings = set(case.findings)
    for key, f in plan.findings:
        facts[key] = int(f in findings)
    conditions = case.conditions
    for key, prefixes in plan.dx:  # a flag's arg is one prefix or several joined by '|'
        facts[key] = int(any(c.startswith(prefixes) for c in conditions))
    atcs = [m.atc for m in case.medications]
    for key, prefixes in plan.on:
        facts[key] = int(any(a.startswith(prefixes) for a in atcs))
    for key, prefixes in plan.allergy:
        facts[key] = int(any(a.startswith(prefixes) or any(q.startswith(a) for q in prefixes) for a in case.allergies))
    for key, group in plan.counts:
        facts[key] = sum(1 for p in group if any(a.startswith(p) for a in atcs))
    if case.medications:
        for key, p in plan.days_on:
            starts = [m.since for m in case.medications if m.since is not None and m.atc.startswith(p)]
            if starts:
                facts[key] = (as_of - min(starts)).days
    return facts
