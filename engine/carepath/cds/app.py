"""The CDS Hooks 2.0 HTTP front end (Starlette on uvicorn), on the gRPC service's worker pool.

Thin handlers: validate (carepath.cds.request), complete the prefetch from the EHR's FHIR server when
allowed (carepath.cds.fetch), send the job to a worker (which maps, evaluates and writes the cards:
carepath.cds.respond), record the card ids issued, answer. Every error is JSON: a FHIR OperationOutcome
naming the field for a bad request (400), 404 for an unknown service or card, 412 for prefetch data
that could not be had, 503 while no worker serves; an unexpected error is 500 with a request id
(the traceback goes to the log, never to the caller).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carepath.cds import fetch
from carepath.cds.auth import CdsAuth, Refused, log_refusal
from carepath.cds.cards import HOOKS, SERVICE_IDS
from carepath.cds.feedback import FeedbackStore
from carepath.cds.request import RequestError, parse_feedback, parse_hook_request
from carepath.service.auth import Caller
from carepath.service.pool import DeadlineExceeded, Pool, PoolError, Reply
from carepath.service.worker import CASE_ERROR, DEADLINE, OK, utc_now

log = logging.getLogger("carepath.service")
http_log = logging.getLogger("carepath.rpc")
MAX_BODY = 16 * 1024 * 1024  # a request with its prefetch (FHIR input is at most 64 MiB; a hook call is smaller)
CALL_DEADLINE = 10.0  # seconds a worker may take for one call
HOOK_BY_ID = {v: k for k, v in SERVICE_IDS.items()}


@dataclass
class CdsConfig:
    """What the CDS Hooks front end is configured with (carepath serve --cds-hooks ...)."""

    setting: str = "community"
    setting_source: str = "default"
    as_of: date | None = None  # --cds-as-of: a fixed date (replays, tests); else the request's extension, else today
    fetch_deadline: float = 5.0  # seconds to fetch what prefetch lacks


def outcome(status: int, text: str, field: str | None = None, code: str = "invalid") -> Response:
    issue: dict[str, Any] = {"severity": "error", "code": code, "details": {"text": text}}
    if field:
        issue["expression"] = [field]
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return Response(orjson.dumps(body), status_code=status, media_type="application/fhir+json")


def _peer(request: Request) -> str:
    if not request.client:
        return ""
    host = request.client.host
    return f"ipv6:[{host}]:{request.client.port}" if ":" in host else f"ipv4:{host}:{request.client.port}"


def _caller(request: Request) -> Caller:
    """Who called, for the audit trail: the verified token's subject and issuer (set by _admit) and the peer."""
    verified: Caller | None = getattr(request.state, "caller", None)
    peer = _peer(request)
    return Caller(peer=peer) if verified is None else dataclasses.replace(verified, peer=peer)


