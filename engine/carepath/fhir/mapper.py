"""FHIR R4 resources → the case contract, with a report of everything that was not carried over.

Resources are parsed by fhir.resources' R4B models (which read R4 JSON for the resource types used
here); this module only decides what each parsed resource means for the case:

* Observation: status final / amended / corrected only; the LOINC code through ``loinc.csv`` (a
  panel is read through its components), the UCUM unit through ``ucum.csv``, then the dictionary's
  units and plausible range. Pregnancy comes from the latest pregnancy-status observation.
* Condition: clinical status active / recurrence / relapse, not refuted or entered in error, not
  abated by ``as_of``; SNOMED CT through ``snomed_icd10.csv`` (an ICD-10 coding is taken as it is).
* MedicationRequest / MedicationStatement: status active; RxNorm through ``rxnorm_atc.csv`` (an ATC
  coding is taken as it is); several active orders of one drug are one medication, since the first.
* AllergyIntolerance: active, not refuted or entered in error, a drug (RxNorm or ATC).
* Patient: sex, and age from birthDate at ``as_of``.

``as_of`` and ``setting`` are never guessed from the data: they come from the caller or the
configured defaults (today; ``CAREPATH_SETTING`` or community). Nothing is dropped silently: each
resource or value left out is an :class:`Issue` in the report, and the case is evaluated without it,
as missing data. ``warning`` issues are data a pathway could have read (an unmapped condition or drug,
an unknown unit, an implausible value, a result that is not final, a date after ``as_of``...);
``info`` issues are routine exclusions (a resolved condition, a stopped drug, a test no pathway
reads, a resource type the case has no place for).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from ..case import ATC as ATC_CODE
from ..case import ICD10 as ICD10_CODE
from ..lang import ObsDef, Vocabulary
from ..settings import current
from .tables import PANEL, PREGNANCY_STATUS, VERSION, Tables, tables

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
ICD10 = ("http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10-cn")

USED_TYPES = ("Patient", "Observation", "Condition", "MedicationRequest", "MedicationStatement", "AllergyIntolerance", "Medication")
OBS_STATUSES = ("final", "amended", "corrected")
SETTINGS = ("community", "hospital")
PREGNANCY_MAX_DAYS = 280  # a pregnancy-status result older than a pregnancy says nothing about today

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")

Level = Literal["warning", "info"]


class FhirInputError(ValueError):
    """Input that cannot be mapped at all (not FHIR, no patient, several patients)."""


@dataclass
class Issue:
    """One thing the mapping did not carry over (or carried over with a caveat), and why."""

    level: Level
    kind: str
    message: str
    resources: list[str] = field(default_factory=list)
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"level": self.level, "kind": self.kind, "message": self.message, "count": self.count}
        if self.resources:
            out["resources"] = self.resources
        return out


@dataclass
class Report:
    """What the mapping used, and each thing it left out (grouped: one entry per distinct message)."""

    as_of: date
    as_of_source: str
    setting: str
    setting_source: str
    issues: dict[tuple[str, str, str], Issue] = field(default_factory=dict)
    mapped: Counter[str] = field(default_factory=Counter)

    MAX_RESOURCES = 5  # resource ids kept per grouped issue

    def add(self, level: Level, kind: str, message: str, resource: str | None = None) -> None:
        key = (level, kind, message)
        issue = self.issues.get(key)
        if issue is None:
            self.issues[key] = Issue(level, kind, message, [resource] if resource else [])
            return
        issue.count += 1
        if resource and len(issue.resources) < self.MAX_RESOURCES:
            issue.resources.append(resource)

    def warnings(self) -> list[Issue]:
        return [i for i in self.issues.values() if i.level == "warning"]

    def infos(self) -> list[Issue]:
        return [i for i in self.issues.values() if i.level == "info"]

    def to_json(self) -> dict[str, Any]:
        return {
            "mappings_version": VERSION,
            "as_of": self.as_of.isoformat(),
            "as_of_source": self.as_of_source,
            "setting": self.setting,
            "setting_source": self.setting_source,
            "mapped": dict(sorted(self.mapped.items())),
            "warnings": [i.to_json() for i in self.warnings()],
            "info": [i.to_json() for i in self.infos()],
        }

    def lines(self, info: bool = False) -> list[str]:
        """The report for a person: one line per warning (and per info entry when ``info``)."""
        out = [
            f"fhir: as_of {self.as_of.isoformat()} ({self.as_of_source}), setting {self.setting} ({self.setting_source}), "
            f"mappings {VERSION}; mapped " + ", ".join(f"{n} {k}" for k, n in sorted(self.mapped.items()))
        ]
        shown = self.warnings() + (self.infos() if info else [])
        for i in shown:
            times = f" (x{i.count})" if i.count > 1 else ""
            where = f" [{', '.join(i.resources)}{', ...' if i.count > len(i.resources) and i.resources else ''}]" if i.resources else ""
            out.append(f"fhir {i.level}: {i.kind}: {i.message}{times}{where}")
        if not info and self.infos():
            out.append(f"fhir: {sum(i.count for i in self.infos())} routine exclusions not shown (info; fhir-to-case --info lists them)")
        return out


@dataclass(frozen=True)
class Mapped:
    case: dict[str, Any]
    report: Report


def default_setting() -> tuple[str, str]:
    """The configured default setting: ``CAREPATH_SETTING`` (community or hospital), else community."""
    env = current().setting
    if env:
        if env not in SETTINGS:
            raise FhirInputError(f"CAREPATH_SETTING must be community or hospital, not {env!r}")
        return env, "default from CAREPATH_SETTING"
    return "community", "default"


def is_fhir(data: Any) -> bool:
    """Whether input is FHIR (a Bundle or a single resource with resourceType) rather than a case."""
    return isinstance(data, dict) and isinstance(data.get("resourceType"), str)


def is_fhir_input(data: Any) -> bool:
    """FHIR input of any shape :func:`to_case` takes: a resource or Bundle, a list of them, or a CDS Hooks
    prefetch object (a JSON object whose values are resources, Bundles or null, at least one not null)."""
    if is_fhir(data):
        return True
    if isinstance(data, list):
        return bool(data) and all(is_fhir(x) for x in data)
    values = list(data.values()) if isinstance(data, dict) else []
    return any(is_fhir(v) for v in values) and all(v is None or is_fhir(v) for v in values)


# ------------------------------------------------------------------ collecting resources


@dataclass
class _Entry:
    resource: dict[str, Any]
    full_url: str | None


def _flatten(data: Any, report: Report, full_url: str | None = None) -> Iterator[_Entry]:
    """Resources of a Bundle (nested ones too), a list of resources, or a CDS Hooks prefetch object."""
    if data is None:
        return
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item, report)
        return
    if not isinstance(data, dict):
        raise FhirInputError("expected a FHIR Bundle, a resource, a list of resources or a prefetch object")
    rtype = data.get("resourceType")
    if rtype is None:  # a CDS Hooks prefetch object: key -> resource, Bundle or null
        for value in data.values():
            yield from _flatten(value, report)
        return
    if rtype == "Bundle":
        entries = data.get("entry") or []
        if not isinstance(entries, list):
            raise FhirInputError("Bundle.entry must be a list")
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("resource"), dict):
                report.add("warning", "invalid_resource", "a Bundle entry without a resource")
                continue
            url = e.get("fullUrl")
            yield from _flatten(e["resource"], report, url if isinstance(url, str) else None)
        return
    yield _Entry(data, full_url)


# The elements of each resource type that the mapping reads (with the ones the model requires, and
# modifierExtension, which can change what a resource means). Only these are handed to fhir.resources:
# validating a whole Synthea Observation (narrative, category, encounter, meta, reference ranges...) costs
# several times what its status, code, date and value do, and nothing else of it reaches the case. An
# element outside these cannot make a resource invalid here, since the case never sees it.
_COMMON = frozenset({"resourceType", "id", "modifierExtension", "implicitRules"})
READS: dict[str, frozenset[str]] = {
    "Patient": _COMMON | {"gender", "birthDate", "deceasedBoolean", "deceasedDateTime"},
    "Observation": _COMMON
    | {"status", "code", "subject", "component", "effectiveDateTime", "effectiveInstant", "effectivePeriod"}
    | {"valueQuantity", "valueCodeableConcept", "dataAbsentReason"},
    "Condition": _COMMON
    | {"clinicalStatus", "verificationStatus", "code", "subject", "onsetDateTime", "recordedDate", "abatementDateTime", "abatementPeriod"},
    "MedicationRequest": _COMMON
    | {"status", "intent", "subject", "medicationCodeableConcept", "medicationReference", "authoredOn", "contained"},
    "MedicationStatement": _COMMON
    | {"status", "subject", "medicationCodeableConcept", "medicationReference", "effectiveDateTime", "effectivePeriod", "contained"},
    "AllergyIntolerance": _COMMON | {"clinicalStatus", "verificationStatus", "category", "code", "patient"},
    "Medication": _COMMON | {"code"},
}


def _cache_size() -> int:
    from carepath.settings import current

    return current().fhir_cache


@lru_cache(maxsize=_cache_size())
def _validated(key: bytes) -> Any:
    """The R4B model of a resource's JSON (the elements READS keeps, keys sorted), kept for the next time
    the same resource comes: an EHR resends a patient's record on every CDS Hooks call, and validation is
    most of what mapping costs. The models are only read. Invalid ones raise (and are not kept).
    ``CAREPATH_FHIR_CACHE`` sets how many are kept per process (default 4096; 0: none)."""
    from fhir.resources.R4B import get_fhir_model_class

    data = orjson.loads(key)
    return get_fhir_model_class(str(data.get("resourceType"))).model_validate(data)


def _parse(entry: _Entry, report: Report) -> Any | None:
    """The R4B model of a resource of a type the case uses (of the elements the mapping reads: READS);
    None (reported) when it is invalid."""
    from fhir.resources.R4B import get_fhir_model_class

    rtype = str(entry.resource.get("resourceType"))
    keep = READS.get(rtype)
    data = entry.resource if keep is None else {k: v for k, v in entry.resource.items() if k in keep}
    try:
        if _validated.cache_info().maxsize:
            try:
                key = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
            except TypeError:  # not plain JSON data (a caller's Decimal...): validated as it is
                return get_fhir_model_class(rtype).model_validate(data)
            return _validated(key)
        return get_fhir_model_class(rtype).model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        report.add("warning", "invalid_resource", f"{rtype} is not valid FHIR ({where}: {first['msg']}): left out", _ref(entry.resource))
        return None


def _ref(resource: Mapping[str, Any]) -> str:
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid}" if rid else str(resource.get("resourceType"))


# ------------------------------------------------------------------ small readers


def _day(value: Any) -> date | None:
    """A FHIR date/dateTime/instant as a calendar date (as written, in its own time zone); None if partial."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return None  # a partial date ("2020", "2020-05") places nothing on a day


