"""A case rendered as a FHIR R4 Bundle: the mapping run backwards, for tests and for integrators' fixtures.

Conditions are coded in SNOMED CT where ``snomed_icd10.csv`` has a row for exactly that ICD-10 code
(else ICD-10 itself), drugs and drug allergies in RxNorm where ``rxnorm_atc.csv`` has an ingredient
row for exactly that ATC code (else ATC), observations in LOINC with UCUM units, pregnancy as a
pregnancy-status observation. What FHIR input does not carry into a case (findings, the SMI risk
grade, observations with no LOINC such as pathway-local examination results, doses) is returned
beside the bundle as ``rest``, so that a test can put it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from .mapper import ATC, ICD10, LOINC, RXNORM, SNOMED, UCUM
from .tables import PANEL, PREGNANCY_STATUS, Tables, tables

PREGNANCY_ANSWERS = {True: ("77386006", "Pregnant"), False: ("60001007", "Not pregnant")}


@dataclass(frozen=True)
class Rendered:
    bundle: dict[str, Any]
    rest: dict[str, Any]  # case fields FHIR input does not carry (findings, smi_risk_grade, observations without LOINC)


def _reverse(t: Tables) -> tuple[dict[str, str], dict[str, str], dict[str, str], dict[str, str], dict[str, str]]:
    loinc: dict[str, str] = {}
    for code, row in t.loinc.items():
        if row.target not in (PANEL, PREGNANCY_STATUS):
            loinc.setdefault(row.target, code)
    ucum: dict[str, str] = {}
    for code, u in t.ucum.items():
        if u.factor == 1 and u.source.startswith("UCUM"):
            ucum.setdefault(u.unit, code)
    icd = {row.target: code for code, row in reversed(t.snomed_icd10.items())}  # the first row wins
    rx = {row.target: code for code, row in reversed(t.rxnorm_atc.items()) if row.tty == "IN"}
    displays = {code: row.display for code, row in t.snomed_icd10.items()}
    return loinc, ucum, icd, rx, displays


def _cc(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _birth_date(as_of: date, age: int) -> str:
    try:
        return date(as_of.year - age, as_of.month, as_of.day).isoformat()
    except ValueError:  # 29 February as_of, a birth year without one
        return date(as_of.year - age, 2, 28).isoformat()


def case_to_bundle(case: Mapping[str, Any]) -> Rendered:
    """Render a valid case (dates as ISO strings) as a FHIR R4 collection Bundle."""
    t = tables()
    loinc, ucum, icd_to_sct, atc_to_rx, sct_display = _reverse(t)
    pid = str(case["patient_id"])
    as_of = date.fromisoformat(str(case["as_of"]))
    subject = {"reference": f"Patient/{pid}"}
    resources: list[dict[str, Any]] = []
    patient: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if case.get("sex") is not None:
        patient["gender"] = case["sex"]
    if case.get("age") is not None:
        patient["birthDate"] = _birth_date(as_of, int(case["age"]))
    resources.append(patient)
    rest: dict[str, Any] = {"findings": list(case.get("findings") or []), "smi_risk_grade": case.get("smi_risk_grade")}
    leftover: list[dict[str, Any]] = []
    n = 0

    def rid(kind: str) -> str:
        nonlocal n
        n += 1
        return f"{kind.lower()}-{n}"

    if case.get("pregnant") is not None:
        answer, display = PREGNANCY_ANSWERS[bool(case["pregnant"])]
        resources.append(
            {
                "resourceType": "Observation",
                "id": rid("Observation"),
                "status": "final",
                "code": _cc(LOINC, "82810-3", "Pregnancy status"),
                "subject": subject,
                "effectiveDateTime": as_of.isoformat(),
                "valueCodeableConcept": _cc(SNOMED, answer, display),
            }
        )
    for icd in case.get("conditions") or []:
        sct = icd_to_sct.get(icd)
        code = _cc(SNOMED, sct, sct_display[sct]) if sct else _cc(ICD10[0], icd)
        resources.append(
            {
                "resourceType": "Condition",
                "id": rid("Condition"),
                "clinicalStatus": _cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"),
                "verificationStatus": _cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed"),
                "code": code,
                "subject": subject,
            }
        )
    for o in case.get("observations") or []:
        name = str(o["code"])
        lc = name if name in t.loinc else loinc.get(name)
        unit = ucum.get(str(o["unit"])) or (str(o["unit"]) if str(o["unit"]) in t.ucum else None)
        if lc is None or unit is None:
            leftover.append(dict(o))
            continue
        resources.append(
            {
                "resourceType": "Observation",
                "id": rid("Observation"),
                "status": "final",
                "code": _cc(LOINC, lc),
                "subject": subject,
                "effectiveDateTime": str(o["date"]),
                "valueQuantity": {"value": o["value"], "unit": str(o["unit"]), "system": UCUM, "code": unit},
            }
        )
    for m in case.get("medications") or []:
        atc = str(m["atc"])
        rx = atc_to_rx.get(atc)
        cc = _cc(RXNORM, rx) if rx else _cc(ATC, atc)
        if m.get("name"):
            cc["text"] = m["name"]
        req: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": rid("MedicationRequest"),
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": cc,
            "subject": subject,
        }
        if m.get("since"):
            req["authoredOn"] = str(m["since"])
        resources.append(req)
    for a in case.get("allergies") or []:
        rx = atc_to_rx.get(str(a))
        resources.append(
            {
                "resourceType": "AllergyIntolerance",
                "id": rid("AllergyIntolerance"),
                "clinicalStatus": _cc("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active"),
                "category": ["medication"],
                "code": _cc(RXNORM, rx) if rx else _cc(ATC, str(a)),
                "patient": subject,
            }
        )
    if leftover:
        rest["observations"] = leftover
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:carepath:{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }
    return Rendered(bundle, rest)
