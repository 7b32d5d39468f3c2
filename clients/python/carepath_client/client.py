"""A typed client for the carepath gRPC service (exported by carepath_client).

    with CarepathClient("127.0.0.1:50051") as client:
        decision = client.evaluate(case)          # a dict in the contract's JSON form, or a carepath.v1.Case
        for result in client.evaluate_many(cases):
            ...

Every call has a deadline (``timeout``, default 10 s); unary calls are retried with exponential
backoff on UNAVAILABLE or a server's CANCELLED (``retries``, default 4: about a second), within that
deadline, and then fail with UNAVAILABLE naming the target and the last error; a stream that fails
with UNAVAILABLE is resumed on a new one with the cases not yet answered. INVALID_ARGUMENT raises CaseError with the
server's field violations: the same class the in-process engine raises (carepath.errors re-exports it),
so callers handle both alike.

Over TLS: ``tls_ca`` (the PEM root CA that signed the server's certificate), and for mutual TLS
``tls_cert`` and ``tls_key`` (the client's PEM certificate and key); each a path or the PEM bytes.
With token authentication on the server: ``token``, a JWT or a callable returning one, sent as
``authorization: Bearer ...`` with every call attempt (the callable is called for each, so it can
hand out a fresh token; a server that refuses replayed token ids needs one per call).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from carepath_client._proto.v1 import case_pb2, decision_pb2
from carepath_client._proto.v1 import decision_service_pb2 as ds
from carepath_client._proto.v1 import pathway_service_pb2 as ps
from carepath_client.codec import NotRepresentable, case_from_dict, decision_to_dict, pathway_from_message
from carepath_client.contract import Decision
from carepath_client.errors import CallError, CarepathError, CaseError, Diagnostic, FieldViolation

__all__ = ["CallError", "CarepathClient", "CaseInput", "Evaluated", "FeedbackItem", "FeedbackReceipt", "Result"]

CaseInput = Mapping[str, Any] | case_pb2.Case
Pem = str | Path | bytes  # a PEM file's path, or its bytes
Token = str | Callable[[], str]
MAX_PEM = 1024 * 1024
T = TypeVar("T")
_DECISION = "/carepath.v1.DecisionService/"
_PATHWAY = "/carepath.v1.PathwayService/"
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)  # see CarepathClient._unary
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


@dataclass(frozen=True)
class Result:
    """One case of evaluate_many: a decision or an error, with its request id."""

    request_id: str
    decision: Decision | None
    error: CarepathError | None
    decision_id: str = ""  # the decision's id in the server's audit trail (servers with --audit): for record_feedback


@dataclass(frozen=True)
class Evaluated:
    """evaluate_recorded's answer: the decision, with the ids that name it."""

    request_id: str
    decision_id: str  # empty when the server keeps no audit trail
    decision: Decision


OUTCOMES = {"accepted": ds.FEEDBACK_OUTCOME_ACCEPTED, "overridden": ds.FEEDBACK_OUTCOME_OVERRIDDEN}
REASONS = tuple(
    v.name.removeprefix("OVERRIDE_REASON_").lower()
    for v in ds.DESCRIPTOR.enum_types_by_name["OverrideReason"].values
    if v.number != ds.OVERRIDE_REASON_UNSPECIFIED
)


@dataclass(frozen=True)
class FeedbackItem:
    """Feedback on one recommendation: its index in the decision's recommendations, ``accepted`` or
    ``overridden``, and for an override a reason (one of REASONS: patient_declined, contraindicated,
    already_done, data_incorrect, not_available, clinical_judgement, other) and free text. ``rule``
    (the recommendation's rule), when given, is checked by the server."""

    recommendation: int
    outcome: str
    reason: str | None = None
    reason_text: str = ""
    rule: str = ""

    def message(self) -> ds.RecommendationFeedback:
        if self.outcome not in OUTCOMES:
            raise CarepathError(f"FeedbackItem.outcome: 'accepted' or 'overridden', not {self.outcome!r}")
        if self.reason is not None and self.reason not in REASONS:
            raise CarepathError(f"FeedbackItem.reason: one of {', '.join(REASONS)}, not {self.reason!r}")
        reason = "OVERRIDE_REASON_" + (self.reason.upper() if self.reason else "UNSPECIFIED")
        return ds.RecommendationFeedback(
            recommendation=self.recommendation, rule=self.rule, outcome=OUTCOMES[self.outcome], reason=reason, reason_text=self.reason_text
        )