def _number(v: Decimal | float | int) -> int | float:
    if isinstance(v, Decimal):
        exp = v.as_tuple().exponent
        return int(v) if isinstance(exp, int) and exp >= 0 else float(v)
    return v


def _codings(cc: Any) -> list[Any]:
    return list(cc.coding or []) if cc is not None else []


def _code_of(cc: Any, system: str | tuple[str, ...]) -> list[str]:
    systems = (system,) if isinstance(system, str) else system
    return [c.code for c in _codings(cc) if c.system in systems and c.code]


def _text(cc: Any) -> str:
    if cc is None:
        return ""
    for c in _codings(cc):
        if c.display:
            return str(c.display)
    return str(cc.text or "")


def _describe(cc: Any) -> str:
    parts = [f"{_short_system(c.system)} {c.code}" for c in _codings(cc) if c.code]
    label = _text(cc)
    return (", ".join(parts) or "no code") + (f" ({label})" if label else "")


def _short_system(system: str | None) -> str:
    return {LOINC: "LOINC", SNOMED: "SNOMED", RXNORM: "RxNorm", ATC: "ATC"}.get(system or "", system or "no system")


def _clean(text: str, limit: int) -> str:
    return _UNSAFE.sub("", text)[:limit].strip()


def _status(cc: Any) -> str | None:
    codes = [c.code for c in _codings(cc) if c.code]
    return codes[0] if codes else None


