"""The mutation suite: at least 20 defined mutants of the bundled pathways, >= 90% killed."""

from __future__ import annotations

from pathlib import Path

from carepath.testing.mutation import make_mutants, run_mutation

PROPOSED = Path(__file__).parent / "proposed_invariants.yaml"


def test_mutation_suite() -> None:
    mutants = make_mutants()
    assert len(mutants) >= 20, [m.id for m in mutants]
    report = run_mutation(examples=60, extra_invariants=PROPOSED)
    print(report.format())  # the score and the survivors show in CI logs (-rA / -s)
    assert report.baseline_ok, report.baseline_detail
    assert report.score >= 0.9, report.format()
