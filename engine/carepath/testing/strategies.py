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

This module keeps the public face, :func:`cases` and :class:`CaseSpace`, which composes the parts,
one job each: :mod:`.harvest` (what the pathways mention), :mod:`.draws` (strategies of single
values and the random base case), :mod:`.steer` (editing a case until a condition holds) and
:mod:`.draft` (the case under construction: its truth, by the engine's reference evaluator, and
its JSON).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TypeVar

from hypothesis import strategies as st

from .. import lang
from ..lang import Expr
from ..validate import CheckedPathway
from .draft import Case, Draft, to_case, truth
from .draws import ANY, BOOL, SETTINGS, AnyValue, Draws
from .harvest import AS_OF, ATC_NAMES, COMORBIDITY, Harvest, PathwayInfo, complete_atc, complete_icd, prefixes
from .steer import Steerer

__all__ = [
    "ANY",
    "AS_OF",
    "ATC_NAMES",
    "COMORBIDITY",
    "SETTINGS",
    "Case",
    "CaseSpace",
    "Draw",
    "PathwayInfo",
    "cases",
    "complete_atc",
    "complete_icd",
    "default_space",
    "prefixes",
    "set_default_pathways",
]

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[T]], T]


class CaseSpace(Harvest):
    """The harvested vocabulary of a set of pathways (:class:`~.harvest.Harvest`), and the strategies
    built from it: base cases (:class:`~.draws.Draws`) steered towards conditions (:class:`~.steer.Steerer`)."""

    def __init__(self, pathways: Sequence[CheckedPathway], as_of: date = AS_OF) -> None:
        super().__init__(pathways, as_of)
        self._draws = Draws(self)
        self._steerer = Steerer(self._draws)

    @classmethod
    def from_directory(cls, path: Path | str | None = None) -> CaseSpace:
        from ..evaluate import Engine

        return cls(Engine.from_directory(path).pathways)

    def cases(
        self,
        *,
        pathway: str | None = None,
        conditions: Sequence[str] | AnyValue = ANY,
        pregnant: bool | AnyValue | None = ANY,
        setting: str | AnyValue = ANY,
        findings: Sequence[str] | AnyValue = ANY,
        steer: bool = True,
    ) -> st.SearchStrategy[Case]:
        """Valid cases; keywords pin a field, ``pathway`` enrols (and steers) the cases into one pathway."""
        if pathway is not None and pathway not in self.pathways:
            raise ValueError(f"unknown pathway {pathway!r}; known: {', '.join(sorted(self.pathways))}")
        if not isinstance(setting, AnyValue) and setting not in SETTINGS:
            raise ValueError(f"setting is one of {SETTINGS}, not {setting!r}")
        draws, steerer = self._draws, self._steerer

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            info = self.pathways[pathway] if pathway is not None else None
            if info is None and self.pathways:
                info = draw(draws.sample(sorted(self.pathways.values(), key=lambda i: i.id)))
            d = draws.base(draw, info, conditions, pregnant, setting, findings)
            if steer and info is not None and info.targets and draw(BOOL):
                steerer.steer(draw, d, draw(draws.sample(info.targets)), conditions, pregnant, setting)
            return self.emit(d)

        return build()

    def steered(
        self,
        expr: Expr,
        *,
        pathway: str | None = None,
        conditions: Sequence[str] | AnyValue = ANY,
        pregnant: bool | AnyValue | None = ANY,
        setting: str | AnyValue = ANY,
    ) -> st.SearchStrategy[Case]:
        """Cases edited so that one disjunct of ``expr`` holds (best effort): for ``given`` of an invariant."""
        target = lang.nnf(expr)
        draws, steerer = self._draws, self._steerer

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            info = self.pathways[pathway] if pathway is not None else None
            d = draws.base(draw, info, conditions, pregnant, setting, ANY)
            steerer.steer(draw, d, target, conditions, pregnant, setting)
            return self.emit(d)

        return build()

    def value(self, code: str) -> st.SearchStrategy[float]:
        """A canonical value of an observation (see :meth:`.draws.Draws.value`)."""
        return self._draws.value(code)

    def truth(self, d: Draft, e: Expr) -> lang.Truth:
        """Kleene truth of an expression on a draft (see :func:`.draft.truth`)."""
        return truth(d, e)

    def emit(self, d: Draft) -> Case:
        """The draft as case-contract JSON (observations oldest first)."""
        return to_case(d, self.as_of, self.vocab)


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
    conditions: Sequence[str] | AnyValue = ANY,
    pregnant: bool | AnyValue | None = ANY,
    setting: str | AnyValue = ANY,
    findings: Sequence[str] | AnyValue = ANY,
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
