"""The gRPC front end: thin servicers over the worker pool, health, reflection, reload, drain.

The front end never touches an engine: DecisionService requests pass as bytes to a worker
process (which parses, evaluates and serialises the response), so the event loop only routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import grpc
import orjson
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from carepath.service import status
from carepath.service.audit import AuditInterceptor, AuditLog
from carepath.service.auth import Interceptor, Verifier
from carepath.service.pool import LoadFailed, Pool, PoolError, Reply
from carepath.service.tls import TlsError, TlsFiles, plaintext_refusal, server_credentials
from carepath.service.validator import MAX_SOURCE, Busy, Failed, TimedOut, Validator
from carepath.service.worker import clean_request_id, internal_error_line, utc_now
from carepath.settings import current
from carepath.site import Site
from carepath_client._proto.v1 import decision_service_pb2 as ds
from carepath_client._proto.v1 import pathway_service_pb2 as ps
from carepath_client.codec import pathway_to_message

log = logging.getLogger("carepath.service")
rpc_log = logging.getLogger("carepath.rpc")

DECISION = ds.DESCRIPTOR.services_by_name["DecisionService"].full_name
PATHWAY = ps.DESCRIPTOR.services_by_name["PathwayService"].full_name
MAX_MESSAGE = 4 * 1024 * 1024  # a case is at most 1 MiB of JSON; anything larger is refused by gRPC
MAX_DEADLINE = 60.0  # at most this long for a unary call, or for one batch of a stream's cases
MAX_FILE_NAME = 256  # characters of ValidatePathwayRequest.file (echoed in every diagnostic)
STREAM_WINDOW = 128  # cases of one stream read and not yet answered
LOG_EVERY = 0.02  # seconds the per-request log lines may wait to be written together
STREAM_BATCH = 16  # at most this many cases of a stream in one worker round trip
DRAIN_IDLE = 1.0  # seconds a stream may sit with nothing in flight during the drain before it is ended
CUT_BEFORE = 1.0  # seconds before the grace ends that the streams still open are ended (UNAVAILABLE)
_DRAIN, _IDLE, _CUT = object(), object(), object()  # a stream's queue: the drain began; DRAIN_IDLE passed; the grace is nearly over
MAX_PER_PEER = 64  # DecisionService calls in flight per caller address (serve --max-calls-per-peer)
_Msg = TypeVar("_Msg", bound=Message)

# Connections (grpc core's server arguments; the README's gRPC service section explains each).
MAX_CONNECTIONS = 1000  # open connections; more are closed as they are accepted (fd limit permitting)
MAX_STREAMS = 100  # concurrent calls on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
HANDSHAKE_MS = 5_000  # a connection that has not sent its HTTP/2 preface and settings by then is closed
IDLE_MS = 5 * 60_000  # a connection with no call for this long is closed (GOAWAY)
AGE_MS = 60 * 60_000  # a connection this old is asked to go away (GOAWAY; grpc adds +-10% jitter) ...
AGE_GRACE_MS = 10 * 60_000  # ... and its calls still running then get this long to finish
KEEPALIVE_MS = 60_000  # the server pings a connection idle this long ...
KEEPALIVE_TIMEOUT_MS = 20_000  # ... and closes it if the ping is not answered in this long
PING_STRIKES = 2  # a client pinging more often than every 5 min without calls is sent GOAWAY after these


def connection_options() -> dict[str, int]:
    """grpc core's server arguments for the limits above, the connection count kept below the
    process's file-descriptor limit."""
    import resource

    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    most = MAX_CONNECTIONS if fds == resource.RLIM_INFINITY else max(1, min(MAX_CONNECTIONS, fds - 100))
    return {
        "grpc.max_allowed_incoming_connections": most,
        "grpc.max_concurrent_streams": MAX_STREAMS,
        "grpc.server_handshake_timeout_ms": HANDSHAKE_MS,
        "grpc.max_connection_idle_ms": IDLE_MS,
        "grpc.max_connection_age_ms": AGE_MS,
        "grpc.max_connection_age_grace_ms": AGE_GRACE_MS,
        "grpc.keepalive_time_ms": KEEPALIVE_MS,
        "grpc.keepalive_timeout_ms": KEEPALIVE_TIMEOUT_MS,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.http2.max_pings_without_data": 0,  # the server's own keepalive pings are not limited
        "grpc.http2.max_ping_strikes": PING_STRIKES,
    }


