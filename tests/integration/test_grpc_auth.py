"""JWT bearer-token authentication end to end: a real `carepath serve --jwks` on 127.0.0.1, tokens
signed here (RS256 and ES256), one test per way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import FIXTURES, ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import CARE, SAMPLE, Server, serving
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from carepath.client import CallError, CarepathClient
from carepath.service import devpki
from carepath.service.auth import EVALUATE, READ, VALIDATE

pytestmark = pytest.mark.timeout(120)

ISS = "https://idp.example.org"
AUD = "carepath"
ALL = f"{EVALUATE} {READ} {VALIDATE}"


@dataclass(frozen=True)
class Keys:
    rsa: devpki.PrivateKey
    ec: devpki.PrivateKey
    jwks: Path

    def rs(self, **kw: Any) -> str:
        return devpki.token(self.rsa, "rsa-1", alg="RS256", **{"issuer": ISS, "audience": AUD, "scope": ALL, **kw})

    def es(self, **kw: Any) -> str:
        return devpki.token(self.ec, "ec-1", alg="ES256", **{"issuer": ISS, "audience": AUD, "scope": ALL, **kw})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("jwks")
    rsa, ec = devpki.signing_key("RS256"), devpki.signing_key("ES256")
    path = d / "jwks.json"
    devpki.write(path, devpki.jwks(devpki.jwk(rsa, "rsa-1", "RS256"), devpki.jwk(ec, "ec-1", "ES256")))
    return Keys(rsa, ec, path)


def auth_args(keys: Keys) -> tuple[str, ...]:
    return ("--jwks", str(keys.jwks), "--jwt-issuer", ISS, "--jwt-issuer", "https://other-idp.example.org", "--jwt-audience", AUD)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("auth"), FIXTURES, 1, *auth_args(keys))


def refused(server: Server, token: str | None, method: str = "evaluate") -> CallError:
    with CarepathClient(server.target, token=token, retries=0, timeout=10) as c, pytest.raises(CallError) as info:
        if method == "evaluate":
            c.evaluate(SAMPLE)
        elif method == "list":
            c.list_pathways()
        elif method == "get":  # the pathway's source
            c.get_pathway("mini_htn")
        elif method == "validate":
            c.validate_pathway("id: x\n")
        else:
            list(c.evaluate_many([SAMPLE]))
    return info.value


def unauthenticated(server: Server, token: str | None, why: str, method: str = "evaluate") -> None:
    err = refused(server, token, method)
    assert err.code == grpc.StatusCode.UNAUTHENTICATED, err
    assert why in err.message


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**kw: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "sub": "ehr", "scope": ALL, "iat": now, "exp": now + 300, "jti": f"j-{time.monotonic_ns()}", **kw}


# ---------------------------------------------------------------- accepted


def test_an_rs256_token_is_accepted(server: Server, keys: Keys) -> None:
    with CarepathClient(server.target, token=keys.rs()) as c:
        assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]


def test_an_es256_token_is_accepted(server: Server, keys: Keys) -> None:
    with CarepathClient(server.target, token=keys.es()) as c:
        assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]


def test_a_token_callable_gives_each_call_a_fresh_token(server: Server, keys: Keys) -> None:
    minted: list[str] = []

    def fresh() -> str:
        minted.append(keys.es())
        return minted[-1]

    with CarepathClient(server.target, token=fresh) as c:
        for _ in range(3):
            assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]
        assert [r.error for r in c.evaluate_many([SAMPLE] * 5)] == [None] * 5
        assert c.list_pathways()[0]["id"] == "mini_htn"
        assert c.validate_pathway("id: x\n")  # diagnostics: the call was let through
    assert len(set(minted)) == 6


def test_call_command_sends_the_token_file(server: Server, keys: Keys, tmp_path: Path) -> None:
    case, tok = tmp_path / "case.json", tmp_path / "token"
    case.write_text(json.dumps(SAMPLE))
    tok.write_text(keys.rs() + "\n")
    called = subprocess.run([*CARE, "call", "--target", server.target, "--token-file", str(tok), str(case)], capture_output=True, cwd=ROOT)
    assert called.returncode == 0, called.stderr.decode()
    assert json.loads(called.stdout)["patient_id"] == SAMPLE["patient_id"]
    again = subprocess.run([*CARE, "call", "--target", server.target, "--token-file", str(tok), str(case)], capture_output=True, cwd=ROOT)
    assert again.returncode != 0
    assert b"UNAUTHENTICATED: token already used" in again.stderr


def test_the_health_check_needs_no_token(server: Server) -> None:
    with grpc.insecure_channel(server.target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def _reflection_list(target: str, token: str | None = None) -> list[str]:
    md = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10, metadata=md)
        return [s.name for r in replies for s in r.list_services_response.service]


def test_reflection_needs_a_valid_token(server: Server, keys: Keys) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _reflection_list(server.target)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "carepath.v1.DecisionService" in _reflection_list(server.target, keys.rs(scope=""))


def test_no_reflection_turns_it_off(tmp_path: Path) -> None:
    srv = Server(tmp_path, FIXTURES, 1, "--no-reflection")
    try:
        srv.wait_serving()
        with pytest.raises(grpc.RpcError) as info:
            _reflection_list(srv.target)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with CarepathClient(srv.target) as c:
            assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]
    finally:
        assert srv.stop() == 0


# ---------------------------------------------------------------- refused: UNAUTHENTICATED


def test_no_token(server: Server) -> None:
    unauthenticated(server, None, "missing bearer token")


def test_no_token_on_a_stream(server: Server) -> None:
    unauthenticated(server, None, "missing bearer token", "stream")


def test_not_a_jwt(server: Server) -> None:
    unauthenticated(server, "hello.world", "not a JWT")


def test_alg_none(server: Server) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
    unauthenticated(server, f"{header}.{b64(json.dumps(claims()).encode())}.", "token algorithm 'none' is not allowed")


def test_algorithm_confusion_hs256_signed_with_the_rsa_public_key(server: Server, keys: Keys) -> None:
    """The classic attack: the server's public key (which anyone may have) used as an HMAC secret."""
    from cryptography.hazmat.primitives import serialization

    public_pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'}).encode())}.{b64(json.dumps(claims()).encode())}"
    sig = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    unauthenticated(server, f"{signing_input}.{b64(sig)}", "token algorithm 'HS256' is not allowed")