@dataclass(frozen=True)
class FeedbackReceipt:
    feedback_id: str
    duplicate: bool  # the server had it already (a resend)
    items: int
    content_sha256: str


def _case_fields(case: CaseInput) -> dict[str, Any]:
    if isinstance(case, case_pb2.Case):
        return {"case": case}
    try:
        return {"case": case_from_dict(case)}
    except NotRepresentable:  # the server reports exactly what the engine would
        return {"case_json": json.dumps(case, ensure_ascii=False, default=str)}


def _error(exc: grpc.RpcError) -> CarepathError:
    call: Any = exc
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations: list[FieldViolation] = []
        st = rpc_status.from_call(call)
        if st is not None:
            for detail in st.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    br = error_details_pb2.BadRequest()
                    detail.Unpack(br)
                    violations += [FieldViolation(v.field, v.description) for v in br.field_violations]
        return CaseError(violations or [FieldViolation("", message)])
    return CallError(code, message)


def _stream_error(err: ds.EvaluateError) -> CarepathError:
    code = next((c for c in grpc.StatusCode if c.value[0] == err.code), grpc.StatusCode.UNKNOWN)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return CaseError([FieldViolation(v.field, v.description) for v in err.field_violations] or [FieldViolation("", err.message)])
    return CallError(code, err.message)


