"""Decision → CDS Hooks 2.0 cards, and the discovery document: pure functions, no I/O.

Each recommendation of a decision becomes one card:

| recommendation | indicator | suggestion |
|---|---|---|
| referral up, emergency | critical | ServiceRequest (referral, priority stat) |
| referral up, priority | warning | ServiceRequest (referral, priority urgent) |
| referral routine / down | info | ServiceRequest (referral, priority routine) |
| medication stop / avoid | warning | none (the card says what not to do) |
| medication start / add / titrate / switch | info | MedicationRequest (intent proposal, ATC coding) |
| test | info | ServiceRequest (LOINC coding when the dictionary has one) |
| follow_up | info | none |
| alert | its severity | none |

On order-select / order-sign, each draft MedicationRequest that an avoid/stop recommendation or an
allergy forbids gets a critical card with a ``delete`` action. What the FHIR mapping left out (its
report's warnings, and draft orders that could not be checked) is one info card and an
OperationOutcome in the response's ``extension``: never dropped silently.

A card's ``uuid`` is a UUID 5 of what the card says (service, patient, as_of, pathway set, kind and
content), so the same request gives the same cards; the feedback endpoint accepts only uuids it issued.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from carepath.fhir.mapper import ATC, LOINC, RXNORM, Issue

Indicator = Literal["info", "warning", "critical"]
HOOKS = ("patient-view", "order-select", "order-sign")
SERVICE_IDS = {"patient-view": "carepath-patient-view", "order-select": "carepath-order-select", "order-sign": "carepath-order-sign"}
NAMESPACE = uuid.UUID("5b0c7e3e-93d6-5c43-9a55-4f3c2a8d6e10")  # carepath's UUID 5 namespace for card and suggestion ids
SUMMARY_MAX = 140
EXT_AS_OF = "org.carepath.as-of"
EXT_SETTING = "org.carepath.setting"
EXT_PATHWAYS = "org.carepath.pathways"
EXT_MAPPING = "org.carepath.mapping"  # an OperationOutcome: what the FHIR mapping did not carry over
SNOMED = "http://snomed.info/sct"
REFERRAL_CODE = {"system": SNOMED, "code": "3457005", "display": "Patient referral"}
OVERRIDE_SYSTEM = "https://carepath.dev/fhir/CodeSystem/cds-override-reason"
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("patient-declined", "Patient declined"),
    ("already-done", "Already done or ordered elsewhere"),
    ("contraindicated", "Contraindication not in the record"),
    ("data-wrong", "The values read are wrong or out of date"),
    ("not-applicable", "Does not apply to this patient"),
)
_PRIORITY = {"emergency": "stat", "priority": "urgent", "routine": "routine"}
_ATC_SHAPE = re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$")


def override_reasons() -> list[dict[str, str]]:
    """The carepath override-reason code system's codes, as CDS Hooks Codings."""
    return [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS]


def override_codes() -> frozenset[str]:
    return frozenset(c for c, _ in OVERRIDE_REASONS)


# ------------------------------------------------------------------ discovery


def prefetch_templates(hook: str, observation_loincs: Iterable[str]) -> dict[str, str]:
    """The prefetch templates of a service: only the resources the pathways read, only the observations
    whose LOINC codes a pathway reads (through the mapping tables), only the ``{{context.patientId}}`` token."""
    del hook  # every carepath hook reads the same patient record
    pid = "{{context.patientId}}"
    codes = ",".join(f"{LOINC}|{c}" for c in sorted(set(observation_loincs)))
    out = {
        "patient": f"Patient/{pid}",
        "conditions": f"Condition?patient={pid}",
        "medicationRequests": f"MedicationRequest?patient={pid}&status=active",
        "medicationStatements": f"MedicationStatement?patient={pid}&status=active",
        "allergies": f"AllergyIntolerance?patient={pid}",
    }
    if codes:
        out["observations"] = f"Observation?patient={pid}&status=final,amended,corrected&code={codes}"
    return out


_FORBIDS = "a draft medication order that a pathway's avoid/stop rule or an allergy forbids gets a critical card."