def test_algorithm_that_does_not_match_the_key(server: Server, keys: Keys) -> None:
    token = devpki.token(keys.ec, "rsa-1", alg="ES256", issuer=ISS, audience=AUD, scope=ALL)  # an EC signature under the RSA key's kid
    unauthenticated(server, token, "token algorithm ES256 does not match key 'rsa-1'")


def test_unknown_kid(server: Server, keys: Keys) -> None:
    unauthenticated(server, devpki.token(keys.rsa, "rsa-9", issuer=ISS, audience=AUD, scope=ALL), "unknown key (kid 'rsa-9')")


def test_signed_by_another_key(server: Server) -> None:
    stranger = devpki.signing_key("RS256")
    unauthenticated(server, devpki.token(stranger, "rsa-1", issuer=ISS, audience=AUD, scope=ALL), "signature does not verify")


def test_a_token_for_another_audience(server: Server, keys: Keys) -> None:
    unauthenticated(server, keys.rs(audience="billing"), "token is not for this service (aud must be exactly 'carepath')")


def test_an_audience_list_is_not_exact(server: Server, keys: Keys) -> None:
    unauthenticated(server, keys.rs(audience=None, aud=["billing", AUD]), "token is not for this service")


def test_an_issuer_not_allowed(server: Server, keys: Keys) -> None:
    unauthenticated(server, keys.rs(issuer="https://evil.example.org"), "token issuer is not allowed")


