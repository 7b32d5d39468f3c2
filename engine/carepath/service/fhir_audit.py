"""The audit records as FHIR R4 AuditEvent resources (`carepath audit export --format fhir|fhir-ndjson`).

One AuditEvent per record: ``type`` rest (a RESTful/RPC operation) with the carepath action as its
``subtype``; ``action`` E (evaluate, validate), R (pathway reads), C (feedback) or D (a prune);
``recorded`` the record's time; ``outcome`` 0 / 4 / 8 / 12 from the gRPC status (``outcomeDesc`` the
status name); one ``agent`` (the caller: the token's subject as an identifier in the issuer's system,
the client certificate subject as ``altId``, the peer address as ``network``); ``source`` carepath;
``entity``: the patient (its id, or the keyed hash recorded for it), each pathway used (id|version,
with its sha256), the request and decision ids, and the audit record itself (seq, with the rules
fired, the response's sha256 and the chain's prev_hash and hash as details), so the export carries
what `carepath audit verify` checks. The record holds no clinical values, and neither does this.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

SYSTEM = "urn:carepath"  # carepath's own identifier systems are urn:carepath:<what>
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ACTIONS = {
    "Evaluate": "E",
    "EvaluateStream": "E",
    "ValidatePathway": "E",
    "ListPathways": "R",
    "GetPathway": "R",
    "RecordFeedback": "C",
    "CdsHooks": "E",
    "CdsFeedback": "C",
    "AuditPrune": "D",
}
MINOR = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "OUT_OF_RANGE",
}
SERIOUS = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED"}


def outcome_code(outcome: str) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (the caller's), 8 serious (not served), 12 major (a fault)."""
    if outcome.startswith("OK"):
        return "0"
    if outcome in MINOR:
        return "4"
    if outcome in SERIOUS:
        return "8"
    return "12"


def _network(peer: str) -> dict[str, str] | None:
    """The caller's address as AuditEvent.agent.network: an IP address (type 2) without its port, as
    gRPC (ipv4:10.0.0.5:4711, ipv6:[::1]:4711, %-encoded brackets too) or the CDS Hooks listener
    (10.0.0.5:4711) names it; a Unix socket as a URI (type 5)."""
    if not peer:
        return None
    if peer.startswith("unix:"):
        return {"address": peer, "type": "5"}
    text = unquote(peer.removeprefix("ipv4:").removeprefix("ipv6:"))
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::\d+)?", text)
    if bracketed:
        host = bracketed.group(1)
    elif text.count(":") == 1:
        host = text.rsplit(":", 1)[0]
    else:
        host = text  # an IPv6 address without brackets (no port), or an IPv4 address without one
    try:
        return {"address": str(ipaddress.ip_address(host)), "type": "2"}  # 2: IP address
    except ValueError:
        return {"address": host, "type": "1"}  # 1: machine name


def _ident(what: str, value: str) -> dict[str, Any]:
    return {"identifier": {"system": f"{SYSTEM}:{what}", "value": value}}


def audit_event(rec: dict[str, Any]) -> dict[str, Any]:
    """One exported record (as `carepath audit export` gives it: pathways and rules decoded) as an AuditEvent."""
    action = str(rec["action"])
    who: dict[str, Any]
    if rec.get("subject"):
        who = {"identifier": {"system": rec.get("issuer") or f"{SYSTEM}:subject", "value": rec["subject"]}}
    elif rec.get("certificate"):
        who = {"identifier": {"system": f"{SYSTEM}:client-certificate", "value": rec["certificate"]}}
    else:
        who = {"display": "anonymous caller"}
    agent: dict[str, Any] = {"who": who, "requestor": True}
    if rec.get("certificate"):
        agent["altId"] = rec["certificate"]
    network = _network(str(rec.get("peer") or ""))
    if network:
        agent["network"] = network
    entities: list[dict[str, Any]] = []
    if rec.get("patient"):
        entities.append(
            {
                "what": _ident("patient-id" if not str(rec["patient"]).startswith("hmac-") else "patient-pseudonym", rec["patient"]),
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    for pid, version, sha in rec.get("pathways") or []:
        entities.append(
            {
                "what": _ident("pathway", f"{pid}|{version}"),
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "name": pid,
                "detail": [{"type": "sha256", "valueString": sha}],
            }
        )
    for what in ("request_id", "decision_id"):
        if rec.get(what):
            entities.append(
                {
                    "what": _ident(what.replace("_", "-"), rec[what]),
                    "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                }
            )
    detail = [{"type": "rules", "valueString": json.dumps(rec.get("rules") or [], separators=(",", ":"))}]
    for key in ("recommendations", "response_sha256", "prev_hash", "hash"):
        if rec.get(key):
            detail.append({"type": key, "valueString": str(rec[key])})
    entities.append(
        {
            "what": _ident("audit-record", str(rec["seq"])),
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"},
            "detail": detail,
        }
    )
    return {
        "resourceType": "AuditEvent",
        "id": f"carepath-audit-{rec['seq']}",
        "type": {"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": f"{SYSTEM}:action", "code": action}],
        "action": ACTIONS.get(action, "E"),
        "recorded": _instant(str(rec["ts"])),
        "outcome": outcome_code(str(rec["outcome"])),
        "outcomeDesc": str(rec["outcome"]),
        "agent": [agent],
        "source": {"observer": {"display": "carepath"}, "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
        "entity": entities,
    }


def _instant(ts: str) -> str:
    """The record's time (2026-12-07T05:55:00.000Z) as a FHIR instant (already one; checked)."""
    if not ts.endswith("Z") or "T" not in ts:
        raise ValueError(f"not a UTC time: {ts!r}")
    return ts


def bundle(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A FHIR R4 Bundle (type collection) of the records' AuditEvents."""
    entries = []
    for rec in records:
        ev = audit_event(rec)
        entries.append({"fullUrl": f"urn:uuid:{uuid.UUID(hex=str(rec['hash'])[:32])}", "resource": ev})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
