"""The README's Deploying example, command by command: scripts/dev-certs, `carepath serve` with mutual
TLS, tokens and the audit trail on 0.0.0.0, `carepath call` with a token from the script, `carepath
audit verify` and `export`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import FIXTURES, ROOT
from grpc_helpers import CARE, SAMPLE, Server

from carepath.client import CallError, CarepathClient

pytestmark = pytest.mark.timeout(180)


def test_the_deploying_example(tmp_path: Path) -> None:
    env = dict(os.environ, CAREPATH_PYTHON=sys.executable)
    certs = tmp_path / "dev-certs"

    def script(*args: str) -> str:
        done = subprocess.run(
            [str(ROOT / "scripts" / "dev-certs"), *args], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
        )
        return done.stdout

    script(str(certs))
    assert {p.name for p in certs.iterdir()} >= {"ca.pem", "server.pem", "server.key", "client.pem", "client.key", "jwks.json", "audit.key"}
    assert oct((certs / "server.key").stat().st_mode & 0o777) == "0o600"
    audit = tmp_path / "audit.db"
    serve = ["--host", "0.0.0.0", "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
    serve += ["--tls-client-ca", str(certs / "client-ca.pem"), "--jwks", str(certs / "jwks.json")]
    serve += ["--jwt-issuer", "https://idp.example.org", "--jwt-audience", "carepath"]
    serve += ["--audit", str(audit), "--audit-key", str(certs / "audit.key"), "--no-reflection"]
    srv = Server(tmp_path, FIXTURES, 1, *serve)
    try:
        srv.wait_serving()
        target = "localhost:" + srv.target.rsplit(":", 1)[1]
        (tmp_path / "token").write_text(script("--token", str(certs)))
        case = tmp_path / "case.json"
        case.write_text(json.dumps(SAMPLE))
        tls = ["--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "client.key")]
        called = subprocess.run(
            [*CARE, "call", "--target", target, *tls, "--token-file", str(tmp_path / "token"), str(case)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout)["patient_id"] == SAMPLE["patient_id"]
        # a token with only the read scope cannot evaluate
        read_only = script("--token", "--scope", "carepath.read", str(certs)).strip()
        with (
            CarepathClient(
                target, token=read_only, retries=0, tls_ca=certs / "ca.pem", tls_cert=certs / "client.pem", tls_key=certs / "client.key"
            ) as c,
            pytest.raises(CallError) as info,
        ):
            c.evaluate(SAMPLE)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        assert srv.stop() == 0
    verified = subprocess.run([*CARE, "audit", "verify", str(audit)], capture_output=True, text=True, cwd=ROOT)
    assert verified.returncode == 0 and "2 records, chain intact" in verified.stdout, verified.stdout + verified.stderr
    out = subprocess.run(
        [*CARE, "audit", "export", str(audit), "--since", "2026-01-01"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    recs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["action"], r["outcome"]) for r in recs] == [("Evaluate", "OK"), ("Evaluate", "PERMISSION_DENIED")]
    assert recs[0]["certificate"] and "ehr-gateway" in recs[0]["certificate"] and recs[0]["subject"] == "ehr-gateway"
    assert recs[0]["patient"].startswith("hmac-sha256:")
