"""What the condition language's names may refer to: observations (with units and recency
windows), code sets and target profiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from .syntax import And, Expr, Not, Or, Span


@dataclass(frozen=True)
class ObsDef:
    code: str
    unit: str
    lo: float
    hi: float
    loinc: tuple[str, ...] = ()
    label: str = ""
    conversions: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    decimals: int = 6
    current: int | None = None  # days a value stays current (None: any age); see Num kinds obs and latest

    def to_canonical(self, value: float, unit: str) -> float | None:
        """Convert ``value`` in ``unit`` to the canonical unit; None when no conversion exists.

        A converted value keeps one digit more than the canonical unit's reporting precision:
        enough that a value just beside a threshold written at that precision is never rounded
        onto it (glucose 71 mg/dL is 3.94 mmol/L, above a hypoglycaemia threshold of 3.9, where
        rounding to the lab's 3.9 would have met it), while the labs' anchors still hold (53
        mmol/mol is HbA1c 7.00 %, 300 mg/dL is glucose 16.67 mmol/L, 126 mg/dL is 7.00).
        """
        if unit == self.unit:
            return value
        conv = self.conversions.get(unit)
        if conv is None:
            return None
        factor, offset = conv
        return round(value * factor + offset, self.decimals + 1)


@dataclass(frozen=True)
class CodeSetDef:
    """A named code set with its members worked out (includes followed): ``codes`` are ATC or
    ICD-10 codes and prefixes, sorted, each once."""

    name: str
    system: str  # atc or icd10
    label: str
    codes: tuple[str, ...]
    includes: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class TargetDef:
    """A target profile: rows of (who it is for, or None for everyone else; the at-target condition)."""

    name: str
    label: str
    rows: tuple[tuple[Expr | None, Expr], ...]
    texts: tuple[tuple[str | None, str], ...] = ()  # the rows as written (for, target), for the review pages
    citation: str = ""

    @cached_property
    def at(self) -> Expr:
        """at_target(name): one object for every use (like a definition), so it reads as a name."""
        return self.at_target((0, 0), at=True)

    @cached_property
    def above(self) -> Expr:
        """above_target(name), likewise."""
        return self.at_target((0, 0), at=False)

    def at_target(self, span: Span, at: bool = True) -> Expr:
        """at_target(name) (or, ``at`` False, above_target(name)): the first row whose `for` holds
        decides, as ``for_1 and T_1 or not for_1 and for_2 and T_2 or ...``; and since a patient
        at (or above) every row's target is at (above) target whichever row is theirs, ``or (T_1
        and T_2 and ...)`` too: with an unknown age, 155/70 is above target whether the target is
        < 150/90 or < 140/90, while 145/70 stays unknown."""
        alts: list[Expr] = []
        before: list[Expr] = []
        goals: list[Expr] = []
        for who, target in self.rows:
            goal = target if at else Not(target, span)
            goals.append(goal)
            alts.append(And((*before, *([who] if who is not None else []), goal), span) if before or who is not None else goal)
            if who is not None:
                before.append(Not(who, span))
        if len(goals) > 1:
            alts.append(And(tuple(goals), span))
        return alts[0] if len(alts) == 1 else Or(tuple(alts), span)


@dataclass(frozen=True)
class Vocabulary:
    observations: Mapping[str, ObsDef]
    findings: frozenset[str]
    definitions: Mapping[str, Expr] = field(default_factory=dict)
    code_sets: Mapping[str, CodeSetDef] = field(default_factory=dict)
    targets: Mapping[str, TargetDef] = field(default_factory=dict)
    capabilities: Mapping[str, str] = field(default_factory=dict)  # site capabilities: name -> description
    visit_reading: str = "last"  # which same-day reading a visit counts (consecutive_visits): last or mean
    shared_texts: Mapping[str, str] = field(default_factory=dict)  # the dictionary's definitions as written (review pages)

    @cached_property
    def loinc(self) -> dict[str, str]:
        """LOINC code -> observation code (worked out once, not per case)."""
        return {lc: od.code for od in self.observations.values() for lc in od.loinc}