# ------------------------------------------------------------------ the mapping


class _Mapper:
    def __init__(self, vocab: Vocabulary, report: Report, tabs: Tables) -> None:
        self.vocab = vocab
        self.report = report
        self.t = tabs
        self.as_of = report.as_of
        self.observations: list[tuple[str, dict[str, Any]]] = []  # (time of day or "", observation)
        self.moment = ""  # the time of day of the observation being read, to order readings of one day
        self.conditions: list[str] = []
        self.meds: dict[str, dict[str, Any]] = {}
        self.allergies: list[str] = []
        self.pregnancy: list[tuple[date, bool | None, str]] = []
        self.medication_codes: dict[str, Any] = {}  # Medication resources by reference

    # -- observations

    def observation(self, o: Any, ref: str) -> None:
        rows = [(c, self.t.loinc[c]) for c in _code_of(o.code, LOINC) if c in self.t.loinc]
        comps = [(comp, [(c, self.t.loinc[c]) for c in _code_of(comp.code, LOINC) if c in self.t.loinc]) for comp in o.component or []]
        comps = [(comp, r) for comp, r in comps if r]
        if not rows and not comps:
            what = _describe(o.code)
            self.report.add("info", "unmapped_code", f"{what}: no dictionary observation reads it", ref)
            return
        if o.status not in OBS_STATUSES:
            self.report.add(
                "warning",
                "skipped_status",
                f"Observation {_describe(o.code)} has status {o.status!r} (only final, amended, corrected are read): left out",
                ref,
            )
            return
        when = _day(o.effectiveDateTime) or _day(o.effectiveInstant)
        if when is None and o.effectivePeriod is not None:
            when = _day(o.effectivePeriod.end) or _day(o.effectivePeriod.start)
        if when is None:
            self.report.add("warning", "no_date", f"Observation {_describe(o.code)} has no full effective date: left out", ref)
            return
        if when > self.as_of:
            self.report.add(
                "warning", "after_as_of", f"Observation {_describe(o.code)} of {when.isoformat()} is after as_of: left out", ref
            )
            return
        exact = (
            o.effectiveDateTime or o.effectiveInstant or (o.effectivePeriod.end or o.effectivePeriod.start if o.effectivePeriod else None)
        )
        self.moment = exact.isoformat() if isinstance(exact, datetime) else ""
        if rows:  # the first coding that the table knows
            code, row = rows[0]
            if row.target == PREGNANCY_STATUS:
                self.pregnancy_status(o.valueCodeableConcept, when, ref)
            elif row.target != PANEL:
                self.value(row.target, code, o.valueQuantity, o.dataAbsentReason, when, ref)
        for comp, crow in comps:
            code, row = crow[0]
            if row.target not in (PANEL, PREGNANCY_STATUS):
                self.value(row.target, code, comp.valueQuantity, comp.dataAbsentReason, when, ref)

    def value(self, name: str, loinc: str, q: Any, absent: Any, when: date, ref: str) -> None:
        od: ObsDef | None = self.vocab.observations.get(name)
        if od is None:  # a table row naming an observation this pathway set does not define
            self.report.add("info", "unmapped_code", f"LOINC {loinc}: {name} is not in the loaded dictionary", ref)
            return
        if q is None or q.value is None:
            why = f" ({_text(absent)})" if absent is not None else ""
            self.report.add("warning", "no_value", f"{name} (LOINC {loinc}) has no numeric value{why}: left out", ref)
            return
        if q.comparator:
            self.report.add(
                "warning", "censored_value", f"{name} (LOINC {loinc}) {q.comparator}{q.value} is not an exact value: left out", ref
            )
            return
        ucum = q.code if (q.system in (None, UCUM) and q.code) else None
        unit_row = self.t.ucum.get(ucum) if ucum else None
        if unit_row is None and q.unit:
            unit_row = self.t.ucum.get(str(q.unit))
        shown = ucum or q.unit or "no unit"
        if unit_row is None:
            self.report.add("warning", "unknown_unit", f"{name} (LOINC {loinc}) in {shown!r}: unit not in the UCUM table: left out", ref)
            return
        value = _number(q.value)
        if unit_row.factor != 1:
            value = float(value) * unit_row.factor
        unit = unit_row.unit
        canonical = od.to_canonical(float(value), unit)
        if canonical is None:
            accepted = ", ".join([od.unit, *od.conversions])
            self.report.add(
                "warning", "unknown_unit", f"{name} (LOINC {loinc}) in {shown!r}: not a unit {name} accepts ({accepted}): left out", ref
            )
            return
        if not od.lo <= canonical <= od.hi:
            self.report.add(
                "warning",
                "implausible_value",
                f"{name} {value:g} {unit} on {when.isoformat()} is outside the plausible range {od.lo:g}–{od.hi:g} {od.unit}: left out",
                ref,
            )
            return
        self.observations.append((self.moment, {"code": name, "value": value, "unit": unit, "date": when.isoformat()}))
        self.report.mapped["observations"] += 1

    def pregnancy_status(self, cc: Any, when: date, ref: str) -> None:
        for c in _codings(cc):
            key = (str(c.system), str(c.code))
            if key in self.t.pregnancy:
                self.pregnancy.append((when, self.t.pregnancy[key], ref))
                return
        self.report.add("warning", "unmapped_code", f"pregnancy status answer {_describe(cc)} is not in pregnancy.csv: left out", ref)

    # -- conditions

    def condition(self, c: Any, ref: str) -> None:
        what = _describe(c.code)
        verification = _status(c.verificationStatus)
        if verification in ("refuted", "entered-in-error"):
            self.report.add("info", "skipped_status", f"Condition {what} is {verification}: left out", ref)
            return
        clinical = _status(c.clinicalStatus)
        if clinical is None:
            self.report.add("warning", "no_status", f"Condition {what} has no clinicalStatus: taken as active", ref)
        elif clinical not in ("active", "recurrence", "relapse"):
            self.report.add("info", "skipped_status", f"Condition {what} is {clinical}: left out", ref)
            return
        abated = _day(c.abatementDateTime) or (_day(c.abatementPeriod.end) if c.abatementPeriod is not None else None)
        if abated is not None and abated <= self.as_of:
            self.report.add("info", "skipped_status", f"Condition {what} abated on {abated.isoformat()}: left out", ref)
            return
        onset = _day(c.onsetDateTime) or _day(c.recordedDate)
        if onset is not None and onset > self.as_of:
            self.report.add("warning", "after_as_of", f"Condition {what} starts {onset.isoformat()}, after as_of: left out", ref)
            return
        icd = [x for x in _code_of(c.code, ICD10) if ICD10_CODE.match(x)]
        if not icd:
            icd = [self.t.snomed_icd10[s].target for s in _code_of(c.code, SNOMED) if s in self.t.snomed_icd10]
        if not icd:
            self.report.add("warning", "unmapped_code", f"Condition {what}: no ICD-10 mapping: left out", ref)
            return
        if icd[0] not in self.conditions:
            self.conditions.append(icd[0])
        self.report.mapped["conditions"] += 1

    # -- medications

    def atc_of(self, cc: Any) -> str | None:
        direct = [a for a in _code_of(cc, ATC) if ATC_CODE.match(a)]
        if direct:
            return direct[0]
        for rx in _code_of(cc, RXNORM):
            row = self.t.rxnorm_atc.get(rx)
            if row is not None:
                return row.target
        return None

    def medication(self, m: Any, ref: str, kind: str) -> None:
        cc = m.medicationCodeableConcept
        if cc is None and m.medicationReference is not None:
            cc = self.medication_codes.get(str(m.medicationReference.reference))
            if cc is None:
                self.report.add(
                    "warning",
                    "unresolved_reference",
                    f"{kind} medicationReference {m.medicationReference.reference} is not in the input: left out",
                    ref,
                )
                return
        what = _describe(cc)
        if m.status != "active":
            level: Level = "warning" if m.status in (None, "unknown") else "info"
            self.report.add(level, "skipped_status", f"{kind} {what} has status {m.status!r} (only active is read): left out", ref)
            return
        if kind == "MedicationRequest":
            since = _day(m.authoredOn)
        else:
            since = _day(m.effectiveDateTime) or (_day(m.effectivePeriod.start) if m.effectivePeriod is not None else None)
        if since is not None and since > self.as_of:
            self.report.add("warning", "after_as_of", f"{kind} {what} starts {since.isoformat()}, after as_of: left out", ref)
            return
        atc = self.atc_of(cc)
        if atc is None:
            self.report.add("warning", "unmapped_code", f"{kind} {what}: no ATC mapping: left out", ref)
            return
        self.report.mapped["medications"] += 1
        known = self.meds.get(atc)
        if known is not None:  # another active order of the same drug: one medication, since the first
            old = known.get("since")
            if since is not None and (old is None or since.isoformat() < old):
                known["since"] = since.isoformat()
            self.report.add("info", "merged", f"several active orders of {atc} are one medication, since the earliest", ref)
            return
        med: dict[str, Any] = {"atc": atc}
        name = _clean(_text(cc), 256)
        if name:
            med["name"] = name
        if since is not None:
            med["since"] = since.isoformat()
        self.meds[atc] = med

    # -- allergies

    def allergy(self, a: Any, ref: str) -> None:
        what = _describe(a.code)
        verification = _status(a.verificationStatus)
        if verification in ("refuted", "entered-in-error"):
            self.report.add("info", "skipped_status", f"AllergyIntolerance {what} is {verification}: left out", ref)
            return
        clinical = _status(a.clinicalStatus)
        if clinical is not None and clinical != "active":
            self.report.add("info", "skipped_status", f"AllergyIntolerance {what} is {clinical}: left out", ref)
            return
        categories = [str(c) for c in a.category or []]
        atc = self.atc_of(a.code)
        if atc is None:
            if categories and "medication" not in categories:
                self.report.add(
                    "info", "not_a_drug", f"AllergyIntolerance {what} ({', '.join(categories)}): not a drug, no place in the case", ref
                )
            else:
                self.report.add("warning", "unmapped_code", f"AllergyIntolerance {what}: no ATC mapping: left out", ref)
            return
        if atc not in self.allergies:
            self.allergies.append(atc)
        self.report.mapped["allergies"] += 1