def _pem(value: Pem, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        with Path(value).open("rb") as f:
            data = f.read(MAX_PEM + 1)
    except OSError as exc:
        raise CarepathError(f"{what} {value}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM or b"-----BEGIN " not in data:
        raise CarepathError(f"{what} {value}: not a PEM file")
    return data


def channel_credentials(tls_ca: Pem, tls_cert: Pem | None = None, tls_key: Pem | None = None) -> grpc.ChannelCredentials:
    """TLS channel credentials: the server verified against ``tls_ca``; with ``tls_cert`` and
    ``tls_key`` the client presents its certificate (mutual TLS)."""
    if (tls_cert is None) != (tls_key is None):
        raise CarepathError("tls_cert and tls_key go together (the client certificate and its key)")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(tls_ca, "tls_ca"),
        private_key=_pem(tls_key, "tls_key") if tls_key is not None else None,
        certificate_chain=_pem(tls_cert, "tls_cert") if tls_cert is not None else None,
    )


class CarepathClient:
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.05,
        channel: grpc.Channel | None = None,
        tls_ca: Pem | None = None,
        tls_cert: Pem | None = None,
        tls_key: Pem | None = None,
        token: Token | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.token = token
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.max_send_message_length", 4 * 1024 * 1024)]
        if channel is not None:
            self._channel = channel
        elif tls_ca is not None:
            self._channel = grpc.secure_channel(target, channel_credentials(tls_ca, tls_cert, tls_key), options=options)
        elif tls_cert is not None or tls_key is not None:
            raise CarepathError("a client certificate (tls_cert, tls_key) needs tls_ca: it is sent over TLS only")
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        ch = self._channel
        self._evaluate = ch.unary_unary(
            _DECISION + "Evaluate",
            request_serializer=ds.EvaluateRequest.SerializeToString,
            response_deserializer=ds.EvaluateResponse.FromString,
        )
        self._stream = ch.stream_stream(
            _DECISION + "EvaluateStream",
            request_serializer=ds.EvaluateStreamRequest.SerializeToString,
            response_deserializer=ds.EvaluateStreamResponse.FromString,
        )
        self._feedback = ch.unary_unary(
            _DECISION + "RecordFeedback",
            request_serializer=ds.RecordFeedbackRequest.SerializeToString,
            response_deserializer=ds.RecordFeedbackResponse.FromString,
        )
        self._list = ch.unary_unary(
            _PATHWAY + "ListPathways",
            request_serializer=ps.ListPathwaysRequest.SerializeToString,
            response_deserializer=ps.ListPathwaysResponse.FromString,
        )
        self._get = ch.unary_unary(
            _PATHWAY + "GetPathway",
            request_serializer=ps.GetPathwayRequest.SerializeToString,
            response_deserializer=ps.GetPathwayResponse.FromString,
        )
        self._validate = ch.unary_unary(
            _PATHWAY + "ValidatePathway",
            request_serializer=ps.ValidatePathwayRequest.SerializeToString,
            response_deserializer=ps.ValidatePathwayResponse.FromString,
        )

    # ---------------------------------------------------------------- plumbing
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CarepathClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self) -> tuple[tuple[str, str | bytes], ...] | None:
        """The call's metadata: the bearer token, fetched afresh from a callable."""
        if self.token is None:
            return None
        token = self.token() if callable(self.token) else self.token
        return (("authorization", f"Bearer {token.strip()}"),)

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        """Call with a deadline; retry UNAVAILABLE (and CANCELLED, which only the server sends here:
        a call it had received but not started when it shut down) with exponential backoff and jitter
        inside it. Every unary call of the API is idempotent (a decision depends only on the case and
        the pathways; the PathwayService calls only read), so a retry is always safe.

        A server that cannot be reached fails fast with UNAVAILABLE naming the target and what
        the last attempt got, not a wait for the whole deadline.
        """
        start = time.monotonic()
        end = start + (timeout or self.timeout)
        last = ""
        attempts = 0
        while attempts <= self.retries:
            left = end - time.monotonic()
            if left <= 0:
                break
            attempts += 1
            try:
                return method(request, timeout=left, metadata=self._metadata())
            except grpc.RpcError as exc:
                call: Any = exc
                if call.code() not in _RETRIED:
                    raise _error(exc) from None
                last = call.details() or "unavailable"
            if attempts <= self.retries:
                time.sleep(min(self.backoff * (2 ** (attempts - 1)) * (0.5 + random.random()), max(0.0, end - time.monotonic())))
        if not attempts:
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        took = time.monotonic() - start
        raise CallError(
            grpc.StatusCode.UNAVAILABLE, f"carepath at {self.target} is unavailable ({attempts} attempt(s) in {took:.1f} s): {last}"
        )

    # ---------------------------------------------------------------- decisions
    def evaluate_proto(
        self, case: CaseInput, *, pathway_ids: Sequence[str] | None = None, request_id: str = "", timeout: float | None = None
    ) -> decision_pb2.Decision:
        """The Decision message for one case."""
        req = ds.EvaluateRequest(request_id=request_id or uuid.uuid4().hex[:16], pathway_ids=list(pathway_ids or []), **_case_fields(case))
        resp: ds.EvaluateResponse = self._unary(self._evaluate, req, timeout)
        return resp.decision

    def evaluate(
        self, case: CaseInput, *, pathway_ids: Sequence[str] | None = None, request_id: str = "", timeout: float | None = None
    ) -> Decision:
        """The decision for one case, in the contract's JSON form (identical to Engine.evaluate);
        typed as carepath_client.Decision."""
        return decision_to_dict(self.evaluate_proto(case, pathway_ids=pathway_ids, request_id=request_id, timeout=timeout))

    def evaluate_recorded(
        self, case: CaseInput, *, pathway_ids: Sequence[str] | None = None, request_id: str = "", timeout: float | None = None
    ) -> Evaluated:
        """The decision for one case with its request id and decision id (what record_feedback names)."""
        req = ds.EvaluateRequest(request_id=request_id or uuid.uuid4().hex[:16], pathway_ids=list(pathway_ids or []), **_case_fields(case))
        resp: ds.EvaluateResponse = self._unary(self._evaluate, req, timeout)
        return Evaluated(resp.request_id, resp.decision_id, decision_to_dict(resp.decision))

    def record_feedback(
        self,
        decision_id: str,
        items: Sequence[FeedbackItem],
        *,
        feedback_id: str = "",
        clinician: str = "",
        at: str = "",
        timeout: float | None = None,
    ) -> FeedbackReceipt:
        """Whether the clinician accepted or overrode each recommendation of a decision (RecordFeedback).
        ``feedback_id`` (default: a new one) makes it safe to send again: it is retried like every call.
        ``at``: when, RFC 3339 (default: now). NOT_FOUND (CallError) for an unknown decision or recommendation."""
        req = ds.RecordFeedbackRequest(
            feedback_id=feedback_id or uuid.uuid4().hex,
            decision_id=decision_id,
            items=[i.message() for i in items],
            clinician=clinician,
            at=at,
        )
        resp: ds.RecordFeedbackResponse = self._unary(self._feedback, req, timeout)
        return FeedbackReceipt(resp.feedback_id, resp.duplicate, resp.items, resp.content_sha256)

    def evaluate_many(
        self, cases: Iterable[CaseInput], *, pathway_ids: Sequence[str] | None = None, timeout: float | None = None
    ) -> Iterator[Result]:
        """Evaluate over one stream; results in input order. A bad case yields a Result with an error.

        If the stream fails with UNAVAILABLE (e.g. "server shutting down" during a drain), the cases
        sent and not yet answered are sent again on a new stream, then the rest: up to ``retries``
        times in a row (with backoff), within ``timeout``. Evaluation is idempotent, so a case is
        never answered twice to the caller, only perhaps evaluated twice by the servers."""
        ids = list(pathway_ids or [])
        source = enumerate(cases)
        sent: deque[ds.EvaluateStreamRequest] = deque()  # sent on the current stream, not yet answered
        carry: deque[ds.EvaluateStreamRequest] = deque()  # taken by a stream that had failed meanwhile
        lock = threading.Lock()  # for sent and carry: grpc reads the requests in a thread of its own
        pulling = threading.Lock()  # one next() on the caller's cases at a time (a failed stream's thread may be in one)
        end = time.monotonic() + (timeout or max(self.timeout, 600.0))
        failures = 0
        while True:
            live = [True]

            def requests(live: list[bool] = live) -> Iterator[ds.EvaluateStreamRequest]:
                while True:
                    with pulling:
                        with lock:
                            req = carry.popleft() if carry else None
                        carried = req is not None
                        if req is None:
                            if not live[0]:
                                return
                            nxt = next(source, None)
                            if nxt is None:
                                return
                            req = ds.EvaluateStreamRequest(request_id=str(nxt[0]), pathway_ids=ids, **_case_fields(nxt[1]))
                        with lock:
                            if not live[0]:  # this stream failed meanwhile: the next one sends the case, in order
                                if carried:
                                    carry.appendleft(req)
                                else:
                                    carry.append(req)
                                return
                            sent.append(req)
                    yield req

            try:
                for resp in self._stream(requests(), timeout=max(0.0, end - time.monotonic()), metadata=self._metadata()):
                    with lock:
                        req = sent.popleft()
                    failures = 0
                    if resp.WhichOneof("result") == "decision":
                        yield Result(resp.request_id, decision_to_dict(resp.decision), None, resp.decision_id)
                    elif resp.error.code == _UNAVAILABLE:  # no worker could take it: this case alone, retried as a unary call
                        yield self._evaluate_again(req, end)
                    else:
                        yield Result(resp.request_id, None, _stream_error(resp.error))
                return
            except grpc.RpcError as exc:
                with lock:
                    live[0] = False
                    carry.extendleft(reversed(sent))  # not answered: sent first on the next stream
                    sent.clear()
                call: Any = exc
                failures += 1
                if call.code() != grpc.StatusCode.UNAVAILABLE or failures > self.retries or time.monotonic() >= end:
                    raise _error(exc) from None
                time.sleep(min(self.backoff * (2 ** (failures - 1)) * (0.5 + random.random()), max(0.0, end - time.monotonic())))

    def _evaluate_again(self, req: ds.EvaluateStreamRequest, end: float) -> Result:
        """One case of a stream that came back UNAVAILABLE, evaluated again by Evaluate (with its retries)."""
        try:
            one = ds.EvaluateRequest.FromString(req.SerializeToString())  # the same fields
            resp: ds.EvaluateResponse = self._unary(self._evaluate, one, max(0.001, end - time.monotonic()))
        except CarepathError as exc:
            return Result(req.request_id, None, exc)
        return Result(resp.request_id, decision_to_dict(resp.decision), None, resp.decision_id)

    # ---------------------------------------------------------------- pathways
    def list_pathways(self, *, timeout: float | None = None) -> list[dict[str, str]]:
        resp: ps.ListPathwaysResponse = self._unary(self._list, ps.ListPathwaysRequest(), timeout)
        return [pathway_from_message(p) for p in resp.pathways]

    def get_pathway(self, pathway_id: str, *, timeout: float | None = None) -> dict[str, str]:
        resp: ps.GetPathwayResponse = self._unary(self._get, ps.GetPathwayRequest(id=pathway_id), timeout)
        return pathway_from_message(resp.pathway, source=True)

    def validate_pathway(self, source: str, file: str = "<source>", *, timeout: float | None = None) -> list[Diagnostic]:
        """The same diagnostics as `carepath validate` (empty when the pathway is valid)."""
        resp: ps.ValidatePathwayResponse = self._unary(self._validate, ps.ValidatePathwayRequest(source=source, file=file), timeout)
        return [Diagnostic(d.file, d.line, d.col, d.path, d.message) for d in resp.diagnostics]
