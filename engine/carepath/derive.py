"""Derive the flat facts that rules read from a validated case, measured from ``as_of``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from . import lang
from .case import Case


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

    def add(self, expr: lang.Expr) -> None:
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
    findings = set(case.findings)
    for f in feat.findings:
        facts[f"f_{f}"] = int(f in findings)
    for p in feat.dx:  # a flag's arg is one prefix or several joined by '|'
        prefixes = tuple(p.split("|"))
        facts[f"dx_{lang.sanitize(p)}"] = int(any(c.startswith(prefixes) for c in case.conditions))
    atcs = [m.atc for m in case.medications]
    for p in feat.on:
        prefixes = tuple(p.split("|"))
        facts[f"on_{lang.sanitize(p)}"] = int(any(a.startswith(prefixes) for a in atcs))
    for p in feat.allergy:
        prefixes = tuple(p.split("|"))
        facts[f"al_{lang.sanitize(p)}"] = int(any(a.startswith(prefixes) or any(q.startswith(a) for q in prefixes) for a in case.allergies))
    for group in feat.counts:
        facts["n_" + "_".join(group)] = sum(1 for p in group if any(a.startswith(p) for a in atcs))
    for p in feat.days_on:
        starts = [m.since for m in case.medications if m.atc.startswith(p) and m.since is not None]
        if starts:
            facts[f"s_{p}"] = (as_of - min(starts)).days
    return facts
