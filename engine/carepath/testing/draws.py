"""Drawing from a :class:`~.harvest.Harvest`: the Hypothesis strategies of single values, and a
random base case (:meth:`Draws.base`), which steering then edits. Every choice is a Hypothesis draw
whose simplest value is "missing", so counterexamples shrink to small, readable cases; the order
of the draws is what makes a seed give the same cases, so keep it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeVar

from hypothesis import strategies as st

from .draft import Draft
from .harvest import DAY_BASE, Harvest, PathwayInfo, complete_icd, rnd

T = TypeVar("T")

SETTINGS: Final = ("community", "hospital")

BOOL: Final = st.booleans()
GRADE: Final = st.integers(0, 5)
_MAYBE_GRADE: Final = st.one_of(st.none(), st.integers(0, 5))
_N_READINGS: Final = st.integers(0, 2)
_ALT: Final = st.integers(0, 3)


class AnyValue:
    """The type of :data:`ANY`."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = AnyValue()
"""Leave a keyword of :func:`~.strategies.cases` to the generator."""


def satisfies(v: float, op: str, x: float) -> bool:
    """``v op x``."""
    return {
        "<": v < x,
        "<=": v <= x,
        ">": v > x,
        ">=": v >= x,
        "==": v == x,
        "!=": v != x,
    }[op]


class Draws:
    """Strategies over one harvest (built once and cached) and the base case drawn from them."""

    def __init__(self, h: Harvest) -> None:
        self.h = h
        self._cache: dict[object, st.SearchStrategy[Any]] = {}
        self.age = st.one_of(st.none(), st.sampled_from(h.fields["age"]), st.integers(0, 110))
        self.since = st.one_of(st.none(), st.sampled_from(h.since), st.integers(0, 3650))
        self.since_short = st.one_of(st.none(), st.sampled_from(h.since))

    def sample(self, items: Sequence[T]) -> st.SearchStrategy[T]:
        """``st.sampled_from(items)``, made once per distinct sequence."""
        key = tuple((type(x).__name__, x) for x in items)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = st.sampled_from(tuple(items))
        return got

    def value(self, code: str) -> st.SearchStrategy[float]:
        """A canonical value of an observation: a harvested one, or any on its step within its range."""
        key = ("value", code)
        got = self._cache.get(key)
        if got is None:
            od = self.h.vocab.observations[code]
            step = self.h.steps.get(code, 0.1)
            lo, hi = math.ceil(od.lo / step), math.floor(od.hi / step)
            got = self._cache[key] = st.one_of(self.sample(self.h.values[code]), st.integers(lo, hi).map(lambda k: rnd(k * step, step)))
        return got

    def days(self, code: str) -> st.SearchStrategy[int]:
        """How many days before as_of a reading of ``code`` was taken."""
        key = ("days", code)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = st.one_of(self.sample(self.h.days.get(code, DAY_BASE)), st.integers(0, 1500))
        return got

    def subset(self, items: Sequence[str], n: int) -> st.SearchStrategy[list[str]]:
        """Up to ``n`` distinct items."""
        key = ("list", n, tuple(items))
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = st.lists(st.sampled_from(tuple(items)), max_size=n, unique=True)
        return got

    def reading(self, draw: st.DrawFn, code: str) -> list[float]:
        """One reading: [days ago, canonical value]."""
        return [float(draw(self.days(code))), draw(self.value(code))]

    def pick(self, draw: st.DrawFn, cands: Iterable[float], op: str, x: float) -> float | None:
        """One of the candidates ``c`` with ``c op x`` (None when there is none)."""
        ok = sorted({c for c in cands if satisfies(c, op, x)})
        return draw(self.sample(ok)) if ok else None

    def base(
        self,
        draw: st.DrawFn,
        info: PathwayInfo | None,
        conditions: Sequence[str] | AnyValue,
        pregnant: bool | AnyValue | None,
        setting: str | AnyValue,
        findings: Sequence[str] | AnyValue,
    ) -> Draft:
        """A random draft, enrolled in ``info``'s pathway three times in four; keywords other than ANY are pinned."""
        h = self.h
        s = draw(self.sample(SETTINGS)) if isinstance(setting, AnyValue) else setting
        if isinstance(conditions, AnyValue):
            conds: list[str] = []
            if info is not None and info.dx and draw(self.sample([True, True, True, False])):
                conds.append(draw(self.sample([c for p in info.dx for c in complete_icd(p)])))
            conds += draw(self.subset(h.icd_codes, 2))
            conds = list(dict.fromkeys(conds))
        else:
            conds = list(conditions)
        d = Draft(setting=s, conditions=conds)
        d.age = draw(self.age)
        d.sex = draw(self.sample([None, "female", "male", "other", "unknown"]))
        d.pregnant = draw(self.sample([None, False, True])) if isinstance(pregnant, AnyValue) else pregnant
        if d.pregnant and d.sex == "male":
            d.sex = "female"
        d.smi = draw(_MAYBE_GRADE)
        own = info.obs if info is not None else ()
        for code in dict.fromkeys([*own, *h.obs_codes]):
            n = draw(_N_READINGS)
            if n == 0:
                continue
            latest = self.reading(draw, code)
            rs = [latest]
            if n == 2:
                rs.append([latest[0] + draw(self.sample([0, 1, 7, 14, 30, 90, 365])), draw(self.value(code))])
            d.readings[code] = rs
            od = h.vocab.observations[code]
            if od.conversions and draw(_ALT) == 3:
                d.alt_unit[code] = draw(self.sample(sorted(od.conversions)))
        for atc in draw(self.subset(h.med_codes, 4)) if h.med_codes else []:
            d.meds.append([atc, draw(self.since)])
        if h.allergy_codes:
            d.allergies = draw(self.subset(h.allergy_codes, 2))
        if isinstance(findings, AnyValue):
            d.findings = draw(self.subset(h.findings, 3)) if h.findings else []
        else:
            d.findings = list(findings)
        return d
