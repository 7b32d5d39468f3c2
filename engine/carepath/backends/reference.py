"""The reference backend: every condition evaluated by the reference evaluator (``lang.truth``,
Kleene logic on the derived facts), in pure Python. No durable-rules needed: the tests hold the
durable backend to this one, and ``carepath evaluate --backend reference`` runs without it."""

from __future__ import annotations

from collections.abc import Sequence

from .. import lang
from ..validate import CheckedPathway


class ReferenceSet:
    """A pathway set as reference programs: ``applies_to`` and each rule's condition."""

    def __init__(self, pathways: Sequence[CheckedPathway]) -> None:
        self.applies = [lang.truth(p.applies) for p in pathways]
        self.rules = [[lang.truth(r.condition) for r in p.rules] for p in pathways]

    def enrolled(self, index: int, facts: lang.Facts) -> bool:
        return self.applies[index](facts) is True

    def fire(self, index: int, facts: lang.Facts, enrolled: bool | None) -> list[int]:
        """Every rule evaluated, whatever the enrolment (each condition is ``applies_to AND when``),
        so the differential tests check that the durable backend may skip a pathway the patient is
        not enrolled in."""
        return [k for k, prog in enumerate(self.rules[index]) if prog(facts) is True]


class ReferenceBackend:
    name = "reference"

    def compile(self, pathways: Sequence[CheckedPathway]) -> ReferenceSet:
        return ReferenceSet(pathways)