def _patient_refs(entry: _Entry) -> set[str]:
    rid = entry.resource.get("id")
    refs = {f"Patient/{rid}"} if rid else set()
    if entry.full_url:
        refs.add(entry.full_url)
    return refs


def _subject(resource: Any) -> str | None:
    for attr in ("subject", "patient"):
        ref = getattr(resource, attr, None)
        if ref is not None and ref.reference:
            return str(ref.reference)
    return None


def _same_patient(ref: str | None, refs: set[str]) -> bool:
    if ref is None or not refs:
        return True
    return ref in refs or any(r.startswith("Patient/") and ref.endswith("/" + r) for r in refs)


def _age(birth: date, as_of: date) -> int:
    return as_of.year - birth.year - ((as_of.month, as_of.day) < (birth.month, birth.day))


def to_case(
    data: Any,
    *,
    vocab: Vocabulary,
    as_of: date | None = None,
    setting: str | None = None,
    patient_id: str | None = None,
    today: date | None = None,
) -> Mapped:
    """Map FHIR input (a Bundle, a list of resources or a CDS Hooks prefetch object) to a case and its report.

    ``vocab`` is the observation dictionary of the pathways the case is for (``Engine.vocab``).
    ``as_of`` defaults to ``today`` (the clock's date), ``setting`` to :func:`default_setting`.
    Raises FhirInputError when the input is not FHIR or does not hold exactly one patient.
    """
    if as_of is None:
        as_of, as_of_source = (today or date.today()), "default: today"
    else:
        as_of_source = "given"
    if setting is None:
        setting, setting_source = default_setting()
    elif setting not in SETTINGS:
        raise FhirInputError(f"setting must be community or hospital, not {setting!r}")
    else:
        setting_source = "given"
    report = Report(as_of, as_of_source, setting, setting_source)
    entries = list(_flatten(data, report))
    ignored: Counter[str] = Counter()
    patients = [e for e in entries if e.resource.get("resourceType") == "Patient"]
    if len(patients) > 1:
        ids = sorted({_ref(p.resource) for p in patients})
        if len(ids) > 1:
            raise FhirInputError(f"the input holds {len(ids)} patients ({', '.join(ids[:3])}...): one case is one patient")
    tabs = tables()
    m = _Mapper(vocab, report, tabs)
    case: dict[str, Any] = {"patient_id": "", "as_of": as_of.isoformat(), "setting": setting}
    refs: set[str] = set()
    if patients:
        refs = set().union(*(_patient_refs(p) for p in patients))
        p = _parse(patients[0], report)
        if p is not None:
            case["patient_id"] = _clean(str(p.id or ""), 128) or (_clean(patients[0].full_url or "", 128).removeprefix("urn:uuid:"))
            if p.gender in ("female", "male", "other", "unknown"):
                case["sex"] = p.gender
            birth = _day(p.birthDate)
            if birth is None:
                report.add(
                    "warning",
                    "no_value",
                    f"Patient birthDate {p.birthDate or 'missing'} is not a full date: age unknown",
                    _ref(patients[0].resource),
                )
            elif birth > as_of:
                report.add(
                    "warning", "after_as_of", f"Patient born {birth.isoformat()}, after as_of: age unknown", _ref(patients[0].resource)
                )
            elif _age(birth, as_of) <= 130:
                case["age"] = _age(birth, as_of)
            else:
                report.add(
                    "warning",
                    "implausible_value",
                    f"Patient born {birth.isoformat()}: over 130 years old at as_of, age unknown",
                    _ref(patients[0].resource),
                )
            if p.deceasedBoolean or p.deceasedDateTime is not None:
                report.add("warning", "deceased", "the Patient is recorded as deceased", _ref(patients[0].resource))
    else:
        report.add("warning", "no_patient", "no Patient resource: sex and age unknown")
    if patient_id is not None:
        case["patient_id"] = patient_id
    if not case["patient_id"]:
        subjects = {s for e in entries if (s := _subject_raw(e.resource))}
        case["patient_id"] = _clean(subjects.pop().rsplit("/", 1)[-1], 128) if len(subjects) == 1 else "unknown"
    # Medication resources first, so that a medicationReference finds its code
    for e in entries:
        if e.resource.get("resourceType") == "Medication":
            med = _parse(e, report)
            if med is not None and med.code is not None:
                for key in (e.full_url, f"Medication/{med.id}" if med.id else None, f"#{med.id}" if med.id else None):
                    if key:
                        m.medication_codes[key] = med.code
    for e in entries:
        rtype = str(e.resource.get("resourceType"))
        if rtype in ("Patient", "Medication"):
            continue
        if rtype not in USED_TYPES:
            ignored[rtype] += 1
            continue
        if rtype == "Observation" and not _reads_loinc(e.resource, tabs) and _same_patient(_subject_raw(e.resource), refs):
            # no table row reads any of its codes: left out before its (costly) validation, as parsed it would be
            report.add(
                "info", "unmapped_code", f"{_describe_raw(e.resource.get('code'))}: no dictionary observation reads it", _ref(e.resource)
            )
            continue
        res = _parse(e, report)
        if res is None:
            continue
        ref = _ref(e.resource)
        if not _same_patient(_subject(res), refs):
            report.add("warning", "other_patient", f"{rtype} refers to {_subject(res)}, not this patient: left out", ref)
            continue
        for contained in getattr(res, "contained", None) or []:
            if contained.get_resource_type() == "Medication" and contained.id and contained.code is not None:
                m.medication_codes[f"#{contained.id}"] = contained.code
        if rtype == "Observation":
            m.observation(res, ref)
        elif rtype == "Condition":
            m.condition(res, ref)
        elif rtype in ("MedicationRequest", "MedicationStatement"):
            m.medication(res, ref, rtype)
        elif rtype == "AllergyIntolerance":
            m.allergy(res, ref)
    for rtype, n in sorted(ignored.items()):
        report.add("info", "ignored_resource_type", f"{n} {rtype} resource{'s' if n != 1 else ''}: no place in the case")
    pregnant: bool | None = None
    if m.pregnancy:
        when, value, ref = max(m.pregnancy, key=lambda x: x[0])
        if (as_of - when).days > PREGNANCY_MAX_DAYS:
            report.add(
                "warning",
                "stale",
                f"the latest pregnancy status ({when.isoformat()}) is over {PREGNANCY_MAX_DAYS} days old: pregnant unknown",
                ref,
            )
        else:
            pregnant = value
            report.mapped["pregnancy_status"] += 1
    else:
        report.add("info", "no_pregnancy_status", "no pregnancy-status observation (LOINC 82810-3 / 11449-6): pregnant unknown")
    case["pregnant"] = pregnant
    case["conditions"] = m.conditions
    # oldest first; readings of one day in time order (by the time as written), as the engine takes the last as latest
    case["observations"] = [o for _, o in sorted(m.observations, key=lambda x: (x[1]["date"], x[0], x[1]["code"]))]
    case["medications"] = list(m.meds.values())
    case["allergies"] = m.allergies
    return Mapped(case, report)