def test_a_second_allowed_issuer_is_accepted(server: Server, keys: Keys) -> None:
    with CarepathClient(server.target, token=keys.rs(issuer="https://other-idp.example.org")) as c:
        assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]


def test_expired(server: Server, keys: Keys) -> None:
    unauthenticated(server, keys.rs(now=time.time() - 600, lifetime=300), "token expired")


def test_expired_within_the_leeway_is_accepted(server: Server, keys: Keys) -> None:
    with CarepathClient(server.target, token=keys.rs(now=time.time() - 310, lifetime=300)) as c:
        assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]


def test_issued_in_the_future(server: Server, keys: Keys) -> None:
    unauthenticated(server, keys.rs(now=time.time() + 600), "not valid yet")


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "sub"])
def test_a_required_claim_missing(server: Server, keys: Keys, claim: str) -> None:
    token = keys.rs(**({"subject": None} if claim == "sub" else {claim: None}))
    unauthenticated(server, token, f"token lacks the {claim!r} claim")


def test_a_lifetime_over_a_day(server: Server, keys: Keys) -> None:
    unauthenticated(server, keys.rs(lifetime=2 * 86400), "token lifetime (exp - iat) is over 86400 s")


def test_a_replayed_jti(server: Server, keys: Keys) -> None:
    token = keys.rs()
    with CarepathClient(server.target, token=token) as c:
        assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]
    unauthenticated(server, token, "token already used (replayed jti)")
    unauthenticated(server, keys.es(jti=json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["jti"]), "already used")


