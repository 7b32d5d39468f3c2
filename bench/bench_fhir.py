#!/usr/bin/env python3
"""FHIR → decision per patient, over the 26 Synthea bundles (examples/fhir/synthea-r4.tar.xz), two ways.

1. In-process: JSON parse of the bundle + carepath.fhir.to_case (fhir.resources models, the mapping tables)
   + Engine.evaluate, one patient at a time, every bundle ``--passes`` times after a warm-up pass.
2. CDS Hooks: `carepath serve --cds-hooks` in its own process (``--workers`` worker processes, default one per
   core), called over loopback HTTP/1.1 by ``--callers`` concurrent callers (default 4), each on its own
   keep-alive connection, for ``--seconds`` seconds, with a patient-view request carrying the full prefetch
   its discovery templates ask for: the Patient, and searchset Bundles of the patient's Conditions, active
   MedicationRequests / MedicationStatements, AllergyIntolerances and the Observations whose LOINC codes the
   template lists (what a FHIR server would answer). The client is a minimal asyncio HTTP/1.1 client
   (pre-encoded requests; reads the Content-Length body), so that the client costs the shared cores little.
   Two runs: first views (CAREPATH_FHIR_CACHE=0: every resource validated, as on a record's first call) and
   repeat views (the default cache: the 26 records are resent, as an EHR resends a record on every chart open,
   so validated resources are reused). The in-process pass never reuses them (CAREPATH_FHIR_CACHE=0).

Printed: p50 / p99 per patient for each (in-process: wall time, and the thread's CPU time, steadier on a shared
machine; with the CPU time of each stage), the number of calls, calls/s, and the server's CPU time per call
(its process and its workers; Linux). as_of is 2021-04-01 (after the bundles' last activity), setting community.

    python bench/bench_fhir.py [--passes 20] [--seconds 10] [--callers 4] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
# Every patient is a first view: no validated resource is reused from an earlier pass (carepath.fhir keeps
# validated resources for the next call that sends the same one; the CDS Hooks run measures that too).
os.environ["CAREPATH_FHIR_CACHE"] = "0"

from bench_grpc import tree_cpu  # noqa: E402

from carepath.cds.respond import observation_loincs  # noqa: E402
from carepath.evaluate import Engine  # noqa: E402
from carepath.fhir import to_case  # noqa: E402

CARE = [sys.executable, "-c", "from carepath.cli import main; raise SystemExit(main())"]
AS_OF = date(2021, 4, 1)
TYPES = {
    "Condition": "conditions",
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "AllergyIntolerance": "allergies",
    "Observation": "observations",
}


def bundles() -> list[Path]:
    """The 26 bundles, unpacked once from the repository's archive (as the FHIR golden tests do)."""
    spec = importlib.util.spec_from_file_location("make_goldens", ROOT / "tests" / "fixtures" / "fhir" / "make_goldens.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    found: list[Path] = mod.bundles()
    return found


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def in_process(raws: list[bytes], passes: int) -> tuple[list[float], list[float], dict[str, float]]:
    """Wall and CPU (this thread) seconds per patient, and the mean CPU seconds of each stage."""
    engine = Engine.from_directory()
    gc.freeze()  # as the service's workers do: the compiled engine stays out of every collection
    times: list[float] = []
    cpus: list[float] = []
    stages = {"JSON parse": 0.0, "FHIR -> case": 0.0, "evaluate": 0.0}
    for i in range(passes + 1):
        for raw in raws:
            t0, c0 = time.perf_counter(), time.thread_time()
            data = orjson.loads(raw)
            c1 = time.thread_time()
            mapped = to_case(data, vocab=engine.vocab, as_of=AS_OF, setting="community")
            c2 = time.thread_time()
            engine.evaluate(mapped.case)
            t3, c3 = time.perf_counter(), time.thread_time()
            if i:  # pass 0 warms up
                times.append(t3 - t0)
                cpus.append(c3 - c0)
                stages["JSON parse"] += c1 - c0
                stages["FHIR -> case"] += c2 - c1
                stages["evaluate"] += c3 - c2
    return times, cpus, {k: v / len(times) for k, v in stages.items()}


def prefetch_request(raw: bytes, loincs: set[str]) -> tuple[str, bytes]:
    """A patient-view request with the full prefetch of carepath's templates for one Synthea bundle."""
    bundle = orjson.loads(raw)
    pid = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    text = json.dumps([e["resource"] for e in bundle["entry"]]).replace(f'"urn:uuid:{pid}"', f'"Patient/{pid}"')
    prefetch: dict[str, Any] = {"patient": None, **dict.fromkeys(TYPES.values())}
    for r in json.loads(text):
        t = r["resourceType"]
        if t == "Patient":
            prefetch["patient"] = r
            continue
        if t not in TYPES:
            continue
        if t == "Observation" and not {c.get("code") for c in r.get("code", {}).get("coding", [])} & loincs:
            continue
        if t in ("MedicationRequest", "MedicationStatement") and r.get("status") != "active":
            continue
        key = TYPES[t]
        if prefetch[key] is None:
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        prefetch[key]["entry"].append({"resource": r})
    req = {
        "hook": "patient-view",
        "hookInstance": f"bench-{pid}",
        "context": {"userId": "Practitioner/bench", "patientId": pid},
        "prefetch": prefetch,
        "extension": {"org.carepath.as-of": AS_OF.isoformat()},
    }
    return pid, orjson.dumps(req)


def http_request(host: str, port: int, body: bytes) -> bytes:
    head = (
        f"POST /cds-services/carepath-patient-view HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    assert m, head
    body = await reader.readexactly(int(m.group(1)))
    return status, body


async def drive(host: str, port: int, reqs: list[bytes], callers: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds

    async def caller(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        i = k
        while time.monotonic() < end:
            raw = reqs[i % len(reqs)]
            i += callers
            t0 = time.perf_counter()
            status, _ = await _call(reader, writer, raw)
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
        writer.close()

    await asyncio.gather(*(caller(k) for k in range(callers)))
    return latencies, errors


def cds_hooks(built: list[tuple[str, bytes]], args: argparse.Namespace, cache: str, what: str, size: float) -> int:
    """One CDS Hooks run: a server with CAREPATH_FHIR_CACHE=cache, driven for args.seconds; prints its line."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*CARE, "serve", "--port", "0", "--cds-hooks", "--http-port", "0", "--workers", str(args.workers), "--cds-feedback-dir", tmp]
        env = dict(os.environ, CAREPATH_FHIR_CACHE=cache)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
        assert proc.stdout is not None
        base = ""
        for line in iter(proc.stdout.readline, b""):
            m = re.search(rb"CDS Hooks on http://([\d.]+):(\d+)/", line)
            if m:
                base = f"{m.group(1).decode()}:{m.group(2).decode()}"
            if b"SERVING" in line and b"NOT_SERVING" not in line:
                break
        try:
            assert base, "the server did not start its CDS Hooks listener"
            host, port = base.split(":")
            reqs = [http_request(host, int(port), body) for _, body in built]
            asyncio.run(drive(host, int(port), reqs, args.callers, 1.0))  # warm-up
            cpu0 = tree_cpu(proc.pid)
            lat, errors = asyncio.run(drive(host, int(port), reqs, args.callers, args.seconds))
            cpu = tree_cpu(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(30)
    n = len(lat)
    print(
        f"CDS Hooks   patient-view, full prefetch ({size:.0f} KiB), {what}, {args.callers} callers, {args.workers} worker(s): "
        f"p50 {pct(lat, 50) * 1000:.2f} ms, p99 {pct(lat, 99) * 1000:.2f} ms, {n / args.seconds:.0f} calls/s, "
        f"server CPU {cpu / n * 1000:.2f} ms per call ({n} calls, {errors} not 200)"
    )
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=20, help="in-process passes over the 26 bundles after a warm-up pass (default 20)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of CDS Hooks calls (default 10)")
    ap.add_argument("--callers", type=int, default=4, help="concurrent CDS Hooks callers (default 4)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server worker processes (default one per core)")
    args = ap.parse_args()

    paths = bundles()
    raws = [p.read_bytes() for p in paths]
    print(f"{len(raws)} Synthea bundles, {sum(map(len, raws)) / len(raws) / 1024:.0f} KiB each on average; as_of {AS_OF}, community")

    times, cpus, stages = in_process(raws, args.passes)
    print(
        f"in-process  FHIR parse + map + evaluate: p50 {pct(times, 50) * 1000:.2f} ms, p99 {pct(times, 99) * 1000:.2f} ms wall; "
        f"CPU p50 {pct(cpus, 50) * 1000:.2f} ms, p99 {pct(cpus, 99) * 1000:.2f} ms per patient ({len(times)} evaluations)"
    )
    print("            CPU per patient by stage: " + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in stages.items()))

    loincs = set(observation_loincs(Engine.from_directory()))
    built = [prefetch_request(raw, loincs) for raw in raws]
    size = statistics.fmean(len(b) for _, b in built) / 1024
    errors = 0
    for cache, what in (("0", "first views (nothing reused)"), ("4096", "repeat views (the same 26 records resent)")):
        errors += cds_hooks(built, args, cache, what, size)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
