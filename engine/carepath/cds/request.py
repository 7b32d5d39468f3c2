"""CDS Hooks 2.0 requests and feedback: validated into plain dataclasses, or a RequestError naming the field.

No I/O here. The HTTP layer turns a RequestError into 400 with a FHIR OperationOutcome whose issue's
``expression`` is the field (e.g. ``context.patientId``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from carepath.cds.cards import EXT_AS_OF, override_codes
from carepath.service.feedback import CONTROL

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # a FHIR resource id
_UUIDISH = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_PREFETCH_KEYS = 32
OUTCOMES = ("accepted", "overridden")


class RequestError(ValueError):
    """A malformed request: the field path and what is wrong with it."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


@dataclass(frozen=True)
class FhirAuth:
    access_token: str
    token_type: str
    scope: str


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    patient_id: str
    context: dict[str, Any]
    prefetch: dict[str, Any]  # key -> resource / Bundle / None (null: no data); a key absent: not fetched
    fhir_server: str | None
    fhir_auth: FhirAuth | None
    as_of: date | None  # the request's extension org.carepath.as-of, if any
    draft_orders: dict[str, Any] | None


def _obj(data: Mapping[str, Any], key: str, where: str, required: bool = True) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        if required:
            raise RequestError(f"{where}{key}", "required field is missing" if key not in data else "must not be null")
        return None
    if not isinstance(value, dict):
        raise RequestError(f"{where}{key}", f"must be a JSON object, not {type(value).__name__}")
    return value


def _str(data: Mapping[str, Any], key: str, where: str, required: bool = True, limit: int = 2048) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise RequestError(f"{where}{key}", "required field is missing" if key not in data else "must not be null")
        return None
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{where}{key}", "must be a non-empty string")
    if len(value) > limit:
        raise RequestError(f"{where}{key}", f"must be at most {limit} characters")
    return value


def parse_hook_request(data: Any, service_hook: str) -> HookRequest:
    """A CDS Hooks request for a service of hook ``service_hook``, checked field by field."""
    if not isinstance(data, dict):
        raise RequestError("$", "the request body must be a JSON object")
    hook = _str(data, "hook", "")
    assert hook is not None
    if hook != service_hook:
        raise RequestError("hook", f"this service answers the {service_hook} hook, not {hook!r}")
    instance = _str(data, "hookInstance", "", limit=128)
    assert instance is not None
    if not _UUIDISH.match(instance):
        raise RequestError("hookInstance", "must be an identifier (a UUID)")
    context = _obj(data, "context", "")
    assert context is not None
    pid = _str(context, "patientId", "context.")
    assert pid is not None
    if not _ID.match(pid):
        raise RequestError("context.patientId", "must be a FHIR id (letters, digits, '-' and '.', at most 64)")
    _str(context, "userId", "context.", limit=256)
    draft: dict[str, Any] | None = None
    if hook in ("order-select", "order-sign"):
        draft = _obj(context, "draftOrders", "context.")
        assert draft is not None
        if draft.get("resourceType") != "Bundle":
            raise RequestError("context.draftOrders.resourceType", "must be Bundle")
        entries = draft.get("entry", [])
        if not isinstance(entries, list):
            raise RequestError("context.draftOrders.entry", "must be a list")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("resource"), dict):
                raise RequestError(f"context.draftOrders.entry[{i}].resource", "must be a FHIR resource (a JSON object)")
    if hook == "order-select":
        sel = context.get("selections")
        if not isinstance(sel, list) or not all(isinstance(s, str) and s for s in sel):
            raise RequestError("context.selections", "must be a list of resource references")
    server = _str(data, "fhirServer", "", required=False)
    if server is not None and not re.match(r"^https?://", server):
        raise RequestError("fhirServer", "must be an http(s) URL")
    auth: FhirAuth | None = None
    raw_auth = _obj(data, "fhirAuthorization", "", required=False)
    if raw_auth is not None:
        if server is None:
            raise RequestError("fhirServer", "required when fhirAuthorization is given")
        token = _str(raw_auth, "access_token", "fhirAuthorization.", limit=8192)
        ttype = _str(raw_auth, "token_type", "fhirAuthorization.")
        if ttype != "Bearer":
            raise RequestError("fhirAuthorization.token_type", "must be Bearer")
        expires = raw_auth.get("expires_in")
        if not isinstance(expires, int) or isinstance(expires, bool) or expires < 0:
            raise RequestError("fhirAuthorization.expires_in", "must be a whole number of seconds")
        scope = _str(raw_auth, "scope", "fhirAuthorization.")
        _str(raw_auth, "subject", "fhirAuthorization.")
        assert token is not None and scope is not None
        auth = FhirAuth(token, ttype, scope)
    prefetch_raw = data.get("prefetch", {})
    if prefetch_raw is None:
        prefetch_raw = {}
    if not isinstance(prefetch_raw, dict):
        raise RequestError("prefetch", "must be a JSON object")
    if len(prefetch_raw) > MAX_PREFETCH_KEYS:
        raise RequestError("prefetch", f"at most {MAX_PREFETCH_KEYS} keys")
    for k, v in prefetch_raw.items():
        if v is not None and not (isinstance(v, dict) and isinstance(v.get("resourceType"), str)):
            raise RequestError(f"prefetch.{k}", "must be a FHIR resource or Bundle, or null (no data)")
        if isinstance(v, dict) and v.get("resourceType") == "Patient" and v.get("id") not in (None, pid):
            raise RequestError(f"prefetch.{k}.id", f"the prefetched Patient is {str(v.get('id'))[:64]!r}, not context.patientId {pid!r}")
    as_of: date | None = None
    ext = data.get("extension")
    if ext is not None:
        if not isinstance(ext, dict):
            raise RequestError("extension", "must be a JSON object")
        raw = ext.get(EXT_AS_OF)
        if raw is not None:
            try:
                as_of = date.fromisoformat(raw) if isinstance(raw, str) and len(raw) == 10 else None
            except ValueError:
                as_of = None
            if as_of is None:
                raise RequestError(f"extension.{EXT_AS_OF}", "must be a date, YYYY-MM-DD")
    return HookRequest(hook, instance, pid, context, dict(prefetch_raw), server, auth, as_of, draft)


