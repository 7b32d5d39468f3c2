"""Pydantic models of the pathway format; `carepath schema` prints their JSON Schema."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$"
RULE_ID = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"
ATC = r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$"
NAME = r"^[a-z][a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Citation(_Strict):
    guideline: str = Field(min_length=3, description="The guideline or specification, as a reader would look it up.")
    year: StrictInt = Field(ge=1900, le=2100)
    section: str = Field(min_length=1, description="Section, table or clause; say '[unconfirmed]' where not verified.")
    url: str | None = None


Finite = Annotated[float, Field(allow_inf_nan=False)]  # .nan and .inf are never a range end or a factor


class Conversion(_Strict):
    factor: Finite
    offset: Finite = 0.0


class ObservationDef(_Strict):
    loinc: list[str] = Field(default_factory=list)
    unit: str = Field(min_length=1)
    range: tuple[Finite, Finite] = Field(description="Plausible range in the canonical unit; values outside are bad input.")
    label: str | None = None
    conversions: dict[str, Conversion] = Field(default_factory=dict)
    decimals: int = Field(
        default=6, ge=0, le=6, description="Reporting precision of the canonical unit; converted values are rounded to it."
    )
    current: int | None = Field(
        default=None,
        ge=0,
        le=3650,
        description=(
            "Days a value stays current: a comparison on an older value is unknown, not true (0: taken on as_of). "
            "latest(code) reads the latest value whatever its age. Absent: every value counts, however old."
        ),
    )

    @model_validator(mode="after")
    def _range_ordered(self) -> ObservationDef:
        if self.range[0] > self.range[1]:
            raise ValueError("range must be [low, high] with low <= high")
        return self


class CodeSet(_Strict):
    """A named set of codes, declared once and used by name wherever a code list is."""

    system: Literal["atc", "icd10"] = Field(description="ATC (drugs, allergies) or ICD-10 (diagnoses).")
    label: str = Field(min_length=1, description="What the set is, in a committee's words.")
    codes: list[str] = Field(default_factory=list, description="Codes or prefixes of the system (matched by prefix).")
    includes: list[Annotated[str, Field(pattern=NAME)]] = Field(default_factory=list, description="Other sets whose codes are members too.")
    source: str | None = Field(default=None, description="Where the list comes from (ATC index, formulary, guideline).")

    @model_validator(mode="after")
    def _not_empty(self) -> CodeSet:
        if not self.codes and not self.includes:
            raise ValueError("a code set needs codes or includes")
        return self


class Target(_Strict):
    """One row of a target profile: who it is for, and the target they should be at."""

    for_: str | None = Field(
        default=None, alias="for", min_length=1, description="Who this target is for (a condition); absent: everyone else."
    )
    target: str = Field(min_length=1, description="The condition of being at target, e.g. 'sbp < 140 and dbp < 90'.")
    note: str | None = None


class TargetProfile(_Strict):
    """Targets that depend on age, comorbidity and treatment, declared once: ``at_target(name)`` and
    ``above_target(name)`` read the first row whose ``for`` holds (the last row has no ``for``)."""

    label: str = Field(min_length=1)
    citation: str | None = Field(default=None, description="Where the targets come from (guideline and section).")
    targets: list[Target] = Field(min_length=1)


class Dictionary(_Strict):
    observations: dict[Annotated[str, Field(pattern=NAME)], ObservationDef] = Field(default_factory=dict)
    findings: list[Annotated[str, Field(pattern=NAME)]] = Field(default_factory=list)
    code_sets: dict[Annotated[str, Field(pattern=NAME)], CodeSet] = Field(
        default_factory=dict, description="Named sets of ATC or ICD-10 codes: taking(ras_blocker), diagnosed(ckd), atc: ras_blocker."
    )
    definitions: dict[Annotated[str, Field(pattern=NAME)], str] = Field(
        default_factory=dict, description="Named conditions every pathway can use; each may use the ones above it."
    )
    target_profiles: dict[Annotated[str, Field(pattern=NAME)], TargetProfile] = Field(default_factory=dict)
    site_capabilities: dict[Annotated[str, Field(pattern=NAME)], str] = Field(
        default_factory=dict, description="What a site may be able to do (name: description); site_has(name) reads the site profile."
    )
    visit_reading: Literal["last", "mean"] | None = Field(
        default=None,
        description="Which of a visit's same-day readings counts in consecutive_visits (shared dictionary only; default last).",
    )


class TestRec(_Strict):
    kind: Literal["test"]
    code: str = Field(pattern=NAME, description="A dictionary observation name.")
    essential: bool | None = Field(
        default=None, description="true: never suppressed by the conflict policy (a value needed now, or essential drug monitoring)."
    )


class MedicationRec(_Strict):
    kind: Literal["medication"]
    action: Literal["start", "titrate", "add", "switch", "stop", "avoid"]
    atc: str = Field(pattern=f"{ATC}|{NAME}", description="ATC code or class prefix, or a code set's name (one recommendation per member).")
    name: str = Field(min_length=1)


class ReferralRec(_Strict):
    kind: Literal["referral"]
    direction: Literal["up", "down"]
    urgency: Literal["emergency", "priority", "routine"] | None = None
    specialty: str = Field(min_length=1)

    @model_validator(mode="after")
    def _up_has_urgency(self) -> ReferralRec:
        if self.direction == "up" and self.urgency is None:
            raise ValueError("an up-referral needs an urgency: emergency, priority or routine")
        return self


class FollowUpRec(_Strict):
    kind: Literal["follow_up"]
    days: int = Field(ge=1, le=730)


class AlertRec(_Strict):
    kind: Literal["alert"]
    severity: Literal["info", "warning", "critical"]
    text: str = Field(min_length=1)
    stable: bool | None = Field(
        default=None,
        description="true: the alert says the patient is stable; the conflict policy drops it when any rule finds them unstable.",
    )


Recommendation = Annotated[TestRec | MedicationRec | ReferralRec | FollowUpRec | AlertRec, Field(discriminator="kind")]


class Rule(_Strict):
    id: str = Field(pattern=RULE_ID, description="Stable id, unique across pathways, e.g. htn.crisis.bp.")
    title: str | None = Field(default=None, description="Short words that start the reason text.")
    when: str = Field(min_length=1, description="Condition in the carepath condition language.")
    then: list[Recommendation] = Field(min_length=1)
    citation: str = Field(min_length=1, description="A key of the pathway's citations.")
    priority: StrictInt = Field(default=0, description="Settles declared conflicts between rules that can fire together.")
    scope: Literal["enrolled", "everyone"] = Field(
        default="enrolled",
        description="enrolled: the pathway's applies_to is AND-ed in; everyone: runs for every case whatever the diagnosis (safety rules).",
    )
    note: str | None = None


class ChangelogEntry(_Strict):
    version: str = Field(pattern=SEMVER)
    date: date
    change: str = Field(min_length=1)


class Invariant(_Strict):
    """A committee's property: given a condition, a recommendation pattern never / always appears."""

    id: str = Field(pattern=RULE_ID)
    given: str = Field(min_length=1)
    never: dict[str, str | int] | None = None
    always: dict[str, str | int] | None = None
    citation: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Invariant:
        if (self.never is None) == (self.always is None):
            raise ValueError("an invariant has exactly one of 'never' or 'always'")
        return self


class Pathway(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    title: str = Field(min_length=1)
    version: str = Field(pattern=SEMVER, description="Semantic version; changing a rule bumps it.")
    status: Literal["draft", "active", "retired"]
    owners: list[str] = Field(min_length=1)
    applies_to: str = Field(min_length=1, description="Who is in the pathway; AND-ed into every rule.")
    definitions: dict[Annotated[str, Field(pattern=NAME)], str] = Field(
        default_factory=dict,
        description="Named sub-conditions (e.g. bp_uncontrolled) that rules use by name; each may use the ones above it.",
    )
    citations: dict[str, Citation] = Field(min_length=1)
    dictionary: Dictionary = Field(default_factory=Dictionary)
    emergency_findings: list[str] = Field(default_factory=list)
    worse_is_higher: list[str] = Field(default_factory=list)
    changelog: list[ChangelogEntry] = Field(default_factory=list)
    rules: list[Rule] = Field(min_length=1)
    invariants: list[Invariant] = Field(default_factory=list)
