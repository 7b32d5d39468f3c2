"""carepath.cds's pure parts: decision → cards, draft-order checks, discovery templates, request and
feedback validation, the feedback store. (Over HTTP: tests/integration/test_cds_hooks.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, ROOT

from carepath.cds import cards
from carepath.cds.feedback import SqliteStore
from carepath.cds.request import RequestError, parse_feedback, parse_hook_request
from carepath.cds.respond import observation_loincs, respond
from carepath.evaluate import Engine
from carepath.fhir import Issue
from carepath.fhir.mapper import ATC, RXNORM

PATHWAYS = ROOT / "pathways"


def _rec(kind: str, **more: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "rule": f"p.{kind}",
        "rules": [f"p.{kind}"],
        "reason": "sbp 186 mmHg ≥ 180",
        "citation": "Guide 2017",
        "values": {"sbp": 186},
        **more,
    }


def _decision(*recs: dict[str, Any]) -> dict[str, Any]:
    return {
        "patient_id": "p1",
        "as_of": "2021-04-01",
        "pathways": [{"id": "htn", "version": "1.2.0", "sha256": "ab" * 32, "enrolled": True}],
        "recommendations": list(recs),
        "trace": [{"pathway": "htn", "rule": r["rule"], "values": {}} for r in recs],
        "site": {"id": "default", "sha256": ""},
    }


def _ctx() -> cards.CardContext:
    return cards.CardContext(
        service_id="carepath-patient-view", patient_id="p1", as_of="2021-04-01", setting="community", fhir_patient="p1"
    )


@pytest.mark.parametrize(
    ("rec", "indicator", "summary"),
    [
        (_rec("referral", direction="up", urgency="emergency", specialty="emergency"), "critical", "Refer up to emergency (emergency)"),
        (_rec("referral", direction="up", urgency="priority", specialty="cardiology"), "warning", "Refer up to cardiology (priority)"),
        (_rec("referral", direction="down", specialty="community"), "info", "Refer down to community (routine)"),
        (_rec("medication", action="avoid", atc="C09", name="RAS blockers"), "warning", "Avoid RAS blockers (C09)"),
        (_rec("medication", action="stop", atc="N05AN01", name="lithium"), "warning", "Stop lithium (N05AN01)"),
        (_rec("medication", action="start", atc="C08CA01", name="amlodipine"), "info", "Start amlodipine (C08CA01)"),
        (_rec("test", code="potassium", loinc="2823-3"), "info", "Order test: potassium"),
        (_rec("follow_up", days=14), "info", "Follow up in 14 days"),
        (_rec("alert", severity="critical", text="Lithium level toxic"), "critical", "Lithium level toxic"),
    ],
)
def test_indicator_and_summary(rec: dict[str, Any], indicator: str, summary: str) -> None:
    out = cards.cards_for(_decision(rec), _ctx())
    card = out["cards"][0]
    assert (card["indicator"], card["summary"]) == (indicator, summary)
    assert card["source"]["label"] == "carepath htn 1.2.0"
    assert "sbp" in card["detail"] and "186" in card["detail"] and "Guide 2017" in card["detail"] and "`p." in card["detail"]
    assert cards.empty_values(out) == []


def test_suggestions() -> None:
    out = cards.cards_for(
        _decision(
            _rec("medication", action="start", atc="C08CA01", name="amlodipine"),
            _rec("test", code="potassium", loinc="2823-3"),
            _rec("referral", direction="up", urgency="priority", specialty="cardiology"),
            _rec("medication", action="avoid", atc="C09", name="RAS blockers"),
        ),
        _ctx(),
    )
    by = {c["summary"]: c for c in out["cards"]}
    med = by["Start amlodipine (C08CA01)"]["suggestions"][0]["actions"][0]["resource"]
    assert med["resourceType"] == "MedicationRequest" and med["intent"] == "proposal" and med["status"] == "draft"
    assert med["medicationCodeableConcept"]["coding"] == [{"system": "http://www.whocc.no/atc", "code": "C08CA01", "display": "amlodipine"}]
    test = by["Order test: potassium"]["suggestions"][0]["actions"][0]["resource"]
    assert test["resourceType"] == "ServiceRequest" and test["code"]["coding"][0]["code"] == "2823-3"
    ref = by["Refer up to cardiology (priority)"]["suggestions"][0]["actions"][0]["resource"]
    assert ref["priority"] == "urgent" and ref["category"][0]["coding"][0]["code"] == "3457005"
    assert "suggestions" not in by["Avoid RAS blockers (C09)"]
    for c in out["cards"]:
        assert ("suggestions" in c) == ("selectionBehavior" in c)
        assert c["overrideReasons"] == cards.override_reasons()
    # warning before info
    assert out["cards"][0]["indicator"] == "warning"


def test_summary_is_cut_at_140() -> None:
    out = cards.cards_for(_decision(_rec("alert", severity="info", text="x" * 500)), _ctx())
    assert len(out["cards"][0]["summary"]) == cards.SUMMARY_MAX and out["cards"][0]["summary"].endswith("…")


def test_uuids_are_deterministic_and_distinct() -> None:
    recs = [_rec("test", code="potassium"), _rec("test", code="egfr")]
    a = [c["uuid"] for c in cards.cards_for(_decision(*recs), _ctx())["cards"]]
    b = [c["uuid"] for c in cards.cards_for(_decision(*recs), _ctx())["cards"]]
    assert a == b and len(set(a)) == 2
    other = cards.CardContext(
        service_id="carepath-patient-view", patient_id="p2", as_of="2021-04-01", setting="community", fhir_patient="p2"
    )
    assert [c["uuid"] for c in cards.cards_for(_decision(*recs), other)["cards"]] != a


def test_markdown_is_escaped() -> None:
    rec = _rec("alert", severity="info", text="t")
    rec["reason"] = "a | b *c* <script>"
    detail = cards.cards_for(_decision(rec), _ctx())["cards"][0]["detail"]
    assert "a \\| b \\*c\\* \\<script>" in detail


def test_draft_orders_and_forbidden() -> None:
    rx = {"29046": "C09AA03"}
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "a",
                    "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "29046"}], "text": "lisinopril"},
                }
            },
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "b",
                    "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "C08CA01", "display": "amlodipine"}]},
                }
            },
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "c",
                    "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1"}]},
                }
            },
            {"resource": {"resourceType": "NutritionOrder", "id": "n"}},
        ],
    }
    orders, others = cards.draft_orders(bundle, rx)
    assert [(o.ref, o.atc) for o in orders] == [
        ("MedicationRequest/a", "C09AA03"),
        ("MedicationRequest/b", "C08CA01"),
        ("MedicationRequest/c", None),
    ]
    assert others == ["NutritionOrder/n"]
    decision = _decision(_rec("medication", action="avoid", atc="C09", name="RAS blockers"))
    hits = cards.forbidden_orders(orders, decision, [])
    assert [h.order.ref for h in hits] == ["MedicationRequest/a"] and hits[0].pathway == "htn"
    hits = cards.forbidden_orders(orders, _decision(), ["C08"])
    assert [(h.order.ref, h.rule) for h in hits] == [("MedicationRequest/b", "allergy")]
    out = cards.cards_for(decision, _ctx(), drafts=orders, other_drafts=others)
    first = out["cards"][0]
    assert first["indicator"] == "critical"
    assert first["suggestions"][0]["actions"] == [
        {"type": "delete", "description": "Remove the draft order MedicationRequest/a", "resourceId": "MedicationRequest/a"}
    ]
    notes = [i["details"]["text"] for i in out["extension"][cards.EXT_MAPPING]["issue"]]
    assert any("MedicationRequest/c" in n for n in notes) and any("NutritionOrder/n" in n for n in notes)
    assert out["cards"][-1]["source"]["label"] == "carepath FHIR mapping"


def test_mapping_warnings_are_reported() -> None:
    issue = Issue("warning", "unmapped_code", "Condition SNOMED 1 (x): no ICD-10 mapping: left out", ["Condition/1"])
    out = cards.cards_for(_decision(), _ctx(), warnings=[issue])
    assert out["cards"][0]["indicator"] == "info" and "no ICD-10 mapping" in out["cards"][0]["detail"]
    oo = out["extension"][cards.EXT_MAPPING]
    assert oo["issue"][0]["code"] == "not-supported" and oo["issue"][0]["expression"] == ["Condition/1"]
    clean = cards.cards_for(_decision(), _ctx())
    assert clean["cards"] == [] and clean["extension"][cards.EXT_MAPPING]["issue"][0]["severity"] == "information"


def test_prefetch_templates_read_only_what_the_pathways_read() -> None:
    small = observation_loincs(Engine.from_directory(FIXTURES))
    full = observation_loincs(Engine.from_directory(PATHWAYS))
    assert set(small) < set(full)
    assert "4548-4" in full and "4548-4" not in small  # HbA1c: read by the diabetes pathway, not by mini_htn
    doc = cards.discovery([{"id": "x", "version": "1"}], small)
    for s in doc["services"]:
        for t in s["prefetch"].values():
            assert t.count("{{") == t.count("{{context.patientId}}")


def test_respond_maps_and_evaluates() -> None:
    engine = Engine.from_directory(PATHWAYS)
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p9", "gender": "female", "birthDate": "1950-01-01"},
        "conditions": {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Condition",
                        "subject": {"reference": "Patient/p9"},
                        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "999999"}]},
                    }
                }
            ],
        },
        "observations": None,
    }
    job = {
        "service_id": "carepath-patient-view",
        "hook": "patient-view",
        "patient_id": "p9",
        "prefetch": prefetch,
        "draft_orders": None,
        "as_of": "2021-04-01",
        "setting": "hospital",
    }
    out = respond(engine, job)
    assert out["extension"][cards.EXT_SETTING] == "hospital" and out["extension"][cards.EXT_AS_OF] == "2021-04-01"
    kinds = {i["details"]["coding"][0]["code"] for i in out["extension"][cards.EXT_MAPPING]["issue"] if "coding" in i["details"]}
    assert "unmapped_code" in kinds
    assert cards.empty_values(out) == []


# ------------------------------------------------------------------ requests


def _req(**more: Any) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": "h-1", "context": {"userId": "Practitioner/1", "patientId": "p1"}, **more}


def test_parse_hook_request() -> None:
    r = parse_hook_request(_req(prefetch={"patient": None}, extension={cards.EXT_AS_OF: "2021-04-01"}), "patient-view")
    assert r.patient_id == "p1" and r.prefetch == {"patient": None} and str(r.as_of) == "2021-04-01" and r.fhir_auth is None


@pytest.mark.parametrize(
    ("body", "hook", "field"),
    [
        ("x", "patient-view", "$"),
        (_req(hook="order-sign"), "patient-view", "hook"),
        (_req(hookInstance=""), "patient-view", "hookInstance"),
        (_req(context={"userId": "u", "patientId": "bad id!"}), "patient-view", "context.patientId"),
        (_req(context={"patientId": "p"}), "patient-view", "context.userId"),
        (_req(prefetch=[]), "patient-view", "prefetch"),
        (_req(prefetch={"k": {"no": "type"}}), "patient-view", "prefetch.k"),
        (_req(fhirServer="ftp://x"), "patient-view", "fhirServer"),
        (_req(prefetch={"p": {"resourceType": "Patient", "id": "other"}}), "patient-view", "prefetch.p.id"),
        (
            _req(
                fhirServer="http://x",
                fhirAuthorization={"access_token": "t", "token_type": "Bearer", "expires_in": "300", "scope": "s", "subject": "s"},
            ),
            "patient-view",
            "fhirAuthorization.expires_in",
        ),
        (
            {
                **_req(hook="order-select"),
                "context": {"userId": "u", "patientId": "p", "draftOrders": {"resourceType": "Bundle", "entry": []}},
            },
            "order-select",
            "context.selections",
        ),
        (
            {**_req(hook="order-sign"), "context": {"userId": "u", "patientId": "p", "draftOrders": {"resourceType": "List"}}},
            "order-sign",
            "context.draftOrders.resourceType",
        ),
        (
            {
                **_req(hook="order-sign"),
                "context": {"userId": "u", "patientId": "p", "draftOrders": {"resourceType": "Bundle", "entry": [1]}},
            },
            "order-sign",
            "context.draftOrders.entry[0].resource",
        ),
    ],
)
def test_bad_hook_requests_name_the_field(body: Any, hook: str, field: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_hook_request(body, hook)
    assert err.value.field == field


def test_parse_feedback() -> None:
    reason = cards.override_reasons()[0]
    items = parse_feedback(
        {"feedback": [{"card": "c", "outcome": "overridden", "overrideReason": {"reason": reason}, "outcomeTimestamp": "t"}]}
    )
    assert items[0].card == "c" and items[0].outcome == "overridden"
    for body, field in [
        ({}, "feedback"),
        ({"feedback": [{"card": "c", "outcome": "ok", "outcomeTimestamp": "t"}]}, "feedback[0].outcome"),
        ({"feedback": [{"outcome": "accepted", "outcomeTimestamp": "t"}]}, "feedback[0].card"),
        ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "t", "overrideReason": {}}]}, "feedback[0].overrideReason"),
        (
            {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "t", "overrideReason": {"reason": {"code": "x"}}}]},
            "feedback[0].overrideReason.reason",
        ),
    ]:
        with pytest.raises(RequestError) as err:
            parse_feedback(body)
        assert err.value.field == field


def test_sqlite_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fb")
    store.issued("s", [("c1", "p1")])
    assert store.was_issued("s", "c1") and not store.was_issued("s", "c2") and not store.was_issued("t", "c1")
    item = {"card": "c1", "outcome": "accepted", "outcomeTimestamp": "t"}
    assert store.add("s", item) is True and store.add("s", dict(item)) is False
    store.close()
    again = SqliteStore(tmp_path / "fb")  # kept on disk
    assert again.was_issued("s", "c1") and again.items("s") == [item]
    again.close()


def test_cds_request_command(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    bundle = ROOT / "examples" / "fhir" / "Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json"
    for hook in ("patient-view", "order-select", "order-sign"):
        r = subprocess.run(
            [sys.executable, "-m", "carepath.cli", "cds-request", "--hook", hook, "--as-of", "2021-04-01", str(bundle)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        req = json.loads(r.stdout)
        parsed = parse_hook_request(req, hook)
        assert parsed.patient_id == "ee9f8dd8-72d2-4769-8020-89e504b1504b" and str(parsed.as_of) == "2021-04-01"
        assert set(req["prefetch"]) == set(cards.prefetch_templates(hook, ["8480-6"]))
        obs = req["prefetch"]["observations"]["entry"]
        assert all(e["resource"]["subject"]["reference"] == f"Patient/{parsed.patient_id}" for e in obs)
    (tmp_path / "x.json").write_text("[]")
    r = subprocess.run(
        [sys.executable, "-m", "carepath.cli", "cds-request", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "not a FHIR Bundle" in r.stderr and "Traceback" not in r.stderr


def test_validated_resources_are_reused_with_the_same_result() -> None:
    """carepath.fhir keeps validated resources (an EHR resends a record on every call): the second mapping of
    the same record gives the same case and report, from the kept models; an invalid resource is reported
    every time."""
    from datetime import date

    from carepath.fhir import mapper, to_case

    engine = Engine.from_directory(PATHWAYS)
    bundle = json.loads((ROOT / "examples" / "fhir" / "Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json").read_text())
    bad = {"resourceType": "Condition", "id": "bad", "subject": {"reference": "Patient/ee9f8dd8-72d2-4769-8020-89e504b1504b"}, "code": 7}
    bundle["entry"].append({"resource": bad})
    first = to_case(bundle, vocab=engine.vocab, as_of=date(2021, 4, 1), setting="community")
    hits = mapper._validated.cache_info().hits
    second = to_case(bundle, vocab=engine.vocab, as_of=date(2021, 4, 1), setting="community")
    assert mapper._validated.cache_info().hits > hits
    assert second.case == first.case and second.report.to_json() == first.report.to_json()
    assert any(w.kind == "invalid_resource" for w in second.report.warnings())