def discovery(pathways: Sequence[Mapping[str, str]], observation_loincs: Iterable[str]) -> dict[str, Any]:
    """The ``GET /cds-services`` document for the serving pathway set."""
    loincs = sorted(set(observation_loincs))
    names = ", ".join(f"{p['id']} {p['version']}" for p in pathways) or "no pathways"
    what = {
        "patient-view": "Decision support from the carepath pathways when a patient's record is opened: "
        "tests, medications, referrals, follow-up and alerts.",
        "order-select": f"The carepath pathways' advice while orders are selected; {_FORBIDS}",
        "order-sign": f"The carepath pathways' advice before orders are signed; {_FORBIDS}",
    }
    services = []
    for hook in HOOKS:
        services.append(
            {
                "hook": hook,
                "id": SERVICE_IDS[hook],
                "title": f"carepath ({hook})",
                "description": f"{what[hook]} Pathways: {names}.",
                "prefetch": prefetch_templates(hook, loincs),
                "usageRequirements": "A prefetch key left out is fetched from fhirServer when fhirAuthorization is given, "
                "else the call is answered 412.",
            }
        )
    return {"services": services}


# ------------------------------------------------------------------ draft orders


@dataclass(frozen=True)
class DraftOrder:
    """A draft MedicationRequest of context.draftOrders, with its ATC code (None: not mapped)."""

    ref: str  # MedicationRequest/<id>
    name: str
    atc: str | None


def atc_of_concept(concept: Any, rxnorm_atc: Mapping[str, str]) -> str | None:
    """ATC code of a FHIR CodeableConcept (JSON): an ATC coding as it is, else RxNorm through the table."""
    if not isinstance(concept, Mapping):
        return None
    codings = [c for c in concept.get("coding") or [] if isinstance(c, Mapping)]
    for c in codings:
        if c.get("system") == ATC and isinstance(c.get("code"), str) and _ATC_SHAPE.match(c["code"]):
            return str(c["code"])
    for c in codings:
        if c.get("system") == RXNORM and c.get("code") in rxnorm_atc:
            return rxnorm_atc[str(c["code"])]
    return None


def concept_name(concept: Any) -> str:
    if not isinstance(concept, Mapping):
        return "medication"
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        return str(concept["text"]).strip()[:200]
    for c in concept.get("coding") or []:
        if isinstance(c, Mapping) and isinstance(c.get("display"), str):
            return str(c["display"])[:200]
    return "medication"


def draft_orders(bundle: Any, rxnorm_atc: Mapping[str, str]) -> tuple[list[DraftOrder], list[str]]:
    """The draft MedicationRequests of a draftOrders Bundle, and a note for each other resource type
    (carepath checks medication orders only)."""
    orders: list[DraftOrder] = []
    others: list[str] = []
    entries = bundle.get("entry") if isinstance(bundle, Mapping) else None
    for i, e in enumerate(entries or []):
        res = e.get("resource") if isinstance(e, Mapping) else None
        if not isinstance(res, Mapping):
            continue
        rtype = str(res.get("resourceType"))
        rid = res.get("id")
        ref = f"{rtype}/{rid}" if isinstance(rid, str) and rid else f"{rtype} (entry {i})"
        if rtype != "MedicationRequest":
            others.append(ref)
            continue
        concept = res.get("medicationCodeableConcept")
        orders.append(DraftOrder(ref, concept_name(concept), atc_of_concept(concept, rxnorm_atc)))
    return orders, others