class CdsHooks:
    def __init__(
        self,
        pool: Pool,
        store: FeedbackStore,
        config: CdsConfig,
        auth: CdsAuth | None = None,
        serving: Callable[[], bool] | None = None,
        audit: Any = None,
    ) -> None:
        """``auth``: the trusted EHRs (None: no token asked, loopback only); ``serving``: whether the
        service answers calls (default: a worker of the serving set is alive), for GET /health;
        ``audit``: the server's AuditLog (serve --audit): calls and card feedback are recorded in it
        (carepath.cds.audited)."""
        self.pool = pool
        self.store = store
        self.audited: Any = None
        if audit is not None:
            from carepath.cds.audited import CdsAudit

            self.audited = CdsAudit(audit)
        self.config = config
        self.auth = auth
        self.serving = serving or (lambda: pool.serving() > 0)
        self.client: httpx.AsyncClient | None = None
        self._discovery: tuple[int, bytes, dict[str, dict[str, str]]] | None = None

    # -- plumbing

    def _log(self, method: str, status: int, t0: float, rid: str, patient: str | None = None) -> None:
        if http_log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {"ts": utc_now(), "event": "http", "method": method, "request_id": rid, "status": status}
            if patient is not None:
                fields["patient_id"] = patient
            fields["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            http_log.info(json.dumps(fields))

    async def _json(self, request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY:
            raise RequestError("$", f"the request is larger than {MAX_BODY} bytes", status=413)
        chunks: list[bytes] = []
        size_read = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size_read += len(chunk)
            if size_read > MAX_BODY:
                raise RequestError("$", f"the request is larger than {MAX_BODY} bytes", status=413)
        body = b"".join(chunks)
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype:
            raise RequestError("$", "the request must be JSON (Content-Type: application/json)", status=415)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError("$", f"the request body is not valid JSON ({exc.msg} at position {exc.pos})") from None

    async def _admit(self, request: Request, method: str, t0: float, rid: str) -> Response | None:
        """None when the call may go on (no authentication configured, or a good token), else the 401."""
        if self.auth is None:
            return None
        try:
            request.state.caller = await self.auth.check(request.headers.get("authorization"), request.url.path)
        except Refused as exc:
            peer = f"{request.client.host}:{request.client.port}" if request.client else ""
            log_refusal(method, peer, exc)
            self._log(method, exc.status, t0, rid)
            response = outcome(exc.status, exc.message, code="security" if exc.status == 401 else "throttled")
            if exc.status == 401:
                why = exc.message.encode("ascii", "replace").decode().replace('"', "'")  # headers are Latin-1; a kid may not be
                response.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{why}"'
            return response
        return None

    async def _services(self) -> tuple[bytes, dict[str, dict[str, str]]]:
        """The discovery document of the serving pathway set (asked of a worker once per set) and each
        service's prefetch templates."""
        gen = self.pool.current
        number = gen.number if gen is not None else 0
        if self._discovery is None or self._discovery[0] != number:
            reply = await self.pool.call("cds_discovery", None, time.monotonic() + CALL_DEADLINE)
            doc = orjson.loads(reply.payload)
            templates = {s["id"]: s.get("prefetch", {}) for s in doc["services"]}
            self._discovery = (reply.pathway_set or number, reply.payload, templates)
        return self._discovery[1], self._discovery[2]

    # -- endpoints

    async def discovery(self, request: Request) -> Response:
        t0 = time.perf_counter()
        body, _ = await self._services()
        self._log("GET /cds-services", 200, t0, "")
        return Response(body, media_type="application/json")

    async def hook(self, request: Request) -> Response:
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        service_id = request.path_params["service_id"]
        hook = HOOK_BY_ID.get(service_id)
        if hook is None:
            self._log(f"POST /cds-services/{service_id[:64]}", 404, t0, rid)
            return outcome(404, f"no CDS service {service_id[:64]!r}; GET /cds-services lists them", code="not-found")
        refused = await self._admit(request, f"POST /cds-services/{service_id}", t0, rid)
        if refused is not None:
            return refused
        try:
            req = parse_hook_request(await self._json(request), hook)
        except RequestError as exc:
            self._log(f"POST /cds-services/{service_id}", exc.status, t0, rid)
            return outcome(exc.status, exc.message, exc.field)
        _, templates = await self._services()
        prefetch = req.prefetch
        missing = [k for k in templates[service_id] if k not in prefetch]
        if missing:
            if req.fhir_server is None or req.fhir_auth is None:
                self._log(f"POST /cds-services/{service_id}", 412, t0, rid, req.patient_id)
                return outcome(
                    412,
                    f"prefetch lacks {', '.join(missing)} and no fhirServer with fhirAuthorization was given to fetch them",
                    f"prefetch.{missing[0]}",
                    code="incomplete",
                )
            assert self.client is not None
            try:
                prefetch = await fetch.complete(
                    self.client, prefetch, templates[service_id], req.patient_id, req.fhir_server, req.fhir_auth, self.config.fetch_deadline
                )
            except fetch.FetchError as exc:
                self._log(f"POST /cds-services/{service_id}", 412, t0, rid, req.patient_id)
                return outcome(412, exc.message, f"prefetch.{exc.key}", code="incomplete")
        as_of = self.config.as_of or req.as_of or date.today()
        job = {
            "request_id": rid,
            "service_id": service_id,
            "hook": hook,
            "patient_id": req.patient_id,
            "prefetch": orjson.dumps(prefetch),  # JSON bytes to the worker: cheaper than pickling the nested dicts
            "draft_orders": req.draft_orders,
            "as_of": as_of.isoformat(),
            "setting": self.config.setting,
        }
        try:
            reply: Reply = await self.pool.call("cds", job, time.monotonic() + CALL_DEADLINE)
        except DeadlineExceeded:
            self._log(f"POST /cds-services/{service_id}", 503, t0, rid, req.patient_id)
            return outcome(503, f"no answer within {CALL_DEADLINE:g} s; request id {rid}", code="timeout")
        except PoolError as exc:
            self._log(f"POST /cds-services/{service_id}", 503, t0, rid, req.patient_id)
            return outcome(503, f"{exc}; request id {rid}", code="transient")
        if reply.status == CASE_ERROR:
            field, message = reply.payload[0]
            self._log(f"POST /cds-services/{service_id}", 400, t0, rid, req.patient_id)
            return outcome(400, f"the prefetch data make no case: {field}: {message}" if field else message, "prefetch")
        if reply.status == DEADLINE:
            self._log(f"POST /cds-services/{service_id}", 503, t0, rid, req.patient_id)
            return outcome(503, f"no answer within {CALL_DEADLINE:g} s; request id {rid}", code="timeout")
        if reply.status != OK:
            self._log(f"POST /cds-services/{service_id}", 500, t0, rid, req.patient_id)
            return outcome(500, f"internal error; request id {rid}", code="exception")
        body, card_ids = reply.payload
        if self.audited is not None:
            from carepath.service.audit import WITHHELD, AuditError

            try:
                await self.audited.hook(service_id, rid, req.patient_id, body, _caller(request))
            except AuditError:
                self._log(f"POST /cds-services/{service_id}", 503, t0, rid, req.patient_id)
                return outcome(503, f"{WITHHELD}; request id {rid}", code="transient")
        self.store.issued(service_id, ((c, req.patient_id) for c in card_ids))
        self._log(f"POST /cds-services/{service_id}", 200, t0, rid, req.patient_id)
        return Response(body, media_type="application/json")

    async def feedback(self, request: Request) -> Response:
        t0 = time.perf_counter()
        service_id = request.path_params["service_id"]
        method = f"POST /cds-services/{service_id[:64]}/feedback"
        if service_id not in HOOK_BY_ID:
            self._log(method, 404, t0, "")
            return outcome(404, f"no CDS service {service_id[:64]!r}", code="not-found")
        refused = await self._admit(request, method, t0, "")
        if refused is not None:
            return refused
        try:
            items = parse_feedback(await self._json(request))
        except RequestError as exc:
            self._log(method, exc.status, t0, "")
            return outcome(exc.status, exc.message, exc.field)
        for i, item in enumerate(items):
            if not self.store.was_issued(service_id, item.card):
                self._log(method, 404, t0, "")
                return outcome(404, f"card {item.card[:64]!r} was not issued by {service_id}", f"feedback[{i}].card", code="not-found")
        if self.audited is not None:
            from carepath.service.audit import AuditError

            try:
                for item in items:
                    await self.audited.feedback(service_id, item.item, _caller(request))
            except AuditError:
                self._log(method, 503, t0, "")
                return outcome(503, "the audit trail could not record this feedback; send it again later", code="transient")
        added = sum(self.store.add(service_id, item.item) for item in items)
        self._log(method, 200, t0, "")
        return Response(orjson.dumps({"received": len(items), "new": added}), media_type="application/json")

    async def health(self, request: Request) -> Response:
        """200 SERVING while a worker of the serving set is alive, else 503 NOT_SERVING: what gRPC health
        says, for HTTP load balancers (open: no token)."""
        ok = self.serving()
        status = "SERVING" if ok else "NOT_SERVING"
        body = {"status": status, "workers": self.pool.serving()}
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")

    # -- the application

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            async with httpx.AsyncClient(timeout=self.config.fetch_deadline, follow_redirects=False) as client:
                self.client = client
                yield
            self.client = None

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            return outcome(exc.status_code, str(exc.detail), code="not-found" if exc.status_code == 404 else "invalid")

        async def server_error(request: Request, exc: Exception) -> Response:
            rid = uuid.uuid4().hex[:16]
            log.error(
                json.dumps(
                    {
                        "event": "internal_error",
                        "method": f"{request.method} {request.url.path[:200]}",
                        "request_id": rid,
                        "error": repr(exc)[:1000],
                    }
                ),
                exc_info=exc,
            )
            return outcome(500, f"internal error; request id {rid}", code="exception")

        async def guarded(handler: Any, request: Request) -> Response:
            try:
                response: Response = await handler(request)
                return response
            except PoolError as exc:
                return outcome(503, str(exc), code="transient")

        async def discovery(request: Request) -> Response:
            return await guarded(self.discovery, request)

        async def hook(request: Request) -> Response:
            return await guarded(self.hook, request)

        async def feedback(request: Request) -> Response:
            return await guarded(self.feedback, request)

        async def health(request: Request) -> Response:
            return await self.health(request)

        routes = [
            Route("/health", health, methods=["GET"]),
            Route("/cds-services", discovery, methods=["GET"]),
            Route("/cds-services/{service_id}", hook, methods=["POST"]),
            Route("/cds-services/{service_id}/feedback", feedback, methods=["POST"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: server_error})


__all__ = ["HOOKS", "CdsConfig", "CdsHooks", "outcome"]
