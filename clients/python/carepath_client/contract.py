"""The decision's shape as types (spec/case-format.md, "Decision (output)"), for callers.

A decision is plain JSON data (dicts and lists) at run time; these TypedDicts let an integrator's
type checker read it: a recommendation is one of five kinds, told apart by ``kind``, so
``if rec["kind"] == "medication": rec["atc"]`` checks, and a misspelt key does not. The same
types give the JSON Schema for other languages (``carepath schema --decision``, committed as
docs/decision.schema.json). tests/unit/test_contract.py holds every decision of the golden
scenarios and of a synthetic cohort to exactly these keys and values, and to that schema.

The client does not need pydantic, and this module does not import it. What pydantic reads (the
engine builds the JSON Schema and its tests validate with it) is carried in pydantic's own hooks:
``__pydantic_config__`` on each TypedDict (no other keys, strict types) and a discriminator on
the recommendation union, which imports pydantic only when pydantic asks for the schema.
"""

# No `from __future__ import annotations` here: Python 3.11 does not see NotRequired[...] in a
# string annotation, and would make every key required.
from typing import Annotated, Any, Literal, NotRequired, TypeVar

from typing_extensions import TypedDict  # typing.TypedDict on 3.11 is not one pydantic reads

__all__ = [
    "AlertRecommendation",
    "Decision",
    "FollowUpRecommendation",
    "MedicationRecommendation",
    "PathwayUsed",
    "Recommendation",
    "ReferralRecommendation",
    "TestRecommendation",
    "TraceEntry",
    "Value",
]

Value = float | int | bool | str | None  # a value a rule read; None: unknown
_T = TypeVar("_T")


def _exact(cls: _T) -> _T:
    """pydantic's ``with_config(ConfigDict(extra="forbid", strict=True))`` without importing pydantic:
    for the JSON Schema and the tests, no keys other than the declared ones."""
    setattr(cls, "__pydantic_config__", {"extra": "forbid", "strict": True})  # noqa: B010 (a dunder pydantic reads)
    return cls


class _TaggedBy:
    """``Annotated`` metadata: the union's members are told apart by this key. Type checkers narrow
    on it by themselves; pydantic reads it as its ``Discriminator`` through this hook."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic import Discriminator  # only ever called by pydantic, so it is installed

        return Discriminator(self.key).__get_pydantic_core_schema__(source, handler)


@_exact
class SiteUsed(TypedDict):
    """The site profile the decision was made with (what the site can do); sha256 is empty for the built-in default."""

    id: str
    sha256: str


@_exact
class PathwayUsed(TypedDict):
    """A pathway of the set the decision was made with, and whether the patient is enrolled."""

    id: str
    version: str
    sha256: str
    enrolled: bool


@_exact
class _Made(TypedDict):
    """What every recommendation carries: the rule that made it (and every rule, when duplicates
    merged), the reason with the values read, the values themselves and the guideline."""

    rule: str
    rules: list[str]
    reason: str
    citation: str
    values: dict[str, Value]


@_exact
class TestRecommendation(_Made):
    kind: Literal["test"]
    code: str  # a dictionary observation name
    loinc: NotRequired[str]  # when the dictionary gives one


@_exact
class MedicationRecommendation(_Made):
    kind: Literal["medication"]
    action: Literal["start", "titrate", "add", "switch", "stop", "avoid"]
    atc: str  # an ATC code or class prefix
    name: str


@_exact
class ReferralRecommendation(_Made):
    kind: Literal["referral"]
    direction: Literal["up", "down"]
    urgency: NotRequired[Literal["emergency", "priority", "routine"]]  # every up-referral has one
    specialty: str


@_exact
class FollowUpRecommendation(_Made):
    kind: Literal["follow_up"]
    days: int


@_exact
class AlertRecommendation(_Made):
    kind: Literal["alert"]
    severity: Literal["info", "warning", "critical"]
    text: str


Recommendation = Annotated[
    TestRecommendation | MedicationRecommendation | ReferralRecommendation | FollowUpRecommendation | AlertRecommendation,
    _TaggedBy("kind"),  # for pydantic and the JSON Schema; type checkers narrow on kind by themselves
]


@_exact
class TraceEntry(TypedDict):
    """A rule that fired, the values it read, and why the conflict policy overruled what it said."""

    pathway: str
    rule: str
    values: dict[str, Value]
    suppressed: NotRequired[list[str]]


@_exact
class Decision(TypedDict):
    patient_id: str
    as_of: str  # YYYY-MM-DD
    pathways: list[PathwayUsed]
    recommendations: list[Recommendation]
    trace: list[TraceEntry]
    site: SiteUsed
