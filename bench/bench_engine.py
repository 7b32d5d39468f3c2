"""Per-case cost of carepath (validate, derive, post, decide) against posting the same derived
facts straight into the same compiled durable-rules rulesets, side by side in one run.

    python bench/bench_engine.py [--pathways DIR] [--cases N]

Prints p50/p99 per case and the ratios. "raw (all)" posts the facts into every ruleset, the plain
durable-rules baseline; "raw (enrolled)" is ``Engine.fire``, which posts only into the rulesets of
the pathways the patient is enrolled in (no other pathway's rule can fire), as evaluate does. Cases come from the golden scenarios when
present (tests/scenarios), else from the example case in the contract.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Any

from carepath.evaluate import Engine

ROOT = Path(__file__).resolve().parent.parent

EXAMPLE: dict[str, Any] = json.loads((ROOT / "examples" / "case.json").read_text(encoding="utf-8"))


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    try:
        from carepath.scenarios import iter_scenarios  # type: ignore[attr-defined]

        cases = [s.case for s in iter_scenarios(ROOT / "tests" / "scenarios")]
    except Exception:  # scenarios not available: fall back to the contract's example
        cases = []
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


if __name__ == "__main__":
    main()
