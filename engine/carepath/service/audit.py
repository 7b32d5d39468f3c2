"""The audit trail of `carepath serve --audit PATH`: one record per call, hash-chained, in SQLite.

Each carepath.v1 call (each case of a stream, and each call refused by token authentication) appends
a record: the UTC time, the caller (token subject and issuer, client certificate subject, peer
address), the action (the RPC), the outcome (a gRPC status name), the patient id (a keyed hash of it
with ``--audit-key``), the request id, the pathways used (id, version, sha256), the rules that fired,
and the sha256 of the response bytes sent. No clinical value is recorded.

Tamper evidence: every record carries ``prev_hash``, the hash of the record before it, and its own
``hash`` over its content and ``prev_hash`` (the first record's ``prev_hash`` is GENESIS). A changed
record no longer matches its hash; rewriting its hash breaks the next record's ``prev_hash``; a
deleted record leaves a gap in ``seq`` and a broken link; an inserted one a broken link.
``carepath audit verify`` walks the chain and names the first break. Anyone able to write the file
can rebuild the chain from the point they changed onwards, and can cut records off its end: keep the
head that ``verify`` prints (seq and hash) somewhere else now and then, and check it is still there.

Durability: records are written by one thread in group commits (all records waiting, one
transaction), SQLite in WAL mode with ``synchronous=NORMAL``: a commit survives the server being
killed (kill -9); an operating-system crash or power loss may lose the last commits (``FULL`` sync:
``AUDIT_SYNC``). Fail closed (the default): a response leaves the server only after its record is
committed; if the record cannot be written the caller gets UNAVAILABLE instead of the response. Fail
open (``--audit-fail-open``): the record is queued and the response sent at once; a record that then
cannot be written is logged (``audit_failed``) and lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import grpc

from carepath.service.auth import CALLER, AuthError, Caller, certificate_subject
from carepath.service.worker import REQUEST_ID, utc_now
from carepath_client._proto.v1 import decision_service_pb2 as ds
from carepath_client._proto.v1 import pathway_service_pb2 as ps

log = logging.getLogger("carepath.service")

GENESIS = "0" * 64  # the prev_hash of the first record
AUDIT_SYNC = "NORMAL"  # sqlite's synchronous in WAL mode: NORMAL survives a killed process, FULL a power loss too
BATCH = 1024  # records in one commit at most
KEY_MIN = 16  # bytes of --audit-key at least
LOCK_TIMEOUT = 10.0  # seconds a commit waits for another writer's lock on the file before it fails
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,      -- 1, 2, 3, ... with no gaps
    ts TEXT NOT NULL,             -- UTC, ISO 8601 to the millisecond
    subject TEXT,                 -- the token's sub
    issuer TEXT,                  -- the token's iss
    certificate TEXT,             -- the client certificate's subject (mutual TLS)
    peer TEXT,                    -- the caller's address
    action TEXT NOT NULL,         -- the RPC (Evaluate, EvaluateStream, ListPathways, ...)
    outcome TEXT NOT NULL,        -- the gRPC status name
    patient TEXT,                 -- patient_id, or hmac-sha256:... of it with --audit-key
    request_id TEXT,
    pathways TEXT NOT NULL,       -- JSON [[id, version, sha256], ...]
    rules TEXT NOT NULL,          -- JSON [rule id, ...] that fired
    response_sha256 TEXT,         -- of the response message's bytes as sent
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
"""
COLUMNS = (
    "seq",
    "ts",
    "subject",
    "issuer",
    "certificate",
    "peer",
    "action",
    "outcome",
    "patient",
    "request_id",
    "pathways",
    "rules",
    "response_sha256",
    "prev_hash",
    "hash",
)


class AuditError(Exception):
    """The audit trail cannot be opened or written; the message says which file and why."""


@dataclass(frozen=True)
class Record:
    ts: str
    subject: str | None
    issuer: str | None
    certificate: str | None
    peer: str | None
    action: str
    outcome: str
    patient: str | None
    request_id: str | None
    pathways: str  # JSON
    rules: str  # JSON
    response_sha256: str | None


def record_hash(seq: int, fields: tuple[Any, ...], prev_hash: str) -> str:
    """sha256 over the record's seq, content (Record's fields in order) and prev_hash, as compact JSON."""
    body = json.dumps([seq, *fields, prev_hash], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def connect(path: Path, create: bool) -> sqlite3.Connection:
    if not create and not path.is_file():
        raise AuditError(f"{path}: no such audit file")
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=LOCK_TIMEOUT)
        if create:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={AUDIT_SYNC}")
            db.executescript(SCHEMA)
        cols = [r[1] for r in db.execute("PRAGMA table_info(audit)")]
    except sqlite3.Error as exc:
        raise AuditError(f"{path}: cannot open the audit trail: {exc}") from None
    if tuple(cols) != COLUMNS:
        raise AuditError(f"{path}: not a carepath audit trail (table audit has columns {cols})")
    return db