def _overlaps(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


@dataclass(frozen=True)
class Forbidden:
    order: DraftOrder
    why: str
    rule: str
    citation: str
    pathway: str


def forbidden_orders(orders: Sequence[DraftOrder], decision: Mapping[str, Any], allergies: Sequence[str]) -> list[Forbidden]:
    """Draft orders an avoid/stop recommendation or an allergy forbids (ATC codes overlapping either way,
    as the conflict policy matches them)."""
    rule_pathway = _rule_pathways(decision)
    out: list[Forbidden] = []
    for o in orders:
        if o.atc is None:
            continue
        hit: Forbidden | None = None
        for rec in decision.get("recommendations", []):
            if rec.get("kind") == "medication" and rec.get("action") in ("avoid", "stop") and _overlaps(o.atc, rec["atc"]):
                why = f"a pathway says {rec['action']} {rec['name']} ({rec['atc']}): {rec['reason']}"
                hit = Forbidden(o, why, rec["rule"], rec.get("citation", ""), rule_pathway.get(rec["rule"], ""))
                break
        if hit is None:
            allergy = next((a for a in allergies if _overlaps(o.atc, a)), None)
            if allergy is not None:
                hit = Forbidden(o, f"the patient has a recorded allergy or intolerance to {allergy}", "allergy", "", "")
        if hit is not None:
            out.append(hit)
    return out


# ------------------------------------------------------------------ cards


@dataclass
class CardContext:
    """What the cards are about: the hook's service, the patient, and how the decision was made."""

    service_id: str
    patient_id: str
    as_of: str
    setting: str
    fhir_patient: str  # the FHIR patient id (context.patientId), for suggestion resources' subject
    pathways: list[dict[str, Any]] = field(default_factory=list)


def card_uuid(ctx: CardContext, *parts: str) -> str:
    pathway_set = ",".join(f"{p['id']}@{p['sha256']}" for p in ctx.pathways)
    return str(uuid.uuid5(NAMESPACE, "|".join((ctx.service_id, ctx.patient_id, ctx.as_of, pathway_set, *parts))))


def short(text: str, limit: int = SUMMARY_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _rule_pathways(decision: Mapping[str, Any]) -> dict[str, str]:
    return {t["rule"]: t["pathway"] for t in decision.get("trace", [])}


def _md_escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<|])", r"\\\1", text)


def _value_text(v: Any) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def detail(rec: Mapping[str, Any], pathway: str, version: str, ctx: CardContext) -> str:
    """The card's Markdown: the reason, the values read, the citation and where the advice came from."""
    lines = [f"**Why:** {_md_escape(rec['reason'])}"]
    values = rec.get("values") or {}
    if values:
        lines += ["", "**Values read:**", "", "| value | as read |", "|---|---|"]
        lines += [f"| {_md_escape(k)} | {_md_escape(_value_text(v))} |" for k, v in values.items()]
    if rec.get("citation"):
        lines += ["", f"**Guideline:** {_md_escape(rec['citation'])}"]
    rules = rec.get("rules") or [rec["rule"]]
    lines += [
        "",
        f"_carepath pathway {_md_escape(pathway)} {_md_escape(version)}, rule {', '.join('`' + r + '`' for r in rules)}; "
        f"as of {ctx.as_of}, setting {ctx.setting}._",
    ]
    return "\n".join(lines)


def _summary_and_indicator(rec: Mapping[str, Any]) -> tuple[str, Indicator]:
    kind = rec["kind"]
    if kind == "referral":
        urgency = rec.get("urgency", "routine")
        direction = "Refer up" if rec["direction"] == "up" else "Refer down"
        indicator: Indicator = "critical" if urgency == "emergency" else "warning" if urgency == "priority" else "info"
        return f"{direction} to {rec['specialty']} ({urgency})", indicator
    if kind == "medication":
        verb = {"start": "Start", "add": "Add", "titrate": "Titrate", "switch": "Switch to", "stop": "Stop", "avoid": "Avoid"}[
            rec["action"]
        ]
        return f"{verb} {rec['name']} ({rec['atc']})", "warning" if rec["action"] in ("stop", "avoid") else "info"
    if kind == "test":
        return f"Order test: {rec['code']}", "info"
    if kind == "follow_up":
        return f"Follow up in {rec['days']} days", "info"
    return str(rec["text"]), rec["severity"]


def _subject(ctx: CardContext) -> dict[str, str]:
    return {"reference": f"Patient/{ctx.fhir_patient}"}


