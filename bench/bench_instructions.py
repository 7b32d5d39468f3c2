"""Instructions per case, counted by valgrind's callgrind: the engine's stages against the raw
durable-rules posts, and optionally against another revision, side by side in one run.

    python bench/bench_instructions.py [--cases N] [--pathways DIR] [--against REV ...]

Wall-clock rates on these shared 2-core machines move by 10-50% from one minute to the next, and
an A/B of two engines in one process is biased by the order they run in. Instruction counts are
repeatable (same code, inputs and PYTHONHASHSEED: the same count, whatever else the machine is
doing), so they tell a 3% change in the engine's own work from noise. They are not time: a cache
miss or a system call costs more than its instructions, so the throughput targets are still
measured by bench_batch.py and bench_grpc.py.

Each revision runs in its own `valgrind --tool=callgrind` child with instrumentation off until
the measured loops (setup runs at valgrind's plain speed); a tiny C helper built here with the
system's <valgrind/callgrind.h> switches it on around each section and dumps its count. Sections,
over N synthetic cases (carepath synth, seed 1), after a warm-up pass over N others:

* raw (all): pre-derived facts posted into every ruleset (``Engine.fire(every_ruleset=True)``),
  the durable-rules baseline of bench_batch.py; raw (enrolled): ``Engine.fire``;
* parse, validate, derive, fire (enrolment and posts), decide, dumps: the stages of one case;
* evaluate: ``dumps_line(engine.evaluate(parse_json(line)))``, what a batch worker does per line,
  on N further cases (the stage sections have seen theirs);
* service worker: what a service worker does with an EvaluateRequest's bytes (decode, evaluate,
  write the response's bytes), on N further cases.

Printed: instructions per case of each section (millions); this tree's microseconds per case
(one pass without valgrind, so noisy) and instructions per nanosecond (a section far below the
others stalls on memory); the raw(all)/evaluate ratio, the bench_batch "ceiling", in
instructions and in time; and with --against, each revision's counts over this tree's.
--against REV copies that revision's engine/carepath (and its client package) with `git archive`
into a temporary directory and runs it on this tree's pathways; with --own-pathways, on its own
pathways/ (an engine and its pathways as they were against this tree's: what a language change
plus the rewrite it allowed costs).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["raw (all)", "raw (enrolled)", "parse", "validate", "derive", "fire", "decide", "dumps", "evaluate", "service worker"]
HELPER = r"""
#include <valgrind/callgrind.h>
void cg_on(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void cg_off(const char *name) { CALLGRIND_DUMP_STATS_AT(name); CALLGRIND_STOP_INSTRUMENTATION; }
"""


def build_helper(tmp: Path) -> Path:
    src, lib = tmp / "cg.c", tmp / "cg.so"
    src.write_text(HELPER)
    cc = os.environ.get("CC", "cc")
    try:
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True, text=True)
    except OSError as exc:
        raise SystemExit(f"cannot run the C compiler {cc!r} ({exc}); set CC or install gcc") from None
    if proc.returncode != 0:
        raise SystemExit(f"cannot build the callgrind helper (needs <valgrind/callgrind.h>, Debian: valgrind):\n{proc.stderr}")
    return lib


def _timed(body: Any) -> float:
    t = time.perf_counter()
    body()
    return time.perf_counter() - t


def child(n: int, pathways: str | None, helper: str | None) -> None:
    """Runs under callgrind: the measured sections, each between cg_on and cg_off."""
    from carepath.case import parse_json, validate_case
    from carepath.decide import decide
    from carepath.derive import derive
    from carepath.evaluate import Engine
    from carepath.population.batch import dumps_line
    from carepath.population.synth import synth_lines

    cg = ctypes.CDLL(helper) if helper else None
    engine = Engine.from_directory(pathways)
    lines = [line.encode() for line in synth_lines(4 * n, 1)]
    warm, lines, fresh, requests = lines[:n], lines[n : 2 * n], lines[2 * n : 3 * n], lines[3 * n :]
    from carepath.evaluate import bundled_pathways
    from carepath.service.convert import case_from_dict
    from carepath.service.worker import Worker

    try:  # the generated code lives in the client distribution since the split
        from carepath_client._proto.v1 import decision_service_pb2 as ds
    except ImportError:  # a revision from before it
        from carepath._proto.v1 import decision_service_pb2 as ds  # type: ignore[no-redef, import-not-found, import-untyped, unused-ignore]

    try:  # a Worker holds the set it compiled (validate.SourceSet)
        from carepath.validate import read_set
    except ImportError:  # a revision from before that: it held the directory
        worker = Worker(engine, pathways)  # type: ignore[arg-type, unused-ignore]
    else:
        sources = read_set([pathways or bundled_pathways()], bundled_pathways())[0]
        assert sources is not None
        worker = Worker(engine, sources)
    wire = [ds.EvaluateRequest(request_id=f"r{i}", case=case_from_dict(parse_json(x))).SerializeToString() for i, x in enumerate(requests)]
    for line in warm:  # the memos and plan store in the state a running worker has them
        dumps_line(engine.evaluate(parse_json(line)))
    datas = [parse_json(line) for line in lines]
    checked = [validate_case(d, engine.vocab) for d in datas]
    facts = [derive(case, obs, engine.features) for case, obs in checked]
    selected = engine._select(None)
    fired = [engine.fire(f) for f in facts]
    # (a revision from before the backend protocol selected (index, _Compiled) pairs and named its backend per call)
    groups = [[(i, getattr(c, "pathway", c), [getattr(c, "pathway", c).rules[k] for k in ks]) for i, c, ks in fs] for fs in fired]
    enrolled = [engine._enrolled(f, selected) for f in facts]
    protocol = hasattr(engine, "compiled")
    # the decisions to serialise come from another engine: deciding them here would fill this
    # engine's plan store and memos with the very cases the decide section is about to see
    other = Engine.from_directory(pathways)
    decisions = [other.evaluate(d) for d in datas]

    def section(name: str, body: Any) -> None:
        if cg is None:  # not under valgrind: wall time, one pass (a second would find the memos warm)
            print(f"{name}\t{_timed(body) / n * 1e6:.1f}", flush=True)
            return
        cg.cg_on()
        body()
        cg.cg_off(name.encode())

    def raw_all() -> None:
        for f in facts:
            engine.fire(f, every_ruleset=True)

    def raw_enrolled() -> None:
        for f in facts:
            engine.fire(f)

    def parse() -> None:
        for line in lines:
            parse_json(line)

    def validate() -> None:
        vocab = engine.vocab
        for d in datas:
            validate_case(d, vocab)

    def derive_all() -> None:
        feats = engine.features
        for case, obs in checked:
            derive(case, obs, feats)

    def fire() -> None:
        if protocol:
            for f in facts:
                engine._fire(f, selected, engine._enrolled(f, selected))
        else:
            for f in facts:
                engine._fire(f, selected, "durable", engine._enrolled(f, selected))  # type: ignore[call-arg, arg-type, unused-ignore]

    def decide_all() -> None:
        plans = engine._plans
        for i in range(n):
            decide(checked[i][0], facts[i], groups[i], enrolled[i], plans)

    def dumps() -> None:
        for d in decisions:
            dumps_line(d)

    def evaluate() -> None:  # cases no section has seen: plan store and memos as for a new case
        for line in fresh:
            dumps_line(engine.evaluate(parse_json(line)))

    def serve() -> None:  # cases no section has seen, as EvaluateRequest bytes
        for raw in wire:
            worker.evaluate(raw, "Evaluate")

    bodies = [raw_all, raw_enrolled, parse, validate, derive_all, fire, decide_all, dumps, evaluate, serve]
    for name, body in zip(SECTIONS, bodies, strict=True):
        section(name, body)


def run(label: str, pythonpath: str, n: int, pathways: str, helper: Path, tmp: Path, cache: bool) -> dict[str, dict[str, int]]:
    """Each section's callgrind events (Ir: instructions; with the cache simulation also Dr, Dw and
    the misses I1mr D1mr D1mw ILmr DLmr DLmw)."""
    out = tmp / f"cg-{re.sub(r'[^A-Za-z0-9]', '_', label)}"
    out.mkdir()
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.%p"]
    if cache:
        cmd.append("--cache-sim=yes")
    cmd += [*_child(n, pathways), "--helper", str(helper)]
    proc = subprocess.run(cmd, env=_env(pythonpath, pathways), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{label}: the callgrind run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    counts: dict[str, dict[str, int]] = {}
    for f in out.iterdir():
        text = f.read_text(errors="replace")
        m = re.search(r"^desc: Trigger: Client Request: (.+)$", text, re.M)
        events = re.search(r"^events:((?: \w+)+)", text, re.M)
        totals = re.search(r"^(?:totals|summary):((?: \d+)+)", text, re.M)
        if m and events and totals:
            counts[m.group(1)] = dict(zip(events.group(1).split(), map(int, totals.group(1).split()), strict=False))
    missing = [s for s in SECTIONS if s not in counts]
    if missing:
        raise SystemExit(f"{label}: no count for {missing}")
    return counts


def _child(n: int, pathways: str) -> list[str]:
    return [sys.executable, __file__, "--child", "--cases", str(n), "--pathways", pathways]


def _env(pythonpath: str, pathways: str) -> dict[str, str]:
    """The same hash seed for every run (set and dict orders, so the same instructions), and the
    revision's engine first on the path."""
    return dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=pythonpath, CAREPATH_PATHWAYS=pathways)


