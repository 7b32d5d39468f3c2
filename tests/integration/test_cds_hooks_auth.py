"""CDS Hooks 2.0 "Trusting CDS Clients" and the HTTP health endpoint, over real HTTP on loopback: a real
`carepath serve --cds-hooks --cds-jwt-issuer ISS=JWKS` in a subprocess, tokens signed here (RS256 and
ES256) as an EHR signs them, one test per way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FIXTURES, ROOT
from grpc_helpers import CARE
from test_cds_hooks import CdsServer, hook_request, patient_id, resources_of, split, synthea_bundle

from carepath.service import devpki

pytestmark = pytest.mark.timeout(180)

EHR = "https://ehr.example.org"  # trusted, with its own JWKS file
OTHER = "https://other-ehr.example.org"  # trusted, with its own (different) JWKS file
STRANGER = "https://stranger.example.org"  # not trusted
SERVICE = "/cds-services/carepath-patient-view"


@dataclass(frozen=True)
class Keys:
    rsa: devpki.PrivateKey
    ec: devpki.PrivateKey
    other: devpki.PrivateKey
    jwks: Path
    other_jwks: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("jwks")
    rsa, ec, other = devpki.signing_key("RS256"), devpki.signing_key("ES256"), devpki.signing_key("ES256")
    devpki.write(d / "ehr.json", devpki.jwks(devpki.jwk(rsa, "ehr-rsa", "RS256"), devpki.jwk(ec, "ehr-ec", "ES256")))
    devpki.write(d / "other.json", devpki.jwks(devpki.jwk(other, "other-ec", "ES256")))
    return Keys(rsa, ec, other, d / "ehr.json", d / "other.json")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[CdsServer]:
    trusted = ("--cds-jwt-issuer", f"{EHR}={keys.jwks}", "--cds-jwt-issuer", f"{OTHER}={keys.other_jwks}")
    s = CdsServer(tmp_path_factory.mktemp("cds-auth"), ROOT / "pathways", *trusted)
    yield s
    assert s.stop() == 0, s.log()
    assert "Traceback" not in s.log()


@pytest.fixture(scope="module")
def http(server: CdsServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def request_body() -> dict[str, Any]:
    bundle = synthea_bundle("Elsy_Bechtelar")
    return hook_request("patient-view", patient_id(bundle), split(resources_of(bundle)))


def token(server: CdsServer, keys: Keys, path: str = SERVICE, alg: str = "ES256", **claims: Any) -> str:
    """A token as the trusted EHR signs it for a call to ``path`` (claims override or, as None, drop)."""
    key, kid = (keys.ec, "ehr-ec") if alg == "ES256" else (keys.rsa, "ehr-rsa")
    headers = claims.pop("headers", {})
    now = int(time.time())
    body = {"iss": EHR, "aud": server.base + path, "sub": "ehr-client-id", "iat": now, "exp": now + 300, "jti": os.urandom(8).hex()}
    body = {k: v for k, v in {**body, **claims}.items() if v is not None}
    import jwt

    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **headers})


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


def refused(r: httpx.Response, why: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "security"
    assert why in body["issue"][0]["details"]["text"], body
    assert "Traceback" not in r.text


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------ accepted


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_a_token_of_a_trusted_ehr_is_accepted(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any, alg: str) -> None:
    r = http.post(SERVICE, json=request_body, headers=bearer(token(server, keys, alg=alg)))
    assert r.status_code == 200, r.text
    assert r.json()["cards"]


def test_aud_as_a_one_element_list(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    r = http.post(SERVICE, json=request_body, headers=bearer(token(server, keys, aud=[server.base + SERVICE])))
    assert r.status_code == 200, r.text
    r = http.post(SERVICE, json=request_body, headers=bearer(token(server, keys, aud=[server.base + SERVICE, "https://elsewhere"])))
    refused(r, "not for this service")


def test_discovery_and_health_stay_open(http: httpx.Client) -> None:
    r = http.get("/cds-services")
    assert r.status_code == 200 and r.json()["services"]
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "SERVING"


def test_feedback_needs_a_token_for_its_own_url(http: httpx.Client, server: CdsServer, keys: Keys) -> None:
    url = SERVICE + "/feedback"
    refused(http.post(url, json={"feedback": []}), "missing bearer token")
    refused(http.post(url, json={"feedback": []}, headers=bearer(token(server, keys))), "not for this service")
    r = http.post(url, json={"feedback": [{"card": "x"}]}, headers=bearer(token(server, keys, path=url)))
    assert r.status_code == 400, r.text  # let through: the body is what is wrong


# ------------------------------------------------------------------ refused: one test per failure


def test_missing_token(http: httpx.Client, request_body: Any) -> None:
    refused(http.post(SERVICE, json=request_body), "missing bearer token")
    refused(http.post(SERVICE, json=request_body, headers={"Authorization": "Basic dXNlcjpwdw=="}), "not 'Bearer <JWT>'")
    refused(http.post(SERVICE, json=request_body, headers=bearer("not-a-jwt")), "not a JWT")


def test_wrong_aud(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    for aud in (server.base + "/cds-services/carepath-order-sign", server.base + "/cds-services", "carepath"):
        refused(http.post(SERVICE, json=request_body, headers=bearer(token(server, keys, aud=aud))), "not for this service")


def test_expired(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    old = int(time.time()) - 3600
    refused(http.post(SERVICE, json=request_body, headers=bearer(token(server, keys, iat=old, exp=old + 300))), "expired")


def test_alg_none_and_hs256_with_the_public_key(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    now = int(time.time())
    claims = {"iss": EHR, "aud": server.base + SERVICE, "sub": "x", "iat": now, "exp": now + 300, "jti": "alg-none"}
    unsigned = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "ehr-ec"}).encode()) + "." + b64(json.dumps(claims).encode()) + "."
    refused(http.post(SERVICE, json=request_body, headers=bearer(unsigned)), "algorithm 'none' is not allowed")
    # algorithm confusion: HS256 keyed with the RSA public key the JWKS publishes
    from cryptography.hazmat.primitives import serialization

    public = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "ehr-rsa"}).encode())
    body = b64(json.dumps(claims | {"jti": "hs256"}).encode())
    sig = b64(hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest())
    refused(http.post(SERVICE, json=request_body, headers=bearer(f"{head}.{body}.{sig}")), "algorithm 'HS256' is not allowed")


def test_unknown_iss(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    refused(http.post(SERVICE, json=request_body, headers=bearer(token(server, keys, iss=STRANGER))), "issuer is not trusted")
    refused(http.post(SERVICE, json=request_body, headers=bearer(token(server, keys, iss=None))), "lacks the 'iss' claim")


def test_one_ehrs_key_cannot_sign_for_another(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    """OTHER is trusted too, but its key is not in EHR's JWKS: a token claiming iss EHR signed by it fails."""
    import jwt

    now = int(time.time())
    claims = {"iss": EHR, "aud": server.base + SERVICE, "sub": "x", "iat": now, "exp": now + 300, "jti": os.urandom(8).hex()}
    forged = jwt.encode(claims, keys.other, algorithm="ES256", headers={"kid": "other-ec"})
    refused(http.post(SERVICE, json=request_body, headers=bearer(forged)), "unknown key")
    forged = jwt.encode(claims, keys.other, algorithm="ES256", headers={"kid": "ehr-ec"})
    refused(http.post(SERVICE, json=request_body, headers=bearer(forged)), "signature does not verify")
    own = jwt.encode(claims | {"iss": OTHER}, keys.other, algorithm="ES256", headers={"kid": "other-ec"})
    assert http.post(SERVICE, json=request_body, headers=bearer(own)).status_code == 200