def test_a_bearer_scheme_is_required(server: Server, keys: Keys) -> None:
    with grpc.insecure_channel(server.target) as ch:
        fn = ch.unary_unary("/carepath.v1.PathwayService/ListPathways", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            fn(b"", timeout=10, metadata=(("authorization", f"Basic {keys.rs()}"),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not 'Bearer <JWT>'" in (info.value.details() or "")


# ---------------------------------------------------------------- refused: PERMISSION_DENIED


@pytest.mark.parametrize(
    ("scope", "method"),
    [(READ, "evaluate"), (READ, "stream"), (EVALUATE, "list"), (EVALUATE, "get"), (f"{EVALUATE} {READ}", "validate"), ("", "list")],
)
def test_a_missing_scope(server: Server, keys: Keys, scope: str, method: str) -> None:
    err = refused(server, keys.rs(scope=scope), method)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED, err
    assert "the token does not grant 'carepath." in err.message


def test_scp_list_grants_scopes(server: Server, keys: Keys) -> None:
    with CarepathClient(server.target, token=keys.rs(scope=None, scp=[READ])) as c:
        assert c.list_pathways()[0]["id"] == "mini_htn"


def test_refusals_are_logged_without_the_token(server: Server, keys: Keys) -> None:
    token = keys.rs(audience="billing")
    unauthenticated(server, token, "aud must be exactly")
    events = server.events("auth_refused")
    assert any("aud must be exactly" in e["reason"] and e["peer"].startswith("ipv4:127.0.0.1") for e in events)
    assert token.split(".")[2] not in server.log()
    denied = [e for e in events if e["status"] == "PERMISSION_DENIED"]
    assert all(e["sub"] == "ehr-gateway" and e["iss"] == ISS for e in denied)


# ---------------------------------------------------------------- configuration


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [*CARE, "serve", "--port", "0", "--workers", "1", "--pathways", str(FIXTURES), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_a_symmetric_key_in_the_jwks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": b64(b"secret")}]}))
    done = _serve("--jwks", str(path), "--jwt-issuer", ISS, "--jwt-audience", AUD)
    assert done.returncode == 2
    assert "keys[0] (h): holds private or symmetric key material" in done.stderr


def test_auth_options_are_checked(tmp_path: Path, keys: Keys) -> None:
    done = _serve("--jwks", str(keys.jwks), "--jwt-issuer", ISS)
    assert done.returncode == 2 and "--jwt-audience" in done.stderr
    done = _serve("--jwks", str(keys.jwks), "--jwt-audience", AUD)
    assert done.returncode == 2 and "--jwt-issuer" in done.stderr
    done = _serve("--jwks", str(tmp_path / "none.json"), "--jwt-issuer", ISS, "--jwt-audience", AUD)
    assert done.returncode == 2 and "cannot read it" in done.stderr


# ---------------------------------------------------------------- key rotation, and keys from a URL


def _accepted(target: str, token: str) -> bool:
    with CarepathClient(target, token=token, retries=0, timeout=10) as c:
        try:
            c.list_pathways()
        except CallError as exc:
            assert exc.code == grpc.StatusCode.UNAUTHENTICATED, exc
            return False
    return True


def test_the_jwks_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    old, new = devpki.signing_key("ES256"), devpki.signing_key("ES256")
    path = tmp_path / "jwks.json"
    devpki.write(path, devpki.jwks(devpki.jwk(old, "old", "ES256")))
    srv = Server(tmp_path, FIXTURES, 1, "--jwks", str(path), "--jwt-issuer", ISS, "--jwt-audience", AUD)
    try:
        srv.wait_serving()

        def mint(key: devpki.PrivateKey, kid: str) -> str:
            return devpki.token(key, kid, alg="ES256", issuer=ISS, audience=AUD, scope=READ)

        assert _accepted(srv.target, mint(old, "old"))
        assert not _accepted(srv.target, mint(new, "new"))
        devpki.write(path, devpki.jwks(devpki.jwk(new, "new", "ES256")))
        time.sleep(1.2)  # the file is looked at once a second
        assert _accepted(srv.target, mint(new, "new"))
        assert not _accepted(srv.target, mint(old, "old"))  # a key taken out of the JWKS no longer verifies
        assert srv.events("jwks_reloaded")
    finally:
        assert srv.stop() == 0


class _Jwks:
    """A JWKS served over HTTP on 127.0.0.1 (a stand-in identity provider), counting its fetches."""

    def __init__(self, body: str) -> None:
        import http.server
        import threading

        self.body, self.fetches = body, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                data = outer.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_keys_from_a_jwks_url_refetched_for_an_unknown_kid(tmp_path: Path) -> None:
    old, new = devpki.signing_key("RS256"), devpki.signing_key("ES256")
    idp = _Jwks(devpki.jwks(devpki.jwk(old, "old", "RS256")))
    setup = "import carepath.service.auth as a; a.URL_REFETCH = 1.0"
    srv = Server(tmp_path, FIXTURES, 1, "--jwks-url", idp.url, "--jwt-issuer", ISS, "--jwt-audience", AUD, setup=setup)
    try:
        srv.wait_serving()
        assert idp.fetches == 1
        assert _accepted(srv.target, devpki.token(old, "old", issuer=ISS, audience=AUD, scope=READ))
        idp.body = devpki.jwks(devpki.jwk(old, "old", "RS256"), devpki.jwk(new, "new", "ES256"))
        time.sleep(1.1)
        assert _accepted(srv.target, devpki.token(new, "new", alg="ES256", issuer=ISS, audience=AUD, scope=READ))
        fetched = idp.fetches
        assert fetched == 2
        for i in range(20):  # a flood of made-up kids: at most one fetch per URL_REFETCH
            assert not _accepted(srv.target, devpki.token(new, f"made-up-{i}", alg="ES256", issuer=ISS, audience=AUD, scope=READ))
        assert idp.fetches <= fetched + 2
    finally:
        assert srv.stop() == 0
        idp.close()


def test_a_jwks_url_must_be_https(tmp_path: Path) -> None:
    done = _serve("--jwks-url", "http://idp.example.org/jwks.json", "--jwt-issuer", ISS, "--jwt-audience", AUD)
    assert done.returncode == 2 and "must be https://" in done.stderr
    done = _serve("--jwks-url", "http://127.0.0.1:9/jwks.json", "--jwt-issuer", ISS, "--jwt-audience", AUD)
    assert done.returncode == 2 and "cannot fetch it" in done.stderr
