"""The audit trail of `carepath serve --audit PATH|URL`: one record per call, hash-chained, in a
SQLite file or a PostgreSQL database (where: carepath.service.auditdb).

Each carepath.v1 call (each case of a stream, and each call refused by token authentication) appends
a record: the UTC time, the caller (token subject and issuer, client certificate subject, peer
address), the action (the RPC), the outcome (a gRPC status name), the patient id (a keyed hash of it
with ``--audit-key``), the request id, the pathways used (id, version, sha256), the rules that fired,
and the sha256 of the response bytes sent. No clinical value is recorded.

Tamper evidence: every record carries ``prev_hash``, the hash of the record before it, and its own
``hash`` over its content and ``prev_hash`` (the first record's ``prev_hash`` is GENESIS). A changed
record no longer matches its hash; rewriting its hash breaks the next record's ``prev_hash``; a
deleted record leaves a gap in ``seq`` and a broken link; an inserted one a broken link.
``carepath audit verify`` walks the chain and names the first break, then checks the rows kept beside
it (feedback, and the CDS Hooks cards table) against the records that hold them. Anyone able to write
the store can rebuild the chain from the point they changed onwards, and can cut records off its end: keep the
head that ``verify`` prints (seq and hash) somewhere else now and then, and check it is still there.

Durability: records are written by one thread in group commits (all records waiting, one
transaction; a group the store refuses for its content is written record by record, so one bad
record fails alone). SQLite in WAL mode with ``synchronous=NORMAL``: a commit survives the server
being killed (kill -9); an operating-system crash or power loss may lose the last commits (``FULL``
sync: ``AUDIT_SYNC``); PostgreSQL: what its own settings promise. Fail closed (the default): a
response leaves the server only after its record is committed; if the record cannot be written the
caller gets UNAVAILABLE instead of the response. Fail open (``--audit-fail-open``): the record is
queued and the response sent at once; a record that then cannot be written is logged
(``audit_failed``) and lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import closing
from dataclasses import astuple, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from carepath.service.auditdb import Database, StoreError, is_postgres, open_database
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
    seq INTEGER PRIMARY KEY,      -- 1, 2, 3, ... with no gaps (after the anchor, once pruned)
    ts TEXT NOT NULL,             -- UTC, ISO 8601 to the millisecond
    subject TEXT,                 -- the token's sub
    issuer TEXT,                  -- the token's iss
    certificate TEXT,             -- the client certificate's subject (mutual TLS)
    peer TEXT,                    -- the caller's address
    action TEXT NOT NULL,         -- the RPC (Evaluate, EvaluateStream, ListPathways, ..., RecordFeedback, AuditPrune)
    outcome TEXT NOT NULL,        -- the gRPC status name
    patient TEXT,                 -- patient_id, or hmac-sha256:... of it with --audit-key
    request_id TEXT,              -- the request id (RecordFeedback: the feedback id)
    pathways TEXT NOT NULL,       -- JSON [[id, version, sha256], ...]
    rules TEXT NOT NULL,          -- JSON [rule id, ...] that fired
    response_sha256 TEXT,         -- of the response message's bytes as sent (AuditPrune: the last pruned record's hash)
    decision_id TEXT,             -- a decision's id (EvaluateResponse.decision_id); RecordFeedback: the decision it is on
    recommendations TEXT,         -- a decision's recommendations, JSON [[kind, rule], ...] in order
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_decision ON audit (decision_id) WHERE decision_id IS NOT NULL;
"""
SIDE_TABLES = """
CREATE TABLE IF NOT EXISTS anchor (   -- after a prune: the last record pruned (the chain continues from it)
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (  -- RecordFeedback (and CDS Hooks feedback): one row per recommendation
    feedback_id TEXT NOT NULL,
    item INTEGER NOT NULL,        -- its index in the request
    decision_id TEXT NOT NULL,
    recommendation INTEGER NOT NULL,  -- the index in the decision's recommendations
    kind TEXT NOT NULL,
    rule TEXT NOT NULL,
    outcome TEXT NOT NULL,        -- accepted or overridden
    reason TEXT,                  -- the coded reason (patient_declined, ...)
    reason_text TEXT,             -- free text
    clinician TEXT,
    at TEXT NOT NULL,             -- when the clinician acted (UTC)
    audit_seq INTEGER NOT NULL,   -- the audit record of this feedback
    content_sha256 TEXT NOT NULL, -- of the feedback's canonical content (a resend is compared with it)
    PRIMARY KEY (feedback_id, item)
);
CREATE TABLE IF NOT EXISTS cards (     -- CDS Hooks: the cards a hook call returned, so that feedback finds its decision
    service TEXT NOT NULL,
    card TEXT NOT NULL,           -- the card's uuid
    decision_id TEXT NOT NULL,
    recommendation INTEGER NOT NULL,  -- the card's index in the response
    audit_seq INTEGER NOT NULL,   -- the audit record of the hook call
    PRIMARY KEY (service, card)
);
"""
SCHEMA += SIDE_TABLES + (
    "CREATE INDEX IF NOT EXISTS feedback_seq ON feedback (audit_seq);\nCREATE INDEX IF NOT EXISTS cards_seq ON cards (audit_seq);\n"
)
LEGACY = (  # the columns of an audit file written before decision ids: opened and given the new columns
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
COLUMNS = (*LEGACY[:-2], "decision_id", "recommendations", "prev_hash", "hash")
EXTENSION = 2  # the trailing content fields that enter a record's hash only when one is set
PRUNE = "AuditPrune"  # the action of the record a prune appends


class AuditError(Exception):
    """The audit trail cannot be opened or written; the message says which file and why."""


class FeedbackTaken(Exception):
    """Feedback under this feedback id was stored first (by a copy of the request racing this one, or
    by another request): nothing of this one was written. ``rows``: the stored feedback rows."""

    def __init__(self, feedback_id: str, rows: list[tuple[Any, ...]]) -> None:
        super().__init__(f"feedback {feedback_id!r} is already stored")
        self.feedback_id, self.rows = feedback_id, rows


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
    decision_id: str | None = None
    recommendations: str | None = None  # JSON


def record_hash(seq: int, fields: tuple[Any, ...], prev_hash: str) -> str:
    """sha256 over the record's seq, content (Record's fields in order) and prev_hash, as compact JSON.
    The extension fields (decision_id, recommendations) enter it only when one of them is set, so a
    record without them hashes as records did before they existed (older files still verify)."""
    if len(fields) == len(COLUMNS) - 3 and all(f is None for f in fields[-EXTENSION:]):
        fields = fields[:-EXTENSION]
    body = json.dumps([seq, *fields, prev_hash], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def connect(target: str | Path, create: bool) -> Database:
    """The audit trail (a SQLite file, or a PostgreSQL URL: carepath.service.auditdb): ``create`` for
    the writer (made, or an older layout migrated; SQLite in WAL mode); else opened read-only (verify,
    export, report read evidence and never change it: an older SQLite layout is read through a
    temporary view with the new columns empty, on read-only media too)."""
    try:
        db = open_database(target, write=create, lock_timeout=LOCK_TIMEOUT)
    except StoreError as exc:
        raise AuditError(str(exc)) from None
    try:
        if db.dialect == "sqlite":
            if create:
                db.execute(f"PRAGMA synchronous={AUDIT_SYNC}")
            if tuple(db.columns("audit")) == LEGACY:  # written before decision ids
                if create:  # the new columns and tables are added
                    with db.write():
                        db.execute("ALTER TABLE audit ADD COLUMN decision_id TEXT")
                        db.execute("ALTER TABLE audit ADD COLUMN recommendations TEXT")
                else:  # read as it is: temporary objects only, the file is not touched
                    kept = ", ".join(LEGACY[:-2])
                    view = f"SELECT {kept}, NULL AS decision_id, NULL AS recommendations, prev_hash, hash FROM main.audit"
                    db.execute(f"CREATE TEMP VIEW audit AS {view}")
                    db.script(SIDE_TABLES.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE IF NOT EXISTS"))
        if create:
            db.script(SCHEMA)
        cols = db.columns("audit")
    except db.errors as exc:
        db.close()
        raise AuditError(f"{db.name}: cannot open the audit trail: {exc}") from None
    if sorted(cols) != sorted(COLUMNS):
        db.close()
        if not cols:
            raise AuditError(f"{db.name}: no carepath audit trail there (no table audit)")
        raise AuditError(f"{db.name}: not a carepath audit trail (table audit has columns {cols})")
    return db


INSERT = f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
FEEDBACK = (  # the feedback table's columns, audit_seq last (the writer adds it)
    "feedback_id",
    "item",
    "decision_id",
    "recommendation",
    "kind",
    "rule",
    "outcome",
    "reason",
    "reason_text",
    "clinician",
    "at",
    "content_sha256",
    "audit_seq",
)
Rows = list[tuple[Any, ...]]
_Item = tuple[Record, Rows | None, Rows | None, asyncio.AbstractEventLoop, asyncio.Future[None]]
CARDS = ("service", "card", "decision_id", "recommendation", "audit_seq")
STORED_FEEDBACK = f"SELECT {', '.join(FEEDBACK)} FROM feedback WHERE feedback_id = ? ORDER BY item"


def feedback_content(rows: Rows) -> bytes:
    """The canonical content of one feedback's rows, in item order (without feedback_id, item,
    content_sha256 and audit_seq): its sha256 is the rows' content_sha256, which the feedback's audit
    record covers (RecordFeedback: in its response's sha256; CdsFeedback: as its response_sha256), so
    `carepath audit verify` finds a feedback row changed, deleted or added."""
    return json.dumps([list(r[2:11]) for r in rows], ensure_ascii=False, separators=(",", ":")).encode()


def feedback_rows(feedback_id: str, decision_id: str, items: Rows, clinician: str | None, at: str) -> Rows:
    """A feedback's rows as stored: ``items`` (recommendation, kind, rule, outcome, reason, reason_text)
    numbered, with the clinician, the time and the content hash over them all (``feedback_content``)."""
    rows = [(feedback_id, n, decision_id, *item, clinician, at) for n, item in enumerate(items)]
    digest = hashlib.sha256(feedback_content(rows)).hexdigest()
    return [(*r, digest) for r in rows]


def feedback_response(feedback_id: str, rows: Rows, duplicate: bool = False) -> bytes:
    """The RecordFeedbackResponse sent for stored feedback rows (content_sha256 as stored)."""
    return ds.RecordFeedbackResponse(
        feedback_id=feedback_id, items=len(rows), content_sha256=str(rows[0][11]), duplicate=duplicate
    ).SerializeToString()


def _head(db: Database) -> tuple[int, str]:
    """The last record's seq and hash; after a prune that left none, the anchor's; else (0, GENESIS)."""
    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if last:
        return int(last[0]), str(last[1])
    anchor = db.execute("SELECT seq, hash FROM anchor").fetchone()
    return (int(anchor[0]), str(anchor[1])) if anchor else (0, GENESIS)


class AuditLog:
    """Appends records from the event loop; one writer thread commits them in groups."""

    def __init__(self, target: str | Path, key: bytes | None = None, fail_open: bool = False) -> None:
        if key is not None and len(key) < KEY_MIN:
            raise AuditError(f"the audit key must be at least {KEY_MIN} bytes (got {len(key)})")
        self.target, self.key, self.fail_open = target, key, fail_open
        self.db = connect(target, create=True)
        self.path = self.db.name  # what messages name: the file, or the URL without its password
        self.queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="carepath-audit", daemon=True)
        self.thread.start()
        self.written = 0

    def pseudonym(self, patient_id: str) -> str:
        if not patient_id or self.key is None:
            return patient_id
        return "hmac-sha256:" + hmac.new(self.key, patient_id.encode(), hashlib.sha256).hexdigest()[:32]

    async def append(self, rec: Record, feedback: Rows | None = None, cards: Rows | None = None) -> None:
        """Queue ``rec``; fail closed: return once it is committed (AuditError if it could not be).
        ``feedback``: rows of the feedback table (without audit_seq, which is ``rec``'s seq), committed
        in the same transaction as ``rec``, always waited for, fail open or not; FeedbackTaken when
        feedback under that id is stored already. ``cards``: rows of the cards table (the same)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.queue.put((rec, feedback, cards, loop, fut))
        if self.fail_open and feedback is None:
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
            items = [(rec, fb, cards) for rec, fb, cards, _, _ in batch]
            results = self._commit_isolated(items)
            for (_, _, _, loop, fut), result in zip(batch, results, strict=True):
                try:
                    loop.call_soon_threadsafe(_settle, fut, result)
                except RuntimeError:  # the loop is closed: nobody is waiting
                    pass

    def _commit_isolated(self, items: list[tuple[Record, Rows | None, Rows | None]]) -> list[BaseException | None]:
        """Commit a group; if the store refuses its content (not a lock, a timeout or a lost
        connection), commit its records one by one, so that one record the store cannot hold (a text
        PostgreSQL refuses) fails alone rather than with every record committed beside it."""
        try:
            return self._commit(items)
        except Exception as exc:
            transient = isinstance(exc, self.db.transient) or self.db.broken()
            self._reopen_if_lost()
            if len(items) == 1 or transient:
                log.error(json.dumps({"event": "audit_failed", "records": len(items), "error": str(exc), "fail_open": self.fail_open}))
                return [AuditError(f"{self.path}: the audit record could not be written: {exc}")] * len(items)
        return [r for item in items for r in self._commit_isolated([item])]

    def _reopen_if_lost(self) -> None:
        """After a failed commit on a lost connection (PostgreSQL restarted, the network cut): open a
        new one for the next records (the failed ones stay failed: their callers got UNAVAILABLE)."""
        if not self.db.broken():
            return
        try:
            fresh = connect(self.target, create=True)
        except AuditError as exc:
            log.error(json.dumps({"event": "audit_reconnect_failed", "error": str(exc)}))
            return
        self.db.close()
        self.db = fresh
        log.warning(json.dumps({"event": "audit_reconnected", "store": self.path}))

    def _commit(self, records: list[tuple[Record, Rows | None, Rows | None]]) -> list[BaseException | None]:
        """Write the records (and their feedback rows) in one transaction, in order; each gets None,
        or FeedbackTaken when its feedback id is stored already (or earlier in this batch): such a
        record is left out, so its caller can answer the resend as a resend or refuse it."""
        db = self.db
        results: list[BaseException | None] = []
        with db.write():
            seq, head = _head(db)
            rows: Rows = []
            feedback: Rows = []
            cards: Rows = []
            taken: dict[str, Rows] = {}
            for rec, fb, issued in records:
                fid = fb[0][0] if fb else None
                if fid is not None:
                    stored = taken.get(fid) or [tuple(r) for r in db.execute(STORED_FEEDBACK, (fid,)).fetchall()]
                    if stored:
                        results.append(FeedbackTaken(fid, stored))
                        continue
                results.append(None)
                seq += 1
                fields = astuple(rec)
                h = record_hash(seq, fields, head)
                rows.append((seq, *fields, head, h))
                head = h
                if fb:
                    taken[fb[0][0]] = [(*row, seq) for row in fb]
                    feedback += taken[fb[0][0]]
                cards += [(*row, seq) for row in issued or ()]
            db.executemany(INSERT, rows)
            db.executemany(f"INSERT INTO feedback ({', '.join(FEEDBACK)}) VALUES ({', '.join('?' * len(FEEDBACK))})", feedback)
            db.executemany(  # a card issued again (its uuid is of its content): the latest call holds it
                f"INSERT INTO cards ({', '.join(CARDS)}) VALUES ({', '.join('?' * len(CARDS))}) ON CONFLICT (service, card) DO UPDATE"
                " SET decision_id = excluded.decision_id, recommendation = excluded.recommendation, audit_seq = excluded.audit_seq",
                cards,
            )
        self.written += len(rows)
        return results

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
        decision_id: str | None = None,
        recommendations: list[list[str]] | None = None,
        pseudonymise: bool = True,
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
            patient=(self.pseudonym(patient) if pseudonymise else patient) if patient else None,
            request_id=request_id or None,
            pathways=json.dumps(pathways or [], separators=(",", ":")),
            rules=json.dumps(rules or [], separators=(",", ":")),
            response_sha256=hashlib.sha256(response).hexdigest() if response is not None else None,
            decision_id=decision_id,
            recommendations=None if recommendations is None else json.dumps(recommendations, separators=(",", ":")),
        )

    async def refused(self, method: str, caller: Caller, exc: AuthError) -> None:
        """A call refused by token authentication (the auth interceptor's on_refused)."""
        await self.append(self.record(caller, method.rsplit("/", 1)[-1], exc.code.name))


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
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
        "recommendations": [[r.WhichOneof("detail") or "", r.rule] for r in d.recommendations],
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
    """The request id of an Evaluate request (the feedback id of a RecordFeedback) that failed, when
    it is an id (never anything else)."""
    if action not in ("Evaluate", "RecordFeedback") or not isinstance(request, bytes):
        return None
    try:
        if action == "Evaluate":
            rid = ds.EvaluateRequest.FromString(request).request_id
        else:
            rid = ds.RecordFeedbackRequest.FromString(request).feedback_id
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


def utc_text(t: datetime) -> str:
    """A UTC time as the audit trail stores it, ISO 8601 to the millisecond (2026-12-07T05:55:00.123Z)."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def new_decision_id() -> str:
    """Time-ordered (nanoseconds, then 48 random bits), so the audit file's decision_id index grows at
    its end rather than at random pages."""
    return f"d-{time.time_ns():016x}{os.urandom(6).hex()}"


def with_decision_id(action: str, response: bytes, fields: dict[str, Any]) -> bytes:
    """A decision's response with a new decision id appended (protobuf merges a field appended to a
    message's bytes), the id put in ``fields`` for its record; any other response as it is."""
    if "recommendations" not in fields:
        return response
    did = fields["decision_id"] = new_decision_id()
    tail = ds.EvaluateResponse(decision_id=did) if action == "Evaluate" else ds.EvaluateStreamResponse(decision_id=did)
    return response + tail.SerializeToString()


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
                if action == "RecordFeedback":  # recorded by the servicer, with the feedback, in one transaction
                    return response
                outcome, fields = describe(action, response)
                response = with_decision_id(action, response, fields)
                await self._append(context, audit.record(_caller(context), action, outcome, response=response, **fields))
                return response

            return handler._replace(unary_unary=unary_unary)  # type: ignore[no-any-return]
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    async for response in inner_ss(requests, context):
                        outcome, fields = describe(action, response)
                        response = with_decision_id(action, response, fields)
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


def rows(db: Database, where: str = "", args: tuple[Any, ...] = ()) -> Generator[tuple[Any, ...], None, None]:
    return db.stream(f"SELECT {', '.join(COLUMNS)} FROM audit {where} ORDER BY seq", args)


def verify(path: str | Path) -> Verified:
    """Walk the chain from the first record (after a prune, from the anchor: the last record pruned);
    stop at the first break and name it. A prune's anchor must match the AuditPrune record the chain
    holds for the latest prune, so records cut off the start and an anchor moved to hide it are found.
    Then every feedback row and every card row is checked against the record that holds it. All of it
    is read in one snapshot, so a server writing (or a prune) meanwhile is not mistaken for tampering;
    a value that cannot be read is named as such, not raised."""
    db = connect(path, create=False)
    n, seq, head, walked = 0, 0, GENESIS, False
    try:
        with db.snapshot(), closing(rows(db)) as chain:  # closing: a query left early ends inside the snapshot
            anchor = db.execute("SELECT seq, hash FROM anchor").fetchone()
            n, seq, head = (0, int(anchor[0]), str(anchor[1])) if anchor else (0, 0, GENESIS)
            pruned: tuple[int, str] | None = None  # the latest AuditPrune record's (last seq pruned, its hash)
            given: dict[int, tuple[str, str, str | None, str | None]] = {}  # feedback records: seq -> action, id, decision, sha
            for row in chain:
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
                rec = dict(zip(COLUMNS, row, strict=True))
                if rec["action"] == PRUNE:
                    pruned = (_pruned_through(rec["request_id"]), str(rec["response_sha256"]))
                elif rec["action"] in FEEDBACK_ACTIONS and rec["outcome"] == "OK":
                    given[rseq] = (rec["action"], rec["request_id"], rec["decision_id"], rec["response_sha256"])
                n, seq, head = n + 1, rseq, h
            if anchor and pruned != (int(anchor[0]), str(anchor[1])):
                said = f"record {pruned[0]}" if pruned else "nothing (no AuditPrune record)"
                return Verified(n, seq, head, f"the anchor (record {anchor[0]}) is not what the latest prune recorded: {said}")
            walked = True
            return Verified(n, seq, head, _feedback_problem(db, given) or _cards_problem(db))
    except (TypeError, ValueError, UnicodeError) as exc:  # a value of a type or encoding the trail never writes
        what = "a feedback or card row" if walked else f"record {seq + 1} (or the anchor)"
        return Verified(n, seq, head, f"{what} cannot be read ({type(exc).__name__}: {str(exc)[:200]})")
    except db.errors as exc:
        raise AuditError(f"{db.name}: cannot read the audit trail: {exc}") from None
    finally:
        db.close()


def card_of(record: tuple[Any, ...], card: str, index: int) -> bool:
    """Whether a CdsHooks record (action, decision_id, recommendations JSON) issued ``card`` as its
    card ``index`` (its recommendations hold ``["card", rule, uuid]``; a record from before uuids
    were recorded, ``["card", rule]``, is taken by the index alone)."""
    action, _, recs_json = record
    if action != "CdsHooks":
        return False
    try:
        recs = json.loads(recs_json or "[]")
        return 0 <= index < len(recs) and (len(recs[index]) < 3 or recs[index][2] == card)
    except (TypeError, ValueError, IndexError):
        return False


def _legacy_digests(fb: Rows) -> tuple[str, ...]:
    """The content hashes RecordFeedback stored before 7 Dec 2026 (its decision, items without kind,
    clinician or time, and the rule as the caller gave it: the decision's, or none) so that trails
    written then still verify; their time is not covered."""
    out = []
    for rule in (lambda r: r[5], lambda r: ""):
        items = [[r[3], rule(r), r[6], r[7], r[8]] for r in fb]
        text = json.dumps([fb[0][2], items, fb[0][9]], ensure_ascii=False, separators=(",", ":"))
        out.append(hashlib.sha256(text.encode()).hexdigest())
    return tuple(out)


def _cards_problem(db: Database) -> str:
    """The first row of the cards table (CDS Hooks card -> decision) that its hook call's record does
    not hold ("" if none): the table is an index, and a changed row would link feedback elsewhere."""
    sql = (
        "SELECT c.service, c.card, c.decision_id, c.recommendation, c.audit_seq, a.action, a.decision_id, a.recommendations"
        " FROM cards c LEFT JOIN audit a ON a.seq = c.audit_seq ORDER BY c.audit_seq, c.recommendation"
    )
    with closing(db.stream(sql)) as cards:
        for service, card, did, index, aseq, action, adid, recs in cards:
            if did != adid or not isinstance(index, int) or not card_of((action, adid, recs), str(card), index):
                return f"card {str(card)[:64]!r} of {service}: record {aseq} did not issue it as card {index} (the cards table changed)"
    return ""


FEEDBACK_ACTIONS = ("RecordFeedback", "CdsFeedback")  # the records that store feedback rows (outcome OK)


def _feedback_problem(db: Database, given: dict[int, tuple[str, str, str | None, str | None]]) -> str:
    """The first feedback row that does not match its content hash and its audit record ("" if none):
    rows changed, deleted, added or moved to another record."""
    by_id: dict[str, Rows] = {}
    for row in db.stream(f"SELECT {', '.join(FEEDBACK)} FROM feedback ORDER BY feedback_id, item"):
        by_id.setdefault(str(row[0]), []).append(tuple(row))
    seen: set[int] = set()
    for fid, fb in by_id.items():
        where = f"feedback {fid!r}"
        seqs = {r[12] for r in fb}
        if (
            len(seqs) != 1
            or not isinstance(next(iter(seqs)), int)
            or [r[1] for r in fb] != list(range(len(fb)))
            or len({r[11] for r in fb}) != 1
        ):
            return f"{where}: its rows are not one feedback's items 0 to {len(fb) - 1} under one audit record (rows changed)"
        aseq = seqs.pop()
        rec = given.get(aseq)
        if rec is None or rec[1] != fid or rec[2] != fb[0][2]:
            return f"{where}: record {aseq} is not its RecordFeedback or CdsFeedback record (rows changed or added)"
        legacy_cds = rec[0] == "CdsFeedback" and rec[3] is None  # written before rows were hashed: not recomputable
        digest = str(fb[0][11])
        if not legacy_cds and digest not in (hashlib.sha256(feedback_content(fb)).hexdigest(), *_legacy_digests(fb)):
            return f"{where}: changed (its rows do not match their content hash)"
        sent = hashlib.sha256(feedback_response(fid, fb)).hexdigest() if rec[0] == "RecordFeedback" else digest
        if sent != rec[3] and not legacy_cds:
            return f"{where}: its rows do not match what record {aseq} recorded (rows changed, added or deleted)"
        seen.add(aseq)
    for aseq, (action, fid, _, _) in given.items():
        if aseq not in seen and not (action == "CdsFeedback" and fid is None):
            return f"record {aseq}: its feedback {fid!r} is missing (feedback rows deleted?)"
    return ""


def _pruned_through(request_id: Any) -> int:
    try:
        return int(str(request_id).removeprefix("through-"))
    except ValueError:
        return -1


@dataclass(frozen=True)
class Pruned:
    records: int  # records deleted
    feedback: int  # feedback rows deleted with them
    through: int  # the last seq deleted (0: none)


RETENTION_DAYS = 6 * 365 + 2  # six years (with their leap days): the default of `carepath audit prune`


def prune(path: str | Path, before: str, caller: str = "carepath audit prune") -> Pruned:
    """Delete the records older than ``before`` (a UTC time as the trail stores it), with the feedback
    recorded by them, in one transaction that also moves the anchor to the last record deleted and
    appends an AuditPrune record naming it (request_id ``through-SEQ``, response_sha256 its hash).
    Records are deleted from the start only (up to the last one older than ``before``), so the rest
    is still one chain. Safe beside a running server (the file's write lock orders them)."""
    if not is_postgres(path) and not Path(path).is_file():
        raise AuditError(f"{path}: no such audit file")
    db = connect(path, create=True)
    try:
        with db.write():
            last = db.execute(
                "SELECT seq, hash FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit WHERE ts < ?) ORDER BY seq DESC LIMIT 1", (before,)
            ).fetchone()
            if last is None:
                return Pruned(0, 0, 0)
            through, through_hash = int(last[0]), str(last[1])
            fb = db.execute("DELETE FROM feedback WHERE audit_seq <= ?", (through,)).rowcount
            db.execute("DELETE FROM cards WHERE audit_seq <= ?", (through,))
            n = db.execute("DELETE FROM audit WHERE seq <= ?", (through,)).rowcount
            db.execute(
                "INSERT INTO anchor (id, seq, hash) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (through, through_hash),
            )
            seq, head = _head(db)
            rec = Record(utc_now(), caller, None, None, None, PRUNE, "OK", None, f"through-{through}", "[]", "[]", through_hash)
            fields = astuple(rec)
            db.execute(INSERT, (seq + 1, *fields, head, record_hash(seq + 1, fields, head)))
        return Pruned(n, fb, through)
    except db.errors as exc:
        raise AuditError(f"{db.name}: cannot prune: {exc}") from None
    finally:
        db.close()


def export(path: str | Path, since: str | None, until: str | None) -> Iterator[dict[str, Any]]:
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
