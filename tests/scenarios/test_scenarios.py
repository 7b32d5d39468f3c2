"""Golden scenarios: each file is one test; the session also checks that every rule fired at least once."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import BUNDLED, SCENARIO_DIR

from carepath.evaluate import Engine
from carepath.scenarios import Scenario, check, fired_rules, iter_scenarios

PATHWAYS = BUNDLED  # the `engine` fixture's (conftest.py)
SCENARIOS = iter_scenarios(SCENARIO_DIR)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f"{s.pathway}/{s.name}" for s in SCENARIOS])
def test_scenario(engine: Engine, scenario: Scenario) -> None:
    decision: dict[str, Any] = engine.evaluate(scenario.case)
    failures = check(scenario, decision)
    assert not failures, f"{scenario.path.name}: {scenario.description}\n  " + "\n  ".join(failures)


def test_scenario_files_are_well_formed() -> None:
    by_pathway: dict[str, int] = {}
    for s in SCENARIOS:
        assert s.present or s.absent, f"{s.path}: no expectations"
        assert s.citation, f"{s.path}: no citation"
        by_pathway[s.pathway] = by_pathway.get(s.pathway, 0) + 1
    for pathway in ("hypertension", "diabetes", "smi"):
        assert by_pathway.get(pathway, 0) >= 30, f"{pathway}: only {by_pathway.get(pathway, 0)} scenarios (need 30)"


def test_rule_coverage(engine: Engine) -> None:
    """Every rule of every pathway fires in at least one scenario. Evaluates them all itself (a
    fraction of a second), so it holds however the scenario tests are spread over processes."""
    fired: set[tuple[str, str]] = set()
    for s in SCENARIOS:
        fired.update(fired_rules(engine.evaluate(s.case)))
    lines = ["", "rule coverage by the golden scenarios:"]
    missing: list[str] = []
    for p in engine.pathways:
        ids = [r.rule.id for r in p.rules]
        never = [i for i in ids if (p.id, i) not in fired]
        lines.append(f"  {p.id} {p.version}: {len(ids) - len(never)}/{len(ids)} rules fired")
        lines += [f"    never fired: {i}" for i in never]
        missing += never
    print("\n".join(lines))
    assert not missing, f"rules never fired by any scenario: {missing}"
