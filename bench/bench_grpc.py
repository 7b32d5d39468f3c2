#!/usr/bin/env python3
"""Side by side: a no-op gRPC echo server and carepath, driven by the same client.

Both servers run in their own processes on 127.0.0.1 (carepath with its worker pool). The client
is one grpc.aio channel with 1, 4 and 16 concurrent callers sending the same serialized
EvaluateRequest; the echo server returns the bytes it got. Prints calls/s, p50, p99, the
server's CPU time per call (its process and children, workers included; Linux only: a steadier
number than calls/s on a shared machine) and the ratio carepath/echo, then stream throughput
(cases/s, and the server's CPU per case) over DecisionService.EvaluateStream.

    python bench/bench_grpc.py [--quick] [--workers N] [--pathways DIR]
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

from carepath._proto.v1 import decision_service_pb2 as ds  # noqa: E402
from carepath.service.convert import case_from_dict  # noqa: E402

EVALUATE = "/carepath.v1.DecisionService/Evaluate"
ECHO = "/bench.v1.EchoService/Echo"
CARE = [sys.executable, "-c", "from carepath.cli import main; raise SystemExit(main())"]
HEAD = (
    f"{'echo calls/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>7} | {'carepath calls/s':>16} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>7}"
)


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


async def drive(target: str, method: str, payload: bytes, callers: int, seconds: float, pid: int) -> tuple[float, float, float, float]:
    lat: list[float] = []
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(method)
        for _ in range(50):  # warm up
            await call(payload, timeout=10)
        end = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < end:  # bounded by the time budget
                t0 = time.perf_counter()
                await call(payload, timeout=10)
                lat.append(time.perf_counter() - t0)

        cpu0 = tree_cpu(pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - t0
        cpu = (tree_cpu(pid) - cpu0) / len(lat) * 1000
    lat.sort()
    return len(lat) / elapsed, statistics.median(lat) * 1000, lat[int(len(lat) * 0.99)] * 1000, cpu


async def stream(target: str, n: int, pid: int) -> tuple[float, float]:
    reqs = [ds.EvaluateStreamRequest(request_id=str(i), case=case_from_dict(varied_case(i))).SerializeToString() for i in range(n)]
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.stream_stream("/carepath.v1.DecisionService/EvaluateStream")
        cpu0 = tree_cpu(pid)
        t0 = time.perf_counter()
        got = 0
        async for _ in call(iter(reqs), timeout=300):
            got += 1
        elapsed = time.perf_counter() - t0
        cpu = (tree_cpu(pid) - cpu0) / n * 1000
    assert got == n
    return n / elapsed, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 s per measurement instead of 4")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pathways", default=str(ROOT / "tests" / "fixtures" / "pathways"))
    args = ap.parse_args()
    seconds = 1.0 if args.quick else 4.0
    n_stream = 1000 if args.quick else 5000

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
    payload = ds.EvaluateRequest(request_id="bench", case=case_from_dict(SAMPLE)).SerializeToString()
    try:
        print(f"workers={args.workers}  pathways={args.pathways}  {seconds:g}s per cell  cpus={os.cpu_count()}")
        print(f"{'callers':>7} | {HEAD} | ratio")
        for callers in (1, 4, 16):
            assert echo.pid is not None
            e = asyncio.run(drive(echo_target, ECHO, payload, callers, seconds, echo.pid))
            c = asyncio.run(drive(care_target, EVALUATE, payload, callers, seconds, care.pid))
            print(
                f"{callers:>7} | {e[0]:>12.0f} {e[1]:>7.2f} {e[2]:>7.2f} {e[3]:>7.3f} | "
                f"{c[0]:>16.0f} {c[1]:>7.2f} {c[2]:>7.2f} {c[3]:>7.3f} | {c[0] / e[0]:.2f}"
            )
        rate, cpu = asyncio.run(stream(care_target, n_stream, care.pid))
        print(f"stream: {rate:.0f} cases/s, server cpu {cpu:.3f} ms/case ({n_stream} varied cases, one EvaluateStream)")
    finally:
        care.terminate()
        care.wait(30)
        echo.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
