"""``carepath check`` (invariants over generated cases) and ``carepath mutate`` (the mutation suite)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import command, dumps

DEFAULT_OUT = ".hypothesis/counterexamples"


def _check_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pathways", metavar="DIR", help="pathway directory (default: the bundled pathways/)")
    p.add_argument("--pathway", metavar="ID", help="check only this pathway (its built-in and YAML invariants); default: all")
    p.add_argument("--profile", choices=["dev", "ci", "thorough"], default="ci", help="example budget (dev 200, ci 1000, thorough 10000)")
    p.add_argument("--examples", type=int, metavar="N", help="examples per pathway (overrides the profile)")
    p.add_argument("--seed", type=int, metavar="S", help="Hypothesis seed (default: a fixed seed; 'random' runs use --seed -1)")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help=f"where counterexample case files go (default {DEFAULT_OUT})")
    p.add_argument("--no-coverage", action="store_true", help="do not print the per-rule coverage table")
    p.add_argument("--strict-coverage", action="store_true", help="exit 1 when a rule never fired")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")


@command("check", _check_setup)
def _check(args: argparse.Namespace) -> int:
    """Search generated cases for violations of every invariant; exit 1 with a shrunk counterexample."""
    from ..evaluate import Engine
    from .runner import DEFAULT_SEED, check_engine

    engine = Engine.from_directory(args.pathways)
    seed = DEFAULT_SEED if args.seed is None else (None if args.seed < 0 else args.seed)
    report = check_engine(
        engine,
        profile=args.profile,
        examples=args.examples,
        seed=seed,
        out_dir=Path(args.out),
        pathways_arg=args.pathways,
        focus=args.pathway,
    )
    if args.json:
        sys.stdout.write(
            dumps(
                {
                    "ok": report.ok,
                    "profile": report.profile,
                    "seed": report.seed,
                    "examples": report.examples,
                    "seconds": round(report.seconds, 2),
                    "searches": [
                        {
                            "name": s.name,
                            "examples": s.examples,
                            "seconds": round(s.seconds, 2),
                            "violation": None
                            if s.violation is None
                            else {"invariant": s.violation.invariant, "message": s.violation.message, "files": [str(f) for f in s.files]},
                        }
                        for s in report.searches
                    ],
                    "coverage": report.coverage,
                    "never_fired": [r for _, r in report.never_fired()],
                }
            )
        )
    else:
        print(report.format(coverage=not args.no_coverage))
    if not report.ok:
        return 1
    if args.strict_coverage and report.never_fired():
        return 1
    return 0


def _mutate_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pathways", metavar="DIR", help="pathway directory (default: the bundled pathways/)")
    p.add_argument("--scenarios", metavar="DIR", help="golden scenarios (default: tests/scenarios next to the pathways, if any)")
    p.add_argument("--examples", type=int, default=300, metavar="N", help="examples per pathway for each mutant (default 300)")
    p.add_argument("--min-score", type=float, default=0.9, metavar="F", help="exit 1 below this kill rate (default 0.9)")
    p.add_argument(
        "--backend",
        choices=["durable", "reference"],
        default="durable",
        help="evaluate scenarios and invariant searches with durable-rules (default) or the faster reference evaluator",
    )
    p.add_argument(
        "--invariants-too", action="store_true", help="also search invariants on mutants a scenario killed (what invariants catch alone)"
    )
    p.add_argument("--list", action="store_true", help="only list the mutants")


@command("mutate", _mutate_setup)
def _mutate(args: argparse.Namespace) -> int:
    """Mutation suite: make defined faults in the pathways and check the invariants and scenarios catch them."""
    from .mutation import make_mutants, run_mutation

    if args.list:
        for m in make_mutants(args.pathways):
            print(f"{m.id:<48} {m.description}")
        return 0
    report = run_mutation(
        args.pathways, examples=args.examples, scenarios=args.scenarios, backend=args.backend, invariants_too=args.invariants_too
    )
    print(report.format())
    return 0 if report.score >= args.min_score else 1
