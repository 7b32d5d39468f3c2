"""Population throughput: the raw durable-rules engine against `carepath batch` end to end, one run.

    python bench/bench_batch.py [--quick] [--pathways DIR] [--sizes 10000,100000,451000] [--workers 1,2]

* raw: derived facts (pre-computed, untimed) posted into the compiled rulesets, one process per
  core, on the first cases of the same cohort (a sample of up to --raw-sample cases per process: a
  rate does not need the whole city). Two rates: "raw (all)" posts every case into every ruleset,
  the plain durable-rules baseline; "raw (enrolled)" is ``engine.fire``, which posts a case only
  into the rulesets of the pathways it is enrolled in (no other rule can fire), as carepath does;
* engine: ``Engine.evaluate`` in-process (validate, derive, fire, decide), no I/O; the ceiling the
  batch machinery can reach;
* batch: ``carepath batch COHORT --out FILE --workers W`` as a subprocess (read, parse, validate,
  evaluate, serialise, write), wall time and the peak RSS summed over the process tree;
* ceiling: W times the in-process engine rate over raw(all): the batch/raw(all) ratio batch would
  reach if reading, splitting, moving and writing the cases cost nothing (the engine's own
  per-case work in Python, against the posts alone);
* batch/(engine x W): how much of that ceiling batch reaches, i.e. what reading, moving and writing
  cost (two processes on these 2-vCPU machines run at 1.2-1.7x one, which this also shows).

Prints a table (cases/s, batch/raw ratio, ceiling, batch/(engine x W), peak RSS) for each N and
worker count.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from carepath.case import parse_json
from carepath.evaluate import Engine
from carepath.population.batch import dumps_line
from carepath.population.synth import synth_lines

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "carepath-bench"


def default_pathways() -> str:
    try:
        Engine.from_directory(None)
        return str(ROOT / "pathways")
    except Exception:
        return str(ROOT / "tests" / "fixtures" / "pathways")


def cohort(n: int, seed: int) -> Path:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"cohort-{n}-{seed}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".part")
        with tmp.open("w", encoding="utf-8") as fh:
            buf: list[str] = []
            for line in synth_lines(n, seed):
                buf.append(line)
                if len(buf) >= 1000:
                    fh.write("".join(buf))
                    buf.clear()
            fh.write("".join(buf))
        tmp.rename(path)
    return path


def _read_slice(path: Path, start: int, count: int) -> list[bytes]:
    out: list[bytes] = []
    with path.open("rb") as fh:
        for i, line in enumerate(fh):
            if i >= start + count:
                break
            if i >= start:
                out.append(line)
    return out


def _raw_worker(args: tuple[str, str, int, int, Any]) -> None:
    pathways, path, start, count, q = args
    engine = Engine.from_directory(pathways)
    facts = [engine.prepare(parse_json(line))[1] for line in _read_slice(Path(path), start, count)]
    for f in facts[:200]:  # warm up
        engine.fire(f)
        engine.fire(f, every_ruleset=True)
    q.put(("ready", len(facts)))
    t = time.perf_counter()
    for f in facts:
        engine.fire(f, every_ruleset=True)
    t_all = time.perf_counter() - t
    t = time.perf_counter()
    for f in facts:
        engine.fire(f)
    q.put(("done", len(facts), t_all, time.perf_counter() - t))


def raw_rate(pathways: str, path: Path, workers: int, sample: int) -> tuple[float, float]:
    """Aggregate cases/s of `workers` processes each posting pre-derived facts: (all rulesets, enrolled only)."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    per = sample
    procs = [ctx.Process(target=_raw_worker, args=((pathways, str(path), i * per, per, q),)) for i in range(workers)]
    for p in procs:
        p.start()
    msgs = [q.get() for _ in range(2 * workers)]
    for p in procs:
        p.join()
    done = [m for m in msgs if m[0] == "done"]
    n = sum(m[1] for m in done)  # concurrent: total cases over the slowest
    return n / max(m[2] for m in done), n / max(m[3] for m in done)