def wall(pythonpath: str, n: int, pathways: str) -> dict[str, float]:
    """The same sections without valgrind: microseconds per case, one pass each."""
    out = subprocess.run(_child(n, pathways), env=_env(pythonpath, pathways), capture_output=True, text=True, check=True).stdout
    return {name: float(us) for name, us in (line.split("\t") for line in out.splitlines() if "\t" in line)}


def export(rev: str, parts: list[str], dest: Path) -> Path:
    """The paths ``parts`` of REV, written under ``dest`` (made here) with `git archive`."""
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *parts], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def checkout(rev: str, tmp: Path) -> str:
    """engine/carepath of REV (and its clients/python/carepath_client, where REV has one) in a
    directory of its own, importable as carepath: the PYTHONPATH that puts them first."""
    client = "clients/python/carepath_client"
    has_client = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:{client}"], capture_output=True).returncode == 0
    dest = export(rev, ["engine/carepath", *([client] if has_client else [])], tmp / f"rev-{re.sub(r'[^A-Za-z0-9]', '_', rev)}")
    # the generated protobuf modules are in git (in the engine or, since the split, in the client): REV's own come along
    return os.pathsep.join(str(dest / p) for p in ("engine", "clients/python"))


def own_pathways(rev: str, tmp: Path) -> str:
    """REV's pathways/ in a directory of its own."""
    return str(export(rev, ["pathways"], tmp / f"pathways-{re.sub(r'[^A-Za-z0-9]', '_', rev)}") / "pathways")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--cases", type=int, default=400, help="cases per section (default 400)")
    ap.add_argument("--pathways", default=None, help="pathway directory (default: the bundled pathways)")
    ap.add_argument("--against", action="append", default=[], metavar="REV", help="also count a git revision's engine")
    ap.add_argument(
        "--own-pathways",
        action="store_true",
        help="run each --against revision on its own pathways/ (the engine and its pathways as they were), not this tree's",
    )
    ap.add_argument("--cache-sim", action="store_true", help="also simulate the caches: misses per case (much slower)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--helper", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.cases, args.pathways, args.helper)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    pathways = str(Path(args.pathways or ROOT / "pathways").resolve())
    with tempfile.TemporaryDirectory(prefix="carepath-cg-") as d:
        tmp = Path(d)
        helper = build_helper(tmp)
        this_tree = os.pathsep.join(str(ROOT / p) for p in ("engine", "clients/python"))
        runs = [("this tree", this_tree, pathways)]
        for rev in args.against:
            runs.append((rev, checkout(rev, tmp), own_pathways(rev, tmp) if args.own_pathways else pathways))
        results = []
        for label, path, where in runs:
            print(f"counting {label} ({args.cases} cases a section, pathways {where}) ...", file=sys.stderr, flush=True)
            results.append((label, run(label, path, args.cases, where, helper, tmp, args.cache_sim)))
        times = wall(runs[0][1], args.cases, pathways)
    n = args.cases
    print(f"instructions per case (millions), {n} synthetic cases, pathways {pathways}")
    if args.own_pathways and args.against:
        print("(each --against revision on its own pathways/)")
    head = f"{'section':<16}" + "".join(f"{label[:14]:>16}" for label, _ in results)
    head += "".join(f"{(label[:8] + '/this'):>16}" for label, _ in results[1:])
    head += f"{'us/case':>10}{'Ir/ns':>7}"
    if args.cache_sim:
        head += f"{'D1 misses':>12}{'LL misses':>12}"
    print(head)
    base = results[0][1]
    for s in SECTIONS:
        row = f"{s:<16}" + "".join(f"{c[s]['Ir'] / n / 1e6:16.3f}" for _, c in results)
        row += "".join(f"{c[s]['Ir'] / base[s]['Ir']:16.3f}" for _, c in results[1:])
        row += f"{times[s]:10.1f}{base[s]['Ir'] / n / 1e3 / times[s]:7.2f}"  # this tree, one pass, no valgrind
        if args.cache_sim:  # this tree, per case
            ev = base[s]
            row += f"{(ev['D1mr'] + ev['D1mw']) / n:12,.0f}{(ev['ILmr'] + ev['DLmr'] + ev['DLmw']) / n:12,.0f}"
        print(row)
    for label, c in results:
        ceiling = c["raw (all)"]["Ir"] / c["evaluate"]["Ir"]
        print(f"{label}: raw(all)/evaluate = {ceiling:.1%} of the instructions (the batch ceiling counted)")
    print(f"this tree: raw(all)/evaluate = {times['raw (all)'] / times['evaluate']:.1%} of the time (one pass, this machine, now)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
