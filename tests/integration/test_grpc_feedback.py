"""Override capture end to end: a real `carepath serve --audit` on 127.0.0.1 with tokens, decisions
with their decision ids, RecordFeedback through the typed client and raw gRPC, the SQLite file read
back and its chain verified, and `carepath report --feedback` over it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import FIXTURES, ROOT
from grpc_helpers import CARE, SAMPLE, Server, serving, token_keys, varied_case, wait_for

from carepath.client import CallError, CarepathClient
from carepath.service import devpki
from carepath.service.audit import COLUMNS, LEGACY, AuditLog, export, record_hash, verify
from carepath.service.auth import Caller
from carepath.service.feedback import summarise
from carepath_client import FeedbackItem
from carepath_client._proto.v1 import decision_service_pb2 as ds

pytestmark = pytest.mark.timeout(180)

ISS, AUD = "https://idp.example.org", "carepath"
ALL = "carepath.evaluate carepath.read carepath.feedback"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return token_keys(tmp_path_factory.mktemp("feedback-keys"))


def tok(pki: dict[str, Any], scope: str = ALL, subject: str = "dr-lee") -> str:
    return devpki.token(pki["rsa"], "k1", issuer=ISS, audience=AUD, scope=scope, subject=subject)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Any]) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("feedback")
    yield from serving(
        d, FIXTURES, 1, "--audit", str(d / "audit.db"), "--jwks", str(pki["jwks"]), "--jwt-issuer", ISS, "--jwt-audience", AUD
    )


def db_of(server: Server) -> Path:
    args = server.proc.args
    assert isinstance(args, list)
    return Path(args[args.index("--audit") + 1])


def client(server: Server, pki: dict[str, Any], **kw: Any) -> CarepathClient:
    return CarepathClient(server.target, token=lambda: tok(pki, **kw))


def with_recommendations(c: CarepathClient, at_least: int = 2) -> tuple[str, list[dict[str, Any]]]:
    for i in range(40):
        got = c.evaluate_recorded(varied_case(i))
        if len(got.decision["recommendations"]) >= at_least:
            assert got.decision_id.startswith("d-")
            recs: list[dict[str, Any]] = [dict(r) for r in got.decision["recommendations"]]
            return got.decision_id, recs
    raise AssertionError(f"no varied case has {at_least} recommendations on the fixture pathway")


def feedback_rows(path: Path, feedback_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM feedback WHERE feedback_id = ? ORDER BY item", (feedback_id,))]


def audit_rows(path: Path, where: str, *args: Any) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        return [dict(zip(COLUMNS, r, strict=True)) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {where}", args)]


def test_feedback_is_stored_beside_the_decisions_record_and_audited(server: Server, pki: dict[str, Any]) -> None:
    with client(server, pki) as c:
        did, recs = with_recommendations(c)
        items = [
            FeedbackItem(0, "accepted", rule=recs[0]["rule"]),
            FeedbackItem(1, "overridden", "patient_declined", "prefers to wait a month"),
        ]
        got = c.record_feedback(did, items, feedback_id="fb-1", at="2026-12-07T10:15:00+08:00")
    assert (got.feedback_id, got.duplicate, got.items, len(got.content_sha256)) == ("fb-1", False, 2, 64)
    path = db_of(server)
    decision = audit_rows(path, "decision_id = ? AND action = 'Evaluate'", did)
    assert len(decision) == 1 and json.loads(decision[0]["recommendations"]) == [[r["kind"], r["rule"]] for r in recs]
    rows = feedback_rows(path, "fb-1")
    assert [(r["recommendation"], r["rule"], r["kind"], r["outcome"], r["reason"]) for r in rows] == [
        (0, recs[0]["rule"], recs[0]["kind"], "accepted", None),
        (1, recs[1]["rule"], recs[1]["kind"], "overridden", "patient_declined"),
    ]
    assert rows[1]["reason_text"] == "prefers to wait a month"
    assert {r["clinician"] for r in rows} == {"dr-lee"} and {r["at"] for r in rows} == {"2026-12-07T02:15:00.000Z"}
    rec = audit_rows(path, "action = 'RecordFeedback' AND request_id = 'fb-1'")
    assert len(rec) == 1 and rec[0]["outcome"] == "OK" and rec[0]["decision_id"] == did and rec[0]["subject"] == "dr-lee"
    assert rows[0]["audit_seq"] == rec[0]["seq"]
    assert rec[0]["patient"] == decision[0]["patient"]
    assert "prefers to wait" not in json.dumps(audit_rows(path, "1"))  # free text never in the audit records
    assert verify(path).problem == ""


def test_stream_decisions_carry_ids_that_feedback_can_name(server: Server, pki: dict[str, Any]) -> None:
    with client(server, pki) as c:
        results = list(c.evaluate_many([varied_case(i) for i in range(6)]))
        ids = [r.decision_id for r in results]
        assert all(i.startswith("d-") for i in ids) and len(set(ids)) == 6
        first = next(r for r in results if r.decision and r.decision["recommendations"])
        got = c.record_feedback(first.decision_id, [FeedbackItem(0, "accepted")], feedback_id="fb-stream")
    assert got.items == 1
    assert audit_rows(db_of(server), "decision_id = ? AND action = 'EvaluateStream'", first.decision_id)


def test_feedback_is_idempotent_by_its_id(server: Server, pki: dict[str, Any]) -> None:
    with client(server, pki) as c:
        did, _ = with_recommendations(c)
        items = [FeedbackItem(0, "overridden", "already_done")]
        first = c.record_feedback(did, items, feedback_id="fb-again")
        again = c.record_feedback(did, items, feedback_id="fb-again")
        assert not first.duplicate and again.duplicate and again.content_sha256 == first.content_sha256
        with pytest.raises(CallError) as other:
            c.record_feedback(did, [FeedbackItem(0, "accepted")], feedback_id="fb-again")
    assert other.value.code == grpc.StatusCode.ALREADY_EXISTS and "other content" in str(other.value)
    assert len(feedback_rows(db_of(server), "fb-again")) == 1
    wait_for(lambda: len(audit_rows(db_of(server), "request_id = 'fb-again'")) == 3, 10, "the refusal's record")
    outcomes = [r["outcome"] for r in audit_rows(db_of(server), "action = 'RecordFeedback' AND request_id = 'fb-again' ORDER BY seq")]
    assert outcomes == ["OK", "OK_DUPLICATE", "ALREADY_EXISTS"]


def test_racing_copies_under_one_feedback_id_store_one_and_refuse_other_content(server: Server, pki: dict[str, Any]) -> None:
    """A review found two requests under one feedback id with different content both answered OK, the
    second silently dropped. Sent at once, half with each content: whichever is stored
    first, every request with its content is OK (one of them not a duplicate) and every other one is
    ALREADY_EXISTS; the stored rows are one content's, and the chain with its feedback verifies.
    (Thirty-two calls sent at once on one channel: all pass the early check before the first commits.)"""
    with client(server, pki) as c:
        did, _ = with_recommendations(c)
    contents = {
        "a": [ds.RecommendationFeedback(outcome=ds.FEEDBACK_OUTCOME_OVERRIDDEN, reason=ds.OVERRIDE_REASON_PATIENT_DECLINED)],
        "b": [ds.RecommendationFeedback(outcome=ds.FEEDBACK_OUTCOME_ACCEPTED)],
    }
    outcomes: dict[int, tuple[str, Any]] = {}

    async def race() -> None:  # 32 calls on one channel, sent at once
        async with grpc.aio.insecure_channel(server.target) as ch:
            call = ch.unary_unary(
                "/carepath.v1.DecisionService/RecordFeedback",
                request_serializer=ds.RecordFeedbackRequest.SerializeToString,
                response_deserializer=ds.RecordFeedbackResponse.FromString,
            )
            tokens = [tok(pki) for _ in range(32)]  # one each: a token's jti is used once

            async def send(n: int) -> None:
                which = "ab"[n % 2]
                req = ds.RecordFeedbackRequest(feedback_id="fb-race", decision_id=did, items=contents[which])
                try:
                    outcomes[n] = (which, await call(req, timeout=30, metadata=(("authorization", f"Bearer {tokens[n]}"),)))
                except grpc.aio.AioRpcError as exc:
                    outcomes[n] = (which, exc.code())

            await asyncio.gather(*(send(n) for n in range(32)))

    asyncio.run(race())
    rows = feedback_rows(db_of(server), "fb-race")
    assert len(rows) == 1
    stored = "a" if rows[0]["outcome"] == "overridden" else "b"
    for which, got in outcomes.values():
        if which == stored:
            assert isinstance(got, ds.RecordFeedbackResponse), got
        else:
            assert got == grpc.StatusCode.ALREADY_EXISTS, got
    assert len(outcomes) == 32
    assert [got.duplicate for which, got in outcomes.values() if which == stored].count(False) == 1
    assert verify(db_of(server)).problem == ""


def test_a_resend_is_compared_with_its_time_when_it_gives_one(server: Server, pki: dict[str, Any]) -> None:
    with client(server, pki) as c:
        did, _ = with_recommendations(c)
        items = [FeedbackItem(0, "accepted")]
        first = c.record_feedback(did, items, feedback_id="fb-at", at="2026-12-07T09:00:00Z")
        assert c.record_feedback(did, items, feedback_id="fb-at", at="2026-12-07T09:00:00Z").duplicate
        assert c.record_feedback(did, items, feedback_id="fb-at").duplicate  # no time given: not compared
        with pytest.raises(CallError) as other:
            c.record_feedback(did, items, feedback_id="fb-at", at="2026-12-07T09:30:00Z")
    assert other.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert [r["at"] for r in feedback_rows(db_of(server), "fb-at")] == ["2026-12-07T09:00:00.000Z"]
    assert len(first.content_sha256) == 64


def test_unknown_decision_or_recommendation_is_not_found(server: Server, pki: dict[str, Any]) -> None:
    with client(server, pki) as c:
        did, recs = with_recommendations(c)
        cases = [
            ("d-" + "0" * 32, [FeedbackItem(0, "accepted")], "unknown decision"),
            (did, [FeedbackItem(len(recs), "accepted")], f"has {len(recs)} recommendation(s)"),
            (did, [FeedbackItem(0, "accepted", rule="not-its-rule")], "not 'not-its-rule'"),
        ]
        for n, (decision_id, items, why) in enumerate(cases):
            with pytest.raises(CallError) as err:
                c.record_feedback(decision_id, items, feedback_id=f"fb-nf-{n}")
            assert err.value.code == grpc.StatusCode.NOT_FOUND and why in str(err.value)
    assert not feedback_rows(db_of(server), "fb-nf-0")
    # a refusal's record is written as the call ends (not before the status is sent): wait for it
    wait_for(lambda: len(audit_rows(db_of(server), "request_id LIKE 'fb-nf-%'")) == 3, 10, "the refusals' records")
    assert [r["outcome"] for r in audit_rows(db_of(server), "request_id LIKE 'fb-nf-%'")] == ["NOT_FOUND"] * 3


@pytest.mark.parametrize(
    ("request_fields", "field", "why"),
    [
        ({"feedback_id": ""}, "feedback_id", "required"),
        ({"feedback_id": "Jane Doe 1970-01-01"}, "feedback_id", "1-64 characters"),
        ({"decision_id": ""}, "decision_id", "required"),
        ({"items": []}, "items", "at least one"),
        (
            {"items": [ds.RecommendationFeedback(recommendation=0, outcome=ds.FEEDBACK_OUTCOME_OVERRIDDEN)]},
            "items[0].reason",
            "needs a reason",
        ),
        ({"items": [ds.RecommendationFeedback(recommendation=0)]}, "items[0].outcome", "is required"),
        (
            {"items": [ds.RecommendationFeedback(outcome=ds.FEEDBACK_OUTCOME_ACCEPTED, reason=ds.OVERRIDE_REASON_OTHER)]},
            "items[0].reason",
            "a reason is for an override",
        ),
        (
            {"items": [ds.RecommendationFeedback(outcome=ds.FEEDBACK_OUTCOME_ACCEPTED, reason_text="x" * 1001)]},
            "items[0].reason_text",
            "at most 1000",
        ),
        (
            {
                "items": [
                    ds.RecommendationFeedback(outcome=ds.FEEDBACK_OUTCOME_ACCEPTED),
                    ds.RecommendationFeedback(outcome=ds.FEEDBACK_OUTCOME_ACCEPTED),
                ]
            },
            "items[1].recommendation",
            "twice",
        ),
        (
            {"items": [ds.RecommendationFeedback(outcome=ds.FEEDBACK_OUTCOME_ACCEPTED, reason_text="seen\x00today")]},
            "items[0].reason_text",
            "no control characters",
        ),
        ({"at": "yesterday"}, "at", "RFC 3339"),
        ({"at": "2999-01-01T00:00:00Z"}, "at", "in the future"),
    ],
)
def test_bad_feedback_is_invalid_argument_naming_the_field(
    server: Server, pki: dict[str, Any], request_fields: dict[str, Any], field: str, why: str
) -> None:
    fields: dict[str, Any] = {
        "feedback_id": "fb-bad",
        "decision_id": "d-" + "1" * 32,
        "items": [ds.RecommendationFeedback(recommendation=0, outcome=ds.FEEDBACK_OUTCOME_ACCEPTED)],
    }
    fields.update(request_fields)
    with grpc.insecure_channel(server.target) as ch:
        call = ch.unary_unary(
            "/carepath.v1.DecisionService/RecordFeedback",
            request_serializer=ds.RecordFeedbackRequest.SerializeToString,
            response_deserializer=ds.RecordFeedbackResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            call(ds.RecordFeedbackRequest(**fields), timeout=20, metadata=(("authorization", f"Bearer {tok(pki)}"),))
    e: Any = err.value
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details().startswith(f"invalid feedback: {field}: ") and why in e.details()


def test_feedback_needs_its_own_scope(server: Server, pki: dict[str, Any]) -> None:
    with client(server, pki) as c:
        did, _ = with_recommendations(c)
    with CarepathClient(server.target, token=lambda: tok(pki, scope="carepath.evaluate"), retries=0) as c, pytest.raises(CallError) as err:
        c.record_feedback(did, [FeedbackItem(0, "accepted")])
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and "carepath.feedback" in str(err.value)


def test_the_client_checks_its_feedback_items() -> None:
    with pytest.raises(Exception, match="'accepted' or 'overridden'"):
        FeedbackItem(0, "ignored").message()
    with pytest.raises(Exception, match="one of patient_declined"):
        FeedbackItem(0, "overridden", "bored").message()


def test_without_an_audit_trail_feedback_is_failed_precondition_and_decisions_have_no_id(tmp_path: Path) -> None:
    s = Server(tmp_path, FIXTURES, 1)
    try:
        s.wait_serving()
        with CarepathClient(s.target, retries=0) as c:
            got = c.evaluate_recorded(SAMPLE)
            assert got.decision_id == "" and got.decision["patient_id"] == SAMPLE["patient_id"]
            with pytest.raises(CallError) as err:
                c.record_feedback("d-" + "2" * 32, [FeedbackItem(0, "accepted")])
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "--audit" in str(err.value)
    finally:
        assert s.stop() == 0


def test_report_feedback_gives_rates_per_rule_and_top_override_reasons(server: Server, pki: dict[str, Any], tmp_path: Path) -> None:
    with client(server, pki) as c:
        did, recs = with_recommendations(c)
        c.record_feedback(did, [FeedbackItem(0, "overridden", "contraindicated", "eGFR 25 last week")], feedback_id="fb-report")
        c.record_feedback(did, [FeedbackItem(1, "overridden", "patient_declined")], feedback_id="fb-report-2")
    out = subprocess.run([*CARE, "report", "--feedback", str(db_of(server))], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "## Feedback on recommendations" in text and "contraindicated" in text and "patient_declined" in text
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {recs[0]['rule']} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == recs[0]["rule"] and cells[1].endswith("%") and int(cells[3]) >= 1  # fired, feedback count
    assert "eGFR 25" not in text  # free text is not reported
    md = tmp_path / "r.md"
    subprocess.run([*CARE, "report", "--feedback", str(db_of(server)), "--out", str(md)], check=True, cwd=ROOT, timeout=60)
    assert md.read_text() == text
    missing = subprocess.run([*CARE, "report"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert missing.returncode == 2 and "DECISIONS" in missing.stderr and "--feedback" in missing.stderr


# ------------------------------------------------------------------------- an older audit file
def test_an_audit_file_from_before_decision_ids_is_extended_and_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE audit ({', '.join(LEGACY)})")
        prev = "0" * 64
        for seq in (1, 2, 3):
            fields = ("2026-12-01T00:00:00.000Z", "ehr", ISS, None, "ipv4:127.0.0.1", "Evaluate", "OK", None, f"r-{seq}", "[]", "[]", "ab")
            h = record_hash(seq, fields, prev)
            db.execute(f"INSERT INTO audit VALUES ({', '.join('?' * len(LEGACY))})", (seq, *fields, prev, h))
            prev = h
    audit = AuditLog(path)

    async def write() -> None:
        rec = audit.record(Caller("ehr"), "Evaluate", "OK", request_id="r-new", decision_id="d-new", recommendations=[["test", "r1"]])
        await audit.append(rec)

    asyncio.run(write())
    audit.close()
    v = verify(path)
    assert v.problem == "" and v.records == 4
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET decision_id = NULL, recommendations = NULL WHERE seq = 4")
    assert verify(path).problem == "record 4: changed (its content does not match its hash)"
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET decision_id = 'd-forged' WHERE seq = 2")
    assert verify(path).problem == "record 2: changed (its content does not match its hash)"


def test_reading_an_audit_file_never_changes_it(tmp_path: Path) -> None:
    """verify, export and report --feedback read evidence: an older file is read as it is (a review found
    verify migrating it, changing its bytes, and failing on read-only media), and a current one too."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE audit ({', '.join(LEGACY)})")
        prev = "0" * 64
        for seq in (1, 2):
            fields = ("2026-12-01T00:00:00.000Z", "ehr", ISS, None, "ipv4:127.0.0.1", "Evaluate", "OK", None, f"r-{seq}", "[]", "[]", "ab")
            h = record_hash(seq, fields, prev)
            db.execute(f"INSERT INTO audit VALUES ({', '.join('?' * len(LEGACY))})", (seq, *fields, prev, h))
            prev = h
    before = path.read_bytes()
    path.chmod(0o444)
    try:
        v = verify(path)
        assert v.problem == "" and v.records == 2
        assert [r["request_id"] for r in export(path, None, None)] == ["r-1", "r-2"]
        assert summarise(path).decisions == 2  # the two Evaluate records
    finally:
        path.chmod(0o644)
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET request_id = 'r-forged' WHERE seq = 2")
    assert verify(path).problem == "record 2: changed (its content does not match its hash)"
