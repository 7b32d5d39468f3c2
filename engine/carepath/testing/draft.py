"""A case under construction (:class:`Draft`): what a condition means on it (:func:`truth`) and the
case-contract JSON it becomes (:func:`to_case`).

A draft keeps what steering edits in the shape steering edits it: readings as (days ago, canonical
value), newest first; drugs as (ATC, start in days ago or None). Its truth is the engine's reference
evaluator (``lang.eval3``) applied to facts read straight off the draft (:func:`facts`), which
approximate what ``derive`` would compute on the emitted case without validating it: recency
windows, site capabilities and consecutive visits are not worked out (the last two are unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from .. import lang
from ..derive import rises
from ..lang import Cmp, Enum, Expr, Flag, Present
from .harvest import ATC_NAMES, prefixes

Case = dict[str, Any]


@dataclass
class Draft:
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


# ---------------------------------------------------------------- truth


def truth(d: Draft, e: Expr) -> lang.Truth:
    """Kleene truth of an expression on a draft: ``lang.eval3`` on :func:`facts` (without validating)."""
    return lang.eval3(e, facts(d, e))


def facts(d: Draft, e: Expr) -> dict[str, object]:
    """The facts ``e``'s literals read, by fact key, as the draft has them (None: unknown)."""
    out: dict[str, object] = {}
    for lit in lang.literals(e):
        if isinstance(lit, Cmp):
            out[lit.num.key] = num(d, lit.num)
        elif isinstance(lit, Enum):
            out[lit.field] = d.setting if lit.field == "setting" else (d.sex if d.sex != "unknown" else None)
        elif isinstance(lit, Flag):
            out[lit.key] = _flag(d, lit)
        elif isinstance(lit, Present):
            out[lit.key] = _present(d, lit)
    return out


def _flag(d: Draft, f: Flag) -> bool | None:
    ps = prefixes(f.arg)
    if f.kind == "pregnant":
        return d.pregnant
    if f.kind == "finding":
        return f.arg in d.findings
    if f.kind == "dx":
        return any(c.startswith(ps) for c in d.conditions)
    if f.kind == "on":
        return any(str(m[0]).startswith(ps) for m in d.meds)
    if f.kind in ("site", "visits"):  # the site is the engine's; visits are worked out by derive
        return None
    return any(a.startswith(ps) or any(q.startswith(a) for q in ps) for a in d.allergies)


def _present(d: Draft, p: Present) -> bool:
    if p.kind == "obs":
        return bool(d.readings.get(p.name))
    sex = d.sex if d.sex != "unknown" else None
    return {"age": d.age, "sex": sex, "pregnant": d.pregnant, "smi_risk_grade": d.smi}[p.name] is not None


def num(d: Draft, n: lang.Num) -> float | None:
    """A numeric quantity on the draft (None: unknown)."""
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
        return since_start(d, n)
    if n.kind == "after":
        rs = d.readings.get(n.pair[0]) or []
        on = num(d, lang.Num("days_on", n.pair[1]))
        return None if on is None or not rs else on - rs[0][0]
    if n.kind == "count":  # each class: a code, or a code set's members joined by |
        return float(sum(1 for g in n.arg if any(str(m[0]).startswith(prefixes(g)) for m in d.meds)))
    starts = [m[1] for m in d.meds if str(m[0]).startswith(prefixes(str(n.arg)))]
    if not starts or None in starts:  # the latest start, unknown if any matching drug has no start
        return None
    return float(min(x for x in starts if x is not None))


def since_start(d: Draft, n: lang.Num) -> float | None:
    """rise(_pct)_since_start on a draft, as derive computes it on the emitted case (which lists
    a code's readings oldest first, so of two on the same day the first in the draft is later)."""
    code, *started = n.started
    rs = d.readings.get(code) or []
    starts = [m[1] for m in d.meds if str(m[0]).startswith(tuple(started))]
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


# ---------------------------------------------------------------- output


def _plain(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def to_case(d: Draft, as_of: date, vocab: lang.Vocabulary) -> Case:
    """The draft as case-contract JSON (observations oldest first)."""
    case: Case = {"patient_id": "generated", "as_of": as_of.isoformat(), "setting": d.setting}
    if d.age is not None:
        case["age"] = d.age
    if d.sex is not None:
        case["sex"] = d.sex
    if d.pregnant is not None:
        case["pregnant"] = d.pregnant
    case["conditions"] = list(d.conditions)
    observations: list[dict[str, Any]] = []
    for code, rs in d.readings.items():
        od = vocab.observations[code]
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
                {"code": code, "value": _plain(value), "unit": unit, "date": (as_of - timedelta(days=int(days_ago))).isoformat()}
            )
    case["observations"] = observations
    meds = []
    for atc, since in d.meds:
        m: dict[str, Any] = {"atc": atc}
        if atc in ATC_NAMES:
            m["name"] = ATC_NAMES[atc]
        if since is not None:
            m["since"] = (as_of - timedelta(days=int(since))).isoformat()
        meds.append(m)
    case["medications"] = meds
    case["allergies"] = list(d.allergies)
    case["findings"] = list(d.findings)
    if d.smi is not None:
        case["smi_risk_grade"] = d.smi
    return case