@dataclass(frozen=True)
class Feedback:
    card: str
    outcome: str
    item: dict[str, Any]  # the feedback item as sent (stored)


def parse_feedback(data: Any) -> list[Feedback]:
    """A CDS Hooks 2.0 feedback request: ``{"feedback": [{card, outcome, outcomeTimestamp, ...}]}``."""
    if not isinstance(data, dict):
        raise RequestError("$", "the request body must be a JSON object")
    items = data.get("feedback")
    if not isinstance(items, list) or not items:
        raise RequestError("feedback", "must be a non-empty list")
    if len(items) > 100:
        raise RequestError("feedback", "at most 100 items")
    out = []
    reasons = override_codes()
    for i, item in enumerate(items):
        where = f"feedback[{i}]."
        if not isinstance(item, dict):
            raise RequestError(f"feedback[{i}]", "must be a JSON object")
        card = _str(item, "card", where, limit=128)
        outcome = _str(item, "outcome", where)
        assert card is not None and outcome is not None
        if outcome not in OUTCOMES:
            raise RequestError(f"{where}outcome", f"must be accepted or overridden, not {outcome!r}")
        _str(item, "outcomeTimestamp", where, limit=64)
        accepted = item.get("acceptedSuggestions")
        if accepted is not None:
            if outcome != "accepted":
                raise RequestError(f"{where}acceptedSuggestions", "only with outcome accepted")
            if not isinstance(accepted, list) or not all(isinstance(a, dict) and isinstance(a.get("id"), str) for a in accepted):
                raise RequestError(f"{where}acceptedSuggestions", "must be a list of {id}")
        override = item.get("overrideReason")
        if override is not None:
            if outcome != "overridden":
                raise RequestError(f"{where}overrideReason", "only with outcome overridden")
            if not isinstance(override, dict):
                raise RequestError(f"{where}overrideReason", "must be a JSON object")
            reason = override.get("reason")
            if reason is not None:
                if not isinstance(reason, dict) or reason.get("code") not in reasons:
                    raise RequestError(
                        f"{where}overrideReason.reason",
                        f"must be a Coding of this service's overrideReasons ({', '.join(sorted(reasons))})",
                    )
            comment = override.get("userComment")
            if comment is not None and (not isinstance(comment, str) or len(comment) > 2000 or CONTROL.search(comment)):
                raise RequestError(
                    f"{where}overrideReason.userComment", "must be a string of at most 2000 characters, without control characters"
                )
        out.append(Feedback(card, outcome, item))
    return out