def test_replayed_jti(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    t = token(server, keys)
    assert http.post(SERVICE, json=request_body, headers=bearer(t)).status_code == 200
    refused(http.post(SERVICE, json=request_body, headers=bearer(t)), "replayed jti")


def test_an_unknown_kid_that_is_not_ascii(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    """The reason names the kid; the WWW-Authenticate header (Latin-1) still carries it, as ASCII."""
    import jwt

    now = int(time.time())
    claims = {"iss": EHR, "aud": server.base + SERVICE, "sub": "x", "iat": now, "exp": now + 300, "jti": os.urandom(8).hex()}
    t = jwt.encode(claims, keys.ec, algorithm="ES256", headers={"kid": 'clé "中"'})
    r = http.post(SERVICE, json=request_body, headers=bearer(t))
    refused(r, "unknown key")
    assert "中" in r.json()["issue"][0]["details"]["text"]


def test_jku_not_on_the_allowlist(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    t = token(server, keys, headers={"jku": "https://attacker.example.org/jwks.json"})
    refused(http.post(SERVICE, json=request_body, headers=bearer(t)), "jku is not the JWKS URL configured")


def test_missing_claims(http: httpx.Client, server: CdsServer, keys: Keys, request_body: Any) -> None:
    for claim in ("jti", "sub", "exp", "iat"):
        drop: dict[str, Any] = {claim: None}
        refused(http.post(SERVICE, json=request_body, headers=bearer(token(server, keys, **drop))), f"lacks the {claim!r} claim")


def test_refusals_are_logged_without_the_token(server: CdsServer, keys: Keys, http: httpx.Client, request_body: Any) -> None:
    t = token(server, keys, iss=STRANGER)
    http.post(SERVICE, json=request_body, headers=bearer(t))
    events = [e for e in server.events("auth_refused") if e.get("reason") == "token issuer is not trusted"]
    assert events and events[-1]["status"] == 401 and events[-1]["method"] == f"POST {SERVICE}"
    assert t not in server.log()


# ------------------------------------------------------------------ configuration


def test_non_loopback_without_ehr_tokens_is_refused(tmp_path: Path) -> None:
    base = [*CARE, "serve", "--host", "0.0.0.0", "--insecure", "--port", "0", "--cds-hooks", "--http-port", "0"]
    r = subprocess.run(base, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "--cds-jwt-issuer" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([*base[:-4], "--cds-base-url", "https://x"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "--cds-base-url" in r.stderr, r.stderr
    r = subprocess.run([*base, "--cds-jwt-issuer", "no-equals-sign"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "expected ISSUER=JWKS" in r.stderr, r.stderr
    r = subprocess.run(
        [*base, "--cds-jwt-issuer", f"{EHR}={tmp_path / 'absent.json'}"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert r.returncode == 2 and "cannot read it" in r.stderr, r.stderr


# ------------------------------------------------------------------ health follows the workers


def test_http_health_follows_the_worker_pool(tmp_path: Path) -> None:
    """GET /health is 200 SERVING with a live worker, 503 NOT_SERVING while none is (the worker killed,
    until the pool has replaced it), as gRPC health says."""
    s = CdsServer(tmp_path, FIXTURES)
    try:
        with httpx.Client(base_url=s.base, timeout=10) as c:
            r = c.get("/health")
            assert r.status_code == 200 and r.json() == {"status": "SERVING", "workers": 1}
            pid = s.events("worker_started")[-1]["pid"]
            os.kill(pid, signal.SIGKILL)
            seen: list[int] = []
            end = time.monotonic() + 60
            while time.monotonic() < end and not (503 in seen and seen[-1] == 200):
                r = c.get("/health")
                seen.append(r.status_code)
                if r.status_code == 503:
                    assert r.json()["status"] == "NOT_SERVING" and r.json()["workers"] == 0
                time.sleep(0.005)
            assert 503 in seen and seen[-1] == 200, seen[-20:]
            assert s.events("worker_replaced")
            health = [(e["status"], e["workers"]) for e in s.events("health")]
            assert ("NOT_SERVING", 0) in health
    finally:
        assert s.stop() == 0, s.log()


def test_the_audit_trail_names_the_verified_ehr(tmp_path: Path, keys: Keys, request_body: Any) -> None:
    """With tokens and --audit, a hook call's record names the token's subject and issuer and the peer (a review
    found them dropped: every CDS record was 'anonymous')."""
    import sqlite3

    audit = tmp_path / "audit.db"
    s = CdsServer(tmp_path, ROOT / "pathways", "--cds-jwt-issuer", f"{EHR}={keys.jwks}", "--audit", str(audit))
    try:
        with httpx.Client(base_url=s.base, timeout=60) as c:
            r = c.post(SERVICE, json=request_body, headers=bearer(token(s, keys)))
            assert r.status_code == 200, r.text
    finally:
        assert s.stop() == 0, s.log()
    with sqlite3.connect(audit) as db:
        rows = db.execute("SELECT subject, issuer, peer FROM audit WHERE action = 'CdsHooks'").fetchall()
    assert len(rows) == 1
    subject, issuer, peer = rows[0]
    assert (subject, issuer) == ("ehr-client-id", EHR)
    assert peer.startswith("ipv4:127.0.0.1:"), peer
