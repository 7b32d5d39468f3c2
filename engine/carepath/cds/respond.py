"""What a worker does for a CDS Hooks call: prefetch → case (carepath.fhir) → decision (the engine) →
cards (carepath.cds.cards). Runs in the service's worker processes, beside gRPC's Evaluate, on the
same compiled engine; the HTTP front end only validates, fetches what prefetch lacks, and routes."""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson

from carepath.cds import cards
from carepath.evaluate import Engine
from carepath.fhir import tables, to_case
from carepath.fhir.tables import PANEL, PREGNANCY_STATUS


def observation_loincs(engine: Engine) -> list[str]:
    """The LOINC codes of the observations the engine's pathways read (through loinc.csv), the BP panels
    when a pathway reads sbp or dbp, and the pregnancy-status codes (pregnancy is read by the safety rules)."""
    read = engine.features.observations
    out = []
    for code, row in tables().loinc.items():
        if row.target in read or row.target == PREGNANCY_STATUS or (row.target == PANEL and read & {"sbp", "dbp"}):
            out.append(code)
    return sorted(out)


def discovery(engine: Engine) -> dict[str, Any]:
    info = [{"id": p.id, "version": p.version} for p in engine.pathways]
    return cards.discovery(info, observation_loincs(engine))


def respond(engine: Engine, job: dict[str, Any]) -> dict[str, Any]:
    """The response to one validated hook call. ``job``: service_id, hook, patient_id (context.patientId),
    prefetch (key → resource / Bundle / None, or that object as JSON bytes), draft_orders (a Bundle or None), as_of (ISO date), setting.
    Raises FhirInputError or CaseError for data that cannot make a case."""
    prefetch = job["prefetch"]
    if isinstance(prefetch, bytes):
        prefetch = orjson.loads(prefetch)
    mapped = to_case(
        prefetch, vocab=engine.vocab, as_of=date.fromisoformat(job["as_of"]), setting=job["setting"], patient_id=job["patient_id"]
    )
    decision = engine.evaluate(mapped.case)
    drafts: list[cards.DraftOrder] = []
    others: list[str] = []
    if job.get("draft_orders") is not None:
        rx = {k: r.target for k, r in tables().rxnorm_atc.items()}
        drafts, others = cards.draft_orders(job["draft_orders"], rx)
    ctx = cards.CardContext(
        service_id=job["service_id"],
        patient_id=mapped.case["patient_id"],
        as_of=job["as_of"],
        setting=job["setting"],
        fhir_patient=job["patient_id"],
    )
    out = cards.cards_for(
        decision, ctx, warnings=mapped.report.warnings(), drafts=drafts, other_drafts=others, allergies=mapped.case.get("allergies", [])
    )
    return out


_WARM = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"resource": {"resourceType": "Patient", "id": "warm", "gender": "female", "birthDate": "1970-01-01"}},
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "subject": {"reference": "Patient/warm"},
                "effectiveDateTime": "2020-01-01",
                "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
            }
        },
        {
            "resource": {
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                "subject": {"reference": "Patient/warm"},
            }
        },
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C08CA01"}]},
                "subject": {"reference": "Patient/warm"},
            }
        },
        {
            "resource": {
                "resourceType": "MedicationStatement",
                "status": "active",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C08CA01"}]},
                "subject": {"reference": "Patient/warm"},
            }
        },
        {
            "resource": {
                "resourceType": "AllergyIntolerance",
                "patient": {"reference": "Patient/warm"},
                "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C09AA"}]},
            }
        },
    ],
}


def warm(engine: Engine) -> None:
    """Map and evaluate a small record once, so that the first CDS Hooks call does not pay for loading
    fhir.resources' models and building their validators (~150 ms)."""
    respond(
        engine,
        {
            "service_id": "warm",
            "hook": "patient-view",
            "patient_id": "warm",
            "prefetch": {"all": _WARM},
            "draft_orders": None,
            "as_of": "2021-01-01",
            "setting": "community",
        },
    )
