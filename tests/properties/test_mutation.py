"""The mutation suite (issue 6): at least 20 defined mutants of the bundled pathways, and the golden
scenarios and invariants kill at least 90% of them. The full suite runs here on every test run
(no skip): every mutant, the golden scenarios and a seeded invariant search per surviving mutant.
The score, the killers and the survivors (with the reason each survives) print to the terminal.
"""

from __future__ import annotations

import pytest

from carepath.testing.mutation import make_mutants, run_mutation

MIN_SCORE = 0.9
EXAMPLES = 60  # Hypothesis examples per mutant for its pathway's search (a third of it per YAML invariant)
SEED = 20261124


def test_at_least_20_mutants() -> None:
    mutants = make_mutants()
    assert len(mutants) >= 20, [m.id for m in mutants]
    assert len({m.operator for m in mutants}) >= 15
    assert len({m.id for m in mutants}) == len(mutants)


def test_scenario_killer_is_named() -> None:
    """A mutant caught by a golden scenario reports that scenario (carepath.scenarios), not just 'scenario'."""
    mutant = next(m for m in make_mutants() if m.id == "hypertension:drop_emergency_finding")
    report = run_mutation(mutants=[mutant], examples=10, backend="reference")
    assert report.baseline_ok, report.baseline_detail
    [r] = report.results
    assert r.kind == "scenario", report.format()
    assert r.killer.startswith("hypertension/") and r.killer in r.scenarios, report.format()


def test_full_mutation_suite(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_mutation(examples=EXAMPLES, seed=SEED, backend="reference")
    with capsys.disabled():
        print("\n" + report.format())
    assert report.baseline_ok, report.baseline_detail
    assert report.scenarios > 0, "the golden scenarios were not found"
    assert all(r.detail for r in report.survivors()), "every survivor must say why it survives"
    assert report.score >= MIN_SCORE, report.format()