class _RpcLines:
    """Per-request log lines, handed to logging together every LOG_EVERY seconds (and at shutdown).

    A LogRecord per request costs ~15 µs of the front end's single thread; the lines are built with
    orjson and go out as one record (still one JSON line per request in the output)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if not self.lines:
            try:
                asyncio.get_running_loop().call_later(LOG_EVERY, self.flush)
            except RuntimeError:  # no loop: write it now
                rpc_log.info(line)
                return
        self.lines.append(line)

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        if lines:
            rpc_log.info("\n".join(lines))


_rpc_lines = _RpcLines()


def log_rpc(
    method: str,
    request_id: str,
    code: grpc.StatusCode,
    t0: float,
    patient_id: str | None = None,
    pathway_set: int = 0,
    replaced: bool = False,
) -> None:
    """One line per request: no patient data beyond patient_id; ``replaced``: the caller's request id
    was not an id and request_id is the one made up instead (the caller's is never logged)."""
    if rpc_log.isEnabledFor(logging.INFO):
        fields: dict[str, Any] = {"ts": utc_now(), "event": "rpc", "method": method, "request_id": request_id, "status": code.name}
        if replaced:
            fields["request_id_replaced"] = True
        if patient_id is not None:
            fields["patient_id"] = patient_id
        if pathway_set:
            fields["pathway_set"] = pathway_set
        fields["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        try:
            line = orjson.dumps(fields)
        except orjson.JSONEncodeError:
            line = b""
        _rpc_lines.add(line.decode() if line and line.isascii() else json.dumps(fields, ensure_ascii=True))


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    """A unary call's: the caller's deadline, and at most MAX_DEADLINE from now."""
    left = context.time_remaining()
    return time.monotonic() + (MAX_DEADLINE if left is None else min(left, MAX_DEADLINE))


def stream_end(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """A stream's end: the caller's deadline (time.monotonic), None without one. Not capped here: a
    stream may run until its connection reaches AGE_MS + AGE_GRACE_MS; each of its batches is bounded
    by batch_deadline."""
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


def batch_deadline(end: float | None, now: float) -> float:
    """One batch of a stream's cases: at most MAX_DEADLINE from ``now``, never past the stream's end."""
    cap = now + MAX_DEADLINE
    return cap if end is None or end > cap else end


def _request_id(raw: bytes) -> tuple[str, bool]:
    """The request id of a request the worker did not answer (clean_request_id's)."""
    try:
        rid = ds.EvaluateRequest.FromString(raw).request_id
    except Exception:
        rid = ""
    return clean_request_id(rid)


def _log_internal(method: str, request_id: str, exc: BaseException) -> None:
    """A bug in the front end: one JSON line with the request id the caller got and the traceback."""
    log.error(internal_error_line(method, request_id, exc))


def peer_address(peer: str) -> str:
    """The caller's address without its port ("ipv4:10.0.0.5:53211" -> "ipv4:10.0.0.5")."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class PeerLimit:
    """At most ``most`` DecisionService calls in flight per caller address (a stream counts as one
    call however many cases it carries; its cases are bounded by STREAM_WINDOW). Callers behind one
    proxy or NAT share an address, and so share the limit."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.calls: dict[str, int] = {}

    def enter(self, peer: str) -> bool:
        n = self.calls.get(peer, 0)
        if n >= self.most:
            return False
        self.calls[peer] = n + 1
        return True

    def leave(self, peer: str) -> None:
        n = self.calls[peer] - 1
        if n:
            self.calls[peer] = n
        else:
            del self.calls[peer]


class DecisionServicer:
    def __init__(self, pool: Pool, peers: PeerLimit) -> None:
        self.pool = pool
        self.peers = peers
        self.draining = False
        self._streams: set[asyncio.Queue[Any]] = set()  # each open stream's queue of batches

    def drain(self) -> None:
        """Shutting down: a stream with nothing in flight for DRAIN_IDLE is ended with UNAVAILABLE
        (an idle stream must not hold the shutdown for the whole grace); busy streams go on."""
        self.draining = True
        for q in self._streams:
            q.put_nowait(_DRAIN)

    def cut(self) -> None:
        """The grace is nearly over: every stream still open ends now with UNAVAILABLE."""
        for q in self._streams:
            q.put_nowait(_CUT)

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any], method: str, t0: float) -> str:
        """The caller's address, counted in its PeerLimit; RESOURCE_EXHAUSTED when it is at its limit."""
        peer = peer_address(context.peer())
        if not self.peers.enter(peer):
            log_rpc(method, "", grpc.StatusCode.RESOURCE_EXHAUSTED, t0)
            why = f"more than {self.peers.most} calls in flight from this address; retry when some have finished"
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        return peer

    @staticmethod
    def _outcome(raw: bytes, result: Reply | BaseException, method: str) -> tuple[Reply | None, status.Failure | None, str, bool]:
        """A worker's reply (or the pool's exception) as (reply, failure, request id, whether the caller's id was replaced)."""
        if isinstance(result, Reply):
            rid, replaced = (result.request_id, result.replaced) if result.request_id else _request_id(raw)
            return result, status.from_reply(result, rid), rid, replaced
        rid, replaced = _request_id(raw)
        if isinstance(result, PoolError):
            return None, status.from_exception(result, rid), rid, replaced
        _log_internal(method, rid, result)
        return None, status.internal(rid), rid, replaced

    async def evaluate(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        t0 = time.perf_counter()
        peer = await self._admit(context, "Evaluate", t0)
        try:
            return await self._evaluate(raw, context, t0)
        finally:
            self.peers.leave(peer)

    async def _evaluate(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any], t0: float) -> bytes:
        result: Reply | BaseException
        try:
            result = await self.pool.call("eval", raw, _deadline(context))
        except asyncio.CancelledError:
            rid, replaced = _request_id(raw)
            log_rpc("Evaluate", rid, grpc.StatusCode.CANCELLED, t0, replaced=replaced)
            raise
        except Exception as exc:
            result = exc
        reply, failure, rid, replaced = self._outcome(raw, result, "Evaluate")
        patient = reply.patient_id if reply else None
        pset = reply.pathway_set if reply else 0
        if failure is not None:
            log_rpc("Evaluate", rid, failure.code, t0, patient, pset, replaced)
            rich = failure.rich()
            await context.abort(rich.code, rich.details, rich.trailing_metadata)
        assert reply is not None
        log_rpc("Evaluate", rid, grpc.StatusCode.OK, t0, patient, pset, replaced)
        payload: bytes = reply.payload
        return payload

    def _stream_result(self, raw: bytes, result: Reply | BaseException, t0: float) -> bytes:
        reply, failure, rid, replaced = self._outcome(raw, result, "EvaluateStream")
        patient = reply.patient_id if reply else None
        pset = reply.pathway_set if reply else 0
        if failure is None:
            assert reply is not None
            log_rpc("EvaluateStream", rid, grpc.StatusCode.OK, t0, patient, pset, replaced)
            out: bytes = reply.payload  # an EvaluateResponse: the same wire format as EvaluateStreamResponse
            return out
        log_rpc("EvaluateStream", rid, failure.code, t0, patient, pset, replaced)
        return ds.EvaluateStreamResponse(request_id=rid, error=failure.stream_error()).SerializeToString()

    async def evaluate_stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        t0 = time.perf_counter()
        if self.pool.current is None or self.draining:  # not yet (or no longer) serving: the caller sends elsewhere
            log_rpc("EvaluateStream", "", grpc.StatusCode.UNAVAILABLE, t0)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the service is not serving; retry")
        peer = await self._admit(context, "EvaluateStream", t0)
        try:
            async for out in self._evaluate_stream(requests, context):
                yield out
        finally:
            self.peers.leave(peer)

    async def _evaluate_stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        """Cases go to the workers in batches (one job, one reply): while fewer batches than workers
        are out, the waiting cases go at once; a second batch per worker goes when STREAM_BATCH
        cases are waiting (or the stream ended); otherwise they wait for a batch to come back.
        Results are yielded in request order, each on its own. The stream lasts as long as the caller
        lets it (its deadline, if any); each batch has at most MAX_DEADLINE (batch_deadline)."""
        end = stream_end(context)
        t_open = time.perf_counter()
        loop = asyncio.get_running_loop()
        Batch = tuple[list[bytes], list[float], asyncio.Task[list[Reply | PoolError]]]
        batches: asyncio.Queue[Batch | object | None] = asyncio.Queue()
        waiting: list[bytes] = []
        started: list[float] = []
        size = self.pool.size
        most = 2 * size
        out = 0  # batches at the workers
        held = 0  # cases read and not yet answered (bounded by STREAM_WINDOW)
        ended = closed = False
        space = asyncio.Event()

        def dispatch() -> None:
            nonlocal out, closed
            while waiting and out < most and (out < size or len(waiting) >= STREAM_BATCH or ended):
                raws, t0s = waiting[:STREAM_BATCH], started[:STREAM_BATCH]
                del waiting[:STREAM_BATCH], started[:STREAM_BATCH]
                out += 1
                task = loop.create_task(self.pool.call_batch(raws, batch_deadline(end, time.monotonic())))
                task.add_done_callback(returned)
                batches.put_nowait((raws, t0s, task))
            if ended and not waiting and not closed:
                closed = True
                batches.put_nowait(None)

        def returned(_: asyncio.Task[list[Reply | PoolError]]) -> None:
            nonlocal out
            out -= 1
            dispatch()

        async def feed() -> None:
            nonlocal held, ended
            try:
                async for raw in requests:
                    waiting.append(raw)
                    started.append(time.perf_counter())
                    held += 1
                    dispatch()
                    while held >= STREAM_WINDOW:
                        space.clear()
                        await space.wait()
            except BaseException:
                waiting.clear()
                started.clear()
                raise
            finally:
                ended = True
                dispatch()

        feeder = asyncio.create_task(feed())
        self._streams.add(batches)
        answered = 0
        try:
            while True:  # ends with the caller's stream (or its deadline/cancellation, or the drain)
                if self.draining:
                    try:
                        batch = await asyncio.wait_for(batches.get(), DRAIN_IDLE)
                    except TimeoutError:  # nothing came back for DRAIN_IDLE: idle if nothing is in flight
                        batch = _IDLE
                else:
                    batch = await batches.get()
                if batch is None:
                    break
                if batch is _DRAIN or batch is _IDLE or batch is _CUT:
                    if batch is _CUT or (batch is _IDLE and held == 0):
                        log_rpc("EvaluateStream", "", grpc.StatusCode.UNAVAILABLE, t_open)
                        why = f"server shutting down; {answered} case(s) of this stream were answered, send the rest again"
                        await context.abort(grpc.StatusCode.UNAVAILABLE, why)
                    continue
                raws, t0s, task = cast(Batch, batch)
                results: Sequence[Reply | BaseException]
                try:
                    results = await task
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    results = [exc] * len(raws)
                for raw, t0, result in zip(raws, t0s, results, strict=True):
                    yield self._stream_result(raw, result, t0)
                    held -= 1
                    answered += 1
                    space.set()
            await feeder
        finally:
            self._streams.discard(batches)
            feeder.cancel()
            while not batches.empty():
                b = batches.get_nowait()
                if isinstance(b, tuple):
                    b[2].cancel()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            DECISION,
            {
                "Evaluate": grpc.unary_unary_rpc_method_handler(self.evaluate),
                "EvaluateStream": grpc.stream_stream_rpc_method_handler(self.evaluate_stream),
            },
        )


