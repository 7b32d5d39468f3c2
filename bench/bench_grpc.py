#!/usr/bin/env python3
"""Side by side: a no-op gRPC echo server and carepath, driven by the same client.

Both servers run in their own processes on 127.0.0.1 (carepath with its worker pool). The client
is one grpc.aio channel with 1, 4 and 16 concurrent callers sending serialized EvaluateRequests
(examples/case.json, or with --cases synthetic a cycle of distinct synthetic patients); the echo
server returns the bytes it got. Each cell runs several short rounds, echo and carepath taking
turns, so a slow spell of the machine hits both; calls/s is the median over rounds. Printed: calls/s,
p50, p99, the server's CPU time per call (its process and children, workers included; Linux only:
a steadier number than calls/s on a shared machine) and the ratio carepath/echo; then "floor":
carepath on the sample case without its diagnoses (enrolled in no pathway: validated and derived,
nothing posted, a small decision), which is what the service costs around the engine, and
carepath/floor, the share of the service's own rate that the engine's work leaves; then stream
throughput (cases/s, and the server's CPU per case) over DecisionService.EvaluateStream: the
tests' varied cases (heavier: ~22 rules fire per case), or with --cases synthetic the synthetic
patients (~9 rules per case).

    python bench/bench_grpc.py [--quick] [--rounds R] [--cases sample|synthetic] [--workers N] [--pathways DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from grpc_helpers import SAMPLE, varied_case  # noqa: E402

from carepath.service.convert import case_from_dict  # noqa: E402
from carepath_client._proto.v1 import decision_service_pb2 as ds  # noqa: E402

EVALUATE = "/carepath.v1.DecisionService/Evaluate"
ECHO = "/bench.v1.EchoService/Echo"
CARE = [sys.executable, "-c", "from carepath.cli import main; raise SystemExit(main())"]
HEAD = f"{'calls/s':>8} {'p50 ms':>6} {'p99 ms':>6} {'cpu ms':>6}"


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by pid and its live descendants (from /proc; NaN without it)."""
    stats: dict[int, tuple[int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return float("nan")
    for d in names:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    tree, grew = {pid}, True
    while grew:  # bounded by the number of processes
        grew = False
        for p, (parent, _) in stats.items():
            if parent in tree and p not in tree:
                tree.add(p)
                grew = True
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def _echo_server(q: Any) -> None:
    async def run() -> None:
        async def echo(req: bytes, ctx: Any) -> bytes:
            return req

        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.v1.EchoService", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        q.put(port)
        await server.wait_for_termination()

    asyncio.run(run())


async def drive(
    target: str, method: str, payloads: list[bytes], callers: int, seconds: float, pid: int
) -> tuple[float, list[float], float]:
    """calls/s, the latencies (s) and the server's CPU seconds, with ``callers`` concurrent callers
    cycling through ``payloads`` for ``seconds``."""
    lat: list[float] = []
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        for p in payloads[:50]:  # warm up
            await call(p, timeout=10)
        end = time.perf_counter() + seconds
        n = len(payloads)

        async def caller(k: int) -> None:
            i = k
            while time.perf_counter() < end:  # bounded by the time budget
                t0 = time.perf_counter()
                await call(payloads[i % n], timeout=10)
                lat.append(time.perf_counter() - t0)
                i += callers

        cpu0 = tree_cpu(pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        elapsed = time.perf_counter() - t0
        cpu = tree_cpu(pid) - cpu0
    return len(lat) / elapsed, lat, cpu


class Cell:
    """One server at one concurrency, over several interleaved rounds."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.lat: list[float] = []
        self.cpu = 0.0

    def add(self, got: tuple[float, list[float], float]) -> None:
        self.rates.append(got[0])
        self.lat += got[1]
        self.cpu += got[2]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    def row(self) -> str:
        lat = sorted(self.lat)
        p50, p99 = statistics.median(lat) * 1000, lat[int(len(lat) * 0.99)] * 1000
        return f"{self.rate:>8.0f} {p50:>6.2f} {p99:>6.2f} {self.cpu / len(lat) * 1000:>6.3f}"


async def stream(target: str, cases: list[dict[str, Any]], n: int, pid: int) -> tuple[float, float]:
    """cases/s and the server's CPU ms per case, for n cases (``cases`` cycled) in one EvaluateStream."""
    reqs = [ds.EvaluateStreamRequest(request_id=str(i), case=case_from_dict(cases[i % len(cases)])).SerializeToString() for i in range(n)]
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.stream_stream("/carepath.v1.DecisionService/EvaluateStream", request_serializer=None, response_deserializer=None)
        cpu0 = tree_cpu(pid)
        t0 = time.perf_counter()
        got = 0
        async for _ in call(iter(reqs), timeout=300):
            got += 1
        elapsed = time.perf_counter() - t0
        cpu = (tree_cpu(pid) - cpu0) / n * 1000
    assert got == n
    return n / elapsed, cpu


def case_set(cases: str, pathways: str) -> list[dict[str, Any]]:
    """The cases sent: examples/case.json, or the synthetic patients this pathway set accepts
    (a smaller dictionary rejects some codes)."""
    if cases == "sample":
        return [SAMPLE]
    from carepath.errors import CaseError
    from carepath.evaluate import Engine
    from carepath.population.synth import synth

    engine, data = Engine.from_directory(pathways), []
    for case in synth(2000, seed=11):
        try:
            engine.evaluate(case)
        except CaseError:
            continue
        data.append(case)
    return data


def requests(data: list[dict[str, Any]]) -> list[bytes]:
    return [ds.EvaluateRequest(request_id=f"bench-{i}", case=case_from_dict(d)).SerializeToString() for i, d in enumerate(data)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="0.5 s per round and 500 stream cases")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per cell (default 4)")
    ap.add_argument(
        "--cases",
        choices=("sample", "synthetic"),
        default="sample",
        help="examples/case.json every time (the stream: the tests' varied cases), or 2,000 distinct synthetic patients (both)",
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--pathways",
        default=str(ROOT / "pathways"),
        help="the pathway set served (default: the bundled pathways, as `carepath serve` runs them; "
        "tests/fixtures/pathways is a small test set: the service with little engine work)",
    )
    args = ap.parse_args()
    seconds = 0.5 if args.quick else 1.0
    n_stream = 500 if args.quick else 5000

    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    echo = ctx.Process(target=_echo_server, args=(q,), daemon=True)
    echo.start()
    echo_target = f"127.0.0.1:{q.get(timeout=30)}"

    care = subprocess.Popen(
        [*CARE, "serve", "--port", "0", "--workers", str(args.workers), "--pathways", args.pathways],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert care.stdout is not None
    m = re.search(r"listening on (\S+)", care.stdout.readline())
    assert m, "carepath did not start"
    care_target = m.group(1)
    for _ in range(600):  # bounded wait for SERVING
        if "SERVING" in care.stdout.readline():
            break
    data = case_set(args.cases, args.pathways)
    payloads = requests(data)
    # the stream: the synthetic patients with --cases synthetic, else the tests' varied cases (every
    # pathway, emergencies, suppressions: about 22 rules fire per case, against 9 for a synthetic one)
    streamed, stream_name = (data, "synthetic") if args.cases == "synthetic" else ([varied_case(i) for i in range(n_stream)], "varied")
    floor = [ds.EvaluateRequest(request_id="bench", case=case_from_dict({**SAMPLE, "conditions": []})).SerializeToString()]
    try:
        print(
            f"workers={args.workers}  pathways={args.pathways}  cases={args.cases} ({len(payloads)} distinct)  "
            f"{args.rounds} interleaved rounds of {seconds:g}s per server and cell  cpus={os.cpu_count()}"
        )
        print(f"{'':>7} | {'echo':^29} | {'carepath':^29} | {'':>5} | {'floor':^29} | {'':>5} | carepath")
        print(f"{'callers':>7} | {HEAD} | {HEAD} | ratio | {HEAD} | ratio | / floor")
        for callers in (1, 4, 16):
            assert echo.pid is not None
            e, c, f = Cell(), Cell(), Cell()
            for _ in range(args.rounds):  # interleaved: a slow spell of the machine hits all three
                e.add(asyncio.run(drive(echo_target, ECHO, payloads, callers, seconds, echo.pid)))
                c.add(asyncio.run(drive(care_target, EVALUATE, payloads, callers, seconds, care.pid)))
                f.add(asyncio.run(drive(care_target, EVALUATE, floor, callers, seconds, care.pid)))
            ratios = f"{c.rate / e.rate:>5.2f} | {f.row()} | {f.rate / e.rate:>5.2f} | {c.rate / f.rate:>5.2f}"
            print(f"{callers:>7} | {e.row()} | {c.row()} | {ratios}")
        rate, cpu = asyncio.run(stream(care_target, streamed, n_stream, care.pid))
        print(f"stream: {rate:.0f} cases/s, server cpu {cpu:.3f} ms/case ({n_stream} {stream_name} cases, one EvaluateStream)")
    finally:
        care.terminate()
        care.wait(30)
        echo.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
