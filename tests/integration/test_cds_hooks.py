"""CDS Hooks 2.0 over real HTTP on loopback: `carepath serve --cds-hooks` in a subprocess (the real engine and
worker pool, no mocks), and a stub FHIR server that is a real HTTP server (http.server in a thread) for the
prefetch a request lacks."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import ROOT
from grpc_helpers import Server

from carepath.cds.cards import EXT_AS_OF, EXT_MAPPING, EXT_SETTING, SUMMARY_MAX, empty_values
from carepath.cds.feedback import SqliteStore

SHARED = ROOT / "tests" / "fixtures" / "cds-hooks"  # the official examples, copied from ../shared/data/cds-hooks with their PROVENANCE.md
SYNTHEA = sorted((ROOT / "tests" / "fixtures" / "fhir" / "synthea").glob("*.json"))
AS_OF = "2021-04-01"
KEYS = {
    "Patient": "patient",
    "Condition": "conditions",
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "AllergyIntolerance": "allergies",
    "Observation": "observations",
}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# ------------------------------------------------------------------ the Synthea bundles


def synthea_bundle(name: str) -> dict[str, Any]:
    """A Synthea bundle (the FHIR goldens name the archive's file; make_goldens unpacks it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_goldens", ROOT / "tests" / "fixtures" / "fhir" / "make_goldens.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = next(p for p in mod.bundles() if p.name.startswith(name))
    data: dict[str, Any] = json.loads(path.read_bytes())
    return data


def patient_id(bundle: dict[str, Any]) -> str:
    return str(next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"))


def resources_of(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The bundle's resources as a FHIR server holds them: Synthea's references to the patient's
    ``urn:uuid:`` (a transaction Bundle's fullUrl) become ``Patient/<id>``."""
    pid = patient_id(bundle)
    text = json.dumps([e["resource"] for e in bundle["entry"]]).replace(f'"urn:uuid:{pid}"', f'"Patient/{pid}"')
    out: list[dict[str, Any]] = json.loads(text)
    return out


def split(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A full prefetch for carepath's templates: the Patient, and a searchset Bundle per other key (null when
    the record has none of that type: no data)."""
    out: dict[str, Any] = dict.fromkeys(KEYS.values())
    for r in resources:
        t = r["resourceType"]
        if t == "Patient":
            out["patient"] = r
        elif t in KEYS:
            key = KEYS[t]
            if out[key] is None:
                out[key] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
            out[key]["entry"].append({"resource": r})
    return out


# ------------------------------------------------------------------ a stub FHIR server (real HTTP)


class FhirStub:
    """Serves resources by type for one or more patients: `Type/id` reads and `Type?patient=ID` searches,
    `PAGE` entries a page (Bundle.link next). Records every request (path, Authorization)."""

    PAGE = 10

    def __init__(self) -> None:
        self.resources: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}  # resource type -> HTTP status to answer
        self.slow: dict[str, float] = {}  # resource type -> seconds to wait first
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.requests.append((self.path, self.headers.get("Authorization", "")))
                status, body = stub.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str) -> tuple[int, Any]:
        parts = urlsplit(path)
        rtype, _, rid = parts.path.strip("/").partition("/")
        if rtype in self.slow:
            time.sleep(self.slow[rtype])
        if rtype in self.fail:
            return self.fail[rtype], {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
        of_type = [r for r in self.resources if r["resourceType"] == rtype]
        if rid:
            hit = next((r for r in of_type if r.get("id") == rid), None)
            return (200, hit) if hit else (404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
        q = parse_qs(parts.query)
        pid = q.get("patient", [""])[0]

        def mine(r: dict[str, Any]) -> bool:
            ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
            return bool(ref.endswith(pid))

        hits = [r for r in of_type if mine(r)]
        page = int(q.get("_page", ["1"])[0])
        chunk = hits[(page - 1) * self.PAGE : page * self.PAGE]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(hits),
            "entry": [{"resource": r} for r in chunk],
        }
        if page * self.PAGE < len(hits):
            bundle["link"] = [{"relation": "next", "url": f"{self.url}/{rtype}?patient={pid}&_page={page + 1}"}]
        return 200, bundle

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------ the carepath server


class CdsServer(Server):
    """`carepath serve --cds-hooks --http-port 0` on the bundled pathways; ``base``: its CDS Hooks URL."""

    def __init__(self, tmp: Path, pathways: Path = ROOT / "pathways", *extra: str) -> None:
        self.feedback_dir = tmp / "feedback"
        args = ["--cds-hooks", "--http-port", "0", "--cds-feedback-dir", str(self.feedback_dir), "--cds-fetch-timeout", "2", *extra]
        super().__init__(tmp, pathways, 1, *args)
        assert self.proc.stdout is not None
        self.base = ""
        end = time.monotonic() + 90
        while time.monotonic() < end:
            line = self.proc.stdout.readline().decode()
            m = re.search(r"CDS Hooks on (http://[\d.:]+)/cds-services", line)
            if m:
                self.base = m.group(1)
            if "SERVING" in line and "NOT_SERVING" not in line:
                break
            if not line:
                break
        assert self.base, f"no CDS Hooks listener:\n{self.log()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CdsServer]:
    s = CdsServer(tmp_path_factory.mktemp("cds"))
    yield s
    assert s.stop() == 0, s.log()
    assert "Traceback" not in s.log()


@pytest.fixture(scope="module")
def http(server: CdsServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=30) as c:
        yield c


@pytest.fixture()
def stub() -> Iterator[FhirStub]:
    s = FhirStub()
    yield s
    s.close()


def hook_request(hook: str, pid: str, prefetch: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": pid},
        "extension": {EXT_AS_OF: AS_OF},
    }
    if prefetch is not None:
        req["prefetch"] = prefetch
    req.update(more)
    return req


def auth(stub: FhirStub) -> dict[str, Any]:
    return {
        "fhirServer": stub.url,
        "fhirAuthorization": {
            "access_token": "tok-123",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/*.read",
            "subject": "carepath",
        },
    }


def check_shape(body: Any) -> None:
    """A CDS Hooks 2.0 response: cards with the required fields, nothing null or empty anywhere."""
    assert empty_values(body) == []
    assert isinstance(body["cards"], list)
    for card in body["cards"]:
        assert set(card) <= {
            "uuid",
            "summary",
            "detail",
            "indicator",
            "source",
            "suggestions",
            "selectionBehavior",
            "overrideReasons",
            "links",
        }
        assert UUID.match(card["uuid"])
        assert isinstance(card["summary"], str) and 0 < len(card["summary"]) <= SUMMARY_MAX
        assert card["indicator"] in ("info", "warning", "critical")
        assert isinstance(card["source"]["label"], str)
        if "suggestions" in card:
            assert card["selectionBehavior"] in ("at-most-one", "any")
            for s in card["suggestions"]:
                assert s["label"] and UUID.match(s["uuid"])
                for a in s["actions"]:
                    assert a["type"] in ("create", "update", "delete") and a["description"]
                    if a["type"] == "create":
                        assert a["resource"]["resourceType"] in ("ServiceRequest", "MedicationRequest")
                        assert a["resource"]["intent"] == "proposal"
                    if a["type"] == "delete":
                        assert "/" in a["resourceId"]
        for r in card.get("overrideReasons", []):
            assert r["system"] and r["code"] and r["display"]


def no_traceback(r: httpx.Response) -> None:
    assert "Traceback" not in r.text and 'File "' not in r.text


def outcome_field(r: httpx.Response) -> str:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0].get("expression", [""])[0])


# ------------------------------------------------------------------ discovery


def test_discovery(http: httpx.Client) -> None:
    r = http.get("/cds-services")
    assert r.status_code == 200
    body = r.json()
    assert empty_values(body) == []
    services = {s["hook"]: s for s in body["services"]}
    assert set(services) == {"patient-view", "order-select", "order-sign"}
    loinc = {
        row.split(",")[0]: row.split(",")[1] for row in (ROOT / "engine/carepath/fhir/mappings/loinc.csv").read_text().splitlines()[1:]
    }
    for s in services.values():
        assert s["id"] and s["title"] and s["description"]
        for template in s["prefetch"].values():
            assert set(re.findall(r"\{\{[^}]*\}\}", template)) == {"{{context.patientId}}"}
        obs = s["prefetch"]["observations"]
        codes = re.findall(r"http://loinc\.org\|([0-9-]+)", obs)
        # only observations a pathway reads: HbA1c and BP yes; a LOINC of the table no pathway reads, no
        assert "4548-4" in codes and "8480-6" in codes and "85354-9" in codes
        assert all(c in loinc for c in codes)
        assert set(s["prefetch"]) == {"patient", "conditions", "medicationRequests", "medicationStatements", "allergies", "observations"}


def test_discovery_reads_only_what_the_pathways_read(http: httpx.Client) -> None:
    from carepath.cds.respond import observation_loincs
    from carepath.evaluate import Engine

    engine = Engine.from_directory(ROOT / "pathways")
    obs = http.get("/cds-services").json()["services"][0]["prefetch"]["observations"]
    assert re.findall(r"http://loinc\.org\|([0-9-]+)", obs) == observation_loincs(engine)


# ------------------------------------------------------------------ patient-view


def test_patient_view_full_prefetch(http: httpx.Client) -> None:
    """Dirk Kuhlman's record as of 2021-04-01: BP and glucose in the danger range on record but not from
    that day (critical cards: measure today, no emergency from an old value) and uncontrolled at two
    follow-ups (a priority referral, an urgent ServiceRequest)."""
    bundle = synthea_bundle("Dirk_Kuhlman")
    pid = patient_id(bundle)
    prefetch = split(resources_of(bundle))
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, prefetch))
    assert r.status_code == 200, r.text
    body = r.json()
    check_shape(body)
    assert body["extension"][EXT_AS_OF] == AS_OF and body["extension"][EXT_SETTING] == "community"
    cards = body["cards"]
    first = cards[0]
    assert first["indicator"] == "critical"
    critical = [c for c in cards if c["indicator"] == "critical"]
    assert any("not from today" in c["summary"] or "not from today" in c.get("detail", "") for c in critical), critical
    referral = next(c for c in cards if c["summary"].startswith("Refer up"))
    assert referral["source"]["label"].startswith("carepath hypertension ")
    assert "sbp" in referral["detail"] and "**Guideline:**" in referral["detail"] and "**Values read:**" in referral["detail"]
    action = referral["suggestions"][0]["actions"][0]
    assert action["resource"]["resourceType"] == "ServiceRequest" and action["resource"]["priority"] == "urgent"
    # the same request gives the same cards, uuids included
    again = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, prefetch)).json()
    assert [c["uuid"] for c in again["cards"]] == [c["uuid"] for c in cards]


def test_patient_view_medication_suggestion(http: httpx.Client) -> None:
    bundle = synthea_bundle("Emery_Purdy")
    pid = patient_id(bundle)
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, split(resources_of(bundle))))
    assert r.status_code == 200, r.text
    check_shape(r.json())
    start = next(c for c in r.json()["cards"] if c["summary"].startswith("Start metformin"))
    res = start["suggestions"][0]["actions"][0]["resource"]
    assert res["resourceType"] == "MedicationRequest" and res["intent"] == "proposal"
    assert res["medicationCodeableConcept"]["coding"][0] == {"system": "http://www.whocc.no/atc", "code": "A10BA02", "display": "metformin"}
    assert res["subject"] == {"reference": f"Patient/{pid}"}


def _cards(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["uuid"], c["summary"], c["indicator"]) for c in body["cards"]]


def test_prefetch_partial_is_fetched(http: httpx.Client, stub: FhirStub) -> None:
    bundle = synthea_bundle("Elsy_Bechtelar")
    pid = patient_id(bundle)
    resources = resources_of(bundle)
    full = split(resources)
    want = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, full)).json()
    stub.resources = resources
    partial = {k: full[k] for k in ("patient", "conditions")}  # observations, medications, allergies not fetched
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, partial, **auth(stub)))
    assert r.status_code == 200, r.text
    check_shape(r.json())
    assert _cards(r.json()) == _cards(want)
    paths = [urlsplit(p).path for p, _ in stub.requests]
    assert "/Patient/" + pid not in paths and "/Condition" not in paths  # what was given is not fetched again
    assert {"/Observation", "/MedicationRequest", "/MedicationStatement", "/AllergyIntolerance"} <= set(paths)
    assert paths.count("/Observation") == -(-sum(r["resourceType"] == "Observation" for r in resources) // FhirStub.PAGE)  # every page
    assert {a for _, a in stub.requests} == {"Bearer tok-123"}


def test_prefetch_absent_is_fetched(http: httpx.Client, stub: FhirStub) -> None:
    bundle = synthea_bundle("Elsy_Bechtelar")
    pid = patient_id(bundle)
    resources = resources_of(bundle)
    want = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, split(resources))).json()
    stub.resources = resources
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, None, **auth(stub)))
    assert r.status_code == 200, r.text
    assert _cards(r.json()) == _cards(want)


def test_prefetch_null_means_no_data(http: httpx.Client, stub: FhirStub) -> None:
    """null: the EHR looked and there is nothing; never fetched."""
    prefetch = dict.fromkeys(KEYS.values())
    prefetch["patient"] = {"resourceType": "Patient", "id": "p-null", "gender": "male", "birthDate": "1950-01-01"}
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", "p-null", prefetch, **auth(stub)))
    assert r.status_code == 200, r.text
    check_shape(r.json())
    assert stub.requests == []


def test_prefetch_absent_without_fhir_server_is_412(http: httpx.Client) -> None:
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", "p1", {"patient": None}))
    assert r.status_code == 412
    assert outcome_field(r).startswith("prefetch.")
    no_traceback(r)


def test_fetch_failure_and_deadline_are_412(http: httpx.Client, stub: FhirStub) -> None:
    stub.resources = [{"resourceType": "Patient", "id": "p2", "gender": "female", "birthDate": "1960-01-01"}]
    stub.fail["Observation"] = 500
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", "p2", None, **auth(stub)))
    assert r.status_code == 412 and outcome_field(r) == "prefetch.observations"
    assert "500" in r.json()["issue"][0]["details"]["text"]
    stub.fail.clear()
    stub.slow["AllergyIntolerance"] = 3.0  # the server's --cds-fetch-timeout is 2 s
    t0 = time.monotonic()
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", "p2", None, **auth(stub)))
    assert r.status_code == 412 and "within" in r.text
    assert time.monotonic() - t0 < 2.9


# ------------------------------------------------------------------ order-select / order-sign


def _pregnant_record(pid: str) -> list[dict[str, Any]]:
    subj = {"reference": f"Patient/{pid}"}
    return [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1991-01-01"},
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": subj,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension"}]},
        },
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "subject": subj,
            "code": {"coding": [{"system": "http://loinc.org", "code": "82810-3"}]},
            "effectiveDateTime": "2021-03-20",
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "77386006"}]},
        },
        {
            "resourceType": "Observation",
            "id": "o2",
            "status": "final",
            "subject": subj,
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "effectiveDateTime": "2021-04-01",
            "component": [
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 150, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                },
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {"value": 95, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                },
            ],
        },
    ]


def _draft(pid: str, rid: str, coding: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "medicationCodeableConcept": {"coding": [coding], "text": coding.get("display", "")},
    }


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_draft_order_forbidden_by_an_avoid_rule(http: httpx.Client, hook: str) -> None:
    pid = "preg-1"
    drafts = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": _draft(
                    pid,
                    "mr-lisinopril",
                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "29046", "display": "lisinopril"},
                )
            },
            {"resource": _draft(pid, "mr-amlodipine", {"system": "http://www.whocc.no/atc", "code": "C08CA01", "display": "amlodipine"})},
        ],
    }
    req = hook_request(hook, pid, split(_pregnant_record(pid)))
    req["context"]["draftOrders"] = drafts
    if hook == "order-select":
        req["context"]["selections"] = ["MedicationRequest/mr-lisinopril"]
    r = http.post(f"/cds-services/carepath-{hook}", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    check_shape(body)
    first = body["cards"][0]
    assert first["indicator"] == "critical" and "lisinopril" in first["summary"]
    assert "avoid" in first["detail"] and "C09" in first["detail"]
    action = first["suggestions"][0]["actions"][0]
    assert action == {
        "type": "delete",
        "description": "Remove the draft order MedicationRequest/mr-lisinopril",
        "resourceId": "MedicationRequest/mr-lisinopril",
    }
    assert not [c for c in body["cards"] if "amlodipine" in c["summary"] and c["summary"].startswith("Do not order")]


def test_draft_order_forbidden_by_an_allergy(http: httpx.Client) -> None:
    pid = "allergic-1"
    record: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1950-01-01"},
        {
            "resourceType": "AllergyIntolerance",
            "id": "a1",
            "patient": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C09AA", "display": "ACE inhibitors"}]},
        },
    ]
    req = hook_request("order-sign", pid, split(record))
    req["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": _draft(pid, "mr-1", {"system": "http://www.whocc.no/atc", "code": "C09AA02", "display": "enalapril"})}],
    }
    r = http.post("/cds-services/carepath-order-sign", json=req)
    assert r.status_code == 200, r.text
    first = r.json()["cards"][0]
    assert first["indicator"] == "critical" and "allergy" in first["summary"]
    assert first["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/mr-1"


# ------------------------------------------------------------------ the official examples


def test_official_patient_view_example(http: httpx.Client, stub: FhirStub) -> None:
    """The spec's patient-view request (a prefetch key carepath does not use; fhirServer + fhirAuthorization):
    accepted, what carepath's templates need fetched from fhirServer (the stub in place of the example's host)."""
    req = json.loads((SHARED / "patient-view-request-with-prefetch.json").read_text())
    stub.resources = [req["prefetch"]["patientToGreet"]]
    req["fhirServer"] = stub.url
    r = http.post("/cds-services/carepath-patient-view", json=req)
    assert r.status_code == 200, r.text
    check_shape(r.json())
    assert {a for _, a in stub.requests} == {"Bearer some-opaque-fhir-access-token"}
    # without a server to ask, the same request is a clean 412
    del req["fhirServer"], req["fhirAuthorization"]
    r = http.post("/cds-services/carepath-patient-view", json=req)
    assert r.status_code == 412


def test_official_order_sign_example(http: httpx.Client) -> None:
    """The published order-sign context (a NutritionOrder and an amoxicillin MedicationRequest), wrapped in
    the request fields it leaves out: accepted; what carepath cannot check is reported, not dropped."""
    ctx = json.loads((SHARED / "order-sign-request-r4.json").read_text())["context"]
    prefetch = dict.fromkeys(KEYS.values())
    prefetch["patient"] = {"resourceType": "Patient", "id": "1288992", "gender": "male", "birthDate": "1925-12-23"}
    req = {"hook": "order-sign", "hookInstance": "e4c3f6f0-1b0d-4c1e-9d36-6d4f0e1e0001", "context": ctx, "prefetch": prefetch}
    r = http.post("/cds-services/carepath-order-sign", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    check_shape(body)
    issues = body["extension"][EXT_MAPPING]["issue"]
    texts = " ".join(i["details"]["text"] for i in issues)
    assert "NutritionOrder/pureeddiet-simple" in texts
    assert "smart-MedicationRequest-103" in texts or not any("617993" in t for t in texts)
    assert any(c["source"]["label"] == "carepath FHIR mapping" for c in body["cards"])


def test_official_response_examples_pass_the_shape_check() -> None:
    """The checker itself agrees with the spec's own card response."""
    check_shape(
        json.loads((SHARED / "card-response.json").read_text())
        | {
            "cards": [
                c | {"uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719"}
                for c in json.loads((SHARED / "card-response.json").read_text())["cards"]
            ]
        }
    )


def test_official_discovery_example_has_our_fields(http: httpx.Client) -> None:
    theirs = json.loads((SHARED / "discovery-response.json").read_text())["services"]
    ours = http.get("/cds-services").json()["services"]
    required = set.intersection(*(set(s) for s in theirs))
    assert all(required <= set(s) for s in ours)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "p"}}, "hook"),
        ({"hook": "patient-view", "context": {"userId": "Practitioner/1", "patientId": "p"}}, "hookInstance"),
        ({"hook": "patient-view", "hookInstance": "x"}, "context"),
        ({"hook": "patient-view", "hookInstance": "x", "context": {}}, "context.patientId"),
        ({"hook": "patient-view", "hookInstance": "x", "context": {"patientId": 7}}, "context.patientId"),
        ({"hook": "order-sign", "hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "p"}}, "hook"),
        (
            {"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "p"}, "prefetch": {"a": 1}},
            "prefetch.a",
        ),
        (
            {
                "hook": "patient-view",
                "hookInstance": "x",
                "context": {"userId": "Practitioner/1", "patientId": "p"},
                "fhirAuthorization": {},
            },
            "fhirServer",
        ),
        (
            {
                "hook": "patient-view",
                "hookInstance": "x",
                "context": {"userId": "Practitioner/1", "patientId": "p"},
                "fhirServer": "http://x",
                "fhirAuthorization": {"access_token": "t"},
            },
            "fhirAuthorization.token_type",
        ),
        (
            {
                "hook": "patient-view",
                "hookInstance": "x",
                "context": {"userId": "Practitioner/1", "patientId": "p"},
                "extension": {EXT_AS_OF: "2021-13-01"},
            },
            f"extension.{EXT_AS_OF}",
        ),
        ([], "$"),
    ],
)
def test_malformed_request_is_400_naming_the_field(http: httpx.Client, body: Any, field: str) -> None:
    r = http.post("/cds-services/carepath-patient-view", json=body)
    assert r.status_code == 400, r.text
    assert outcome_field(r) == field
    no_traceback(r)


def test_order_sign_without_draft_orders_is_400(http: httpx.Client) -> None:
    r = http.post(
        "/cds-services/carepath-order-sign",
        json={"hook": "order-sign", "hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "p"}},
    )
    assert r.status_code == 400 and outcome_field(r) == "context.draftOrders"


def test_other_errors(http: httpx.Client) -> None:
    r = http.post("/cds-services/carepath-patient-view", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.text
    r = http.post("/cds-services/carepath-patient-view", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = http.post("/cds-services/no-such-service", json={})
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    r = http.post("/cds-services/no-such-service/feedback", json={})
    assert r.status_code == 404
    r = http.get("/cds-services/carepath-patient-view")
    assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"
    r = http.get("/elsewhere")
    assert r.status_code == 404
    # a prefetch that makes no case (two different patients) is a 400, not a 500
    two = {
        "a": {"resourceType": "Patient", "id": "x1"},
        "b": {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "x2"}}]},
    }
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", "x1", two | dict.fromkeys(KEYS.values())))
    assert r.status_code == 400 and outcome_field(r) == "prefetch"
    other = {"a": {"resourceType": "Patient", "id": "x2"}}  # a prefetched Patient that is not the context's
    r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", "x1", other))
    assert r.status_code == 400 and outcome_field(r) == "prefetch.a.id"
    for resp in (r,):
        no_traceback(resp)


# ------------------------------------------------------------------ feedback


def test_feedback(http: httpx.Client, server: CdsServer) -> None:
    bundle = synthea_bundle("Elsy_Bechtelar")
    pid = patient_id(bundle)
    cards = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, split(resources_of(bundle)))).json()[
        "cards"
    ]
    with_suggestion = next(c for c in cards if "suggestions" in c)
    accepted = {
        "card": with_suggestion["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": with_suggestion["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2021-04-01T10:00:00Z",
    }
    reason = with_suggestion["overrideReasons"][0]
    overridden = {
        "card": cards[1]["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason, "userComment": "discussed with the patient"},
        "outcomeTimestamp": "2021-04-01T10:01:00Z",
    }
    url = "/cds-services/carepath-patient-view/feedback"
    r = http.post(url, json={"feedback": [accepted, overridden]})
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 2, "new": 2}
    r = http.post(url, json={"feedback": [accepted]})  # a resend: accepted, kept once
    assert r.status_code == 200 and r.json() == {"received": 1, "new": 0}
    r = http.post(url, json={"feedback": [accepted | {"card": "00000000-0000-5000-8000-000000000000"}]})
    assert r.status_code == 404 and outcome_field(r) == "feedback[0].card"
    r = http.post("/cds-services/carepath-order-sign/feedback", json={"feedback": [accepted]})  # issued by another service
    assert r.status_code == 404
    bad = overridden | {"overrideReason": {"reason": {"system": "x", "code": "made-up"}}}
    r = http.post(url, json={"feedback": [bad]})
    assert r.status_code == 400 and outcome_field(r) == "feedback[0].overrideReason.reason"
    r = http.post(url, json={"feedback": [accepted | {"outcome": "maybe"}]})
    assert r.status_code == 400 and outcome_field(r) == "feedback[0].outcome"
    store = SqliteStore(server.feedback_dir)
    try:
        kept = store.items("carepath-patient-view")
    finally:
        store.close()
    assert kept == [accepted, overridden]


def test_concurrent_calls(http: httpx.Client) -> None:
    """Several callers at once get the same answers as one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    names = [p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in SYNTHEA[:8]]
    bundles = [synthea_bundle(n) for n in names]
    reqs = [hook_request("patient-view", patient_id(b), split(resources_of(b))) for b in bundles]
    one = [_cards(http.post("/cds-services/carepath-patient-view", json=q).json()) for q in reqs]
    with ThreadPoolExecutor(4) as pool:
        many = list(pool.map(lambda q: _cards(http.post("/cds-services/carepath-patient-view", json=q).json()), reqs * 2))
    assert many == one * 2


# ------------------------------------------------------------------ hot reload


def test_hot_reload_changes_what_cds_hooks_serves(tmp_path: Path) -> None:
    """SIGHUP reloads the set for CDS Hooks as for gRPC: discovery and the decisions name the new version."""
    import shutil
    import signal

    from conftest import FIXTURES
    from grpc_helpers import wait_for

    pathways = tmp_path / "pathways"
    shutil.copytree(FIXTURES, pathways)
    s = CdsServer(tmp_path, pathways)
    try:
        with httpx.Client(base_url=s.base, timeout=30) as c:
            assert "mini_htn 0.1.0" in c.get("/cds-services").json()["services"][0]["description"]
            prefetch = dict.fromkeys(KEYS.values())
            prefetch["patient"] = {"resourceType": "Patient", "id": "r1", "gender": "male", "birthDate": "1950-01-01"}
            req = hook_request("patient-view", "r1", prefetch)

            def version() -> str:
                return str(
                    c.post("/cds-services/carepath-patient-view", json=req).json()["extension"]["org.carepath.pathways"][0]["version"]
                )

            assert version() == "0.1.0"
            f = pathways / "mini_htn.yaml"
            f.write_text(f.read_text().replace("version: 0.1.0", "version: 0.2.0"))
            s.signal(signal.SIGHUP)
            wait_for(lambda: bool(s.events("reloaded")), 60, "the reload")
            assert version() == "0.2.0"
            assert "mini_htn 0.2.0" in c.get("/cds-services").json()["services"][0]["description"]
    finally:
        assert s.stop() == 0
