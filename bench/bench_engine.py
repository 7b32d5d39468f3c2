"""Per-case cost of carepath (validate, derive, post, decide) against posting the same derived
facts straight into the same compiled durable-rules rulesets, side by side in one run.

    python bench/bench_engine.py [--pathways DIR] [--cases N]

Prints p50/p99 per case and the ratios. "raw (all)" posts the facts into every ruleset, the plain
durable-rules baseline; "raw (enrolled)" is ``Engine.fire``, which posts only into the rulesets of
the pathways the patient is enrolled in (no other pathway's rule can fire), as evaluate does. Cases come from the golden scenarios when
present (tests/scenarios), else from the example case in the contract. Last, the same timings with
the CPU caches flushed before each case: what a case costs a server's worker woken by a request.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from carepath.evaluate import Engine
from carepath.scenarios import iter_scenarios

ROOT = Path(__file__).resolve().parent.parent

EXAMPLE: dict[str, Any] = json.loads((ROOT / "examples" / "case.json").read_text(encoding="utf-8"))


def load_cases() -> list[dict[str, Any]]:
    """The golden scenarios' cases (the contract's example if there are none)."""
    cases = [s.case for s in iter_scenarios(ROOT / "tests" / "scenarios")]
    return cases or [EXAMPLE]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pathways", default=None)
    ap.add_argument("--cases", type=int, default=20000, help="evaluations per side")
    args = ap.parse_args()
    engine = Engine.from_directory(args.pathways)
    cases = load_cases()
    facts = [engine.prepare(c)[1] for c in cases]
    n = args.cases
    full: list[float] = []
    raw: list[float] = []
    raw_all: list[float] = []
    gc.disable()
    for i in range(200):  # warm-up every path
        engine.evaluate(cases[i % len(cases)])
        engine.fire(facts[i % len(facts)])
        engine.fire(facts[i % len(facts)], every_ruleset=True)
    for i in range(n):  # interleave so all see the same machine noise
        c, f = cases[i % len(cases)], facts[i % len(facts)]
        t0 = time.perf_counter()
        engine.fire(f, every_ruleset=True)
        t1 = time.perf_counter()
        engine.fire(f)
        t2 = time.perf_counter()
        engine.evaluate(c)
        t3 = time.perf_counter()
        raw_all.append(t1 - t0)
        raw.append(t2 - t1)
        full.append(t3 - t2)
        if i % 1000 == 999:
            gc.collect()
    gc.enable()
    rules = sum(len(p.rules) for p in engine.pathways)
    print(
        f"pathways: {', '.join(f'{p.id} {p.version}' for p in engine.pathways)} ({rules} rules); {len(cases)} distinct cases; {n} runs each"
    )
    print(f"{'':32}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
    rows = (("durable-rules post, raw (all)", raw_all), ("  raw (enrolled)", raw), ("carepath evaluate (total)", full))
    for label, xs in rows:
        print(f"{label:32}{pct(xs, 0.5) * 1e6:10.0f}{pct(xs, 0.99) * 1e6:10.0f}{statistics.fmean(xs) * 1e6:10.0f}")
    for label, xs in (("raw (all)", raw_all), ("raw (enrolled)", raw)):
        p50, p99 = pct(full, 0.5) / pct(xs, 0.5), pct(full, 0.99) / pct(xs, 0.99)
        print(f"ratio total/{label}: p50 {p50:.2f}x  p99 {p99:.2f}x  (target <= 3x)")
    print(f"carepath p99 {pct(full, 0.99) * 1e3:.3f} ms (target < 2 ms)")
    cold(engine, cases, facts, max(50, n // 40))


def cold(engine: Engine, cases: list[dict[str, Any]], facts: list[dict[str, object]], n: int) -> None:
    """The same three timings with the CPU caches flushed (64 MiB written, untimed) before each
    case, which is how a server's worker finds them when a request wakes it: everything else that
    ran on the core meanwhile (the gRPC front end, other processes, other guests) evicted its code
    and data. Read next to the table above, this is the spread between a tight loop and a service."""
    junk = bytearray(64 << 20)
    zeros = bytes(len(junk) // 64)
    out: list[list[float]] = [[], [], []]
    gc.disable()
    for i in range(n):
        c, f = cases[i % len(cases)], facts[i % len(facts)]
        runs: tuple[Callable[[], object], ...] = (
            partial(engine.fire, f, every_ruleset=True),
            partial(engine.fire, f),
            partial(engine.evaluate, c),
        )
        for k, run in enumerate(runs):
            junk[::64] = zeros  # one write to every cache line
            t0 = time.perf_counter()
            run()
            out[k].append(time.perf_counter() - t0)
    gc.enable()
    print(f"caches flushed before each case ({n} runs each): p50 µs")
    print(
        "  "
        + "   ".join(
            f"{label} {pct(xs, 0.5) * 1e6:.0f}" for label, xs in zip(("raw (all)", "raw (enrolled)", "carepath"), out, strict=True)
        )
    )


if __name__ == "__main__":
    main()
