"""The backend protocol: how an engine finds, for one case, which pathways enrol the patient and
which rules fire.

An :class:`~carepath.evaluate.Engine` owns everything around that (validating and deriving the
case, the conflict policy, the decision, explanations); a backend only evaluates conditions. Like
cel-python's interchangeable interpreted and compiled runners, two backends give the same answers:

* ``"durable"`` (:class:`carepath.backends.durable.DurableBackend`): the production engine, each
  pathway a durable-rules ruleset (needs durable-rules, imported only when this backend is used);
* ``"reference"`` (:class:`carepath.backends.reference.ReferenceBackend`): the pure-Python
  reference evaluator of the condition language (Kleene logic on the derived facts), which the
  differential tests hold the durable backend to, and which ``--explain`` uses.

A backend compiles a checked pathway set once (``compile``) into a :class:`CompiledSet`, asked per
case. The values a fired rule read are the facts under its ``CheckedRule.reads`` (the engine reads
them); a backend reports only which rules fired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..lang import Facts
    from ..validate import CheckedPathway

BACKENDS = ("durable", "reference")  # the built-in backends' names (Engine(..., backend=NAME))


@runtime_checkable
class CompiledSet(Protocol):
    """A pathway set compiled by a backend: pathway ``index`` is ``pathways[index]`` as compiled."""

    def enrolled(self, index: int, facts: Facts) -> bool:
        """Is the pathway's ``applies_to`` TRUE for these facts (false and unknown: not enrolled)?"""
        ...

    def fire(self, index: int, facts: Facts, enrolled: bool | None) -> list[int]:
        """The indices, ascending, of the pathway's rules whose condition (``applies_to AND when``)
        is TRUE. ``enrolled`` is what :meth:`enrolled` said for these facts (a backend may skip
        the rules of a pathway the patient is not enrolled in, except those with ``scope:
        everyone``), or None: evaluate every rule whatever the enrolment."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Compiles checked pathway sets. ``name`` names it in decisions' test reports and the CLI."""

    name: str

    def compile(self, pathways: Sequence[CheckedPathway]) -> CompiledSet:
        """Compile the set once (an engine does this when it is made)."""
        ...


def resolve(backend: str | Backend) -> Backend:
    """A backend by name (``"durable"``, ``"reference"``) or the instance given. The durable
    backend's module (and durable-rules) is imported only here, only when it is asked for."""
    if not isinstance(backend, str):
        return backend
    if backend == "durable":
        from .durable import DurableBackend

        return DurableBackend()
    if backend == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend()
    raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
