"""Retention and FHIR export of the audit trail: `carepath audit prune` on a real SQLite audit file
written by AuditLog (the server's writer), `audit verify` after it (and after tampering), and
`audit export --format fhir` validated with fhir.resources' R4 models."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from grpc_helpers import CARE

from carepath.service.audit import COLUMNS, PRUNE, RETENTION_DAYS, AuditLog, Record, feedback_content, feedback_response, verify
from carepath.service.auth import Caller

pytestmark = pytest.mark.timeout(120)


START = datetime(2020, 1, 1, 12, tzinfo=UTC)


def written(tmp_path: Path, days: int = 10, start: datetime = START) -> Path:
    """One decision a day from 2020-01-01 (with feedback on the even days), then one today."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "audit.db"
    audit = AuditLog(path)

    def day(n: int) -> str:
        return (start + timedelta(days=n - 1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    async def write() -> None:
        for n in range(1, days + 1):
            rec = audit.record(
                Caller("ehr", "https://idp.example.org", peer="ipv4:127.0.0.1:1"),
                "Evaluate",
                "OK",
                patient=f"p-{n}",
                request_id=f"r-{n}",
                pathways=[["htn", "1.0.0", "a" * 64]],
                rules=["r1"],
                response=b"x",
                decision_id=f"d-{n}",
                recommendations=[["test", "r1"]],
            )
            await audit.append(Record(**{**rec.__dict__, "ts": day(n)}))
            if n % 2 == 0:
                row = (f"fb-{n}", 0, f"d-{n}", 0, "test", "r1", "overridden", "other", "", "dr", day(n))
                stored = [(*row, hashlib.sha256(feedback_content([row])).hexdigest())]
                fb = audit.record(
                    Caller("dr"),
                    "RecordFeedback",
                    "OK",
                    request_id=f"fb-{n}",
                    decision_id=f"d-{n}",
                    rules=["r1"],
                    response=feedback_response(f"fb-{n}", stored),
                )
                await audit.append(Record(**{**fb.__dict__, "ts": day(n)}), feedback=stored)
        await audit.append(audit.record(Caller("ehr"), "ListPathways", "OK"))

    asyncio.run(write())
    audit.close()
    return path


def care(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CARE, "audit", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def rows(path: Path, sql: str = "SELECT seq, action, request_id FROM audit ORDER BY seq") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(sql))


def test_prune_keeps_the_rest_verifiable_and_records_itself(tmp_path: Path) -> None:
    path = written(tmp_path)  # seq 1..15: days 1-10 (+5 feedback records), then ListPathways
    before = verify(path)
    assert before.problem == "" and before.records == 16
    done = care("prune", str(path), "--before", "2020-01-06")
    assert done.returncode == 0, done.stderr
    # days 1-5: 5 decisions and the feedback of days 2 and 4 = 7 records, through seq 7
    assert "pruned 7 records (through record 7) and 2 feedback rows" in done.stdout
    left = rows(path)
    assert left[0][0] == 8 and left[-1][1:] == (PRUNE, "through-7")
    assert rows(path, "SELECT seq, hash FROM anchor")[0][0] == 7
    assert rows(path, "SELECT feedback_id FROM feedback ORDER BY feedback_id") == [("fb-10",), ("fb-6",), ("fb-8",)]
    ok = care("verify", str(path))
    assert ok.returncode == 0 and "10 records, chain intact" in ok.stdout, ok.stderr
    # a second prune (it prunes the first one's record too) and the chain still holds
    assert care("prune", str(path), "--before", "2020-01-09").returncode == 0
    assert care("verify", str(path)).returncode == 0
    # the writer carries on after the last record
    audit = AuditLog(path)
    asyncio.run(audit.append(audit.record(Caller("ehr"), "ListPathways", "OK")))
    audit.close()
    assert verify(path).problem == ""
    # nothing old enough: nothing happens
    nothing = care("prune", str(path), "--before", "2019-01-01")
    assert nothing.returncode == 0 and "nothing pruned" in nothing.stdout


def test_after_a_prune_tampering_is_still_detected(tmp_path: Path) -> None:
    path = written(tmp_path)
    assert care("prune", str(path), "--before", "2020-01-06").returncode == 0
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET outcome = 'NOT_FOUND' WHERE seq = 9")
    bad = care("verify", str(path))
    assert bad.returncode == 1 and "BROKEN at record 9: changed" in bad.stderr

    path = written(tmp_path / "b")
    assert care("prune", str(path), "--before", "2020-01-06").returncode == 0
    with sqlite3.connect(path) as db:  # cut the oldest records left, as if pruned, without a prune
        db.execute("DELETE FROM audit WHERE seq IN (8, 9)")
    bad = care("verify", str(path))
    assert bad.returncode == 1 and "records 8 to 9 missing (deleted?): record 10 comes after record 7" in bad.stderr

    path = written(tmp_path / "c")
    assert care("prune", str(path), "--before", "2020-01-06").returncode == 0
    with sqlite3.connect(path) as db:  # ... and the anchor moved to hide it
        h = db.execute("SELECT hash FROM audit WHERE seq = 9").fetchone()[0]
        db.execute("DELETE FROM audit WHERE seq IN (8, 9)")
        db.execute("UPDATE anchor SET seq = 9, hash = ?", (h,))
    bad = care("verify", str(path))
    assert bad.returncode == 1 and "the anchor (record 9) is not what the latest prune recorded: record 7" in bad.stderr

    path = written(tmp_path / "d")
    with sqlite3.connect(path) as db:  # an anchor planted on a trail never pruned, the start deleted
        h = db.execute("SELECT hash FROM audit WHERE seq = 3").fetchone()[0]
        db.execute("DELETE FROM audit WHERE seq <= 3")
        db.execute("INSERT INTO anchor VALUES (1, 3, ?)", (h,))
    bad = care("verify", str(path))
    assert bad.returncode == 1 and "nothing (no AuditPrune record)" in bad.stderr


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ("UPDATE feedback SET reason_text = 'changed later' WHERE feedback_id = 'fb-4'", "feedback 'fb-4': changed"),
        ("UPDATE feedback SET at = '2020-01-01T00:00:00.000Z' WHERE feedback_id = 'fb-4'", "feedback 'fb-4': changed"),
        ("DELETE FROM feedback WHERE feedback_id = 'fb-6'", "its feedback 'fb-6' is missing (feedback rows deleted?)"),
        (
            "INSERT INTO feedback (feedback_id, item, decision_id, recommendation, kind, rule, outcome, reason, reason_text, clinician,"
            " at, content_sha256, audit_seq) SELECT feedback_id, 1, decision_id, 1, kind, rule, 'accepted', NULL, '', clinician, at,"
            " content_sha256, audit_seq FROM feedback WHERE feedback_id = 'fb-8'",
            "feedback 'fb-8': changed",
        ),
        ("UPDATE feedback SET audit_seq = audit_seq - 1 WHERE feedback_id = 'fb-2'", "feedback 'fb-2': record 2 is not its"),
    ],
)
def test_verify_checks_the_feedback_rows_against_their_records(tmp_path: Path, tamper: str, problem: str) -> None:
    """A review found feedback rows outside what `audit verify` checks: changed, deleted or added rows
    (the clinician's reason, the time it counts by) went unnoticed."""
    path = written(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute(tamper)
    done = care("verify", str(path))
    assert done.returncode == 1 and problem in done.stderr, done.stderr


def test_a_feedback_row_rewritten_with_a_new_content_hash_is_still_found(tmp_path: Path) -> None:
    path = written(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE feedback SET outcome = 'accepted', reason = NULL WHERE feedback_id = 'fb-4'")
        rows = db.execute("SELECT * FROM feedback WHERE feedback_id = 'fb-4' ORDER BY item").fetchall()
        digest = hashlib.sha256(feedback_content(rows)).hexdigest()
        db.execute("UPDATE feedback SET content_sha256 = ? WHERE feedback_id = 'fb-4'", (digest,))
    done = care("verify", str(path))
    assert done.returncode == 1 and "feedback 'fb-4': its rows do not match what record" in done.stderr


def test_prune_default_is_six_years_and_options_are_checked(tmp_path: Path) -> None:
    six_years = datetime.now(UTC) - timedelta(days=RETENTION_DAYS)
    path = written(tmp_path / "young", start=six_years + timedelta(days=2))
    kept = care("prune", str(path))  # by default records younger than six years stay
    assert kept.returncode == 0 and "nothing pruned" in kept.stdout
    old = written(tmp_path / "old", start=six_years - timedelta(days=5) + timedelta(hours=12))
    some = care("prune", str(old))  # days 1-5 are older than six years
    assert some.returncode == 0 and "pruned 7 records" in some.stdout
    gone = care("prune", str(path), "--keep-days", "30")
    assert gone.returncode == 0 and "pruned 15 records" in gone.stdout
    assert care("verify", str(path)).returncode == 0
    both = care("prune", str(path), "--before", "2020-01-01", "--keep-days", "3")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    assert care("prune", str(tmp_path / "none.db")).returncode == 2


def test_fhir_export_is_valid_r4_auditevents(tmp_path: Path) -> None:
    from fhir.resources.R4B.auditevent import AuditEvent
    from fhir.resources.R4B.bundle import Bundle

    path = written(tmp_path)
    out = care("export", str(path), "--format", "fhir")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    bundle: Any = Bundle.model_validate(doc)
    assert bundle.type == "collection" and len(bundle.entry) == 16
    first: Any = AuditEvent.model_validate(doc["entry"][0]["resource"])
    assert first.action == "E" and first.outcome == "0" and first.subtype[0].code == "Evaluate"
    assert first.agent[0].who.identifier.value == "ehr" and first.agent[0].who.identifier.system == "https://idp.example.org"
    idents = {e.what.identifier.system: e.what.identifier.value for e in first.entity}
    assert idents["urn:carepath:patient-id"] == "p-1" and idents["urn:carepath:pathway"] == "htn|1.0.0"
    assert idents["urn:carepath:decision-id"] == "d-1" and idents["urn:carepath:audit-record"] == "1"
    record = next(e for e in first.entity if e.what.identifier.system == "urn:carepath:audit-record")
    with sqlite3.connect(path) as db:
        h = db.execute("SELECT hash FROM audit WHERE seq = 1").fetchone()[0]
    assert {d.type: d.valueString for d in record.detail}["hash"] == h
    feedback: Any = AuditEvent.model_validate(doc["entry"][2]["resource"])
    assert feedback.action == "C" and feedback.subtype[0].code == "RecordFeedback"
    lines = care("export", str(path), "--format", "fhir-ndjson", "--since", "2020-01-05").stdout.splitlines()
    events: list[Any] = [AuditEvent.model_validate_json(line) for line in lines]
    assert [e.recorded.isoformat()[:10] for e in events][:2] == ["2020-01-05", "2020-01-06"] and len(events) == 10


def test_fhir_outcome_codes_follow_the_status() -> None:
    from carepath.service.fhir_audit import outcome_code

    assert [outcome_code(s) for s in ("OK", "OK_INVALID", "NOT_FOUND", "UNAUTHENTICATED", "UNAVAILABLE", "INTERNAL")] == [
        "0",
        "0",
        "4",
        "4",
        "8",
        "12",
    ]
    assert len(COLUMNS) == 17


@pytest.mark.parametrize(
    ("peer", "network"),
    [
        ("ipv4:10.1.2.3:50211", {"address": "10.1.2.3", "type": "2"}),
        ("ipv6:[::1]:50211", {"address": "::1", "type": "2"}),
        ("ipv6:%5B2001:db8::7%5D:443", {"address": "2001:db8::7", "type": "2"}),
        ("10.1.2.3:8080", {"address": "10.1.2.3", "type": "2"}),  # the CDS Hooks listener's peer
        ("unix:/run/carepath.sock", {"address": "unix:/run/carepath.sock", "type": "5"}),
        ("ehr-gateway.local:443", {"address": "ehr-gateway.local", "type": "1"}),
    ],
)
def test_fhir_agent_network_is_an_address_without_its_port(peer: str, network: dict[str, str]) -> None:
    """A review found ip:port exported under type 2 (IP address)."""
    from carepath.service.fhir_audit import audit_event

    rec = {c: None for c in COLUMNS} | {"seq": 1, "ts": "2026-12-07T00:00:00.000Z", "action": "Evaluate", "outcome": "OK"}
    rec |= {"pathways": [], "rules": [], "peer": peer, "prev_hash": "0" * 64, "hash": "1" * 64}
    assert audit_event(rec)["agent"][0]["network"] == network


def test_feedback_stored_before_rows_were_hashed_still_verifies(tmp_path: Path) -> None:
    """Trails written before 7 Dec 2026 (75b54a5): RecordFeedback's content hash left out kind, time and
    the rule when the caller gave none; CDS Hooks feedback kept a hash of the whole item and no response
    hash. A review found them reported as tampered; they verify, and what their hash covers is checked."""
    path = tmp_path / "audit.db"
    audit = AuditLog(path)
    old = json.dumps(["d-1", [[0, "", "overridden", "other", "as 75b54a5 stored it"]], "dr"], separators=(",", ":"))
    row = ("fb-old", 0, "d-1", 0, "test", "r1", "overridden", "other", "as 75b54a5 stored it", "dr", "2026-12-07T01:00:00.000Z")
    stored = [(*row, hashlib.sha256(old.encode()).hexdigest())]
    cds = [("cds-" + "a" * 40, 0, "d-1", 0, "card", "r1", "accepted", None, "", None, "2026-12-07T01:00:00.000Z", "b" * 64)]

    async def write() -> None:
        caller = Caller("ehr")
        await audit.append(audit.record(caller, "Evaluate", "OK", decision_id="d-1", recommendations=[["test", "r1"]]))
        resp = feedback_response("fb-old", stored)
        await audit.append(audit.record(caller, "RecordFeedback", "OK", request_id="fb-old", decision_id="d-1", response=resp), stored)
        await audit.append(audit.record(caller, "CdsFeedback", "OK", request_id=cds[0][0], decision_id="d-1"), cds)

    asyncio.run(write())
    audit.close()
    assert verify(path).problem == ""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE feedback SET reason_text = 'rewritten' WHERE feedback_id = 'fb-old'")
    assert verify(path).problem == "feedback 'fb-old': changed (its rows do not match their content hash)"


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE feedback SET reason_text = X'0102ff' WHERE feedback_id = 'fb-4'",  # a BLOB where text belongs
        "UPDATE feedback SET reason_text = CAST(X'80ff' AS TEXT) WHERE feedback_id = 'fb-4'",  # not UTF-8
        "INSERT INTO anchor (id, seq, hash) VALUES (1, 'three', 'x')",  # not a number
    ],
)
def test_verify_names_an_unreadable_value_rather_than_crashing(tmp_path: Path, tamper: str) -> None:
    """A review found crafted values ending `audit verify` in "internal error" (exit 70)."""
    path = written(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute(tamper)
    done = care("verify", str(path))
    assert done.returncode in (1, 2) and "internal error" not in done.stderr, done.stderr
    assert "BROKEN" in done.stderr or "cannot read" in done.stderr, done.stderr
