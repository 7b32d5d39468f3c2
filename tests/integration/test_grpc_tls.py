"""TLS and mutual TLS end to end: a real `carepath serve` on 127.0.0.1 with certificates made here."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import FIXTURES, ROOT
from grpc_helpers import CARE, SAMPLE, Server, serving, wait_for

from carepath.client import CallError, CarepathClient
from carepath.service import devpki

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    cert: Path
    key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path


def make_pki(d: Path) -> Pki:
    ca = devpki.make_ca()
    server = devpki.issue(ca, "carepath server", ("localhost", "127.0.0.1"))
    client_ca = devpki.make_ca("carepath example client CA")
    client = devpki.issue(client_ca, "ehr-gateway", client=True)
    pki = Pki(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "client-ca.pem", d / "client.pem", d / "client.key")
    devpki.write(pki.ca, ca.cert_pem)
    devpki.write(pki.cert, server.cert_pem)
    devpki.write(pki.key, server.key_pem, private=True)
    devpki.write(pki.client_ca, client_ca.cert_pem)
    devpki.write(pki.client_cert, client.cert_pem)
    devpki.write(pki.client_key, client.key_pem, private=True)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Server]:
    extra = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-client-ca", str(pki.client_ca))
    yield from serving(tmp_path_factory.mktemp("mtls"), FIXTURES, 1, *extra)


def test_mutual_tls_serves_a_client_with_its_certificate(mtls_server: Server, pki: Pki) -> None:
    with CarepathClient(mtls_server.target, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key) as c:
        assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]


def test_mutual_tls_rejects_a_client_without_a_certificate(mtls_server: Server, pki: Pki) -> None:
    with CarepathClient(mtls_server.target, tls_ca=pki.ca, retries=0, timeout=5) as c, pytest.raises(CallError) as info:
        c.evaluate(SAMPLE)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_rejects_a_certificate_from_another_ca(mtls_server: Server, pki: Pki, tmp_path: Path) -> None:
    other = devpki.make_ca("someone else's CA")
    stranger = devpki.issue(other, "stranger", client=True)
    with (
        CarepathClient(mtls_server.target, tls_ca=pki.ca, tls_cert=stranger.cert_pem, tls_key=stranger.key_pem, retries=0, timeout=5) as c,
        pytest.raises(CallError) as info,
    ):
        c.evaluate(SAMPLE)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_client_gets_nothing_from_a_tls_server(mtls_server: Server) -> None:
    with CarepathClient(mtls_server.target, retries=0, timeout=5) as c, pytest.raises(CallError) as info:
        c.evaluate(SAMPLE)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_call_command_over_mutual_tls(mtls_server: Server, pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    path.write_text(json.dumps(SAMPLE))
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    called = subprocess.run([*CARE, "call", "--target", mtls_server.target, *tls, str(path)], capture_output=True, cwd=ROOT)
    assert called.returncode == 0, called.stderr.decode()
    local = subprocess.run([*CARE, "evaluate", "--pathways", str(FIXTURES), str(path)], capture_output=True, check=True, cwd=ROOT)
    assert called.stdout == local.stdout


def test_the_certificate_rotates_without_a_restart(tmp_path: Path) -> None:
    """New connections get the new certificate (here from another CA, so a client trusting only the
    new CA can connect only after the rotation); a connection opened before goes on."""
    pki = make_pki(tmp_path)
    srv = Server(tmp_path, FIXTURES, 1, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    try:
        srv.wait_serving()
        new_ca = devpki.make_ca("carepath example CA 2")
        new = devpki.issue(new_ca, "carepath server 2", ("localhost", "127.0.0.1"))
        with CarepathClient(srv.target, tls_ca=pki.ca) as before:
            assert before.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]
            with CarepathClient(srv.target, tls_ca=new_ca.cert_pem, retries=0, timeout=5) as early, pytest.raises(CallError):
                early.evaluate(SAMPLE)  # not yet: the old certificate is served

            # a key that is not the certificate's (a rotation caught half-way) is refused and the old pair serves on
            devpki.write(pki.key, devpki.key_pem(devpki.signing_key("ES256")), private=True)
            with CarepathClient(srv.target, tls_ca=pki.ca) as during:
                assert during.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]
            wait_for(lambda: srv.events("tls_reload_refused"), 10, "the mismatched key to be refused")
            assert "is not the key of the certificate" in srv.events("tls_reload_refused")[0]["error"]

            devpki.write(pki.cert, new.cert_pem)
            devpki.write(pki.key, new.key_pem, private=True)
            with CarepathClient(srv.target, tls_ca=new_ca.cert_pem) as after:
                assert after.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]
            with CarepathClient(srv.target, tls_ca=pki.ca, retries=0, timeout=5) as stale, pytest.raises(CallError):
                stale.evaluate(SAMPLE)  # a new connection trusting only the old CA: the new certificate is served
            assert before.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]  # the open connection goes on
        assert srv.events("tls_reloaded")
    finally:
        assert srv.stop() == 0


def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CARE, "serve", "--port", "0", "--workers", "1", "--pathways", str(FIXTURES), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_plaintext_on_a_network_address_is_refused() -> None:
    done = _serve_fails("--host", "0.0.0.0")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without TLS" in done.stderr
    assert "--insecure" in done.stderr and "--tls-cert" in done.stderr


def test_insecure_allows_plaintext_on_a_network_address(tmp_path: Path) -> None:
    srv = Server(tmp_path, FIXTURES, 1, "--host", "0.0.0.0", "--insecure")
    try:
        srv.wait_serving()
        port = srv.target.rsplit(":", 1)[1]
        with CarepathClient(f"127.0.0.1:{port}") as c:
            assert c.evaluate(SAMPLE)["patient_id"] == SAMPLE["patient_id"]
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("problem", ["missing", "not-pem", "wrong-key"])
def test_bad_tls_files_are_named(pki: Pki, tmp_path: Path, problem: str) -> None:
    cert, key = pki.cert, pki.key
    if problem == "missing":
        cert = tmp_path / "nope.pem"
    elif problem == "not-pem":
        cert = tmp_path / "junk.pem"
        cert.write_text("hello")
    else:
        key = tmp_path / "other.key"
        devpki.write(key, devpki.key_pem(devpki.signing_key("ES256")))
    t0 = time.monotonic()
    done = _serve_fails("--tls-cert", str(cert), "--tls-key", str(key))
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - t0 < 30
    want = {"missing": f"--tls-cert {cert}: cannot read it", "not-pem": "not PEM", "wrong-key": "is not the key of the certificate"}
    assert want[problem] in done.stderr
    assert "Traceback" not in done.stderr
