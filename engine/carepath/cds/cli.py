"""``carepath cds-request``: a CDS Hooks request with the full prefetch, built from a FHIR Bundle (to try the
service with a Synthea bundle, or any other export of one patient's record)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import date
from typing import Any

from ..cli import command, dumps, iso_date
from ..errors import CarepathError
from .cards import EXT_AS_OF, HOOKS

# carepath's prefetch keys (cards.prefetch_templates) by the resource type each one holds
PREFETCH_KEYS = {
    "Condition": "conditions",
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "AllergyIntolerance": "allergies",
    "Observation": "observations",
}


def prefetch_from_bundle(bundle: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The patient's id and a prefetch object for carepath's templates: the Patient and one searchset Bundle per
    key (null when the record holds none: no data). References to the patient's ``urn:uuid:`` (a transaction
    Bundle's fullUrl, as Synthea writes) become ``Patient/<id>``, as a FHIR server answers them."""
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    patients = [e for e in entries if e["resource"].get("resourceType") == "Patient"]
    if len(patients) != 1 or not isinstance(patients[0]["resource"].get("id"), str):
        raise CarepathError(f"expected a Bundle with one Patient that has an id, found {len(patients)} Patient resource(s)")
    pid = patients[0]["resource"]["id"]
    aliases = {f"urn:uuid:{pid}"} | ({patients[0]["fullUrl"]} if isinstance(patients[0].get("fullUrl"), str) else set())
    text = json.dumps([e["resource"] for e in entries])
    for alias in aliases:
        text = text.replace(json.dumps(alias), json.dumps(f"Patient/{pid}"))
    prefetch: dict[str, Any] = {"patient": None, **dict.fromkeys(PREFETCH_KEYS.values())}
    for r in json.loads(text):
        t = r.get("resourceType")
        if t == "Patient":
            prefetch["patient"] = r
        elif t in PREFETCH_KEYS:
            key = PREFETCH_KEYS[t]
            if prefetch[key] is None:
                prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
            prefetch[key]["entry"].append({"resource": r})
    return pid, prefetch


def hook_request(
    bundle: dict[str, Any], hook: str = "patient-view", as_of: date | None = None, user: str = "Practitioner/example"
) -> dict[str, Any]:
    pid, prefetch = prefetch_from_bundle(bundle)
    context: dict[str, Any] = {"userId": user, "patientId": pid}
    if hook != "patient-view":
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": []}
    if hook == "order-select":
        context["selections"] = []
    req: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}
    if as_of is not None:
        req["extension"] = {EXT_AS_OF: as_of.isoformat()}
    return req


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hook", choices=list(HOOKS), default="patient-view", help="the hook (default patient-view)")
    p.add_argument("--as-of", type=iso_date, metavar="DATE", help="as_of for the decision (the request's org.carepath.as-of extension)")
    p.add_argument("bundle", metavar="BUNDLE_JSON", help="a FHIR Bundle of one patient's record, or - for stdin")


@command("cds-request", _setup)
def _cds_request(args: argparse.Namespace) -> int:
    """Print a CDS Hooks request (full prefetch) built from a FHIR Bundle, to send to carepath serve --cds-hooks."""
    if args.bundle == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            with open(args.bundle, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise CarepathError(f"cannot read {args.bundle}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CarepathError(f"{args.bundle}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise CarepathError(f"{args.bundle}: not a FHIR Bundle")
    sys.stdout.write(dumps(hook_request(data, args.hook, args.as_of)))
    return 0
