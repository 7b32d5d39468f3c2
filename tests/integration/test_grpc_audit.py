"""The audit trail end to end: a real `carepath serve --audit` on 127.0.0.1 (with tokens), the SQLite
file read back, tampered with, and checked by `carepath audit verify`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import FIXTURES, ROOT
from grpc_helpers import CARE, SAMPLE, Server, received_before_kill_9, serving, token_keys, varied_case

from carepath.client import CallError, CarepathClient
from carepath.errors import CaseError
from carepath.service import devpki
from carepath.service.audit import COLUMNS, AuditLog, record_hash
from carepath.service.auth import Caller
from carepath_client._proto.v1 import decision_service_pb2 as ds

pytestmark = pytest.mark.timeout(180)

ISS, AUD = "https://idp.example.org", "carepath"
ALL = "carepath.evaluate carepath.read carepath.validate"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    keys = token_keys(tmp_path_factory.mktemp("audit-keys"))
    devpki.write(keys["dir"] / "audit.key", b"an audit key of more than 16 bytes\n", private=True)
    return keys | {"key": keys["dir"] / "audit.key"}


def tok(pki: dict[str, Any], scope: str = ALL) -> str:
    return devpki.token(pki["rsa"], "k1", issuer=ISS, audience=AUD, scope=scope)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Any]) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("audit")
    args = ("--audit", str(d / "audit.db"), "--audit-key", str(pki["key"]), "--jwks", str(pki["jwks"]))
    yield from serving(d, FIXTURES, 1, *args, "--jwt-issuer", ISS, "--jwt-audience", AUD)


def db_of(server: Server) -> Path:
    args = server.proc.args
    assert isinstance(args, list)
    return Path(args[args.index("--audit") + 1])


def records(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        return [dict(zip(COLUMNS, r, strict=True)) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY seq")]


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CARE, "audit", "verify", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_every_response_received_has_its_record(server: Server, pki: dict[str, Any]) -> None:
    received: dict[str, bytes] = {}
    with grpc.insecure_channel(server.target) as ch:
        raw = ch.unary_unary("/carepath.v1.DecisionService/Evaluate", request_serializer=None, response_deserializer=None)
        for i in range(5):
            req = ds.EvaluateRequest(request_id=f"unary-{i}", case_json=json.dumps(varied_case(i)))
            received[f"unary-{i}"] = raw(req.SerializeToString(), timeout=20, metadata=(("authorization", f"Bearer {tok(pki)}"),))
    with CarepathClient(server.target, token=lambda: tok(pki)) as c:
        streamed = [r.request_id for r in c.evaluate_many([varied_case(i) for i in range(8)])]
        assert c.list_pathways() and c.get_pathway("mini_htn")["id"] == "mini_htn"
        c.validate_pathway("id: x\n")
        with pytest.raises(CaseError, match="required field is missing"):
            c.evaluate({"patient_id": "bad-1"}, request_id="bad-case")
    with CarepathClient(server.target, token=tok(pki, "carepath.read"), retries=0) as c, pytest.raises(CallError):
        c.evaluate(SAMPLE, request_id="no-scope")
    with CarepathClient(server.target, retries=0) as c, pytest.raises(CallError):
        c.list_pathways()

    recs = records(db_of(server))
    by_id = {r["request_id"]: r for r in recs if r["request_id"]}
    for rid, body in received.items():
        r = by_id[rid]
        assert r["outcome"] == "OK" and r["action"] == "Evaluate"
        assert r["response_sha256"] == hashlib.sha256(body).hexdigest()  # the record names the very bytes the caller got
        assert r["subject"] == "ehr-gateway" and r["issuer"] == ISS and r["peer"].startswith("ipv4:127.0.0.1")
        assert json.loads(r["pathways"])[0][:2] == ["mini_htn", "0.1.0"] and len(json.loads(r["pathways"])[0][2]) == 64
        assert r["patient"].startswith("hmac-sha256:")
    decision = ds.EvaluateResponse.FromString(received["unary-0"]).decision
    assert json.loads(by_id["unary-0"]["rules"]) == list(dict.fromkeys(t.rule for t in decision.trace)) != []
    for rid in streamed:
        assert by_id[rid]["action"] == "EvaluateStream" and by_id[rid]["outcome"] == "OK"
    actions = [(r["action"], r["outcome"]) for r in recs]
    for want in [("ListPathways", "OK"), ("GetPathway", "OK"), ("ValidatePathway", "OK_INVALID"), ("Evaluate", "PERMISSION_DENIED")]:
        assert want in actions
    assert ("ListPathways", "UNAUTHENTICATED") in actions
    assert by_id["bad-case"]["outcome"] == "INVALID_ARGUMENT"
    text = json.dumps(recs)
    assert "p-0" not in text and "bad-1" not in text  # patient ids only as keyed hashes; no clinical values at all
    # a value as a number of its own (a millisecond timestamp such as 17:00:24.123 holds "4.1" by chance)
    values = [str(o["value"]) for o in SAMPLE["observations"] if isinstance(o["value"], float)]
    assert values and not [v for v in values if re.search(rf"(?<![\w.:-]){re.escape(v)}(?![\w.])", text)], values
    done = verify(db_of(server))
    assert done.returncode == 0, done.stderr
    assert f"{len(recs)} records, chain intact" in done.stdout


def test_export_writes_json_lines_by_time(server: Server, tmp_path: Path) -> None:
    path = db_of(server)
    out = subprocess.run(
        [*CARE, "audit", "export", str(path), "--since", "2000-01-01"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines and lines[0]["seq"] == 1 and isinstance(lines[0]["pathways"], list)
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    none = subprocess.run(
        [*CARE, "audit", "export", str(path), "--until", "2000-01-01"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert none.stdout == ""
    bad = subprocess.run([*CARE, "audit", "export", str(path), "--since", "yesterday"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "expected a UTC time" in bad.stderr


# ---------------------------------------------------------------- tamper evidence


def _written(tmp_path: Path, n: int = 6) -> Path:
    """An audit file of n records written by AuditLog itself (the server's writer)."""
    path = tmp_path / "audit.db"
    audit = AuditLog(path, b"0123456789abcdef")

    async def write() -> None:
        for i in range(n):
            caller = Caller("ehr", ISS, peer="ipv4:127.0.0.1:1")
            await audit.append(audit.record(caller, "Evaluate", "OK", patient=f"p-{i}", request_id=f"r-{i}", response=b"x%d" % i))

    asyncio.run(write())
    audit.close()
    assert verify(path).returncode == 0
    return path


def test_a_changed_record_is_detected(tmp_path: Path) -> None:
    path = _written(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET outcome = 'PERMISSION_DENIED' WHERE seq = 3")
    done = verify(path)
    assert done.returncode == 1
    assert "BROKEN at record 3: changed (its content does not match its hash) (2 records verified before it)" in done.stderr


def test_a_changed_record_with_its_hash_rewritten_is_detected(tmp_path: Path) -> None:
    path = _written(tmp_path)
    with sqlite3.connect(path) as db:
        row = db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE seq = 3").fetchone()
        fields = list(row[1:-2])
        fields[COLUMNS.index("request_id") - 1] = "r-forged"
        db.execute("UPDATE audit SET request_id = 'r-forged', hash = ? WHERE seq = 3", (record_hash(3, tuple(fields), row[-2]),))
    done = verify(path)
    assert done.returncode == 1
    assert "record 4: its prev_hash is not record 3's hash" in done.stderr


def test_a_deleted_record_is_detected(tmp_path: Path) -> None:
    path = _written(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM audit WHERE seq = 4")
    done = verify(path)
    assert done.returncode == 1
    assert "record 4 missing (deleted?): record 5 comes after record 3" in done.stderr


def test_an_inserted_record_is_detected(tmp_path: Path) -> None:
    """Records renumbered to make room, and one inserted with a correct hash over the record before it."""
    path = _written(tmp_path)
    with sqlite3.connect(path) as db:
        for seq in range(6, 2, -1):
            db.execute("UPDATE audit SET seq = seq + 1 WHERE seq = ?", (seq,))
        prev = db.execute("SELECT hash FROM audit WHERE seq = 2").fetchone()[0]
        fields = (
            "2026-12-07T00:00:00.000Z",
            "ehr",
            ISS,
            None,
            "ipv4:127.0.0.1",
            "Evaluate",
            "OK",
            None,
            "r-inserted",
            "[]",
            "[]",
            None,
            None,
            None,
        )
        db.execute(
            f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            (3, *fields, prev, record_hash(3, fields, prev)),
        )
    done = verify(path)
    assert done.returncode == 1
    assert "record 4: its prev_hash is not record 3's hash" in done.stderr


def test_a_record_appended_without_the_chain_is_detected(tmp_path: Path) -> None:
    path = _written(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute(
            f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            (
                7,
                "2026-12-07T00:00:00.000Z",
                None,
                None,
                None,
                None,
                "Evaluate",
                "OK",
                None,
                "r-x",
                "[]",
                "[]",
                None,
                None,
                None,
                "0" * 64,
                "f" * 64,
            ),
        )
    done = verify(path)
    assert done.returncode == 1 and "record 7: its prev_hash is not record 6's hash" in done.stderr


def test_verify_names_a_file_that_is_not_an_audit_trail(tmp_path: Path) -> None:
    done = verify(tmp_path / "nothing.db")
    assert done.returncode == 2 and "no such audit file" in done.stderr


# ---------------------------------------------------------------- durability


def test_kill_9_under_load_loses_no_record_of_a_response_received(tmp_path: Path) -> None:
    """Fail closed: every response a caller got was committed first, so a kill -9 cannot lose its record."""
    db = tmp_path / "audit.db"
    srv = Server(tmp_path, FIXTURES, 1, "--audit", str(db))
    srv.wait_serving()
    got = received_before_kill_9(srv)
    assert len(got) > 20
    recorded = {r["request_id"] for r in records(db) if r["outcome"] == "OK"}
    assert set(got) <= recorded, f"{len(set(got) - recorded)} responses received without a record"
    done = verify(db)
    assert done.returncode == 0, done.stderr


def test_fail_closed_withholds_the_response_when_the_record_cannot_be_written(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    srv = Server(tmp_path, FIXTURES, 1, "--audit", str(db), setup="import carepath.service.audit as a; a.LOCK_TIMEOUT = 0.3")
    try:
        srv.wait_serving()
        with CarepathClient(srv.target, retries=0, timeout=10) as c:
            assert c.evaluate(SAMPLE, request_id="before")["patient_id"] == SAMPLE["patient_id"]
            blocker = sqlite3.connect(db, isolation_level=None, timeout=5)
            blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file: the server's commit fails
            try:
                with pytest.raises(CallError) as info:
                    c.evaluate(SAMPLE, request_id="during")
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
                assert "audit trail could not record this call, so its response is withheld" in info.value.message
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert c.evaluate(SAMPLE, request_id="after")["patient_id"] == SAMPLE["patient_id"]
        assert srv.events("audit_failed")
    finally:
        assert srv.stop() == 0
    ids = [r["request_id"] for r in records(db)]
    assert "before" in ids and "after" in ids and "during" not in ids
    assert verify(db).returncode == 0


def test_audit_options_are_checked(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("tiny")
    cmd = [*CARE, "serve", "--port", "0", "--workers", "1", "--pathways", str(FIXTURES)]
    done = subprocess.run([*cmd, "--audit", str(tmp_path / "a.db"), "--audit-key", str(short)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "at least 16 bytes" in done.stderr
    done = subprocess.run([*cmd, "--audit-key", str(short)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "--audit-key needs --audit" in done.stderr
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all" * 100)
    done = subprocess.run([*cmd, "--audit", str(junk)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "cannot open the audit trail" in done.stderr