def _raw_codings(cc: Any) -> list[dict[str, Any]] | None:
    """A CodeableConcept's codings as JSON; None when it is not shaped as one (the model then decides)."""
    if cc is None:
        return []
    if not isinstance(cc, dict) or not isinstance(cc.get("coding", []), list):
        return None
    codings = cc.get("coding", [])
    return codings if all(isinstance(c, dict) for c in codings) else None


def _reads_loinc(resource: Mapping[str, Any], tabs: Tables) -> bool:
    """Whether an Observation (as JSON) has a LOINC code, or a component's, that a table row reads; True when
    its shape is unusual, so that the model validates it."""
    concepts = [resource.get("code")]
    comps = resource.get("component", [])
    if not isinstance(comps, list):
        return True
    concepts += [c.get("code") if isinstance(c, dict) else None for c in comps]
    for cc in concepts:
        codings = _raw_codings(cc)
        if codings is None:
            return True
        if any(c.get("system") == LOINC and c.get("code") in tabs.loinc for c in codings):
            return True
    return False


def _describe_raw(cc: Any) -> str:
    """_describe for a CodeableConcept as JSON (an Observation no table reads, never validated)."""
    codings = _raw_codings(cc) or []
    parts = [f"{_short_system(c.get('system'))} {c['code']}" for c in codings if c.get("code")]
    label = next((str(c["display"]) for c in codings if c.get("display")), "") or (
        str(cc.get("text") or "") if isinstance(cc, dict) else ""
    )
    return (", ".join(parts) or "no code") + (f" ({label})" if label else "")


