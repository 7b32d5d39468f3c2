#!/usr/bin/env python3
"""Soak and fault test: a real `carepath serve` with TLS, bearer tokens and the audit trail on, under
mixed unary and stream load for ``--minutes``, reloaded (SIGHUP) every ``--reload-every`` seconds and
with one evaluation worker killed with SIGKILL every ``--kill-every`` seconds.

Load: ``--callers`` threads each calling Evaluate in a loop (the typed client, one fresh ES256 token
per attempt: the server refuses a replayed jti), and ``--streams`` threads each sending batches of 32
cases over EvaluateStream. The client retries UNAVAILABLE (what a killed worker's in-flight call gets)
within the call's deadline, and resumes a stream on UNAVAILABLE; every attempt's status is counted by
a channel interceptor, so the retried UNAVAILABLEs are reported beside the outcomes.

Reported (and, with ``--json``, written as one JSON object): calls answered; failed (a call or a
stream case that ended in an error the caller saw, by status); hung (DEADLINE_EXCEEDED: nothing came
within the deadline); the UNAVAILABLE attempts the client retried; reloads and kills done and the
workers restarted (from the server's log); p50/p99 latency of unary calls per minute; the RSS of
the server (front end, and front end with workers) sampled every 2 s, and its growth from minute 2
(for a run shorter than 6 minutes: from a third of the run) to the end; the audit chain verified at
the end, and the request ids received compared with the audit records (none missing).

Exit status 0 when nothing failed or hung (UNAVAILABLE that the client retried is not a failure),
RSS grew less than ``--max-rss-growth`` percent and no received response lacks its audit record.

    python bench/soak.py [--minutes M | --seconds S] [--callers N] [--streams N] [--workers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from grpc_helpers import CARE, FIXTURES, varied_case  # noqa: E402

from carepath.service import devpki  # noqa: E402
from carepath.service.audit import verify  # noqa: E402
from carepath_client import CallError, CarepathClient  # noqa: E402
from carepath_client.errors import CarepathError  # noqa: E402

TIMEOUT = 10.0  # each call's deadline, retries included
STREAM_CASES = 32
TOKEN_LIFETIME = 30  # seconds


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: int = 0
    stream_ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    hung: int = 0
    attempts: Counter[str] = field(default_factory=Counter)  # every attempt's status (the retried ones too)
    latencies: dict[int, list[float]] = field(default_factory=dict)  # minute -> unary latencies (ms)
    received: set[str] = field(default_factory=set)  # request ids answered

    def done(self, minute: int, ms: float, rid: str) -> None:
        with self.lock:
            self.ok += 1
            self.latencies.setdefault(minute, []).append(ms)
            self.received.add(rid)

    def error(self, exc: BaseException) -> None:
        code = exc.code.name if isinstance(exc, CallError) else type(exc).__name__
        with self.lock:
            if code == "DEADLINE_EXCEEDED":
                self.hung += 1
            else:
                self.failed[code] += 1


class Counting(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    """Counts each unary attempt's status (the client's retries included) and each failed stream."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        out = continuation(details, request)
        code = out.code()
        with self.tally.lock:
            self.tally.attempts[code.name if code is not None else "OK"] += 1
        return out

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        out = continuation(details, requests)
        tally = self.tally

        class Watched:
            def __iter__(self) -> Any:
                return self

            def __next__(self) -> Any:
                try:
                    return next(out)
                except grpc.RpcError as exc:
                    with tally.lock:
                        tally.attempts["stream " + exc.code().name] += 1
                    raise

        return Watched()


