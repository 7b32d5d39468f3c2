"""What the pathways under test mention, harvested once: the values, days, codes and findings that
matter to their conditions, from which :mod:`.draws` and :mod:`.steer` draw cases.

* observation values sit on, just beside and well beyond every threshold that a condition compares
  against (``sbp >= 180`` gives 170, 179, 180, 181, 190), plus the dictionary's plausible range;
* observation ages (days before ``as_of``) sit on and beside every day threshold and recency window;
* ATC codes complete every prefix named by ``taking()``, ``allergic()``, ``count_taking()``,
  ``days_on()``, the start-relative functions and the ``then`` recommendations; ICD-10 codes complete
  every ``diagnosed()`` prefix, plus comorbidity;
* each pathway's own observations and its steering *targets* (rule conditions and invariant givens,
  in NNF).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

from .. import lang
from ..lang import Cmp, Expr, Flag, Present
from ..validate import CheckedPathway

AS_OF: Final = date(2026, 11, 24)
DAY_BASE: Final = (0, 1, 7, 14, 30, 90, 180, 365, 400, 730)

# Realistic full ATC codes used to complete class prefixes (and their names).
ATC_NAMES: Final[dict[str, str]] = {
    "C09AA02": "enalapril",
    "C09AA05": "ramipril",
    "C09CA01": "losartan",
    "C09CA03": "valsartan",
    "C09XA02": "aliskiren",
    "C08CA01": "amlodipine",
    "C03AA03": "hydrochlorothiazide",
    "C03BA11": "indapamide",
    "C03DA01": "spironolactone",
    "C07AB02": "metoprolol",
    "C07AA05": "propranolol",
    "C10AA05": "atorvastatin",
    "B01AC06": "aspirin",
    "A10BA02": "metformin",
    "A10BB09": "gliclazide",
    "A10BX02": "repaglinide",
    "A10BK01": "dapagliflozin",
    "A10BK03": "empagliflozin",
    "A10BJ02": "liraglutide",
    "A10BH01": "sitagliptin",
    "A10AE04": "insulin glargine",
    "A10AB05": "insulin aspart",
    "N05AH02": "clozapine",
    "N05AH03": "olanzapine",
    "N05AH04": "quetiapine",
    "N05AX08": "risperidone",
    "N05AD01": "haloperidol",
    "N05AN01": "lithium",
    "N03AG01": "valproic acid",
    "N06AB06": "sertraline",
    "M01AE01": "ibuprofen",
}
COMORBIDITY: Final = ("E78.5", "J45.9", "N18.3", "I25.1", "E66.9")


def literals(e: Expr) -> list[lang.Literal]:
    """The literals of a condition, and those of the condition inside each consecutive_visits."""
    out: list[lang.Literal] = []
    for lit in lang.literals(e):
        out.append(lit)
        if isinstance(lit, lang.Visits) and lit.cond is not None:
            out += literals(lit.cond)
    return out


def prefixes(arg: str) -> tuple[str, ...]:
    """The codes of a dx/on/allergy flag (one prefix, or several joined by '|')."""
    return tuple(arg.split("|"))


def complete_atc(prefix: str) -> list[str]:
    """Full ATC codes starting with ``prefix``: known drugs first, else the prefix padded to 7 characters."""
    known = [c for c in ATC_NAMES if c.startswith(prefix)]
    if known:
        return known
    if len(prefix) >= 7:
        return [prefix]
    pad = "A01AA01"  # level shapes: L NN L L NN
    return [prefix + pad[len(prefix) :]]


def complete_icd(prefix: str) -> list[str]:
    """Valid case ICD-10 codes starting with ``prefix`` (``F2`` -> ``F20``; ``E11`` -> ``E11``, ``E11.9``)."""
    base = prefix.split(".")[0]
    base = (base + "00")[:3] if len(base) < 3 else base
    if "." in prefix:
        return [prefix]
    return [base, base + ".9"]


def _step(od: lang.ObsDef, thresholds: Iterable[float]) -> float:
    ts = list(thresholds)
    if od.hi - od.lo >= 40 and all(float(t).is_integer() for t in ts):
        return 1.0
    if od.hi - od.lo <= 2:
        return 0.01
    return 0.1


def rnd(v: float, step: float) -> float:
    """``v`` rounded to a multiple of ``step`` (an int-valued float when whole)."""
    digits = max(0, -math.floor(math.log10(step)))
    r = round(round(v / step) * step, digits)
    return float(int(r)) if r.is_integer() else r


@dataclass(frozen=True)
class PathwayInfo:
    """What the generator needs to know about one pathway."""

    id: str
    dx: tuple[str, ...]
    obs: tuple[str, ...]
    emergency: tuple[str, ...]
    worse_is_higher: tuple[str, ...]
    targets: tuple[Expr, ...]  # rule conditions and invariant givens (NNF): what steering aims at


class Harvest:
    """The vocabulary of a set of pathways: what their conditions compare, count and name."""

    def __init__(self, pathways: Sequence[CheckedPathway], as_of: date = AS_OF) -> None:
        self.as_of = as_of
        obs: dict[str, lang.ObsDef] = {}
        findings: set[str] = set()
        for p in pathways:
            obs.update(p.vocab.observations)
            findings |= p.vocab.findings
        self.vocab = lang.Vocabulary(obs, frozenset(findings))
        thresholds: dict[str, set[float]] = {}
        days: dict[str, set[float]] = {}
        fields: dict[str, set[float]] = {"age": {18, 25, 40, 50, 65, 80}, "smi_risk_grade": set(range(6))}
        since: set[float] = {0, 7, 28, 90, 365}
        atc: set[str] = set()
        icd: set[str] = set()
        used_findings: set[str] = set()
        self.pathways: dict[str, PathwayInfo] = {}
        for p in pathways:
            exprs: list[Expr] = [p.applies, *(r.when for r in p.rules), *(g for _, g in p.invariants)]
            p_obs: list[str] = []
            for e in exprs:
                for lit in literals(e):
                    if isinstance(lit, Cmp):
                        n = lit.num
                        if n.kind in ("obs", "prev"):
                            thresholds.setdefault(str(n.arg), set()).add(lit.value)
                            p_obs.append(str(n.arg))
                        elif n.kind in ("rise", "rise_pct"):  # a difference, not a value: steered by steer_rise
                            p_obs.append(str(n.arg))
                        elif n.kind == "days":
                            days.setdefault(str(n.arg), set()).add(lit.value)
                            p_obs.append(str(n.arg))
                        elif n.kind == "field":
                            fields.setdefault(str(n.arg), set()).add(lit.value)
                        elif n.kind == "count":  # each class a code, or a code set's members joined by |
                            atc.update(p for g in n.arg for p in prefixes(g))
                        elif n.kind == "days_on":
                            atc.update(prefixes(str(n.arg)))
                            since.add(lit.value)
                        elif n.kind == "after":  # a reading's date against a start: steered by steer_after
                            p_obs.append(n.pair[0])
                            atc.update(prefixes(n.pair[1]))
                        elif n.kind in ("srise", "srise_pct"):  # steered by steer_since_start
                            p_obs.append(n.started[0])
                            atc.update(n.started[1:])
                    elif isinstance(lit, Present) and lit.kind == "obs":
                        p_obs.append(lit.name)
                    elif isinstance(lit, lang.Visits):
                        atc.update(lit.since)
                        since.update((1.0, 14.0, 30.0, 90.0))  # starts before and between the visits
                    elif isinstance(lit, Flag):
                        if lit.kind in ("on", "allergy"):
                            atc.update(prefixes(lit.arg))
                        elif lit.kind == "dx":
                            icd.update(prefixes(lit.arg))
                        elif lit.kind == "finding":
                            used_findings.add(lit.arg)
            for cr in p.rules:  # as checked: a recommendation naming a code set is one per member
                for rec in cr.rule.then:
                    if rec.kind == "medication":
                        atc.add(rec.atc)
            p_obs.extend(o for o in p.model.worse_is_higher if o in obs)
            used_findings |= set(p.model.emergency_findings)
            dx = tuple(
                sorted({a for lit in lang.literals(p.applies) if isinstance(lit, Flag) and lit.kind == "dx" for a in prefixes(lit.arg)})
            )
            targets = [lang.nnf(r.condition) for r in p.rules]
            targets += [lang.nnf(lang.conj(p.applies, g)) for _, g in p.invariants]
            self.pathways[p.id] = PathwayInfo(
                id=p.id,
                dx=dx,
                obs=tuple(dict.fromkeys(p_obs)),
                emergency=tuple(p.model.emergency_findings),
                worse_is_higher=tuple(o for o in p.model.worse_is_higher if o in obs),
                targets=tuple(targets),
            )
        self.obs_codes = tuple(dict.fromkeys(o for info in self.pathways.values() for o in info.obs))
        self.steps: dict[str, float] = {}
        self.values: dict[str, tuple[float, ...]] = {}
        for code in self.obs_codes:
            od = obs[code]
            ts = sorted(thresholds.get(code, set()))
            step = _step(od, ts)
            self.steps[code] = step
            cands: list[float] = []
            for t in ts:
                cands += [t, t - step, t + step, t - 10 * step, t + 10 * step]
            cands += [od.lo, od.hi]
            rounded = [rnd(min(max(v, od.lo), od.hi), step) for v in cands]
            self.values[code] = tuple(dict.fromkeys([*(v for v in rounded if od.lo <= v <= od.hi), od.lo, od.hi]))
        self.days: dict[str, tuple[int, ...]] = {}
        for code in self.obs_codes:
            ds = set(DAY_BASE)
            for d in days.get(code, set()):
                ds |= {int(d) - 1, int(d), int(d) + 1}
            window = self.vocab.observations[code].current
            if window is not None:  # a value on the last day it is current, and the day after
                ds |= {window - 1, window, window + 1}
            self.days[code] = tuple(sorted(d for d in ds if d >= 0))
        self.fields = {k: tuple(sorted({int(min(max(v + dv, 0), 130)) for v in vs for dv in (-1, 0, 1)})) for k, vs in fields.items()}
        self.fields["smi_risk_grade"] = tuple(v for v in self.fields["smi_risk_grade"] if 0 <= v <= 5)
        self.since = tuple(sorted({int(max(d + dv, 0)) for d in since for dv in (-1, 0, 1)}))
        self.atc_prefixes = tuple(sorted(atc))
        meds: list[str] = []
        for a in self.atc_prefixes:
            meds += complete_atc(a)
        meds += ["B01AC06", "C10AA05"]
        self.med_codes = tuple(dict.fromkeys(meds))
        self.allergy_codes = tuple(dict.fromkeys([*self.atc_prefixes, *self.med_codes]))
        dx_codes: list[str] = []
        for prefix in sorted(icd):
            dx_codes += complete_icd(prefix)
        self.icd_codes = tuple(dict.fromkeys([*dx_codes, *COMORBIDITY]))
        ordered = sorted(used_findings) + sorted(findings - used_findings)
        self.findings = tuple(ordered)

    def add_values(self, code: str, *values: float) -> None:
        """Candidate values for an observation read only by an invariant's given: made lazily."""
        if code not in self.values:
            self.values[code] = values
            self.steps[code] = 0.1
