"""Hypothesis strategies for valid carepath cases, built from the pathways' own vocabulary.

Everything a generated case contains is harvested from the pathways under test:

* observation values sit on, just beside and well beyond every threshold that a
  condition compares against (``sbp >= 180`` gives 170, 179, 180, 181, 190),
  and anywhere else within the dictionary's plausible range; some are sent in
  an alternative unit so conversions are exercised;
* observation dates are measured back from ``as_of`` on and beside every day
  threshold (``due(hba1c, 180)`` gives readings 179, 180 and 181 days old), so
  some are stale; any observation may be missing, and some have a previous
  reading for ``previous()``;
* medications and allergies are ATC codes completing every prefix the pathways
  mention in ``taking()``, ``allergic()``, ``count_taking()``, ``days_on()`` and
  their ``then`` recommendations;
* diagnoses come from every pathway's ``applies_to``, plus comorbidity;
* pregnancy is true, false or unknown; both settings; findings from the list.

Half of the cases are *steered*: a rule (or invariant) is picked and the case is
edited so one disjunct of its condition holds, which is how rare conjunctions
(pregnant, hypertensive, potassium recent and normal, not yet on a RAS blocker)
get generated at all. Every choice is a Hypothesis draw whose simplest value
is "missing" or "not steered", so counterexamples shrink to small, readable cases.

``cases(conditions=["I10"], pregnant=True, setting="community")`` pins fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from hypothesis import strategies as st

from .. import lang
from ..derive import rises
from ..lang import And, Cmp, Const, Enum, Expr, Flag, Not, Or, Present
from ..validate import CheckedPathway

T = TypeVar("T")
Case = dict[str, Any]
Draw = Callable[[st.SearchStrategy[T]], T]

AS_OF: Final = date(2026, 11, 24)
SETTINGS: Final = ("community", "hospital")
_DAY_BASE: Final = (0, 1, 7, 14, 30, 90, 180, 365, 400, 730)

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


_BOOL: Final = st.booleans()
_GRADE: Final = st.integers(0, 5)
_MAYBE_GRADE: Final = st.one_of(st.none(), st.integers(0, 5))
_N_READINGS: Final = st.integers(0, 2)
_ALT: Final = st.integers(0, 3)


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()
"""Leave a keyword of :func:`cases` to the generator."""


def _literals(e: Expr) -> list[lang.Literal]:
    """The literals of a condition, and those of the condition inside each consecutive_visits."""
    out: list[lang.Literal] = []
    for lit in lang.literals(e):
        out.append(lit)
        if isinstance(lit, lang.Visits) and lit.cond is not None:
            out += _literals(lit.cond)
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


def _rnd(v: float, step: float) -> float:
    digits = max(0, -math.floor(math.log10(step)))
    r = round(round(v / step) * step, digits)
    return float(int(r)) if r.is_integer() else r


def _plain(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def _satisfies(v: float, op: str, x: float) -> bool:
    return {
        "<": v < x,
        "<=": v <= x,
        ">": v > x,
        ">=": v >= x,
        "==": v == x,
        "!=": v != x,
    }[op]


@dataclass(frozen=True)
class PathwayInfo:
    """What the generator needs to know about one pathway."""

    id: str
    dx: tuple[str, ...]
    obs: tuple[str, ...]
    emergency: tuple[str, ...]
    worse_is_higher: tuple[str, ...]
    targets: tuple[Expr, ...]  # rule conditions and invariant givens (NNF): what steering aims at


@dataclass
class _Draft:
    """A case under construction; readings[code][0] is the latest (days ago, canonical value)."""

    setting: str
    conditions: list[str]
    age: int | None = None
    sex: str | None = None
    pregnant: bool | None = None
    smi: int | None = None
    readings: dict[str, list[list[float]]] = field(default_factory=dict)
    alt_unit: dict[str, str] = field(default_factory=dict)
    meds: list[list[Any]] = field(default_factory=list)  # [atc, since days ago | None]
    allergies: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


class CaseSpace:
    """The harvested vocabulary of a set of pathways, and the strategies built from it."""

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
                for lit in _literals(e):
                    if isinstance(lit, Cmp):
                        n = lit.num
                        if n.kind in ("obs", "prev"):
                            thresholds.setdefault(str(n.arg), set()).add(lit.value)
                            p_obs.append(str(n.arg))
                        elif n.kind in ("rise", "rise_pct"):  # a difference, not a value: steered by _steer_rise
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
                        elif n.kind == "after":  # a reading's date against a start: steered by _steer_after
                            p_obs.append(n.pair[0])
                            atc.update(prefixes(n.pair[1]))
                        elif n.kind in ("srise", "srise_pct"):  # steered by _steer_since_start
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
            rounded = [_rnd(min(max(v, od.lo), od.hi), step) for v in cands]
            self.values[code] = tuple(dict.fromkeys([*(v for v in rounded if od.lo <= v <= od.hi), od.lo, od.hi]))
        self.days: dict[str, tuple[int, ...]] = {}
        for code in self.obs_codes:
            ds = set(_DAY_BASE)
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
        self._cache: dict[object, st.SearchStrategy[Any]] = {}
        self._age = st.one_of(st.none(), st.sampled_from(self.fields["age"]), st.integers(0, 110))
        self._since = st.one_of(st.none(), st.sampled_from(self.since), st.integers(0, 3650))
        self._since_short = st.one_of(st.none(), st.sampled_from(self.since))

    @classmethod
    def from_directory(cls, path: Path | str | None = None) -> CaseSpace:
        from ..evaluate import Engine

        return cls(Engine.from_directory(path).pathways)

    # ------------------------------------------------------------ strategies
    def cases(
        self,
        *,
        pathway: str | None = None,
        conditions: Sequence[str] | _Any = ANY,
        pregnant: bool | _Any | None = ANY,
        setting: str | _Any = ANY,
        findings: Sequence[str] | _Any = ANY,
        steer: bool = True,
    ) -> st.SearchStrategy[Case]:
        """Valid cases; keywords pin a field, ``pathway`` enrols (and steers) the cases into one pathway."""
        if pathway is not None and pathway not in self.pathways:
            raise ValueError(f"unknown pathway {pathway!r}; known: {', '.join(sorted(self.pathways))}")
        if not isinstance(setting, _Any) and setting not in SETTINGS:
            raise ValueError(f"setting is one of {SETTINGS}, not {setting!r}")

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            info = self.pathways[pathway] if pathway is not None else None
            if info is None and self.pathways:
                info = draw(self._sample(sorted(self.pathways.values(), key=lambda i: i.id)))
            d = self._base(draw, info, conditions, pregnant, setting, findings)
            if steer and info is not None and info.targets and draw(_BOOL):
                self._steer(draw, d, draw(self._sample(info.targets)), conditions, pregnant, setting)
            return self.emit(d)

        return build()

    def steered(
        self,
        expr: Expr,
        *,
        pathway: str | None = None,
        conditions: Sequence[str] | _Any = ANY,
        pregnant: bool | _Any | None = ANY,
        setting: str | _Any = ANY,
    ) -> st.SearchStrategy[Case]:
        """Cases edited so that one disjunct of ``expr`` holds (best effort): for ``given`` of an invariant."""
        target = lang.nnf(expr)

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            info = self.pathways[pathway] if pathway is not None else None
            d = self._base(draw, info, conditions, pregnant, setting, ANY)
            self._steer(draw, d, target, conditions, pregnant, setting)
            return self.emit(d)

        return build()

    # ------------------------------------------------------------ pieces
    def _sample(self, items: Sequence[T]) -> st.SearchStrategy[T]:
        key = tuple((type(x).__name__, x) for x in items)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = st.sampled_from(tuple(items))
        return got

    def value(self, code: str) -> st.SearchStrategy[float]:
        key = ("value", code)
        got = self._cache.get(key)
        if got is None:
            od = self.vocab.observations[code]
            step = self.steps.get(code, 0.1)
            lo, hi = math.ceil(od.lo / step), math.floor(od.hi / step)
            got = self._cache[key] = st.one_of(self._sample(self.values[code]), st.integers(lo, hi).map(lambda k: _rnd(k * step, step)))
        return got

    def _days(self, code: str) -> st.SearchStrategy[int]:
        key = ("days", code)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = st.one_of(self._sample(self.days.get(code, _DAY_BASE)), st.integers(0, 1500))
        return got

    def _list(self, items: Sequence[str], n: int) -> st.SearchStrategy[list[str]]:
        key = ("list", n, tuple(items))
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = st.lists(st.sampled_from(tuple(items)), max_size=n, unique=True)
        return got

    def _reading(self, draw: st.DrawFn, code: str) -> list[float]:
        return [float(draw(self._days(code))), draw(self.value(code))]

    def _base(
        self,
        draw: st.DrawFn,
        info: PathwayInfo | None,
        conditions: Sequence[str] | _Any,
        pregnant: bool | _Any | None,
        setting: str | _Any,
        findings: Sequence[str] | _Any,
    ) -> _Draft:
        s = draw(self._sample(SETTINGS)) if isinstance(setting, _Any) else setting
        if isinstance(conditions, _Any):
            conds: list[str] = []
            if info is not None and info.dx and draw(self._sample([True, True, True, False])):
                conds.append(draw(self._sample([c for p in info.dx for c in complete_icd(p)])))
            conds += draw(self._list(self.icd_codes, 2))
            conds = list(dict.fromkeys(conds))
        else:
            conds = list(conditions)
        d = _Draft(setting=s, conditions=conds)
        d.age = draw(self._age)
        d.sex = draw(self._sample([None, "female", "male", "other", "unknown"]))
        d.pregnant = draw(self._sample([None, False, True])) if isinstance(pregnant, _Any) else pregnant
        if d.pregnant and d.sex == "male":
            d.sex = "female"
        d.smi = draw(_MAYBE_GRADE)
        own = info.obs if info is not None else ()
        for code in dict.fromkeys([*own, *self.obs_codes]):
            n = draw(_N_READINGS)
            if n == 0:
                continue
            latest = self._reading(draw, code)
            rs = [latest]
            if n == 2:
                rs.append([latest[0] + draw(self._sample([0, 1, 7, 14, 30, 90, 365])), draw(self.value(code))])
            d.readings[code] = rs
            od = self.vocab.observations[code]
            if od.conversions and draw(_ALT) == 3:
                d.alt_unit[code] = draw(self._sample(sorted(od.conversions)))
        for atc in draw(self._list(self.med_codes, 4)) if self.med_codes else []:
            d.meds.append([atc, draw(self._since)])
        if self.allergy_codes:
            d.allergies = draw(self._list(self.allergy_codes, 2))
        if isinstance(findings, _Any):
            d.findings = draw(self._list(self.findings, 3)) if self.findings else []
        else:
            d.findings = list(findings)
        return d

    def _pick(self, draw: st.DrawFn, cands: Iterable[float], op: str, x: float) -> float | None:
        ok = sorted({c for c in cands if _satisfies(c, op, x)})
        return draw(self._sample(ok)) if ok else None

    def _steer(
        self,
        draw: st.DrawFn,
        d: _Draft,
        target: Expr,
        conditions: Sequence[str] | _Any,
        pregnant: bool | _Any | None,
        setting: str | _Any,
    ) -> None:
        """Edit the draft until ``target`` (NNF) holds, best effort: a walk that keeps what is already true,
        picks one branch of a false OR, and gives an AND a second pass to repair items a later edit broke."""

        def make_true(e: Expr, depth: int = 0) -> None:
            if self.truth(d, e) is True or depth > 40:
                return
            if isinstance(e, And):
                for _ in range(2):
                    for i in e.items:
                        make_true(i, depth + 1)
            elif isinstance(e, Or):
                make_true(draw(self._sample(e.items)), depth + 1)
            elif not isinstance(e, (Const, Not)):
                self._apply(draw, d, e, conditions, pregnant, setting)

        make_true(target)

    def truth(self, d: _Draft, e: Expr) -> lang.Truth:
        """Kleene truth of an NNF expression on a draft (mirrors derive + eval3, without validating)."""
        if isinstance(e, And):
            return lang.all3(self.truth(d, i) for i in e.items)
        if isinstance(e, Or):
            return lang.any3(self.truth(d, i) for i in e.items)
        if isinstance(e, Not):
            t = self.truth(d, e.item)
            return None if t is None else not t
        if isinstance(e, Const):
            return e.value
        if isinstance(e, Cmp):
            v = self._num(d, e.num)
            return None if v is None else _satisfies(v, e.op, e.value)
        if isinstance(e, Enum):
            val = d.setting if e.field == "setting" else (d.sex if d.sex != "unknown" else None)
            return None if val is None else val in e.values
        if isinstance(e, Flag):
            ps = prefixes(e.arg)
            b: bool | None
            if e.kind == "pregnant":
                b = d.pregnant
            elif e.kind == "finding":
                b = e.arg in d.findings
            elif e.kind == "dx":
                b = any(c.startswith(ps) for c in d.conditions)
            elif e.kind == "on":
                b = any(str(m[0]).startswith(ps) for m in d.meds)
            elif e.kind in ("site", "visits"):  # the site is the engine's; visits are worked out by derive
                return None
            else:
                b = any(a.startswith(ps) or any(q.startswith(a) for q in ps) for a in d.allergies)
            return None if b is None else b == e.value
        if e.kind == "obs":
            has = bool(d.readings.get(e.name))
        else:
            has = {"age": d.age, "sex": d.sex if d.sex != "unknown" else None, "pregnant": d.pregnant, "smi_risk_grade": d.smi}[
                e.name
            ] is not None
        return has == e.value

    def _num(self, d: _Draft, n: lang.Num) -> float | None:
        if n.kind in ("rise", "rise_pct"):
            rs = d.readings.get(str(n.arg)) or []
            if len(rs) < 2:
                return None
            rise, pct = rises(rs[1][1], rs[0][1])
            return rise if n.kind == "rise" else pct
        if n.kind in ("obs", "prev", "days"):
            rs = d.readings.get(str(n.arg)) or []
            if n.kind == "days":
                return rs[0][0] if rs else None
            i = 0 if n.kind == "obs" else 1
            return rs[i][1] if len(rs) > i else None
        if n.kind == "field":
            return {"age": d.age, "smi_risk_grade": d.smi}.get(str(n.arg))
        if n.kind in ("srise", "srise_pct"):
            return self._since_start(d, n)
        if n.kind == "after":
            rs = d.readings.get(n.pair[0]) or []
            on = self._num(d, lang.Num("days_on", n.pair[1]))
            return None if on is None or not rs else on - rs[0][0]
        if n.kind == "count":  # each class: a code, or a code set's members joined by |
            return float(sum(1 for g in n.arg if any(str(m[0]).startswith(prefixes(g)) for m in d.meds)))
        starts = [m[1] for m in d.meds if str(m[0]).startswith(prefixes(str(n.arg)))]
        if not starts or None in starts:  # the latest start, unknown if any matching drug has no start
            return None
        return float(min(x for x in starts if x is not None))

    def _apply(
        self,
        draw: st.DrawFn,
        d: _Draft,
        lit: lang.Literal,
        conditions: Sequence[str] | _Any,
        pregnant: bool | _Any | None,
        setting: str | _Any,
    ) -> None:
        """Edit the draft so one literal holds."""
        if isinstance(lit, Cmp):
            self._steer_cmp(draw, d, lit)
        elif isinstance(lit, Enum):
            if lit.field == "setting":
                if isinstance(setting, _Any) and lit.values:
                    d.setting = draw(self._sample(sorted(lit.values)))
            elif lit.field == "sex" and lit.values:
                d.sex = draw(self._sample(sorted(lit.values)))
        elif isinstance(lit, lang.Visits) and lit.value and lit.cond is not None:
            self._steer_visits(draw, d, lit, conditions, pregnant, setting)
        elif isinstance(lit, Flag):
            self._steer_flag(draw, d, lit, conditions, pregnant)
        elif isinstance(lit, Present):
            self._steer_present(draw, d, lit, pregnant)

    def _steer_visits(
        self,
        draw: st.DrawFn,
        d: _Draft,
        lit: lang.Visits,
        conditions: Sequence[str] | _Any,
        pregnant: bool | _Any | None,
        setting: str | _Any,
    ) -> None:
        """consecutive_visits(N, COND, apart D, since SET): COND made true on the latest readings, then
        those readings repeated at N-1 earlier visits D (or a little more) days apart, all after a
        start of a drug of SET placed before the earliest one (the latest visit stays current)."""
        assert lit.cond is not None
        self._steer(draw, d, lang.nnf(lit.cond), conditions, pregnant, setting)
        codes = sorted({str(x.num.arg) for x in _literals(lit.cond) if isinstance(x, Cmp) and x.num.kind == "obs"})
        codes = [c for c in codes if d.readings.get(c)]
        if not codes:
            return
        day = min(d.readings[c][0][0] for c in codes)
        windows = [w for c in codes if (w := self.vocab.observations[c].current) is not None]
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
                d.meds.append([draw(self._sample(complete_atc(draw(self._sample(ps))))), start])

    def _steer_rise(self, draw: st.DrawFn, d: _Draft, lit: Cmp) -> None:
        """Two readings whose difference (latest minus previous; for rise_pct, as a percentage of the
        previous) makes ``rise(code) op x`` or ``rise_pct(code) op x`` hold."""
        code, op, x = str(lit.num.arg), lit.op, lit.value
        if code not in self.vocab.observations:
            return
        od = self.vocab.observations[code]
        rs = d.readings.setdefault(code, [])
        if not rs:
            rs.append(self._reading(draw, code))
        if len(rs) < 2:
            rs.append([rs[0][0] + draw(self._sample([1, 7, 30])), draw(self.value(code))])
        step = self.steps.get(code, 0.1)
        if lit.num.kind == "rise_pct":
            pct = self._pick(draw, [0.0, x - 5, x - 1, x, x + 1, x + 5], op, x)
            if pct is None or rs[1][1] <= 0:
                return
            delta = rs[1][1] * pct / 100.0
            # rounded to the value's step the percentage can slip past x: step it outward until it holds
            for _ in range(1000):
                latest = _rnd(rs[1][1] + delta, step)
                if not od.lo <= latest <= od.hi:
                    return
                pct = rises(rs[1][1], latest)[1]
                if pct is not None and _satisfies(pct, op, x):
                    rs[0][1] = latest
                    return
                delta += step if op in (">", ">=") else -step
            return
        v = self._pick(draw, [0.0, x - 10 * step, x - step, x, x + step, x + 10 * step], op, x)
        if v is None:
            return
        if od.lo <= rs[1][1] + v <= od.hi:
            rs[0][1] = _rnd(rs[1][1] + v, step)
        elif od.lo <= rs[0][1] - v <= od.hi:
            rs[1][1] = _rnd(rs[0][1] - v, step)

    def _harvest(self, code: str, *values: float) -> None:
        """Candidate values for an observation read only by an invariant's given: made lazily."""
        if code not in self.values:
            self.values[code] = values
            self.steps[code] = 0.1

    def _taking(self, draw: st.DrawFn, d: _Draft, prefixes: tuple[str, ...]) -> list[list[Any]]:
        """The draft's drugs matching any of the ATC prefixes; one is added when there is none."""
        mine = [m for m in d.meds if str(m[0]).startswith(prefixes)]
        if not mine:
            prefix = prefixes[0] if len(prefixes) == 1 else draw(self._sample(prefixes))
            mine = [[draw(self._sample(complete_atc(prefix))), None]]
            d.meds.append(mine[0])
        return mine

    @staticmethod
    def _since_start(d: _Draft, n: lang.Num) -> float | None:
        """rise(_pct)_since_start on a draft, as derive computes it on the emitted case (which lists
        a code's readings oldest first, so of two on the same day the first in the draft is later)."""
        code, *prefixes = n.started
        rs = d.readings.get(code) or []
        starts = [m[1] for m in d.meds if str(m[0]).startswith(tuple(prefixes))]
        if not starts or None in starts or len(rs) < 2:  # a drug with no start: no known baseline
            return None
        start = max(x for x in starts if x is not None)  # days ago of the earliest start
        chron = [r for _, r in sorted(enumerate(rs), key=lambda t: (-t[1][0], -t[0]))]  # oldest first
        latest = chron[-1]
        if latest[0] >= start:  # no reading after the start
            return None
        base = next((r for r in reversed(chron) if r[0] >= start), None)
        if base is None:
            return None
        rise, pct = rises(base[1], latest[1])
        return rise if n.kind == "srise" else pct

    def _steer_since_start(self, draw: st.DrawFn, d: _Draft, lit: Cmp) -> None:
        """A drug of the class started S days ago, a baseline reading on or before that day, the latest
        after it, sometimes a reading in between (so that the baseline is not the previous reading)
        and every other reading older than the baseline; then the baseline and the latest steered as
        rise() steers two readings."""
        code, *prefixes = lit.num.started
        if code not in self.vocab.observations:
            return
        mine = self._taking(draw, d, tuple(prefixes))
        start = int(draw(self._sample([s for s in self.since if s >= 1] or [28])))
        for m in mine:
            m[1] = start
        rs = d.readings.setdefault(code, [])
        while len(rs) < 2:
            self._harvest(code, self.vocab.observations[code].lo, self.vocab.observations[code].hi)
            rs.append(self._reading(draw, code))
        latest, base = rs[0], rs[1]
        latest[0] = float(draw(self._sample([0, start // 2, start - 1])))
        base[0] = float(start + draw(self._sample([0, 7, 30])))
        for r in rs[2:]:
            r[0] = max(r[0], base[0])
        between = latest[0] + 1 < start and draw(_BOOL)
        kind = "rise" if lit.num.kind == "srise" else "rise_pct"
        d.readings[code] = [latest, base]  # _steer_rise edits the values of the first two readings
        try:
            self._steer_rise(draw, d, Cmp(lang.Num(kind, code), lit.op, lit.value, lit.unit, lit.span))
        finally:
            d.readings[code] = rs
        if between:  # on treatment, halfway in time and value: rise() alone now sees only part of it
            step = self.steps.get(code, 0.1)
            mid = [float((latest[0] + start) // 2), _rnd((base[1] + latest[1]) / 2, step)]
            rs.insert(1, mid)

    def _steer_after(self, draw: st.DrawFn, d: _Draft, lit: Cmp) -> None:
        """days_after_start(code, ATC) op x: the latest reading dated that many days after the
        latest start of a matching drug (negative: before it), keeping both on or before as_of."""
        code, prefix = lit.num.pair
        if code not in self.vocab.observations:
            return
        v = self._pick(draw, [-30, -1, 0, 1, 7, lit.value - 1, lit.value, lit.value + 1], lit.op, lit.value)
        if v is None:
            return
        mine = self._taking(draw, d, prefixes(prefix))  # a code set: its ATC prefixes joined by "|"
        rs = d.readings.setdefault(code, [])
        if not rs:
            self._harvest(code, self.vocab.observations[code].lo, self.vocab.observations[code].hi)
            rs.append(self._reading(draw, code))
        on = int(draw(self._sample(self.since)))
        if on - v < 0:  # the reading would be after as_of: start the drug earlier
            on = int(v)
        for m in mine:
            m[1] = on  # every matching drug started that day, so the latest start is the one steered
        rs[0][0] = on - v
        for r in rs[1:]:
            r[0] = max(r[0], on - v)

    def _steer_cmp(self, draw: st.DrawFn, d: _Draft, lit: Cmp) -> None:
        n, op, x = lit.num, lit.op, lit.value
        if n.kind in ("rise", "rise_pct"):
            self._steer_rise(draw, d, lit)
        elif n.kind == "after":
            self._steer_after(draw, d, lit)
        elif n.kind in ("srise", "srise_pct"):
            self._steer_since_start(draw, d, lit)
        elif n.kind in ("obs", "prev", "days"):
            code = str(n.arg)
            if code not in self.vocab.observations:
                return
            self._harvest(code, x)
            rs = d.readings.setdefault(code, [])
            if not rs:
                rs.append(self._reading(draw, code))
            od = self.vocab.observations[code]
            if od.current is not None and rs[0][0] > od.current and draw(st.integers(0, 7)) < 7:
                rs[0][0] = float(draw(st.integers(0, od.current)))  # mostly a current reading (a stale one is unknown)
            if n.kind == "prev" and len(rs) < 2:
                rs.append([rs[0][0] + draw(self._sample([0, 7, 30])), draw(self.value(code))])
            step = self.steps[code]
            if n.kind == "days":
                v = self._pick(draw, [*self.days.get(code, _DAY_BASE), x - 1, x, x + 1], op, x)
                if v is not None and v >= 0:
                    rs[0][0] = v
                    for r in rs[1:]:
                        r[0] = max(r[0], v)
                return
            cands = [c for c in (*self.values[code], _rnd(x - step, step), x, _rnd(x + step, step)) if od.lo <= c <= od.hi]
            v = self._pick(draw, cands, op, x)
            if v is not None:
                rs[0 if n.kind == "obs" else 1][1] = v
        elif n.kind == "field":
            name = str(n.arg)
            lo, hi = lang.NUMERIC_FIELDS.get(name, (0.0, 130.0))
            v = self._pick(draw, [c for c in (*self.fields.get(name, ()), x - 1, x, x + 1) if lo <= c <= hi], op, x)
            if v is not None:
                if name == "age":
                    d.age = int(v)
                elif name == "smi_risk_grade":
                    d.smi = int(v)
        elif n.kind == "count":
            assert isinstance(n.arg, tuple)
            group = list(n.arg)
            k = self._pick(draw, range(len(group) + 1), op, x)
            if k is None:
                return
            chosen = draw(st.permutations(group))[: int(k)]
            d.meds = [m for m in d.meds if not any(str(m[0]).startswith(prefixes(g)) for g in group)]
            for g in chosen:
                d.meds.append([draw(self._sample(complete_atc(draw(self._sample(prefixes(g)))))), None])
        elif n.kind == "days_on":
            v = self._pick(draw, [*self.since, x - 1, x, x + 1], op, x)
            if v is None or v < 0:
                return
            mine = self._taking(draw, d, prefixes(str(n.arg)))
            for m in mine:
                m[1] = int(v)

    def _steer_flag(self, draw: st.DrawFn, d: _Draft, lit: Flag, conditions: Sequence[str] | _Any, pregnant: bool | _Any | None) -> None:
        ps = prefixes(lit.arg)
        a = draw(self._sample(ps)) if lit.value and len(ps) > 1 else ps[0]
        if lit.kind == "pregnant":
            if isinstance(pregnant, _Any):
                d.pregnant = lit.value
                if lit.value and d.sex == "male":
                    d.sex = "female"
        elif lit.kind == "finding":
            if lit.value and a not in d.findings:
                d.findings.append(a)
            elif not lit.value:
                d.findings = [f for f in d.findings if f != a]
        elif lit.kind == "dx":
            if not isinstance(conditions, _Any):
                return
            if lit.value and not any(c.startswith(ps) for c in d.conditions):
                d.conditions.append(draw(self._sample(complete_icd(a))))
            elif not lit.value:
                d.conditions = [c for c in d.conditions if not c.startswith(ps)]
        elif lit.kind == "on":
            if lit.value and not any(str(m[0]).startswith(ps) for m in d.meds):
                d.meds.append([draw(self._sample(complete_atc(a))), draw(self._since_short)])
            elif not lit.value:
                d.meds = [m for m in d.meds if not str(m[0]).startswith(ps)]
        elif lit.kind == "allergy":
            if lit.value and not any(x.startswith(ps) or any(q.startswith(x) for q in ps) for x in d.allergies):
                d.allergies.append(draw(self._sample([a, *complete_atc(a)])))
            elif not lit.value:
                d.allergies = [x for x in d.allergies if not (x.startswith(ps) or any(q.startswith(x) for q in ps))]

    def _steer_present(self, draw: st.DrawFn, d: _Draft, lit: Present, pregnant: bool | _Any | None) -> None:
        if lit.kind == "obs":
            if lit.name not in self.vocab.observations:
                return
            if lit.value and lit.name not in d.readings and lit.name in self.values:
                d.readings[lit.name] = [self._reading(draw, lit.name)]
            elif not lit.value:
                d.readings.pop(lit.name, None)
            return
        if lit.name == "age":
            d.age = (d.age if d.age is not None else draw(self._sample(self.fields["age"]))) if lit.value else None
        elif lit.name == "sex":
            d.sex = (d.sex if d.sex not in (None, "unknown") else draw(self._sample(["female", "male"]))) if lit.value else None
        elif lit.name == "smi_risk_grade":
            d.smi = (d.smi if d.smi is not None else draw(_GRADE)) if lit.value else None
        elif lit.name == "pregnant" and isinstance(pregnant, _Any):
            d.pregnant = (d.pregnant if d.pregnant is not None else draw(_BOOL)) if lit.value else None

    # ------------------------------------------------------------ output
    def emit(self, d: _Draft) -> Case:
        """The draft as case-contract JSON (observations oldest first)."""
        case: Case = {"patient_id": "generated", "as_of": self.as_of.isoformat(), "setting": d.setting}
        if d.age is not None:
            case["age"] = d.age
        if d.sex is not None:
            case["sex"] = d.sex
        if d.pregnant is not None:
            case["pregnant"] = d.pregnant
        case["conditions"] = list(d.conditions)
        observations: list[dict[str, Any]] = []
        for code, rs in d.readings.items():
            od = self.vocab.observations[code]
            for days_ago, v in reversed(rs):
                unit = d.alt_unit.get(code, od.unit)
                value: float = v
                if unit != od.unit:
                    factor, offset = od.conversions[unit]
                    value = round((v - offset) / factor, 4)
                    back = od.to_canonical(value, unit)
                    if back is None or not od.lo <= back <= od.hi:
                        unit, value = od.unit, v
                observations.append(
                    {"code": code, "value": _plain(value), "unit": unit, "date": (self.as_of - timedelta(days=int(days_ago))).isoformat()}
                )
        case["observations"] = observations
        meds = []
        for atc, since in d.meds:
            m: dict[str, Any] = {"atc": atc}
            if atc in ATC_NAMES:
                m["name"] = ATC_NAMES[atc]
            if since is not None:
                m["since"] = (self.as_of - timedelta(days=int(since))).isoformat()
            meds.append(m)
        case["medications"] = meds
        case["allergies"] = list(d.allergies)
        case["findings"] = list(d.findings)
        if d.smi is not None:
            case["smi_risk_grade"] = d.smi
        return case


# ---------------------------------------------------------------- module-level default space

_default_dir: Path | str | None = None
_default_space: CaseSpace | None = None


def set_default_pathways(path: Path | str | None) -> None:
    """Point :func:`cases` at a pathway directory (the pytest plugin does this from --carepath-pathways)."""
    global _default_dir, _default_space
    _default_dir, _default_space = path, None


def default_space() -> CaseSpace:
    global _default_space
    if _default_space is None:
        _default_space = CaseSpace.from_directory(_default_dir)
    return _default_space


def cases(
    *,
    pathway: str | None = None,
    conditions: Sequence[str] | _Any = ANY,
    pregnant: bool | _Any | None = ANY,
    setting: str | _Any = ANY,
    findings: Sequence[str] | _Any = ANY,
    space: CaseSpace | None = None,
) -> st.SearchStrategy[Case]:
    """Valid cases over the bundled pathways (or ``space``); e.g. ``cases(conditions=["I10"], pregnant=True)``.

    The pathways are loaded on the first draw, so this is safe to call at import time in a test module.
    """
    return st.deferred(
        lambda: (space or default_space()).cases(
            pathway=pathway, conditions=conditions, pregnant=pregnant, setting=setting, findings=findings
        )
    )
