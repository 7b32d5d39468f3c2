"""Trusting CDS Clients (CDS Hooks 2.0): the EHR signs a JWT for each call and sends it as
``Authorization: Bearer <JWT>``; the service accepts it when

- its ``iss`` is one of the trusted issuers, and it verifies with that issuer's own keys (a JWKS file
  or https URL configured for it: one EHR's key cannot sign for another);
- its header's ``jku``, when present, is that issuer's configured JWKS URL (the allowlist): a token
  naming any other key URL is refused, and no URL a token names is ever fetched;
- ``aud`` is the URL of the endpoint called (``--cds-base-url`` + the path, e.g.
  ``https://cds.example.org/cds-services/carepath-patient-view``), as a string or a one-element list;
- the rest is the gRPC side's verifier (carepath.service.auth.Verifier, the same code): RS256 / ES256
  only (``none`` and HS* refused before any key is looked at), ``kid`` of the issuer's JWKS and of the
  algorithm's key type, ``exp`` / ``iat`` / ``jti`` / ``sub`` required, ``iat`` at most 24 h before
  ``exp``, each ``jti`` good for one call (a replay is refused).

A refusal is 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` and an OperationOutcome saying
why (never the token); too many unexpired tokens at once is 503. Discovery and ``/health`` stay open
(the spec lets discovery be open; a load balancer probes health without a token). CDS Hooks defines no
scopes, so there is no 403: a trusted EHR may call every service.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt

from carepath.service.auth import MAX_TOKEN, AuthError, Caller, ConfigError, Verifier

log = logging.getLogger("carepath.service")


@dataclass(frozen=True)
class Refused(Exception):
    """An HTTP refusal: the status (401, or 503 when the token-id store is full) and why."""

    status: int
    message: str
    issuer: str | None = None


def parse_trusted(text: str) -> tuple[str, Path | str]:
    """``ISS=JWKS`` (``--cds-jwt-issuer``): the issuer and its JWKS, a file (Path) or an http(s) URL (str)."""
    iss, sep, jwks = text.partition("=")
    if not sep or not iss or not jwks:
        raise ConfigError(f"--cds-jwt-issuer {text!r}: expected ISSUER=JWKS (a JWKS file or its https URL)")
    return iss, (jwks if jwks.startswith(("http://", "https://")) else Path(jwks))


class CdsAuth:
    """The trusted issuers, each with its own Verifier (its keys and its replay store)."""

    def __init__(self, trusted: Sequence[tuple[str, Path | str]], base_url: str) -> None:
        if not trusted:
            raise ConfigError("CDS Hooks authentication needs at least one --cds-jwt-issuer ISSUER=JWKS")
        self.base_url = base_url.rstrip("/")
        self.verifiers: dict[str, Verifier] = {}
        self.jku: dict[str, str | None] = {}
        for iss, jwks in trusted:
            if iss in self.verifiers:
                raise ConfigError(f"--cds-jwt-issuer {iss}: given more than once")
            self.verifiers[iss] = Verifier(jwks, [iss], "cds-hooks")  # the aud is given per call: the endpoint's URL
            self.jku[iss] = jwks if isinstance(jwks, str) else None

    async def check(self, authorization: str | None, path: str) -> Caller:
        """The verified caller of a call to ``path`` (e.g. "/cds-services/x"); Refused saying why not."""
        if authorization is None:
            raise Refused(401, "missing bearer token (send 'Authorization: Bearer <JWT>' signed by a trusted EHR, per CDS Hooks 2.0)")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "authorization is not 'Bearer <JWT>'")
        if len(token) > MAX_TOKEN:
            raise Refused(401, f"bearer token longer than {MAX_TOKEN} characters")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Refused(401, "bearer token is not a JWT") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss not in self.verifiers:
            raise Refused(401, "token issuer is not trusted" if iss is not None else "token lacks the 'iss' claim")
        verifier = self.verifiers[iss]
        jku = header.get("jku")
        if jku is not None and jku != self.jku[iss]:
            raise Refused(401, "token jku is not the JWKS URL configured for its issuer", iss)
        await verifier.refresh_keys(token)
        try:
            claims = verifier.verify(token, audience=self.base_url + path, aud_list=True)
        except AuthError as exc:
            status = 503 if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED else 401
            raise Refused(status, exc.message, iss) from None
        return Caller(claims["sub"], claims["iss"], peer="", jti=claims["jti"])


def log_refusal(method: str, peer: str, exc: Refused) -> None:
    event = {"event": "auth_refused", "method": method, "status": exc.status, "reason": exc.message, "peer": peer}
    if exc.issuer:
        event["iss"] = exc.issuer
    log.warning(json.dumps(event))


__all__ = ["CdsAuth", "Refused", "log_refusal", "parse_trusted"]