def _suggestion(rec: Mapping[str, Any], ctx: CardContext, card_id: str) -> dict[str, Any] | None:
    kind = rec["kind"]
    resource: dict[str, Any]
    if kind == "test":
        coding: dict[str, str] = {"system": LOINC, "code": rec["loinc"], "display": rec["code"]} if rec.get("loinc") else {}
        resource = {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal", "subject": _subject(ctx)}
        resource["code"] = {"coding": [coding], "text": rec["code"]} if coding else {"text": rec["code"]}
        label, description = f"Order {rec['code']}", f"Create a draft order for {rec['code']}"
    elif kind == "referral":
        urgency = rec.get("urgency", "routine")
        text = f"Referral {rec['direction']} to {rec['specialty']}"
        resource = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "category": [{"coding": [REFERRAL_CODE], "text": "Referral"}],
            "code": {"coding": [REFERRAL_CODE], "text": text},
            "priority": _PRIORITY.get(urgency, "routine"),
            "subject": _subject(ctx),
            "reasonCode": [{"text": short(rec["reason"], 1000)}],
        }
        label, description = f"Refer to {rec['specialty']} ({urgency})", f"Create a draft referral to {rec['specialty']}"
    elif kind == "medication" and rec["action"] in ("start", "add", "titrate", "switch"):
        resource = {
            "resourceType": "MedicationRequest",
            "status": "draft",
            "intent": "proposal",
            "medicationCodeableConcept": {"coding": [{"system": ATC, "code": rec["atc"], "display": rec["name"]}], "text": rec["name"]},
            "subject": _subject(ctx),
            "reasonCode": [{"text": short(rec["reason"], 1000)}],
        }
        label, description = short(f"{rec['action'].capitalize()} {rec['name']}", 80), f"Propose {rec['name']} ({rec['atc']})"
    else:
        return None
    return {
        "label": label,
        "uuid": str(uuid.uuid5(NAMESPACE, card_id + "|suggestion")),
        "isRecommended": True,
        "actions": [{"type": "create", "description": description, "resource": resource}],
    }


def _key(rec: Mapping[str, Any]) -> str:
    """What a recommendation says, as a string (a part of its card's uuid)."""
    kind = rec["kind"]
    if kind == "test":
        return str(rec["code"])
    if kind == "medication":
        return f"{rec['action']}:{rec['atc']}"
    if kind == "referral":
        return f"{rec['direction']}:{rec.get('urgency', '')}:{rec['specialty']}"
    if kind == "follow_up":
        return str(rec["days"])
    return f"{rec['severity']}:{rec['text']}"


def recommendation_card(rec: Mapping[str, Any], ctx: CardContext, pathway: str, version: str) -> dict[str, Any]:
    summary, indicator = _summary_and_indicator(rec)
    key = _key(rec)
    cid = card_uuid(ctx, rec["kind"], key, rec["rule"])
    card: dict[str, Any] = {
        "uuid": cid,
        "summary": short(summary),
        "indicator": indicator,
        "detail": detail(rec, pathway, version, ctx),
        "source": {"label": f"carepath {pathway} {version}", "topic": {"system": "https://carepath.dev/rule", "code": rec["rule"]}},
    }
    sug = _suggestion(rec, ctx, cid)
    if sug is not None:
        card["suggestions"] = [sug]
        card["selectionBehavior"] = "at-most-one"
    if rec["kind"] != "follow_up":
        card["overrideReasons"] = override_reasons()
    return card


def forbidden_card(f: Forbidden, ctx: CardContext, versions: Mapping[str, str]) -> dict[str, Any]:
    o = f.order
    cid = card_uuid(ctx, "draft-forbidden", o.ref, o.atc or "", f.rule)
    lines = [
        f"**Draft order:** {_md_escape(o.name)} (ATC {o.atc}, {_md_escape(o.ref)})",
        "",
        f"**Why not:** {_md_escape(f.why)}",
    ]
    if f.citation:
        lines += ["", f"**Guideline:** {_md_escape(f.citation)}"]
    label = f"carepath {f.pathway} {versions.get(f.pathway, '')}".strip() if f.pathway else "carepath allergy check"
    lines += ["", f"_{_md_escape(label)}, rule `{f.rule}`; as of {ctx.as_of}, setting {ctx.setting}._"]
    return {
        "uuid": cid,
        "summary": short(f"Do not order {o.name}: " + ("allergy recorded" if f.rule == "allergy" else "a pathway forbids it")),
        "indicator": "critical",
        "detail": "\n".join(lines),
        "source": {"label": label},
        "suggestions": [
            {
                "label": short(f"Remove the draft order for {o.name}", 80),
                "uuid": str(uuid.uuid5(NAMESPACE, cid + "|delete")),
                "isRecommended": True,
                "actions": [{"type": "delete", "description": f"Remove the draft order {o.ref}", "resourceId": o.ref}],
            }
        ],
        "selectionBehavior": "at-most-one",
        "overrideReasons": override_reasons(),
    }


