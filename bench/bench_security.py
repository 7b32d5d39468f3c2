#!/usr/bin/env python3
"""What transport security, tokens and the audit trail cost: the same Evaluate load on carepath
servers that differ only in those options, in interleaved rounds (a slow spell of the machine hits
all of them).

Servers (each `carepath serve` on 127.0.0.1 with the same pathways and workers): plain; plain with
--audit; TLS; mutual TLS with bearer tokens; mutual TLS with tokens and --audit. The client is one
grpc.aio channel per server with ``--callers`` concurrent callers sending examples/case.json; with
tokens on, each call carries a token of its own (minted before the round: a token is good for one
call). Printed per server: calls/s (median over rounds), p50, p99, and the server's CPU ms per call
(its process and workers).

    python bench/bench_security.py [--rounds R] [--seconds S] [--callers N] [--workers N] [--pathways DIR] [--postgres [URL]]

``--postgres``: a sixth server, plain with ``--audit`` in PostgreSQL: at URL, or (no URL) in a local
PostgreSQL started for the run with pgserver (a dev dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from bench_grpc import CARE, EVALUATE, HEAD, Cell, requests, tree_cpu  # noqa: E402
from grpc_helpers import SAMPLE, local_postgres  # noqa: E402

from carepath.service import devpki  # noqa: E402


class Target:
    def __init__(
        self, name: str, args: list[str], workers: int, pathways: str, creds: grpc.ChannelCredentials | None, tokens: bool
    ) -> None:
        self.name, self.creds, self.tokens = name, creds, tokens
        cmd = [*CARE, "serve", "--port", "0", "--workers", str(workers), "--pathways", pathways, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        m = re.search(r"listening on (\S+)", self.proc.stdout.readline())
        assert m, f"{name}: carepath did not start"
        self.target = m.group(1)

    def wait(self) -> None:
        assert self.proc.stdout is not None
        for _ in range(600):  # bounded wait for SERVING
            if "SERVING" in self.proc.stdout.readline():
                return
        raise RuntimeError(f"{self.name}: never served")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def drive(t: Target, payload: bytes, callers: int, seconds: float, tokens: list[str]) -> tuple[float, list[float], float]:
    lat: list[float] = []
    channel = grpc.aio.secure_channel(t.target, t.creds) if t.creds else grpc.aio.insecure_channel(t.target)
    async with channel as ch:
        call = ch.unary_unary(EVALUATE, request_serializer=None, response_deserializer=None)

        def md() -> tuple[tuple[str, str], ...] | None:
            return (("authorization", f"Bearer {tokens.pop()}"),) if t.tokens else None

        for _ in range(20):  # warm up
            await call(payload, timeout=10, metadata=md())
        end = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < end and (tokens or not t.tokens):  # bounded by the time budget
                t0 = time.perf_counter()
                await call(payload, timeout=10, metadata=md())
                lat.append(time.perf_counter() - t0)

        cpu0 = tree_cpu(t.proc.pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - t0
        cpu = tree_cpu(t.proc.pid) - cpu0
    return len(lat) / elapsed, lat, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0, help="per round and server (default 2)")
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pathways", default=str(ROOT / "pathways"))
    ap.add_argument("--postgres", nargs="?", const="", metavar="URL", help="add plain+audit in PostgreSQL (no URL: a local one)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="carepath-bench-sec-"))
    d = tmp / "pki"
    devpki.write_example(d)
    creds_tls = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes())
    creds_mtls = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes(), (d / "client.key").read_bytes(), (d / "client.pem").read_bytes())
    tls = ["--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key")]
    mtls = [*tls, "--tls-client-ca", str(d / "client-ca.pem")]
    auth = ["--jwks", str(d / "jwks.json"), "--jwt-issuer", devpki.ISSUER, "--jwt-audience", devpki.AUDIENCE]
    specs = [
        ("plain", [], None, False),
        ("plain+audit", ["--audit", str(tmp / "a1.db")], None, False),
        ("TLS", tls, creds_tls, False),
        ("mTLS+tokens", [*mtls, *auth], creds_mtls, True),
        ("mTLS+tokens+audit", [*mtls, *auth, "--audit", str(tmp / "a2.db")], creds_mtls, True),
    ]
    pg = None
    if args.postgres is not None:
        url = args.postgres
        if not url:
            pg = local_postgres(tempfile.mkdtemp(prefix="cp-pg-"))
            url = str(pg.get_uri())
        specs.insert(2, ("plain+audit(pg)", ["--audit", url], None, False))
    targets = [Target(n, a, args.workers, args.pathways, c, tok) for n, a, c, tok in specs]
    payload = requests([SAMPLE])[0]
    try:
        for t in targets:
            t.wait()
        print(f"workers={args.workers} callers={args.callers} rounds={args.rounds} x {args.seconds:g}s  pathways={args.pathways}")
        print(f"{'server':<18} | {HEAD}")
        cells = {t.name: Cell() for t in targets}
        for _ in range(args.rounds):
            for t in targets:
                n = int(3000 * args.seconds) if t.tokens else 0  # more than a round can use on this machine
                tokens = [devpki.example_token(d) for _ in range(n)]
                cells[t.name].add(asyncio.run(drive(t, payload, args.callers, args.seconds, tokens)))
        base = cells["plain"].rate
        for t in targets:
            c = cells[t.name]
            print(f"{t.name:<18} | {c.row()}  ({c.rate / base:.2f} of plain)")
    finally:
        for t in targets:
            t.stop()
        if pg is not None:
            pg.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