def engine_rate(pathways: str, path: Path, sample: int) -> float:
    engine = Engine.from_directory(pathways)
    lines = _read_slice(path, 0, sample)
    for line in lines[:200]:
        engine.evaluate(parse_json(line))
    t = time.perf_counter()
    for line in lines:
        dumps_line(engine.evaluate(parse_json(line)))
    return len(lines) / (time.perf_counter() - t)


def batch_run(pathways: str, path: Path, workers: int) -> tuple[float, float, int]:
    """(seconds, cases/s, peak RSS bytes over the process tree) of `carepath batch`."""
    out = CACHE / "decisions.jsonl"
    cmd = [sys.executable, "-c", "import sys; from carepath.cli import main; sys.exit(main())"]
    cmd += ["batch", str(path), "--out", str(out), "--workers", str(workers), "--pathways", pathways, "--quiet"]
    t = time.perf_counter()
    p = subprocess.Popen(cmd)
    proc = psutil.Process(p.pid)
    peak = 0
    while p.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(c.memory_info().rss for c in tree if c.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"batch failed with exit code {p.returncode}")
    n = sum(1 for _ in out.open("rb"))
    return dt, n / dt, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="10k cases only, workers 1 and 2")
    ap.add_argument("--pathways", default=None, help="pathway directory (default: bundled if they load, else the test fixtures)")
    ap.add_argument("--sizes", default="10000,100000,451000")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--raw-sample", type=int, default=20000, help="cases per raw process (default 20000)")
    args = ap.parse_args()
    pathways = args.pathways or default_pathways()
    sizes = [10_000] if args.quick else [int(x) for x in args.sizes.split(",")]
    workers = [int(x) for x in args.workers.split(",")]
    engine = Engine.from_directory(pathways)
    print(f"pathways: {pathways}: " + ", ".join(f"{p.id} {p.version} ({len(p.rules)} rules)" for p in engine.pathways))
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    rows = []
    for n in sizes:
        t = time.perf_counter()
        path = cohort(n, args.seed)
        print(f"cohort {n:,}: {path} ({path.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - t:.1f}s to make or find)", flush=True)
        sample = min(args.raw_sample, n // max(workers))
        eng = engine_rate(pathways, path, min(sample, 10_000))
        for w in workers:
            raw_all, raw = raw_rate(pathways, path, w, sample)
            secs, rate, peak = batch_run(pathways, path, w)
            rows.append((n, w, raw_all, raw, eng, rate, secs, peak))
            print(
                f"  N={n:>7,} workers={w}: raw(all) {raw_all:8,.0f}/s  raw(enrolled) {raw:8,.0f}/s  engine(1 proc) {eng:7,.0f}/s  "
                f"batch {rate:7,.0f}/s = {rate / raw_all:5.1%} of raw(all), {rate / raw:5.1%} of raw(enrolled), "
                f"ceiling {eng * w / raw_all:5.1%}, batch/(engine x W) {rate / (eng * w):5.1%}  "
                f"{secs:6.1f}s  peak RSS {peak / 2**20:6.0f} MiB",
                flush=True,
            )
    print()
    print(
        "| N | workers | raw, all rulesets (cases/s) | raw, enrolled rulesets (cases/s) | batch (cases/s) "
        "| batch/raw(all) | batch/raw(enrolled) | ceiling (engine x W / raw(all)) | batch/(engine x W) "
        "| batch wall time | peak RSS (tree) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, w, raw_all, raw, eng, rate, secs, peak in rows:
        print(
            f"| {n:,} | {w} | {raw_all:,.0f} | {raw:,.0f} | {rate:,.0f} | {rate / raw_all:.0%} | {rate / raw:.0%} "
            f"| {eng * w / raw_all:.0%} | {rate / (eng * w):.0%} "
            f"| {secs:.1f} s | {peak / 2**20:.0f} MiB |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
