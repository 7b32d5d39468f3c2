"""The decision's shape as types (spec/case-format.md, "Decision (output)"), for callers.

A decision is plain JSON data (dicts and lists) at run time; these TypedDicts let an integrator's
type checker read it: a recommendation is one of five kinds, told apart by ``kind``, so
``if rec["kind"] == "medication": rec["atc"]`` checks, and a misspelt key does not.
tests/unit/test_contract.py holds every decision of the golden scenarios and of a synthetic
cohort to exactly these keys and values.
"""

# No `from __future__ import annotations` here: Python 3.11 does not see NotRequired[...] in a
# string annotation, and would make every key required.
from typing import Literal, NotRequired, TypedDict

Value = float | int | bool | str | None  # a value a rule read; None: unknown


class PathwayUsed(TypedDict):
    """A pathway of the set the decision was made with, and whether the patient is enrolled."""

    id: str
    version: str
    sha256: str
    enrolled: bool


class _Made(TypedDict):
    """What every recommendation carries: the rule that made it (and every rule, when duplicates
    merged), the reason with the values read, the values themselves and the guideline."""

    rule: str
    rules: list[str]
    reason: str
    citation: str
    values: dict[str, Value]


class TestRecommendation(_Made):
    kind: Literal["test"]
    code: str  # a dictionary observation name
    loinc: NotRequired[str]  # when the dictionary gives one


class MedicationRecommendation(_Made):
    kind: Literal["medication"]
    action: Literal["start", "titrate", "add", "switch", "stop", "avoid"]
    atc: str  # an ATC code or class prefix
    name: str


class ReferralRecommendation(_Made):
    kind: Literal["referral"]
    direction: Literal["up", "down"]
    urgency: NotRequired[Literal["emergency", "priority", "routine"]]  # every up-referral has one
    specialty: str


class FollowUpRecommendation(_Made):
    kind: Literal["follow_up"]
    days: int


class AlertRecommendation(_Made):
    kind: Literal["alert"]
    severity: Literal["info", "warning", "critical"]
    text: str


Recommendation = TestRecommendation | MedicationRecommendation | ReferralRecommendation | FollowUpRecommendation | AlertRecommendation


class TraceEntry(TypedDict):
    """A rule that fired, the values it read, and why the conflict policy overruled what it said."""

    pathway: str
    rule: str
    values: dict[str, Value]
    suppressed: NotRequired[list[str]]


class Decision(TypedDict):
    patient_id: str
    as_of: str  # YYYY-MM-DD
    pathways: list[PathwayUsed]
    recommendations: list[Recommendation]
    trace: list[TraceEntry]
