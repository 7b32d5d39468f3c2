"""The decision's shape as types (spec/case-format.md, "Decision (output)"), for callers.

A decision is plain JSON data (dicts and lists) at run time; these TypedDicts let an integrator's
type checker read it: a recommendation is one of five kinds, told apart by ``kind``, so
``if rec["kind"] == "medication": rec["atc"]`` checks, and a misspelt key does not. The same
types give the JSON Schema for other languages (``carepath schema --decision``, committed as
docs/decision.schema.json). tests/unit/test_contract.py holds every decision of the golden
scenarios and of a synthetic cohort to exactly these keys and values, and to that schema.
"""

# No `from __future__ import annotations` here: Python 3.11 does not see NotRequired[...] in a
# string annotation, and would make every key required.
from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # typing.TypedDict on 3.11 is not one pydantic reads

Value = float | int | bool | str | None  # a value a rule read; None: unknown
_EXACT = ConfigDict(extra="forbid", strict=True)  # for pydantic (the JSON Schema, the tests): no other keys


@with_config(_EXACT)
class PathwayUsed(TypedDict):
    """A pathway of the set the decision was made with, and whether the patient is enrolled."""

    id: str
    version: str
    sha256: str
    enrolled: bool


@with_config(_EXACT)
class _Made(TypedDict):
    """What every recommendation carries: the rule that made it (and every rule, when duplicates
    merged), the reason with the values read, the values themselves and the guideline."""

    rule: str
    rules: list[str]
    reason: str
    citation: str
    values: dict[str, Value]


@with_config(_EXACT)
class TestRecommendation(_Made):
    kind: Literal["test"]
    code: str  # a dictionary observation name
    loinc: NotRequired[str]  # when the dictionary gives one


@with_config(_EXACT)
class MedicationRecommendation(_Made):
    kind: Literal["medication"]
    action: Literal["start", "titrate", "add", "switch", "stop", "avoid"]
    atc: str  # an ATC code or class prefix
    name: str


@with_config(_EXACT)
class ReferralRecommendation(_Made):
    kind: Literal["referral"]
    direction: Literal["up", "down"]
    urgency: NotRequired[Literal["emergency", "priority", "routine"]]  # every up-referral has one
    specialty: str


@with_config(_EXACT)
class FollowUpRecommendation(_Made):
    kind: Literal["follow_up"]
    days: int


@with_config(_EXACT)
class AlertRecommendation(_Made):
    kind: Literal["alert"]
    severity: Literal["info", "warning", "critical"]
    text: str


Recommendation = Annotated[
    TestRecommendation | MedicationRecommendation | ReferralRecommendation | FollowUpRecommendation | AlertRecommendation,
    Field(discriminator="kind"),  # for pydantic and the JSON Schema; type checkers narrow on kind by themselves
]


@with_config(_EXACT)
class TraceEntry(TypedDict):
    """A rule that fired, the values it read, and why the conflict policy overruled what it said."""

    pathway: str
    rule: str
    values: dict[str, Value]
    suppressed: NotRequired[list[str]]


@with_config(_EXACT)
class Decision(TypedDict):
    patient_id: str
    as_of: str  # YYYY-MM-DD
    pathways: list[PathwayUsed]
    recommendations: list[Recommendation]
    trace: list[TraceEntry]