class AuditLog:
    """Appends records from the event loop; one writer thread commits them in groups."""

    def __init__(self, path: Path, key: bytes | None = None, fail_open: bool = False) -> None:
        if key is not None and len(key) < KEY_MIN:
            raise AuditError(f"the audit key must be at least {KEY_MIN} bytes (got {len(key)})")
        self.path, self.key, self.fail_open = path, key, fail_open
        self.db = connect(path, create=True)
        self.queue: queue.SimpleQueue[tuple[Record, asyncio.AbstractEventLoop, asyncio.Future[None]] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="carepath-audit", daemon=True)
        self.thread.start()
        self.written = 0

    def pseudonym(self, patient_id: str) -> str:
        if not patient_id or self.key is None:
            return patient_id
        return "hmac-sha256:" + hmac.new(self.key, patient_id.encode(), hashlib.sha256).hexdigest()[:32]

    async def append(self, rec: Record) -> None:
        """Queue ``rec``; fail closed: return once it is committed (AuditError if it could not be)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.queue.put((rec, loop, fut))
        if self.fail_open:
            fut.add_done_callback(lambda f: f.exception())  # logged by the writer; nobody waits
            return
        await fut

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self.queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            error: AuditError | None = None
            try:
                self._commit([rec for rec, _, _ in batch])
            except Exception as exc:
                error = AuditError(f"{self.path}: the audit record could not be written: {exc}")
                log.error(json.dumps({"event": "audit_failed", "records": len(batch), "error": str(exc), "fail_open": self.fail_open}))
            for _, loop, fut in batch:
                try:
                    loop.call_soon_threadsafe(_settle, fut, error)
                except RuntimeError:  # the loop is closed: nobody is waiting
                    pass

    def _commit(self, records: list[Record]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, head = (last[0], last[1]) if last else (0, GENESIS)
            rows = []
            for rec in records:
                seq += 1
                fields = astuple(rec)
                h = record_hash(seq, fields, head)
                rows.append((seq, *fields, head, h))
                head = h
            db.executemany(f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.written += len(records)

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self.queue.put(None)
        self.thread.join(60)
        self.db.close()

    # ------------------------------------------------------------------ records of calls
    def record(
        self,
        caller: Caller | None,
        action: str,
        outcome: str,
        *,
        patient: str | None = None,
        request_id: str | None = None,
        pathways: list[list[str]] | None = None,
        rules: list[str] | None = None,
        response: bytes | None = None,
    ) -> Record:
        c = caller or Caller()
        return Record(
            ts=utc_now(),
            subject=c.subject,
            issuer=c.issuer,
            certificate=c.certificate,
            peer=c.peer or None,
            action=action,
            outcome=outcome,
            patient=self.pseudonym(patient) if patient else None,
            request_id=request_id or None,
            pathways=json.dumps(pathways or [], separators=(",", ":")),
            rules=json.dumps(rules or [], separators=(",", ":")),
            response_sha256=hashlib.sha256(response).hexdigest() if response is not None else None,
        )

    async def refused(self, method: str, caller: Caller, exc: AuthError) -> None:
        """A call refused by token authentication (the auth interceptor's on_refused)."""
        await self.append(self.record(caller, method.rsplit("/", 1)[-1], exc.code.name))


def _settle(fut: asyncio.Future[None], error: AuditError | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


# --------------------------------------------------------------------------- what a response says
_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


def _decision_fields(resp: ds.EvaluateResponse | ds.EvaluateStreamResponse) -> dict[str, Any]:
    d = resp.decision
    rules: list[str] = []
    for t in d.trace:
        if t.rule not in rules:
            rules.append(t.rule)
    return {
        "patient": d.patient_id,
        "request_id": resp.request_id,
        "pathways": [[p.id, p.version, p.sha256] for p in d.pathways],
        "rules": rules,
    }


def describe(action: str, response: bytes) -> tuple[str, dict[str, Any]]:
    """The outcome and the record fields of a successful call's (or a stream item's) response bytes."""
    try:
        if action == "Evaluate":
            return "OK", _decision_fields(ds.EvaluateResponse.FromString(response))
        if action == "EvaluateStream":
            item = ds.EvaluateStreamResponse.FromString(response)
            if item.WhichOneof("result") == "error":
                return _CODES.get(item.error.code, "UNKNOWN"), {"request_id": item.request_id}
            return "OK", _decision_fields(item)
        if action == "ListPathways":
            listed = ps.ListPathwaysResponse.FromString(response)
            return "OK", {"pathways": [[p.id, p.version, p.sha256] for p in listed.pathways]}
        if action == "GetPathway":
            p = ps.GetPathwayResponse.FromString(response).pathway
            return "OK", {"pathways": [[p.id, p.version, p.sha256]]}
        if action == "ValidatePathway":
            v = ps.ValidatePathwayResponse.FromString(response)
            p = v.pathway
            return ("OK" if v.valid else "OK_INVALID"), {"pathways": [[p.id, p.version, p.sha256]] if p.id else []}
    except Exception:  # a response the servicer made is always decodable; a record is kept regardless
        pass
    return "OK", {}


def request_id_of(action: str, request: Any) -> str | None:
    """The request id of an Evaluate request that failed, when it is an id (never anything else)."""
    if action != "Evaluate" or not isinstance(request, bytes):
        return None
    try:
        rid = ds.EvaluateRequest.FromString(request).request_id
    except Exception:
        return None
    return rid if rid and REQUEST_ID.fullmatch(rid) else None


def _caller(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    known = CALLER.get()
    if known is not None:
        return known
    try:
        peer = str(context.peer())
    except Exception:
        peer = ""
    return Caller(certificate=certificate_subject(context), peer=peer)


def _failure(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
        return code.name
    return "UNKNOWN"


WITHHELD = "the audit trail could not record this call, so its response is withheld; retry later"


class AuditInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Records every carepath.v1 call (each item of a stream) before its response is sent."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def _append(self, context: grpc.aio.ServicerContext[Any, Any], rec: Record) -> None:
        try:
            await self.audit.append(rec)
        except AuditError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, WITHHELD)

    async def _failed(self, context: grpc.aio.ServicerContext[Any, Any], action: str, exc: BaseException, request: Any) -> None:
        rec = self.audit.record(_caller(context), action, _failure(context, exc), request_id=request_id_of(action, request))
        try:
            await asyncio.shield(self.audit.append(rec))
        except (AuditError, asyncio.CancelledError):
            pass  # the call failed anyway; audit_failed is logged

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith("/carepath.v1."):
            return handler  # type: ignore[no-any-return]
        action = method.rsplit("/", 1)[-1]
        audit = self.audit
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    await self._failed(context, action, exc, request)
                    raise
                outcome, fields = describe(action, response)
                await self._append(context, audit.record(_caller(context), action, outcome, response=response, **fields))
                return response

            return handler._replace(unary_unary=unary_unary)  # type: ignore[no-any-return]
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    async for response in inner_ss(requests, context):
                        outcome, fields = describe(action, response)
                        await self._append(context, audit.record(_caller(context), action, outcome, response=response, **fields))
                        yield response
                except BaseException as exc:
                    if not isinstance(exc, GeneratorExit):
                        await self._failed(context, action, exc, None)
                    raise

            return handler._replace(stream_stream=stream_stream)  # type: ignore[no-any-return]
        return handler  # type: ignore[no-any-return]  # carepath.v1 has no other kinds of call


# ------------------------------------------------------------------------------- verify and export
@dataclass(frozen=True)
class Verified:
    records: int
    head_seq: int
    head_hash: str
    problem: str  # "" when the chain is intact


def rows(db: sqlite3.Connection, where: str = "", args: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    cur = db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit {where} ORDER BY seq", args)
    while True:
        chunk = cur.fetchmany(5000)
        if not chunk:
            return
        yield from chunk


def verify(path: Path) -> Verified:
    """Walk the chain from the first record; stop at the first break and name it."""
    db = connect(path, create=False)
    try:
        n, seq, head = 0, 0, GENESIS
        for row in rows(db):
            rseq, fields, prev, h = row[0], row[1:-2], row[-2], row[-1]
            if rseq != seq + 1:
                missing = f"record {seq + 1}" if rseq == seq + 2 else f"records {seq + 1} to {rseq - 1}"
                where = f"after record {seq}" if seq else "at the start"
                return Verified(n, seq, head, f"{missing} missing (deleted?): record {rseq} comes {where}")
            if prev != head:
                before = f"record {seq}'s hash" if seq else "the chain's start"
                return Verified(
                    n, seq, head, f"record {rseq}: its prev_hash is not {before} (a record inserted, deleted or rewritten there)"
                )
            if record_hash(rseq, tuple(fields), prev) != h:
                return Verified(n, seq, head, f"record {rseq}: changed (its content does not match its hash)")
            n, seq, head = n + 1, rseq, h
        return Verified(n, seq, head, "")
    finally:
        db.close()


def export(path: Path, since: str | None, until: str | None) -> Iterator[dict[str, Any]]:
    """The records with since <= ts < until, as dicts (pathways and rules decoded)."""
    db = connect(path, create=False)
    try:
        conds, args = [], []
        if since:
            conds.append("ts >= ?")
            args.append(since)
        if until:
            conds.append("ts < ?")
            args.append(until)
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        for row in rows(db, where, tuple(args)):
            rec = dict(zip(COLUMNS, row, strict=True))
            rec["pathways"] = json.loads(rec["pathways"])
            rec["rules"] = json.loads(rec["rules"])
            yield rec
    finally:
        db.close()