def _subject_raw(resource: Mapping[str, Any]) -> str | None:
    for attr in ("subject", "patient"):
        ref = resource.get(attr)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


def codes_in(data: Any, system: str, types: tuple[str, ...]) -> Counter[str]:
    """Every code of ``system`` in the given resource types' main code (for coverage checks and tests)."""
    report = Report(date.today(), "", "community", "")
    out: Counter[str] = Counter()
    for e in _flatten(data, report):
        r = e.resource
        if r.get("resourceType") not in types:
            continue
        cc = r.get("code") or r.get("medicationCodeableConcept") or {}
        for c in cc.get("coding") or []:
            if c.get("system") == system and c.get("code"):
                out[str(c["code"])] += 1
    return out


MAX_FHIR_BYTES = 64 << 20  # a patient's whole record as a Bundle: Synthea's run to several MiB


def read_fhir_json(raw: bytes) -> Any:
    """Input too large for a case (over 1 MiB): parsed when it is FHIR, else refused as an oversized case."""
    import orjson

    from ..case import MAX_CASE_BYTES
    from ..errors import CaseError, FieldViolation

    too_large = CaseError([FieldViolation("", f"case is larger than {MAX_CASE_BYTES} bytes (1 MiB), the limit")])
    if len(raw.rstrip(b"\r\n")) > MAX_FHIR_BYTES:
        raise CaseError([FieldViolation("", f"input is larger than {MAX_FHIR_BYTES} bytes (64 MiB), the limit for FHIR input")])
    if b'"resourceType"' not in raw:  # not FHIR: refused as a case, without parsing it
        raise too_large
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CaseError([FieldViolation("", f"FHIR input is not valid JSON: {exc}")]) from None
    if not is_fhir_input(data):
        raise too_large
    return data
