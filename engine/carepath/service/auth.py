"""Bearer-token authentication and per-RPC scopes for `carepath serve --jwks F`: a grpc.aio server
interceptor over PyJWT (no JOSE of our own).

A call carries ``authorization: Bearer <JWT>``. The token is accepted when

- its header names an allowed algorithm (RS256 or ES256: asymmetric only; ``none`` and HS* are refused
  before any key is looked at, which is what defeats algorithm confusion) and a ``kid`` of the JWKS,
  whose key is of that algorithm's type (an RSA key verifies RS256 only, a P-256 key ES256 only);
- the signature verifies, ``iss`` is one of the allowed issuers, ``aud`` is exactly the audience (a
  string, not a list that happens to contain it), and ``exp``, ``iat``, ``jti`` and ``sub`` are present,
  with LEEWAY seconds of clock skew allowed, ``iat`` not in the future and at most MAX_LIFETIME before
  ``exp``;
- its ``jti`` has not been seen before from that issuer (a token is good for one call: the ids are kept
  until the token expires, at most MAX_JTIS of them);
- it grants the method's scope (``scope``, space-separated, or ``scp``, a list): SCOPES.

Otherwise the call ends with UNAUTHENTICATED (no, bad or replayed token) or PERMISSION_DENIED (a
good token without the scope), before the servicer runs, and an ``auth_refused`` line is logged (the
reason, the method, the peer, and the token's ``sub``/``iss`` when it verified; never the token).
The health service stays open (load balancers probe it without a token); reflection needs a valid
token (no scope), or is turned off with ``--no-reflection``.

The JWKS file is re-read when it changes (checked at most once a second), so keys rotate without a
restart. A JWKS URL (``--jwks-url``; https, or http to loopback) is the only URL ever fetched (a token's
``jku``/``x5u`` are ignored, redirects not followed): at start, every URL_TTL seconds, and for an
unknown ``kid`` at most once per URL_REFETCH seconds, in a thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt

log = logging.getLogger("carepath.service")

ALGORITHMS = ("RS256", "ES256")  # asymmetric only; the only ones a key may be used with
KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
LEEWAY = 30  # seconds of clock skew allowed on exp, iat and nbf
MAX_LIFETIME = 24 * 3600  # seconds from iat to exp at most (bounds how long a jti is remembered)
MAX_JTIS = 200_000  # token ids remembered at once; beyond that new tokens are refused until some expire
MAX_TOKEN = 8 * 1024  # characters of a bearer token
MAX_JWKS = 1024 * 1024  # bytes of the JWKS file
RECHECK = 1.0  # seconds between looks at the JWKS file's modification time
URL_TTL = 600.0  # seconds the keys of a JWKS URL are used before they are fetched again
URL_REFETCH = 30.0  # seconds at least between fetches for tokens naming an unknown kid
FETCH_TIMEOUT = 5.0  # seconds for a JWKS URL to answer

EVALUATE, READ, VALIDATE, RELOAD = "carepath.evaluate", "carepath.read", "carepath.validate", "carepath.reload"
FEEDBACK = "carepath.feedback"
SCOPES = {
    "/carepath.v1.DecisionService/Evaluate": EVALUATE,
    "/carepath.v1.DecisionService/EvaluateStream": EVALUATE,
    "/carepath.v1.DecisionService/RecordFeedback": FEEDBACK,
    "/carepath.v1.PathwayService/ListPathways": READ,
    "/carepath.v1.PathwayService/GetPathway": READ,
    "/carepath.v1.PathwayService/ValidatePathway": VALIDATE,
    # RELOAD: for a reload RPC; today reloading is SIGHUP or --watch, on the server's host only
}
OPEN = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, caller: Caller | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.caller = caller


class ConfigError(Exception):
    """The JWKS or the auth options cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: the verified token's subject and issuer (None without token authentication),
    the client certificate's subject (mutual TLS) and the peer address."""

    subject: str | None = None
    issuer: str | None = None
    scopes: frozenset[str] = frozenset()
    certificate: str | None = None
    peer: str = ""
    jti: str | None = None


CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("carepath_caller", default=None)


# ------------------------------------------------------------------------------------------------ keys
def load_jwks(path: Path) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS file by kid: RSA (RS256) and P-256 (ES256) public keys only."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JWKS + 1)
    except OSError as exc:
        raise ConfigError(f"--jwks {path}: cannot read it: {exc.strerror or exc}") from None
    return parse_jwks(raw, f"--jwks {path}")