def operation_outcome(issues: Sequence[Issue], extra: Sequence[str] = ()) -> dict[str, Any]:
    """The mapping report's warnings (and ``extra`` notes) as a FHIR OperationOutcome."""
    out = []
    for i in issues:
        item: dict[str, Any] = {
            "severity": "warning" if i.level == "warning" else "information",
            "code": "not-supported" if i.kind == "unmapped_code" else "processing",
            "details": {"coding": [{"system": "https://carepath.dev/fhir/CodeSystem/mapping-issue", "code": i.kind}], "text": i.message},
        }
        if i.resources:
            item["expression"] = list(i.resources)
        out.append(item)
    out += [{"severity": "warning", "code": "not-supported", "details": {"text": t}} for t in extra]
    return {
        "resourceType": "OperationOutcome",
        "issue": out or [{"severity": "information", "code": "informational", "details": {"text": "all data used"}}],
    }


def mapping_card(issues: Sequence[Issue], extra: Sequence[str], ctx: CardContext) -> dict[str, Any] | None:
    """One info card listing what the FHIR data held that the decision could not use (None: nothing)."""
    if not issues and not extra:
        return None
    lines = ["carepath could not use these data; the advice was made without them (as missing data):", ""]
    lines += [f"- {_md_escape(i.message)}" + (f" (x{i.count})" if i.count > 1 else "") for i in issues]
    lines += [f"- {_md_escape(t)}" for t in extra]
    n = sum(i.count for i in issues) + len(extra)
    return {
        "uuid": card_uuid(ctx, "mapping", *(i.message for i in issues), *extra),
        "summary": short(f"{n} item(s) of the record were not used (unmapped code, unit or status)"),
        "indicator": "info",
        "detail": "\n".join(lines),
        "source": {"label": "carepath FHIR mapping"},
    }


def cards_for(
    decision: Mapping[str, Any],
    ctx: CardContext,
    *,
    warnings: Sequence[Issue] = (),
    drafts: Sequence[DraftOrder] = (),
    other_drafts: Sequence[str] = (),
    allergies: Sequence[str] = (),
) -> dict[str, Any]:
    """The CDS Hooks response for a decision: cards (forbidden draft orders first, then by indicator,
    in the decision's order), and the extension stating as_of, setting, the pathways and the mapping's
    OperationOutcome."""
    ctx.pathways = [dict(p) for p in decision.get("pathways", [])]
    versions = {p["id"]: p["version"] for p in ctx.pathways}
    by_rule = _rule_pathways(decision)
    cards: list[dict[str, Any]] = [forbidden_card(f, ctx, versions) for f in forbidden_orders(drafts, decision, allergies)]
    recs = []
    for rec in decision.get("recommendations", []):
        pathway = by_rule.get(rec["rule"], "")
        recs.append(recommendation_card(rec, ctx, pathway, versions.get(pathway, "")))
    rank = {"critical": 0, "warning": 1, "info": 2}
    cards += sorted(recs, key=lambda c: rank[c["indicator"]])
    extra = [f"draft order {o.ref} ({o.name}): no ATC mapping, not checked against the pathways" for o in drafts if o.atc is None]
    extra += [f"draft order {r}: carepath checks medication orders only" for r in other_drafts]
    mc = mapping_card(warnings, extra, ctx)
    if mc is not None:
        cards.append(mc)
    extension: dict[str, Any] = {
        EXT_AS_OF: ctx.as_of,
        EXT_SETTING: ctx.setting,
        EXT_PATHWAYS: [{"id": p["id"], "version": p["version"], "sha256": p["sha256"]} for p in ctx.pathways],
        EXT_MAPPING: operation_outcome(warnings, extra),
    }
    if not extension[EXT_PATHWAYS]:
        del extension[EXT_PATHWAYS]
    return {"cards": cards, "extension": extension}


def empty_values(value: Any, path: str = "$") -> list[str]:
    """Paths of null or empty values (CDS Hooks: an optional field is left out, never null or empty; the
    response's ``cards`` is required, and an empty list when there is no advice)."""
    if path == "$.cards" and value == []:
        return []
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in empty_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in empty_values(v, f"{path}[{i}]")]
    return []
