"""The audit trail in PostgreSQL: a real PostgreSQL 16 server started by the tests (pgserver, from the
package registry: its wheel carries the server binaries), `carepath serve --audit postgresql://...` on
127.0.0.1, the same checks as the SQLite file gets: every response received has its record, verify
finds changed, deleted and inserted records and feedback rows, prune keeps the chain verifiable,
export, report --feedback, fail closed, and kill -9 under load. Plus what only a shared database
allows: two servers appending to one chain."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
import pytest
from conftest import FIXTURES, ROOT
from grpc_helpers import CARE, Server, local_postgres, received_before_kill_9, varied_case

from carepath.client import CallError, CarepathClient
from carepath.service import audit as audit_module
from carepath.service.audit import COLUMNS, FEEDBACK, AuditError, AuditLog, record_hash, verify
from carepath.service.auditdb import postgres_schema, shown
from carepath.service.auth import Caller
from carepath_client import FeedbackItem

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of this module's own (a short directory: its Unix socket lives there)."""
    d = tempfile.mkdtemp(prefix="cp-pg-")
    srv = local_postgres(d)
    try:
        yield str(srv.get_uri())
    finally:
        srv.cleanup()
        shutil.rmtree(d, ignore_errors=True)


_made = iter(range(1_000_000))


@pytest.fixture
def url(postgres: str) -> str:
    """A new, empty database on the module's server: its connection URL."""
    name = f"audit_{next(_made)}"
    with psycopg.connect(postgres, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(postgres)
    return urlunsplit(parts._replace(path=f"/{name}"))


def sql(url: str, text: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        cur = db.execute(text, args)
        return cur.fetchall() if cur.description else []


def records(url: str) -> list[dict[str, Any]]:
    return [dict(zip(COLUMNS, r, strict=True)) for r in sql(url, f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY seq")]


def care(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CARE, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def written(url: str, n: int = 6) -> None:
    audit = AuditLog(url)

    async def write() -> None:
        for i in range(n):
            caller = Caller("ehr", "https://idp.example.org", peer="ipv4:127.0.0.1:1")
            await audit.append(audit.record(caller, "Evaluate", "OK", patient=f"p-{i}", request_id=f"r-{i}", response=b"x%d" % i))

    asyncio.run(write())
    audit.close()


def test_the_schema_is_the_sqlite_one_in_postgres_words(url: str) -> None:
    written(url, 1)
    cols = sql(url, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'audit' ORDER BY ordinal_position")
    assert [c for c, _ in cols] == list(COLUMNS)
    assert dict(cols)["seq"] == "bigint"
    feedback = sql(url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'feedback'")
    assert sorted(c for (c,) in feedback) == sorted(FEEDBACK)
    assert {t for (t,) in sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")} == {
        "audit",
        "anchor",
        "feedback",
        "cards",
    }
    assert sql(url, "SELECT collation_name FROM information_schema.columns WHERE table_name = 'audit' AND column_name = 'ts'") == [("C",)]
    assert 'ts TEXT COLLATE "C" NOT NULL' in postgres_schema(audit_module.SCHEMA)


def test_a_served_trail_in_postgres_records_every_response_and_verifies(url: str, tmp_path: Any) -> None:
    srv = Server(tmp_path, FIXTURES, 1, "--audit", url)
    try:
        srv.wait_serving()
        with CarepathClient(srv.target, retries=0) as c:
            got = [c.evaluate_recorded(varied_case(i), request_id=f"pg-{i}") for i in range(8)]
            streamed = list(c.evaluate_many([varied_case(i) for i in range(8, 12)]))
            c.list_pathways()
            did = next(g.decision_id for g in got if g.decision["recommendations"])
            receipt = c.record_feedback(did, [FeedbackItem(0, "overridden", "patient_declined", "not today")], feedback_id="fb-pg")
            assert c.record_feedback(did, [FeedbackItem(0, "overridden", "patient_declined", "not today")], feedback_id="fb-pg").duplicate
            with pytest.raises(CallError) as other:
                c.record_feedback(did, [FeedbackItem(0, "accepted")], feedback_id="fb-pg")
            assert other.value.code == grpc.StatusCode.ALREADY_EXISTS
    finally:
        assert srv.stop() == 0, srv.log()
    recs = records(url)
    assert {f"pg-{i}" for i in range(8)} <= {r["request_id"] for r in recs if r["action"] == "Evaluate"}
    assert sum(r["action"] == "EvaluateStream" for r in recs) == 4 and all(s.decision_id for s in streamed)
    assert [r["outcome"] for r in recs if r["request_id"] == "fb-pg"] == ["OK", "OK_DUPLICATE", "ALREADY_EXISTS"]
    stored = sql(url, "SELECT outcome, reason, reason_text, content_sha256 FROM feedback WHERE feedback_id = 'fb-pg'")
    assert stored == [("overridden", "patient_declined", "not today", receipt.content_sha256)]
    done = care("audit", "verify", url)
    assert done.returncode == 0 and f"{len(recs)} records, chain intact" in done.stdout, done.stderr
    lines = care("audit", "export", url, "--format", "fhir-ndjson").stdout.splitlines()
    assert len(lines) == len(recs)
    report = care("report", "--feedback", url)
    assert report.returncode == 0 and "patient_declined" in report.stdout and "not today" not in report.stdout


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ("UPDATE audit SET outcome = 'PERMISSION_DENIED' WHERE seq = 3", "BROKEN at record 3: changed"),
        ("DELETE FROM audit WHERE seq = 4", "record 4 missing (deleted?): record 5 comes after record 3"),
        ("UPDATE audit SET prev_hash = hash WHERE seq = 5", "record 5: its prev_hash is not record 4's hash"),
    ],
)
def test_tampering_in_postgres_is_found(url: str, tamper: str, problem: str) -> None:
    written(url)
    sql(url, tamper)
    done = care("audit", "verify", url)
    assert done.returncode == 1 and problem in done.stderr, done.stderr


def test_a_record_rehashed_after_a_change_breaks_the_next_link(url: str) -> None:
    written(url)
    (row,) = sql(url, f"SELECT {', '.join(COLUMNS)} FROM audit WHERE seq = 3")
    fields = list(row[1:-2])
    fields[COLUMNS.index("request_id") - 1] = "r-forged"
    sql(url, "UPDATE audit SET request_id = 'r-forged', hash = %s WHERE seq = 3", record_hash(3, tuple(fields), row[-2]))
    assert verify(url).problem == "record 4: its prev_hash is not record 3's hash (a record inserted, deleted or rewritten there)"


def test_prune_in_postgres_keeps_the_chain_verifiable(url: str) -> None:
    written(url)
    sql(url, "UPDATE audit SET ts = '2019-01-01T00:00:00.000Z' WHERE seq <= 4")  # four old records: rehash them
    prev = audit_module.GENESIS
    for r in records(url):
        h = record_hash(r["seq"], tuple(r[c] for c in COLUMNS[1:-2]), prev)
        sql(url, "UPDATE audit SET prev_hash = %s, hash = %s WHERE seq = %s", prev, h, r["seq"])
        prev = h
    assert verify(url).problem == ""
    done = care("audit", "prune", url, "--before", "2020-01-01")
    assert done.returncode == 0 and "pruned 4 records (through record 4)" in done.stdout, done.stderr
    v = verify(url)
    assert v.problem == "" and v.records == 3  # records 5 and 6, and the prune's own
    sql(url, "UPDATE anchor SET seq = 3")  # the anchor moved: the chain no longer starts after it
    assert verify(url).problem == "record 4 missing (deleted?): record 5 comes after record 3"


def test_two_servers_append_to_one_chain(url: str) -> None:
    """What a shared database is for: writers on two connections (two servers) keep one chain, in order."""
    logs = [AuditLog(url), AuditLog(url)]

    async def write(audit: AuditLog, who: str) -> None:
        await asyncio.gather(*(audit.append(audit.record(Caller(who), "Evaluate", "OK", request_id=f"{who}-{i}")) for i in range(200)))

    async def both() -> None:
        await asyncio.gather(write(logs[0], "a"), write(logs[1], "b"))

    asyncio.run(both())
    for audit in logs:
        audit.close()
    v = verify(url)
    assert v.problem == "" and v.records == 400
    assert [r["seq"] for r in records(url)] == list(range(1, 401))


def test_a_writer_needs_only_select_and_insert_once_the_tables_exist(url: str) -> None:
    """Least privilege: the servers' role can append but not rewrite history."""
    written(url, 2)
    sql(url, "CREATE ROLE writer LOGIN")
    sql(url, "GRANT SELECT, INSERT ON audit, feedback, cards, anchor TO writer")
    as_writer = urlunsplit(urlsplit(url)._replace(netloc="writer@"))
    written(as_writer, 3)
    assert verify(url).records == 5
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        sql(as_writer, "UPDATE audit SET outcome = 'OK' WHERE seq = 1")


def test_fail_closed_in_postgres_when_the_table_is_locked(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "LOCK_TIMEOUT", 0.3)
    written(url, 1)
    audit = AuditLog(url)
    blocker = psycopg.connect(url)
    try:
        blocker.execute("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")  # another writer holds the table

        async def one() -> None:
            await audit.append(audit.record(Caller("ehr"), "Evaluate", "OK", request_id="during"))

        with pytest.raises(AuditError, match="could not be written"):
            asyncio.run(one())
    finally:
        blocker.rollback()
        blocker.close()
        audit.close()
    assert "during" not in {r["request_id"] for r in records(url)} and verify(url).problem == ""


def test_kill_9_under_load_loses_no_record_in_postgres(url: str, tmp_path: Any) -> None:
    srv = Server(tmp_path, FIXTURES, 1, "--audit", url)
    srv.wait_serving()
    got = received_before_kill_9(srv)
    assert len(got) > 20
    recorded = {r["request_id"] for r in records(url) if r["outcome"] == "OK"}
    assert set(got) <= recorded, f"{len(set(got) - recorded)} responses received without a record"
    assert verify(url).problem == ""


def test_a_lost_connection_is_opened_again(url: str, tmp_path: Any) -> None:
    """PostgreSQL restarted or the network cut: the response then in flight is withheld (fail closed),
    and the next records go through a new connection, without restarting carepath."""
    srv = Server(tmp_path, FIXTURES, 1, "--audit", url)
    try:
        srv.wait_serving()
        with CarepathClient(srv.target, retries=0) as c:
            did = c.evaluate_recorded(varied_case(3), request_id="before").decision_id
            cut = sql(
                url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            assert cut and all(ok for (ok,) in cut)
            outcomes = []
            for i in range(3):
                try:
                    c.evaluate(varied_case(i), request_id=f"after-{i}")
                    outcomes.append("OK")
                except CallError as exc:
                    assert exc.code == grpc.StatusCode.UNAVAILABLE and "withheld" in exc.message
                    outcomes.append("UNAVAILABLE")
            assert outcomes[-1] == "OK" and outcomes.count("UNAVAILABLE") <= 1, outcomes
            c.record_feedback(did, [FeedbackItem(0, "accepted")], feedback_id="fb-after-cut")  # the reader reconnects too
        assert srv.events("audit_reconnected")
    finally:
        assert srv.stop() == 0, srv.log()
    ids = {r["request_id"] for r in records(url)}
    assert {"before", "after-2", "fb-after-cut"} <= ids
    assert verify(url).problem == ""


def test_a_record_postgres_refuses_fails_alone(url: str) -> None:
    """A review found one text PostgreSQL cannot hold (a NUL) failing every record of its group commit:
    under fail closed, other callers' responses withheld; under fail open, their records lost."""
    written(url, 1)
    audit = AuditLog(url)

    async def both() -> list[BaseException | None]:
        bad = audit.record(Caller("ehr"), "Evaluate", "OK", request_id="r-bad", patient="p\x00x")
        good = [audit.record(Caller("ehr"), "ListPathways", "OK", request_id=f"r-good-{i}") for i in range(20)]
        got = await asyncio.gather(audit.append(bad), *(audit.append(g) for g in good), return_exceptions=True)
        return [g if isinstance(g, BaseException) else None for g in got]

    try:
        results = asyncio.run(both())
    finally:
        audit.close()
    assert isinstance(results[0], AuditError) and all(r is None for r in results[1:]), results
    ids = [r["request_id"] for r in records(url)]
    assert "r-bad" not in ids and all(f"r-good-{i}" in ids for i in range(20))
    assert verify(url).problem == ""


def test_postgres_errors_name_the_database_without_its_password(url: str) -> None:
    bad = urlunsplit(urlsplit(url)._replace(netloc="carepath:s3cret@127.0.0.1:1"))
    done = care("audit", "verify", bad)
    assert done.returncode == 2 and "cannot connect" in done.stderr and "s3cret" not in done.stderr and "***" in done.stderr
    assert shown("postgresql://u:pw@db.example.org/audit") == "postgresql://u:***@db.example.org/audit"
    assert shown("postgresql:///audit?host=/run/pg&password=pw") == "postgresql:///audit?host=/run/pg&password=***"
    assert shown("postgresql://u:pw@[::1/audit") == "postgresql://(a URL that cannot be read)"
    empty = care("audit", "verify", url)  # a database with no trail in it: read-only, so nothing is made
    assert empty.returncode == 2 and "no carepath audit trail there" in empty.stderr
    assert sql(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    serve = care("serve", "--port", "0", "--workers", "1", "--pathways", str(FIXTURES), "--audit", bad)
    assert serve.returncode == 2 and "--audit" in serve.stderr and "cannot connect" in serve.stderr and "s3cret" not in serve.stderr
    written(url, 2)
    with_password = f"{url}&password=s3cret"  # the test server trusts local connections: any password will do
    done = care("audit", "verify", with_password)
    assert done.returncode == 0 and "s3cret" not in done.stdout and "password=***" in done.stdout, done.stdout + done.stderr
