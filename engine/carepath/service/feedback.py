"""Override capture: `DecisionService.RecordFeedback`, stored beside the audit trail.

A decision served with ``--audit`` carries a ``decision_id`` (EvaluateResponse.decision_id), and its
audit record keeps the kind and rule of each recommendation. Feedback names the decision and, per
recommendation (its index, and optionally its rule as a check), whether the clinician accepted or
overrode it, with a coded reason and free text, who (``clinician``, default the token's subject) and
when (``at``, default now). The rows go to the audit file's ``feedback`` table in the same
transaction as the RecordFeedback audit record (action RecordFeedback, request_id the feedback id,
decision_id the decision, the rules given feedback on, the response's sha256, which covers the
feedback's content hash): the free text stays out of the audit records.

Idempotent by ``feedback_id``: the same content again is OK (``duplicate``), stored once; other
content under a used id is ALREADY_EXISTS (the same content: the same decision, items and clinician,
and the same ``at`` when the resend gives one). Two copies racing each other are settled by the
audit writer, inside its transaction: the first is stored, the second answered as a resend. The
rows' content hash is covered by the audit record, so `carepath audit verify` checks them too.
An unknown or pruned decision, or a recommendation the decision does not have, is NOT_FOUND; bad
fields are INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from carepath.service import status
from carepath.service.audit import (
    STORED_FEEDBACK,
    AuditError,
    AuditLog,
    FeedbackTaken,
    Rows,
    card_of,
    connect,
    feedback_response,
    feedback_rows,
    utc_text,
)
from carepath.service.auth import CALLER, Caller, certificate_subject
from carepath.service.worker import REQUEST_ID
from carepath_client._proto.v1 import decision_service_pb2 as ds

MAX_ITEMS = 100
MAX_TEXT = 1000  # characters of reason_text
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # in free text (a NUL cannot even be stored in PostgreSQL)
MAX_CLINICIAN = 128
FUTURE_SLACK = timedelta(minutes=5)  # ``at`` may be this far ahead of the server's clock
OUTCOMES = {ds.FEEDBACK_OUTCOME_ACCEPTED: "accepted", ds.FEEDBACK_OUTCOME_OVERRIDDEN: "overridden"}
REASONS = {
    v.number: v.name.removeprefix("OVERRIDE_REASON_").lower()
    for v in ds.DESCRIPTOR.enum_types_by_name["OverrideReason"].values
    if v.number != ds.OVERRIDE_REASON_UNSPECIFIED
}
NO_AUDIT = "this server keeps no audit trail (serve --audit PATH), where feedback is stored"


class FeedbackError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field

    def failure(self) -> status.Failure:
        if self.code == grpc.StatusCode.INVALID_ARGUMENT:
            return status.Failure(self.code, f"invalid feedback: {self.field}: {self.message}", ((self.field, self.message),))
        return status.Failure(self.code, self.message)


def _bad(field: str, why: str) -> FeedbackError:
    return FeedbackError(grpc.StatusCode.INVALID_ARGUMENT, why, field)


@dataclass(frozen=True)
class Item:
    recommendation: int
    rule: str
    outcome: str  # accepted / overridden
    reason: str | None  # the coded reason's name (patient_declined, ...)
    reason_text: str


@dataclass(frozen=True)
class Feedback:
    feedback_id: str
    decision_id: str
    items: tuple[Item, ...]
    clinician: str | None
    at: str  # UTC, as the audit trail stores times
    at_given: bool = True  # False: ``at`` is the time it arrived (a resend is then compared without it)

    def same_as(self, stored: Rows) -> bool:
        """Whether ``stored`` (the feedback table's rows under this id) holds this feedback: the same
        decision, items and clinician, and the same ``at`` if this request gives one."""
        mine = [
            (self.decision_id, i.recommendation, i.rule or r[5], i.outcome, i.reason, i.reason_text, self.clinician)
            for i, r in zip(self.items, stored, strict=False)
        ]
        theirs = [(r[2], r[3], r[5], r[6], r[7], r[8], r[9]) for r in stored]
        return len(self.items) == len(stored) and mine == theirs and (not self.at_given or all(r[10] == self.at for r in stored))


def parse(req: ds.RecordFeedbackRequest, caller: Caller) -> Feedback:
    """The request checked field by field (FeedbackError INVALID_ARGUMENT naming the first bad one)."""
    if not req.feedback_id:
        raise _bad("feedback_id", "required (the caller's id for this feedback, so that sending it again is safe)")
    if not REQUEST_ID.fullmatch(req.feedback_id):
        raise _bad("feedback_id", "must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    if not req.decision_id:
        raise _bad("decision_id", "required (EvaluateResponse.decision_id of the decision)")
    if not REQUEST_ID.fullmatch(req.decision_id):
        raise _bad("decision_id", "must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    if not req.items:
        raise _bad("items", "at least one recommendation's feedback is needed")
    if len(req.items) > MAX_ITEMS:
        raise _bad("items", f"at most {MAX_ITEMS} (got {len(req.items)})")
    items: list[Item] = []
    seen: set[int] = set()
    for n, it in enumerate(req.items):
        where = f"items[{n}]"
        if it.recommendation < 0:
            raise _bad(f"{where}.recommendation", f"an index into the decision's recommendations (got {it.recommendation})")
        if it.recommendation in seen:
            raise _bad(f"{where}.recommendation", f"recommendation {it.recommendation} is given feedback twice")
        seen.add(it.recommendation)
        outcome = OUTCOMES.get(it.outcome)
        if outcome is None:
            raise _bad(f"{where}.outcome", "FEEDBACK_OUTCOME_ACCEPTED or FEEDBACK_OUTCOME_OVERRIDDEN is required")
        reason = REASONS.get(it.reason)
        if it.reason != ds.OVERRIDE_REASON_UNSPECIFIED and reason is None:
            raise _bad(f"{where}.reason", f"unknown reason code {it.reason}")
        if outcome == "overridden" and reason is None:
            raise _bad(f"{where}.reason", f"an override needs a reason: one of {', '.join(REASONS.values())}")
        if outcome == "accepted" and reason is not None:
            raise _bad(f"{where}.reason", "a reason is for an override; this recommendation was accepted")
        if len(it.reason_text) > MAX_TEXT:
            raise _bad(f"{where}.reason_text", f"at most {MAX_TEXT} characters (got {len(it.reason_text)})")
        if CONTROL.search(it.reason_text):
            raise _bad(f"{where}.reason_text", "text only: no control characters (line breaks and tabs are allowed)")
        if len(it.rule) > 128:
            raise _bad(f"{where}.rule", "at most 128 characters")
        items.append(Item(it.recommendation, it.rule, outcome, reason, it.reason_text))
    clinician = req.clinician or caller.subject
    if req.clinician and (len(req.clinician) > MAX_CLINICIAN or not req.clinician.isprintable()):
        raise _bad("clinician", f"an id of 1-{MAX_CLINICIAN} printable characters")
    now = datetime.now(UTC)
    if req.at:
        try:
            at = datetime.fromisoformat(req.at.replace("Z", "+00:00"))
        except ValueError:
            raise _bad("at", f"expected an RFC 3339 time such as 2026-12-07T10:15:00Z, got {req.at[:40]!r}") from None
        if at.tzinfo is None:
            raise _bad("at", "needs its UTC offset (e.g. 2026-12-07T10:15:00Z)")
        at = at.astimezone(UTC)
        if at > now + FUTURE_SLACK:
            raise _bad("at", "is in the future")
    else:
        at = now
    return Feedback(req.feedback_id, req.decision_id, tuple(items), clinician, utc_text(at), bool(req.at))


class Store:
    """Reads the decisions and feedback of an audit file (its own connection; the AuditLog writes)."""

    def __init__(self, target: str | Path) -> None:
        self.target = target
        self.db = connect(target, create=True)
        self.reopening = threading.Lock()  # readers run in several threads: one of them opens again

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """The rows of a query; a lost connection (PostgreSQL restarted) is opened again, once."""
        for attempt in (1, 2):
            try:
                return list(self.db.execute(sql, args).fetchall())
            except self.db.errors as exc:
                if attempt == 1 and self.db.broken():
                    with self.reopening:
                        if self.db.broken():
                            self.db.close()
                            self.db = connect(self.target, create=True)
                    continue
                raise AuditError(f"{self.db.name}: cannot read the audit trail: {exc}") from None
        raise AssertionError("unreachable")

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def decision(self, decision_id: str) -> tuple[str | None, list[list[str]]] | None:
        """The decision's (recorded patient, [[kind, rule], ...] of its recommendations), None if unknown."""
        row = self._one(
            "SELECT patient, recommendations FROM audit WHERE decision_id = ? AND action IN ('Evaluate', 'EvaluateStream') LIMIT 1",
            (decision_id,),
        )
        if row is None:
            return None
        return row[0], json.loads(row[1] or "[]")

    def stored(self, feedback_id: str) -> Rows:
        """The feedback rows stored under this id (none: [])."""
        return [tuple(r) for r in self._all(STORED_FEEDBACK, (feedback_id,))]

    def card(self, service_id: str, card: str) -> tuple[str, int, str, str] | None:
        """A CDS Hooks card this trail recorded: (its decision id, index, rule, recorded patient), taken
        from the hook call's record (the cards table only finds it); None if no record issued it."""
        row = self._one(
            "SELECT a.action, a.decision_id, a.recommendations, c.recommendation, a.patient FROM cards c"
            " JOIN audit a ON a.seq = c.audit_seq WHERE c.service = ? AND c.card = ?",
            (service_id, card),
        )
        if row is None or not isinstance(row[3], int) or not card_of(tuple(row[:3]), card, row[3]):
            return None
        index = int(row[3])
        return str(row[1]), index, str(json.loads(row[2])[index][1]), row[4] or ""

    def close(self) -> None:
        self.db.close()


async def record(audit: AuditLog, store: Store, fb: Feedback, caller: Caller) -> ds.RecordFeedbackResponse:
    """Check the feedback against the decision's record and store it with its own audit record."""
    found = await asyncio.to_thread(store.decision, fb.decision_id)
    if found is None:
        raise FeedbackError(grpc.StatusCode.NOT_FOUND, f"unknown decision {fb.decision_id!r} (not in the audit trail, or pruned)")
    patient, recs = found
    items: Rows = []
    for n, it in enumerate(fb.items):
        if it.recommendation >= len(recs):
            raise FeedbackError(
                grpc.StatusCode.NOT_FOUND,
                f"items[{n}].recommendation: decision {fb.decision_id} has {len(recs)} recommendation(s), not {it.recommendation + 1}",
            )
        kind, rule = recs[it.recommendation]
        if it.rule and it.rule != rule:
            raise FeedbackError(
                grpc.StatusCode.NOT_FOUND,
                f"items[{n}].rule: recommendation {it.recommendation} of decision {fb.decision_id} is from rule {rule!r}, not {it.rule!r}",
            )
        items.append((it.recommendation, kind, rule, it.outcome, it.reason, it.reason_text))
    rows = feedback_rows(fb.feedback_id, fb.decision_id, items, fb.clinician, fb.at)
    stored = await asyncio.to_thread(store.stored, fb.feedback_id)
    while True:  # at most twice: a copy racing this one may be stored first (the writer says so)
        if stored:
            if not fb.same_as(stored):
                raise FeedbackError(
                    grpc.StatusCode.ALREADY_EXISTS, f"feedback {fb.feedback_id!r} was stored with other content; use a new feedback_id"
                )
            rows, fresh = stored, False
        else:
            fresh = True
        raw = feedback_response(fb.feedback_id, rows, duplicate=not fresh)
        rec = audit.record(
            caller,
            "RecordFeedback",
            "OK" if fresh else "OK_DUPLICATE",
            patient=patient,
            pseudonymise=False,  # as the decision's record has it
            request_id=fb.feedback_id,
            rules=sorted({str(r[5]) for r in rows}),
            response=raw,
            decision_id=fb.decision_id,
        )
        try:
            await audit.append(rec, feedback=rows if fresh else None)
        except FeedbackTaken as taken:
            stored = taken.rows
            continue
        return ds.RecordFeedbackResponse.FromString(raw)


class FeedbackServicer:
    """DecisionService.RecordFeedback (registered whether or not the server keeps an audit trail)."""

    def __init__(self, audit: AuditLog | None) -> None:
        self.audit = audit
        self.store = Store(audit.target) if audit is not None else None

    async def record_feedback(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        from carepath.service.server import log_rpc  # the server imports this module

        t0 = time.perf_counter()
        caller = CALLER.get() or Caller(certificate=certificate_subject(context), peer=str(context.peer()))
        rid = ""
        try:
            if self.audit is None or self.store is None:
                raise FeedbackError(grpc.StatusCode.FAILED_PRECONDITION, NO_AUDIT)
            try:
                req = ds.RecordFeedbackRequest.FromString(raw)
            except DecodeError:
                raise _bad("", "the request is not a valid carepath.v1.RecordFeedbackRequest") from None
            rid = req.feedback_id if REQUEST_ID.fullmatch(req.feedback_id) else ""
            resp = await record(self.audit, self.store, parse(req, caller), caller)
        except FeedbackError as exc:
            log_rpc("RecordFeedback", rid, exc.code, t0)
            rich = exc.failure().rich()
            await context.abort(rich.code, rich.details, rich.trailing_metadata)
            raise AssertionError("unreachable") from None
        except AuditError as exc:
            log_rpc("RecordFeedback", rid, grpc.StatusCode.UNAVAILABLE, t0)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the feedback could not be stored; retry later ({exc})")
            raise AssertionError("unreachable") from None
        log_rpc("RecordFeedback", rid, grpc.StatusCode.OK, t0)
        return resp.SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        from carepath.service.server import DECISION

        return grpc.method_handlers_generic_handler(DECISION, {"RecordFeedback": grpc.unary_unary_rpc_method_handler(self.record_feedback)})

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


# ------------------------------------------------------------------------------ carepath report --feedback
@dataclass
class RuleFeedback:
    rule: str
    fired: int = 0  # decisions it fired in
    accepted: int = 0
    overridden: int = 0
    reasons: dict[str, int] | None = None


@dataclass
class FeedbackSummary:
    decisions: int
    first: str | None
    last: str | None
    rules: dict[str, RuleFeedback]
    reasons: dict[str, int]  # overrides by coded reason
    decisions_with_feedback: int

    @property
    def accepted(self) -> int:
        return sum(r.accepted for r in self.rules.values())

    @property
    def overridden(self) -> int:
        return sum(r.overridden for r in self.rules.values())


def summarise(path: str | Path) -> FeedbackSummary:
    """Per rule: the decisions it fired in (of all decisions in the trail) and the feedback on the
    recommendations it made (the latest feedback on each recommendation counts, by ``at``)."""
    db = connect(path, create=False)
    try:
        rules: dict[str, RuleFeedback] = {}
        n, first, last = 0, None, None
        for ts, fired in db.stream(
            "SELECT ts, rules FROM audit WHERE action IN ('Evaluate', 'EvaluateStream', 'CdsHooks') AND outcome = 'OK' ORDER BY seq"
        ):
            n += 1
            first = first or ts
            last = ts
            for rule in json.loads(fired):
                rules.setdefault(rule, RuleFeedback(rule)).fired += 1
        latest = db.execute(
            "SELECT decision_id, rule, outcome, reason FROM feedback f WHERE NOT EXISTS ("
            "SELECT 1 FROM feedback g WHERE g.decision_id = f.decision_id AND g.recommendation = f.recommendation "
            "AND (g.at > f.at OR (g.at = f.at AND g.audit_seq > f.audit_seq)))"
        ).fetchall()
    except db.errors as exc:
        raise AuditError(f"{db.name}: cannot read the feedback: {exc}") from None
    finally:
        db.close()
    reasons: dict[str, int] = {}
    for _, rule, outcome, reason in latest:
        r = rules.setdefault(rule, RuleFeedback(rule))
        if outcome == "accepted":
            r.accepted += 1
        else:
            r.overridden += 1
            r.reasons = r.reasons or {}
            r.reasons[reason] = r.reasons.get(reason, 0) + 1
            reasons[reason] = reasons.get(reason, 0) + 1
    return FeedbackSummary(n, first, last, rules, reasons, len({row[0] for row in latest}))


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _top(counts: dict[str, int], most: int = 3) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:most]


def render_feedback_markdown(s: FeedbackSummary) -> str:
    """The feedback section of `carepath report` (Markdown): no free text, no patient."""
    given = s.accepted + s.overridden
    span = f" ({s.first[:10]} to {s.last[:10]})" if s.first and s.last else ""
    out = [
        "## Feedback on recommendations",
        "",
        f"{s.decisions} decisions in the audit trail{span}; feedback on {s.decisions_with_feedback} of them, "
        f"{given} recommendation(s): {s.accepted} accepted ({_pct(s.accepted, given)}), "
        f"{s.overridden} overridden ({_pct(s.overridden, given)}).",
        "",
        "Per rule: *fired in* is the share of all decisions the rule fired in; acceptance and override rates are of the "
        "recommendations it made that were given feedback (the latest feedback on each counts). A rule fired often and "
        "overridden often is the committee's first candidate to fix or retire.",
        "",
        "| rule | fired in | decisions | feedback | accepted | overridden | top override reasons |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    order = sorted(s.rules.values(), key=lambda r: (-r.overridden, -r.fired, r.rule))
    for r in order:
        fb = r.accepted + r.overridden
        top = ", ".join(f"{k} {v}" for k, v in _top(r.reasons or {}))
        out.append(
            f"| {r.rule} | {_pct(r.fired, s.decisions)} | {r.fired} | {fb} | {_pct(r.accepted, fb)} | {_pct(r.overridden, fb)} | {top} |"
        )
    out += ["", "### Top override reasons", "", "| reason | overrides | share of overrides |", "|---|---:|---:|"]
    for k, v in _top(s.reasons, len(s.reasons)):
        out.append(f"| {k} | {v} | {_pct(v, s.overridden)} |")
    if not s.reasons:
        out.append("| (no overrides) | 0 | - |")
    return "\n".join(out) + "\n"


def render_feedback_html(s: FeedbackSummary) -> str:
    """The same section as HTML (for a report.html)."""
    import html

    out: list[str] = []
    table = False
    for line in render_feedback_markdown(s).splitlines():
        if line.startswith("|"):
            if line.startswith("|---"):
                continue
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not table:
                out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
                table = True
            else:
                out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if table:
            out.append("</table>")
            table = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("### "):
            out.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line:
            out.append(f"<p>{html.escape(line.replace('*', ''))}</p>")
    if table:
        out.append("</table>")
    return "\n".join(out) + "\n"