def fetch_jwks(url: str) -> dict[str, jwt.PyJWK]:
    """The keys of the JWKS at ``url`` (FETCH_TIMEOUT; redirects are not followed: the URL given is the
    only one ever fetched, and a token's jku or x5u header is never looked at)."""
    import urllib.error
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "application/json"}), timeout=FETCH_TIMEOUT) as resp:
            raw = resp.read(MAX_JWKS + 1)
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"--jwks-url {url}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--jwks-url {url}: cannot fetch it: {getattr(exc, 'reason', None) or exc}") from None
    return parse_jwks(raw, f"--jwks-url {url}")


def check_jwks_url(url: str) -> None:
    """Only https, or http to a loopback address (a local identity provider, tests)."""
    from urllib.parse import urlsplit

    from carepath.service.tls import is_loopback

    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    raise ConfigError(f"--jwks-url {url}: must be https:// (http:// only to a loopback address): the keys decide who gets in")


def parse_jwks(raw: bytes, what: str) -> dict[str, jwt.PyJWK]:
    if len(raw) > MAX_JWKS:
        raise ConfigError(f"{what}: larger than {MAX_JWKS} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ConfigError(f'{what}: not a JWKS (expected {{"keys": [...]}})')
    keys: dict[str, jwt.PyJWK] = {}
    for i, jwk in enumerate(doc["keys"]):
        where = f"{what}: keys[{i}]"
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            raise ConfigError(f"{where}: every key needs a kid (tokens name their key by it)")
        kid = jwk["kid"]
        if any(k in jwk for k in ("d", "p", "q", "k")):
            raise ConfigError(f"{where} ({kid}): holds private or symmetric key material; the JWKS must hold public keys only")
        kty, alg = jwk.get("kty"), jwk.get("alg")
        want = {"RSA": "RS256", "EC": "ES256"}.get(str(kty))
        if want is None:
            raise ConfigError(f"{where} ({kid}): key type {kty!r} is not allowed (RSA for RS256, EC P-256 for ES256)")
        if alg is not None and alg != want:
            raise ConfigError(f"{where} ({kid}): alg {alg!r} is not allowed for a {kty} key (only {want})")
        if kty == "EC" and jwk.get("crv") != "P-256":
            raise ConfigError(f"{where} ({kid}): curve {jwk.get('crv')!r} is not allowed (P-256 for ES256)")
        if kid in keys:
            raise ConfigError(f"{where}: kid {kid!r} appears more than once")
        try:
            keys[kid] = jwt.PyJWK({**jwk, "alg": want})
        except jwt.PyJWTError as exc:
            raise ConfigError(f"{where} ({kid}): not a usable key ({exc})") from None
    if not keys:
        raise ConfigError(f"{what}: holds no keys")
    return keys


class _Keys:
    """The JWKS file's keys, re-read when the file changes (looked at every RECHECK seconds, or at once
    for an unknown kid, at most once per RECHECK). A file broken meanwhile keeps the last good keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys = load_jwks(path)
        self.stamp = self._stamp()
        self.looked = time.monotonic()

    def _stamp(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (-1, -1)
        return (st.st_mtime_ns, st.st_size)

    def get(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        if now - self.looked >= RECHECK:  # an unknown kid waits for the next look too: a flood of them costs one stat a second
            self.looked = now
            stamp = self._stamp()
            if stamp != self.stamp:
                self.stamp = stamp
                try:
                    self.keys = load_jwks(self.path)
                except ConfigError as exc:
                    log.error(json.dumps({"event": "jwks_reload_refused", "error": str(exc)}))
                else:
                    log.warning(json.dumps({"event": "jwks_reloaded", "keys": sorted(self.keys)}))
        return self.keys.get(kid)


class _UrlKeys:
    """The keys of a JWKS URL: fetched at start (failing the start), again every URL_TTL seconds and
    when a token names an unknown kid, at most once per URL_REFETCH seconds (a flood of made-up kids
    costs one fetch per URL_REFETCH); fetched in a thread, never on the event loop. A failed fetch is
    logged and the last keys stay."""

    def __init__(self, url: str) -> None:
        check_jwks_url(url)
        self.url = url
        self.keys = fetch_jwks(url)
        self.fetched = time.monotonic()

    def stale(self, kid: str) -> bool:
        age = time.monotonic() - self.fetched
        return age >= URL_TTL or (kid not in self.keys and age >= URL_REFETCH)

    def refresh(self) -> None:
        self.fetched = time.monotonic()  # before the fetch: concurrent callers do not fetch too
        try:
            keys = fetch_jwks(self.url)
        except ConfigError as exc:
            log.error(json.dumps({"event": "jwks_fetch_failed", "error": str(exc)}))
            return
        if set(keys) != set(self.keys):
            log.warning(json.dumps({"event": "jwks_reloaded", "keys": sorted(keys)}))
        self.keys = keys

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self.keys.get(kid)


# -------------------------------------------------------------------------------------------- verifier
@dataclass
class _Seen:
    """Token ids seen and not yet expired: (issuer, jti) -> expiry, with a heap to forget them in order."""

    most: int = MAX_JTIS
    ids: dict[tuple[str, str], float] = field(default_factory=dict)
    heap: list[tuple[float, tuple[str, str]]] = field(default_factory=list)

    def add(self, key: tuple[str, str], until: float, now: float) -> bool:
        """False when ``key`` was seen already (a replay)."""
        while self.heap and self.heap[0][0] < now:
            _, old = heapq.heappop(self.heap)
            self.ids.pop(old, None)
        if key in self.ids:
            return False
        if len(self.ids) >= self.most:
            raise AuthError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many unexpired tokens in use; retry later")
        self.ids[key] = until
        heapq.heappush(self.heap, (until, key))
        return True


class Verifier:
    def __init__(self, jwks: Path | str, issuers: Sequence[str], audience: str, leeway: float = LEEWAY) -> None:
        """``jwks``: a JWKS file (a Path) or URL (a str)."""
        if not issuers:
            raise ConfigError("token authentication needs at least one --jwt-issuer (the issuers whose tokens are accepted)")
        if not audience:
            raise ConfigError("token authentication needs --jwt-audience (the exact aud a token must carry)")
        self.keys: _Keys | _UrlKeys = _Keys(jwks) if isinstance(jwks, Path) else _UrlKeys(jwks)
        self.issuers = tuple(issuers)
        self.audience = audience
        self.leeway = leeway
        self.seen = _Seen()

    async def refresh_keys(self, token: str) -> None:
        """For a JWKS URL: fetch the keys again (in a thread) when they are old or the token names an
        unknown kid (rate-limited)."""
        if not isinstance(self.keys, _UrlKeys):
            return
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return
        if isinstance(kid, str) and self.keys.stale(kid):
            await asyncio.to_thread(self.keys.refresh)

    def verify(self, token: str, audience: str | None = None, aud_list: bool = False) -> dict[str, Any]:
        """The token's claims; AuthError (UNAUTHENTICATED) saying what is wrong with it. ``audience``:
        the aud this call needs instead of the configured one (CDS Hooks: the URL of the endpoint
        called); ``aud_list``: also accept aud as a list holding exactly that one value (CDS Hooks 2.0
        allows both forms)."""
        bad = grpc.StatusCode.UNAUTHENTICATED
        audience = audience or self.audience
        if len(token) > MAX_TOKEN:
            raise AuthError(bad, f"bearer token longer than {MAX_TOKEN} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(bad, "bearer token is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError(bad, f"token algorithm {str(alg)[:16]!r} is not allowed (allowed: {', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError(bad, "token header has no kid (which key signed it)")
        key = self.keys.get(kid)
        if key is None:
            raise AuthError(bad, f"token signed by an unknown key (kid {kid[:64]!r})")
        if key.algorithm_name != alg or key.key_type != KEY_TYPES[alg]:
            raise AuthError(bad, f"token algorithm {alg} does not match key {kid[:64]!r} ({key.algorithm_name})")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=self.issuers,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "jti", "iss", "aud", "sub"], "strict_aud": not aud_list},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(bad, "token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError(bad, f"token is not for this service (aud must be exactly {audience!r})") from None
        except jwt.InvalidIssuerError:
            raise AuthError(bad, "token issuer is not allowed") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(bad, f"token lacks the {exc.claim!r} claim") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(bad, "token is not valid yet (iat or nbf in the future)") from None
        except jwt.InvalidSignatureError:
            raise AuthError(bad, "token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthError(bad, f"invalid token: {exc}") from None
        exp, iat, jti, sub = claims["exp"], claims["iat"], claims["jti"], claims["sub"]
        if aud_list and isinstance(claims["aud"], list) and len(claims["aud"]) != 1:
            raise AuthError(bad, f"token is not for this service (aud must be {audience!r} or [{audience!r}])")
        if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
            raise AuthError(bad, "token jti must be a string of 1 to 256 characters")
        if not isinstance(sub, str) or not sub:
            raise AuthError(bad, "token sub must be a non-empty string")
        if exp - iat > MAX_LIFETIME:
            raise AuthError(bad, f"token lifetime (exp - iat) is over {MAX_LIFETIME} s")
        if not self.seen.add((claims["iss"], jti), float(exp) + self.leeway, time.time()):
            raise AuthError(bad, "token already used (replayed jti); get a new one for each call")
        return claims


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """The scopes a token grants: ``scope`` (space-separated, RFC 8693) or ``scp`` (a list or a string)."""
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()


# ----------------------------------------------------------------------------------------- interceptor
def bearer(metadata: Any) -> str | None:
    """The bearer token of a call's metadata: None without an authorization entry, "" for another scheme."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def certificate_subject(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The verified client certificate's subject (mutual TLS), e.g. "CN=ehr-gateway,O=...", else None."""
    try:
        auth = context.auth_context()
    except Exception:
        return None
    values = list(auth.get("x509_subject") or auth.get("x509_common_name") or ())
    return values[0].decode(errors="replace") if values else None


def _peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    try:
        return str(context.peer())
    except Exception:
        return ""


class Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks the token (when a verifier is given) and records the Caller of every intercepted call in
    CALLER for the servicers (e.g. the audit trail). Without a verifier it only records the caller."""

    def __init__(self, verifier: Verifier | None, on_refused: Callable[[str, Caller, AuthError], Awaitable[None]] | None = None) -> None:
        self.verifier = verifier
        self.on_refused = on_refused

    def check(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        caller = Caller(certificate=certificate_subject(context), peer=_peer(context))
        if self.verifier is None or method in OPEN:
            return caller
        token = bearer(context.invocation_metadata())
        if not token:
            why = (
                "missing bearer token (send metadata 'authorization: Bearer <JWT>')"
                if token is None
                else "authorization is not 'Bearer <JWT>'"
            )
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, why, caller)
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            exc.caller = caller
            raise
        caller = Caller(claims["sub"], claims["iss"], scopes_of(claims), caller.certificate, caller.peer, claims["jti"])
        need = SCOPES.get(method)
        if need is not None and need not in caller.scopes:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, f"the token does not grant {need!r}, which {method} needs", caller)
        return caller

    async def _admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        try:
            if self.verifier is not None and method not in OPEN:
                token = bearer(context.invocation_metadata())
                if token:
                    await self.verifier.refresh_keys(token)
            return self.check(method, context)
        except AuthError as exc:
            who = exc.caller or Caller(peer=_peer(context))
            event = {"event": "auth_refused", "method": method, "status": exc.code.name, "reason": exc.message, "peer": who.peer}
            if who.subject:
                event.update(sub=who.subject, iss=who.issuer or "")
            if who.certificate:
                event["certificate"] = who.certificate
            log.warning(json.dumps(event))
            if self.on_refused is not None:  # e.g. the audit trail's record of the refusal
                try:
                    await self.on_refused(method, who, exc)
                except Exception as failed:  # the call is refused all the same
                    log.error(json.dumps({"event": "auth_refusal_not_recorded", "error": str(failed)}))
            await context.abort(exc.code, exc.message)
            raise AssertionError("unreachable") from None  # abort raises

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in OPEN:
            return handler  # type: ignore[no-any-return]
        admit = self._admit
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                CALLER.set(await admit(method, context))
                return await inner_uu(request, context)

            return handler._replace(unary_unary=unary_unary)  # type: ignore[no-any-return]
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                CALLER.set(await admit(method, context))
                async for item in _iterate(inner_us(request, context)):
                    yield item

            return handler._replace(unary_stream=unary_stream)  # type: ignore[no-any-return]
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                CALLER.set(await admit(method, context))
                return await inner_su(requests, context)

            return handler._replace(stream_unary=stream_unary)  # type: ignore[no-any-return]
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            CALLER.set(await admit(method, context))
            async for item in _iterate(inner_ss(requests, context)):
                yield item

        return handler._replace(stream_stream=stream_stream)  # type: ignore[no-any-return]


async def _iterate(result: Any) -> AsyncIterator[Any]:
    """A streaming handler's responses, whether it is an async generator or a coroutine that writes
    with context.write (grpc.aio allows both; the health service's Watch is the latter)."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result