class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.keys = tmp / "keys"
        devpki.write_example(self.keys)
        self.audit = tmp / "audit.db"
        self.log_path = tmp / "serve.log"
        self.tally = Tally()
        self.stop = threading.Event()
        self.t0 = 0.0
        self.rss: list[tuple[float, int, int]] = []  # (elapsed s, front end, front end + workers)
        self.reloads = self.kills = 0
        self.idp_key = self._idp_key()

    def _idp_key(self) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return load_pem_private_key((self.keys / "idp.key").read_bytes(), password=None)

    def token(self) -> str:
        """A fresh single-use token that expires in TOKEN_LIFETIME s: the server keeps each token id it
        has seen until the token expires (replay protection), so that memory plateaus after
        TOKEN_LIFETIME plus the 30 s leeway; RSS growth is measured after that."""
        return devpki.token(
            self.idp_key,
            "example-1",
            alg="ES256",
            issuer=devpki.ISSUER,
            audience=devpki.AUDIENCE,
            scope=devpki.ALL_SCOPES,
            lifetime=TOKEN_LIFETIME,
        )

    def start(self) -> None:
        k = self.keys
        cmd = [
            *CARE,
            "serve",
            "--port",
            "0",
            "--workers",
            str(self.args.workers),
            "--pathways",
            str(self.args.pathways),
            "--tls-cert",
            str(k / "server.pem"),
            "--tls-key",
            str(k / "server.key"),
            "--jwks",
            str(k / "jwks.json"),
            "--jwt-issuer",
            devpki.ISSUER,
            "--jwt-audience",
            devpki.AUDIENCE,
            "--audit",
            str(self.audit),
            "--audit-key",
            str(k / "audit.key"),
        ]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        m = re.search(r"listening on (\S+)", self.proc.stdout.readline())
        if not m:
            raise SystemExit(f"soak: carepath did not start:\n{self.log_path.read_text()}")
        self.target = m.group(1)
        while "SERVING" not in (line := self.proc.stdout.readline()):
            if not line:
                raise SystemExit(f"soak: carepath never served:\n{self.log_path.read_text()}")
        threading.Thread(target=lambda: self.proc.stdout and self.proc.stdout.read(), daemon=True).start()

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{name}"' in line:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == name:
                    out.append(ev)
        return out

    def client(self) -> CarepathClient:
        creds = grpc.ssl_channel_credentials((self.keys / "ca.pem").read_bytes())
        ch = grpc.intercept_channel(
            grpc.secure_channel(self.target, creds, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]),
            Counting(self.tally),
        )
        return CarepathClient(self.target, channel=ch, timeout=TIMEOUT, token=self.token)

    def minute(self) -> int:
        """The minute a call ended in (a call ending after the run's last whole minute counts in it)."""
        last = max(0, int(self.args.seconds // 60) - 1)
        return min(int((time.monotonic() - self.t0) // 60), last)

    def unary(self, n: int) -> None:
        i = n * 1_000_000
        with self.client() as c:
            while not self.stop.is_set():
                i += 1
                rid = f"soak-{i}"
                t = time.perf_counter()
                try:
                    c.evaluate(varied_case(i % 997), request_id=rid)
                except CarepathError as exc:
                    self.tally.error(exc)
                    continue
                self.tally.done(self.minute(), (time.perf_counter() - t) * 1000, rid)

    def streams(self, n: int) -> None:
        i = 0
        with self.client() as c:
            while not self.stop.is_set():
                cases = [varied_case((n * 7919 + i + k) % 997) for k in range(STREAM_CASES)]
                i += STREAM_CASES
                try:
                    for r in c.evaluate_many(cases, timeout=60):
                        if r.error is not None:
                            self.tally.error(r.error)
                        else:
                            with self.tally.lock:
                                self.tally.stream_ok += 1
                except CarepathError as exc:
                    self.tally.error(exc)

    def tree(self) -> tuple[int, int]:
        try:
            front = psutil.Process(self.proc.pid)
            rss = front.memory_info().rss
            total = rss
            for ch in front.children(recursive=True):
                try:
                    total += ch.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            return rss, total
        except psutil.NoSuchProcess:
            return 0, 0

    def workers(self) -> list[int]:
        """The live workers of the newest pathway set (an older set's are being retired by a reload)."""
        started = self.events("worker_started")
        newest = max((int(ev["pathway_set"]) for ev in started), default=0)
        alive = []
        for ev in started:
            if int(ev["pathway_set"]) != newest:
                continue
            pid = int(ev["pid"])
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    def chaos(self) -> None:
        """RSS every 2 s; a worker SIGKILLed every kill_every s; SIGHUP every reload_every s (after
        the kill when both are due)."""
        next_reload, next_kill = self.args.reload_every, self.args.kill_every
        while not self.stop.wait(2.0):
            now = time.monotonic() - self.t0
            self.rss.append((now, *self.tree()))
            if now >= next_kill:
                pids = self.workers()
                if pids:
                    os.kill(random.choice(pids), signal.SIGKILL)
                    self.kills += 1
                next_kill += self.args.kill_every
            if now >= next_reload:
                self.proc.send_signal(signal.SIGHUP)
                self.reloads += 1
                next_reload += self.args.reload_every

    def run(self) -> dict[str, Any]:
        self.start()
        try:
            return self._run()
        finally:
            self.stop.set()
            if self.proc.poll() is None:  # interrupted: the server goes too
                self.proc.kill()
                self.proc.wait(30)

    def _run(self) -> dict[str, Any]:
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.unary, args=(n,)) for n in range(self.args.callers)]
        threads += [threading.Thread(target=self.streams, args=(n,)) for n in range(self.args.streams)]
        threads.append(threading.Thread(target=self.chaos))
        for t in threads:
            t.start()
        end = self.t0 + self.args.seconds
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        self.stop.set()
        for t in threads:
            t.join(TIMEOUT + 60)
        hung_threads = sum(t.is_alive() for t in threads)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        self._log.close()
        return self.report(hung_threads, code)

    def report(self, hung_threads: int, exit_code: int) -> dict[str, Any]:
        t = self.tally
        per_minute = {}
        for m, lat in sorted(t.latencies.items()):
            q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
            per_minute[m + 1] = {"calls": len(lat), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1)}
        base_at = 120.0 if self.args.seconds >= 360 else self.args.seconds / 3
        base = [s for s in self.rss if s[0] >= base_at][:3] or self.rss[:3]
        last = self.rss[-3:]

        def growth(i: int) -> float:
            b = statistics.median(s[i] for s in base)
            e = statistics.median(s[i] for s in last)
            return round(100 * (e - b) / b, 2) if b else 0.0

        v = verify(self.audit)
        with sqlite3.connect(self.audit) as db:
            recorded = {r[0] for r in db.execute("SELECT request_id FROM audit WHERE action = 'Evaluate' AND outcome = 'OK'")}
        missing = len(t.received - recorded)
        return {
            "seconds": self.args.seconds,
            "callers": self.args.callers,
            "streams": self.args.streams,
            "workers": self.args.workers,
            "unary_ok": t.ok,
            "stream_cases_ok": t.stream_ok,
            "failed": dict(t.failed),
            "hung": t.hung + hung_threads,
            "attempts": dict(t.attempts),
            "unavailable_retried": sum(n for k, n in t.attempts.items() if "UNAVAILABLE" in k),
            "reloads": self.reloads,
            "reloaded": len(self.events("reloaded")),
            "kills": self.kills,
            "workers_died": len(self.events("worker_died")),
            "workers_replaced": len(self.events("worker_replaced")),
            "per_minute": per_minute,
            "rss_baseline_at_s": round(base[0][0], 1) if base else None,
            "rss_front_mb": [round(self.rss[0][1] / 2**20, 1), round(self.rss[-1][1] / 2**20, 1)] if self.rss else [],
            "rss_total_mb": [round(self.rss[0][2] / 2**20, 1), round(self.rss[-1][2] / 2**20, 1)] if self.rss else [],
            "rss_growth_front_pct": growth(1),
            "rss_growth_total_pct": growth(2),
            "audit_records": v.records,
            "audit_chain": v.problem or "intact",
            "received_without_audit_record": missing,
            "server_exit": exit_code,
        }


def passed(r: dict[str, Any], max_growth: float) -> list[str]:
    problems = []
    if r["failed"]:
        problems.append(f"failed calls: {r['failed']}")
    if r["hung"]:
        problems.append(f"hung calls: {r['hung']}")
    if r["rss_growth_front_pct"] >= max_growth or r["rss_growth_total_pct"] >= max_growth:
        problems.append(f"RSS grew {r['rss_growth_front_pct']}% (front end), {r['rss_growth_total_pct']}% (with workers)")
    if r["audit_chain"] != "intact":
        problems.append(f"audit chain: {r['audit_chain']}")
    if r["received_without_audit_record"]:
        problems.append(f"{r['received_without_audit_record']} responses received have no audit record")
    if r["server_exit"] != 0:
        problems.append(f"the server exited with {r['server_exit']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long (default 10)")
    length.add_argument("--seconds", type=float, help="how long, in seconds")
    ap.add_argument("--callers", type=int, default=4, help="unary caller threads (default 4)")
    ap.add_argument("--streams", type=int, default=1, help="stream threads (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="server workers (default 2)")
    ap.add_argument("--pathways", type=Path, default=FIXTURES, help="pathway directory (default the test fixture pathway)")
    ap.add_argument("--reload-every", type=float, default=60.0, help="seconds between SIGHUP reloads (default 60)")
    ap.add_argument("--kill-every", type=float, default=120.0, help="seconds between worker kills (default 120)")
    ap.add_argument("--max-rss-growth", type=float, default=10.0, help="percent (default 10)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    args.seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes if args.minutes is not None else 10.0)
    with tempfile.TemporaryDirectory(prefix="carepath-soak-") as tmp:
        report = Soak(args, Path(tmp)).run()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "per_minute"}))
    print("minute  calls   p50 ms   p99 ms")
    for m, row in report["per_minute"].items():
        print(f"{m:>6} {row['calls']:>6} {row['p50_ms']:>8} {row['p99_ms']:>8}")
    problems = passed(report, args.max_rss_growth)
    for p in problems:
        print(f"soak: FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