def _pathway(info: dict[str, str], source: bool = False) -> ps.Pathway:
    return pathway_to_message(info, source)


class PathwayServicer:
    """Requests arrive as bytes and are decoded here, so that an undecodable one is INVALID_ARGUMENT
    (as DecisionService answers it), not UNKNOWN from grpc's deserializer."""

    def __init__(self, pool: Pool, validator: Validator) -> None:
        self.pool = pool
        self.validator = validator

    def _serving(self) -> list[dict[str, str]]:
        return self.pool.current.info if self.pool.current else []

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], failure: status.Failure) -> None:
        rich = failure.rich()
        await context.abort(rich.code, rich.details, rich.trailing_metadata)

    async def _fail(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, rid: str, t0: float, failure: status.Failure
    ) -> NoReturn:
        log_rpc(method, rid, failure.code, t0)
        await self._abort(context, failure)
        raise AssertionError("unreachable")  # abort raises

    async def _decode(self, cls: type[_Msg], raw: bytes, context: grpc.aio.ServicerContext[Any, Any], method: str, t0: float) -> _Msg:
        try:
            return cls.FromString(raw)
        except DecodeError:
            why = f"the request is not a valid carepath.v1.{cls.DESCRIPTOR.name}"
            await self._fail(context, method, "", t0, status.Failure(grpc.StatusCode.INVALID_ARGUMENT, why, (("", why),)))

    async def list_pathways(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        t0 = time.perf_counter()
        await self._decode(ps.ListPathwaysRequest, raw, context, "ListPathways", t0)
        out = ps.ListPathwaysResponse(pathways=[_pathway(i) for i in self._serving()])
        log_rpc("ListPathways", "", grpc.StatusCode.OK, t0)
        return out.SerializeToString()

    async def get_pathway(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        t0 = time.perf_counter()
        request = await self._decode(ps.GetPathwayRequest, raw, context, "GetPathway", t0)
        for info in self._serving():
            if info["id"] == request.id:
                log_rpc("GetPathway", "", grpc.StatusCode.OK, t0)
                return ps.GetPathwayResponse(pathway=_pathway(info, source=True)).SerializeToString()
        known = ", ".join(i["id"] for i in self._serving()) or "none"
        unknown = status.not_found(f"unknown pathway {status.clip(request.id, 64)!r} (loaded: {known})")
        await self._fail(context, "GetPathway", "", t0, unknown)

    async def validate_pathway(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        t0 = time.perf_counter()
        request = await self._decode(ps.ValidatePathwayRequest, raw, context, "ValidatePathway", t0)
        rid = uuid.uuid4().hex[:16]  # ValidatePathwayRequest has none: an internal error's log line is found by this one
        if len(request.file) > MAX_FILE_NAME:
            why = f"must be at most {MAX_FILE_NAME} characters (got {len(request.file)})"
            bad_file = status.Failure(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: file: {why}", (("file", why),))
            await self._fail(context, "ValidatePathway", rid, t0, bad_file)
        size = len(request.source.encode())
        if size > MAX_SOURCE:
            why = f"must be at most {MAX_SOURCE} bytes (got {size})"
            too_big = status.Failure(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: source: {why}", (("source", why),))
            await self._fail(context, "ValidatePathway", rid, t0, too_big)
        gen = self.pool.current
        if gen is None or gen.sources is None:
            await self._fail(context, "ValidatePathway", rid, t0, status.Failure(grpc.StatusCode.UNAVAILABLE, "not serving yet; retry"))
        try:  # in a process of its own, not on an evaluation worker
            result = await self.validator.validate(request.source, request.file or "<source>", gen.sources.dictionary, _deadline(context))
        except Busy as exc:
            await self._fail(context, "ValidatePathway", rid, t0, status.Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry later"))
        except TimedOut:
            await self._fail(context, "ValidatePathway", rid, t0, status.Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"))
        except Failed as exc:
            log.error(
                json.dumps(
                    {
                        "event": "internal_error",
                        "method": "ValidatePathway",
                        "request_id": rid,
                        "error": exc.error,
                        "traceback": exc.traceback,
                    }
                )
            )
            await self._fail(context, "ValidatePathway", rid, t0, status.internal(rid))
        diags = [ps.Diagnostic(file=f, line=ln, col=c, path=p, message=m, text=t) for f, ln, c, p, m, t in result["diagnostics"]]
        resp = ps.ValidatePathwayResponse(valid=not diags, diagnostics=diags)
        if result["pathway"] is not None:
            resp.pathway.CopyFrom(_pathway(result["pathway"]))
        log_rpc("ValidatePathway", rid, grpc.StatusCode.OK, t0)
        return resp.SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            PATHWAY,
            {
                "ListPathways": grpc.unary_unary_rpc_method_handler(self.list_pathways),
                "GetPathway": grpc.unary_unary_rpc_method_handler(self.get_pathway),
                "ValidatePathway": grpc.unary_unary_rpc_method_handler(self.validate_pathway),
            },
        )


@dataclass
class CdsHooksOptions:
    """carepath serve --cds-hooks: the HTTP listener and the CDS Hooks configuration."""

    host: str = "127.0.0.1"
    port: int = 8080
    feedback_dir: str = ".carepath/cds-feedback"
    config: Any = None  # carepath.cds.app.CdsConfig (imported lazily: Starlette only loads with --cds-hooks)
    auth: Any = None  # carepath.cds.auth.CdsAuth: the trusted EHRs (None: no token asked)


class _Http:
    """uvicorn serving the CDS Hooks app in this event loop (its signal handling left to the Service)."""

    def __init__(self, server: Any, task: asyncio.Task[None], store: Any, port: int) -> None:
        self.server, self.task, self.store, self.port = server, task, store, port

    @classmethod
    async def start(
        cls, pool: Pool, opts: CdsHooksOptions, serving: Callable[[], bool] | None = None, audit: AuditLog | None = None
    ) -> _Http:
        import contextlib

        import uvicorn

        from carepath.cds.app import CdsConfig, CdsHooks
        from carepath.cds.feedback import SqliteStore

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:  # the Service handles SIGTERM / SIGINT / SIGHUP
                yield

        store = SqliteStore(opts.feedback_dir)
        sock = socket.create_server((opts.host, opts.port), reuse_port=False)
        if opts.auth is not None and not opts.auth.base_url:  # tokens' aud: this listener's own URL
            host = opts.host if ":" not in opts.host else f"[{opts.host}]"
            opts.auth.base_url = f"http://{host}:{sock.getsockname()[1]}"
        hooks = CdsHooks(pool, store, opts.config or CdsConfig(), opts.auth, serving, audit)
        app = hooks.app()
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", http="auto", loop="none", timeout_graceful_shutdown=None
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                raise OSError("the CDS Hooks HTTP server did not start")
            await asyncio.sleep(0.01)
        closing: Any = _Stores(store, hooks.audited) if hooks.audited is not None else store
        return cls(server, task, closing, sock.getsockname()[1])

    async def stop(self, grace: float) -> None:
        self.server.config.timeout_graceful_shutdown = max(0.1, grace - CUT_BEFORE)
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self.task, grace)
        except TimeoutError:
            self.server.force_exit = True
        self.store.close()


class _Stores:
    """Closes the CDS Hooks feedback store and the audit's reader together."""

    def __init__(self, *stores: Any) -> None:
        self.stores = stores

    def close(self) -> None:
        for s in self.stores:
            s.close()


def _bind_problem(host: str, port: int) -> str:
    try:
        with socket.create_server((host, port)):
            return "gRPC could not bind it (rerun with GRPC_VERBOSITY=debug for its reason)"
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for f in sorted(directory.glob("*.y*ml")):
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((f.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


class Service:
    """The whole server: gRPC, health, reflection, the pool, signals, reload and drain."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 50051,
        pathways: str | None = None,
        workers: int = 1,
        watch: bool = False,
        grace: float = 30.0,
        announce: Callable[[str], None] = print,
        max_per_peer: int = MAX_PER_PEER,
        site: Site | None = None,
        cds_hooks: CdsHooksOptions | None = None,
        tls: TlsFiles | None = None,
        insecure: bool = False,
        reflection: bool = True,
        auth: Verifier | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.host, self.port, self.pathways, self.workers = host, port, pathways, workers
        self.tls, self.insecure, self.reflection, self.auth, self.audit = tls, insecure, reflection, auth, audit
        self.max_per_peer = max_per_peer
        self.watch, self.grace, self.announce = watch, grace, announce
        self.pool = Pool(pathways, workers, site, warm_fhir=cds_hooks is not None)
        self.pool.on_change = self._workers_changed
        self.health: Any = getattr(health, "aio").HealthServicer()  # noqa: B009 (the stubs lack health.aio)
        self.stopping = asyncio.Event()
        self.bound = 0
        self._health_lock = asyncio.Lock()
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._serving: bool | None = None
        self.cds_hooks = cds_hooks
        self.http_bound = 0

    async def _set_health(self) -> None:
        """SERVING while at least one worker of the serving set is alive, else NOT_SERVING (the state
        is read when the update runs, so updates that queue up end in the latest one)."""
        async with self._health_lock:
            serving = self.pool.serving() > 0
            if serving == self._serving:
                return
            self._serving = serving
            st = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", DECISION, PATHWAY):
                await self.health.set(name, st)
            log.warning(json.dumps({"event": "health", "status": "SERVING" if serving else "NOT_SERVING", "workers": self.pool.serving()}))

    def _workers_changed(self) -> None:
        task = asyncio.create_task(self._set_health())
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    def _credentials(self) -> tuple[grpc.ServerCredentials | None, str]:
        """TLS credentials (None: plaintext) and how the listener is described; TlsError when
        they cannot be loaded or plaintext is not allowed on this address."""
        if self.tls is None:
            why = "" if self.insecure else plaintext_refusal(self.host)
            if why:
                raise TlsError(why)
            return None, "plaintext"
        return server_credentials(self.tls), "mutual TLS" if self.tls.client_ca else "TLS"

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """Token authentication (it also names the caller), then the audit trail."""
        out: list[grpc.aio.ServerInterceptor[Any, Any]] = []
        if self.auth or self.audit:
            out.append(Interceptor(self.auth, on_refused=self.audit.refused if self.audit else None))
        if self.audit:
            out.append(AuditInterceptor(self.audit))
        return out

    async def run(self) -> int:
        try:
            creds, transport = self._credentials()
        except TlsError as exc:
            print(f"carepath: {exc}", file=sys.stderr)
            return 2
        server = grpc.aio.server(
            interceptors=self._interceptors(),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
                *connection_options().items(),
            ],
        )
        decisions = DecisionServicer(self.pool, PeerLimit(self.max_per_peer))
        from carepath.service.feedback import FeedbackServicer

        feedback = FeedbackServicer(self.audit)
        server.add_generic_rpc_handlers(
            (decisions.handler(), feedback.handler(), PathwayServicer(self.pool, Validator(self.pool.ctx)).handler())
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (DECISION, PATHWAY, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        if self.reflection:
            reflection.enable_server_reflection(names, server)
        await self._set_health()
        try:
            address = f"{self.host}:{self.port}"
            self.bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        except RuntimeError:  # grpc says only "failed to bind": ask the OS why
            print(f"carepath: cannot listen on {self.host}:{self.port}: {_bind_problem(self.host, self.port)}", file=sys.stderr)
            return 1
        await server.start()
        target = f"{self.host}:{self.bound}"
        self.announce(f"carepath: listening on {target} ({transport}; NOT_SERVING while {self.workers} worker(s) compile the pathways)")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signal, sig)
        watched = self._watched()
        first = _fingerprint(watched)  # before compiling: a change made while loading is caught too
        try:
            gen = await self.pool.start()
        except LoadFailed as exc:
            for e in exc.errors:
                print(e, file=sys.stderr)
            log.error(json.dumps({"event": "load_failed", "errors": len(exc.errors)}))
            await server.stop(0)
            return 1
        await self._set_health()
        http: _Http | None = None
        if self.cds_hooks is not None:
            try:
                serving = lambda: self.pool.serving() > 0 and not self.stopping.is_set()  # noqa: E731
                http = await _Http.start(self.pool, self.cds_hooks, serving, self.audit)
            except OSError as exc:
                print(
                    f"carepath: cannot listen on {self.cds_hooks.host}:{self.cds_hooks.port} for CDS Hooks: {exc.strerror or exc}",
                    file=sys.stderr,
                )
                await server.stop(0)
                await self.pool.close()
                return 1
            self.http_bound = http.port
            self.announce(f"carepath: CDS Hooks on http://{self.cds_hooks.host}:{http.port}/cds-services")
        names_versions = ", ".join(f"{p['id']} {p['version']}" for p in gen.info) or "no pathways"
        self.announce(f"carepath: SERVING {names_versions} on {target} with {self.workers} worker(s)")
        mutual = transport == "mutual TLS"
        tls = "" if creds is None else " --tls-ca CA_FILE" + (" --tls-cert CERT_FILE --tls-key KEY_FILE" if mutual else "")
        self.announce(f"  carepath call --target {target}{tls} CASE_FILE")
        request = "examples/request.json" if Path("examples/request.json").is_file() else "REQUEST_JSON"  # from the repo
        plain = "-plaintext" if creds is None else "-cacert CA_FILE" + (" -cert CERT_FILE -key KEY_FILE" if mutual else "")
        self.announce(f"  grpcurl {plain} -d @ {target} carepath.v1.DecisionService/Evaluate < {request}")
        self.announce(f"  grpcurl {plain} {target} grpc.health.v1.Health/Check")
        tasks = [asyncio.create_task(self._reloader())]
        if self.watch:
            tasks.append(asyncio.create_task(self._watcher(watched, first)))
        await self.stopping.wait()
        log.warning(json.dumps({"event": "draining", "grace_s": self.grace}))
        await self.health.enter_graceful_shutdown()
        # In-flight unary calls finish; streams end with UNAVAILABLE once idle (DRAIN_IDLE), or all at
        # CUT_BEFORE the end of the grace, so the caller knows to resend what was not answered.
        decisions.drain()
        cut = loop.call_later(max(0.0, self.grace - CUT_BEFORE), decisions.cut)
        if http is not None:
            await asyncio.gather(server.stop(self.grace), http.stop(self.grace))
        else:
            await server.stop(self.grace)
        cut.cancel()
        for t in tasks:
            t.cancel()
        await self.pool.close()
        feedback.close()
        if self.audit:
            self.audit.close()
        _rpc_lines.flush()
        log.warning(json.dumps({"event": "stopped"}))
        return 0

    def _signal(self, sig: signal.Signals) -> None:
        log.warning(json.dumps({"event": "signal", "signal": sig.name}))
        if sig == signal.SIGHUP:
            self.pool.request_reload("SIGHUP")
        else:
            self.stopping.set()

    async def _reloader(self) -> None:
        while True:  # until cancelled at shutdown
            why = await self.pool.reload_requests.get()
            while not self.pool.reload_requests.empty():  # coalesce a burst of requests
                self.pool.reload_requests.get_nowait()
            t0 = time.perf_counter()
            try:
                gen = await self.pool.reload()
            except LoadFailed as exc:  # the diagnostics in the event, one JSON line (as every log line)
                log.error(json.dumps({"event": "reload_refused", "trigger": why, "count": len(exc.errors), "errors": exc.errors[:200]}))
                continue
            pathways = [f"{p['id']} {p['version']} {p['sha256'][:12]}" for p in gen.info]
            ms = round((time.perf_counter() - t0) * 1000)
            log.warning(json.dumps({"event": "reloaded", "trigger": why, "pathway_set": gen.number, "pathways": pathways, "ms": ms}))

    def _watched(self) -> Path:
        from carepath.settings import bundled_pathways

        return Path(self.pathways) if self.pathways else bundled_pathways()

    async def _watcher(self, directory: Path, last: tuple[tuple[str, int, int], ...]) -> None:
        while True:  # until cancelled at shutdown; polls once a second
            await asyncio.sleep(1.0)
            if _fingerprint(directory) != last:
                await asyncio.sleep(0.3)  # let an editor finish writing
                last = _fingerprint(directory)
                self.pool.request_reload("watch")


class _JsonLines(logging.Formatter):
    """One JSON object per line, each starting with "ts" (UTC, ISO 8601, milliseconds)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if msg.startswith('{"ts"'):  # stamped where it was made (the batched request lines)
            return msg
        ts = utc_now(record.created)
        if msg.startswith("{") and msg != "{}":
            return f'{{"ts": "{ts}", {msg[1:]}'
        fields = {"ts": ts, "event": "log", "level": record.levelname, "message": msg}
        if record.exc_info:  # the traceback as a field: still one line
            fields["traceback"] = self.formatException(record.exc_info)
        return json.dumps(fields)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    root = logging.getLogger("carepath")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    uv = logging.getLogger("uvicorn")  # the CDS Hooks HTTP server's own messages, as JSON lines too
    uv.handlers[:] = [handler]
    uv.setLevel(logging.WARNING)
    uv.propagate = False


def serve(**kwargs: Any) -> int:
    """Run the service on uvloop where it is installed (not on Windows; CAREPATH_LOOP=asyncio turns it
    off): the front end's work is routing bytes between sockets, and uvloop's transports and callbacks
    cut its CPU per call by about a fifth (bench/bench_grpc.py)."""
    configure_logging()
    service = Service(**kwargs)
    if current().loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(service.run())
    return asyncio.run(service.run())
