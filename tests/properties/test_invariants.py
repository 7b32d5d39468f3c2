"""The built-in and YAML invariants over the bundled pathways (issue 6).

The full CI budget is `carepath check --profile ci`; here a smaller seeded budget keeps the default
test run fast (test_rule_coverage.py has the run that asserts every rule fires: a module
of its own, so that the test workers share the two long searches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED
from hypothesis import given, settings

from carepath.cli import main
from carepath.testing import cases
from carepath.testing.invariants import Checker, Violation, yaml_invariants
from carepath.testing.plugin import Pathways
from carepath.testing.runner import check_engine

PATHWAYS = BUNDLED


def test_builtin_invariants_hold_incl_differential(pathways: Pathways) -> None:
    report = check_engine(pathways.engine, profile="pytest", database=False, yaml_searches=False)
    assert report.ok, report.format(coverage=False)
    assert report.examples >= 150 * len(pathways.engine.pathways)


def _declared_ids() -> list[str]:
    """``pathway:invariant-id`` for every invariant declared in the bundled pathway files (read without compiling)."""
    import yaml

    out: list[str] = []
    for f in sorted(PATHWAYS.glob("*.yaml")):
        data: dict[str, Any] = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        out += [f"{data['id']}:{i['id']}" for i in data.get("invariants") or []]
    return out


DECLARED = _declared_ids()


def test_every_pathway_declares_invariants() -> None:
    by_pathway = {name.split(":", 1)[0] for name in DECLARED}
    assert by_pathway >= {"hypertension", "diabetes", "smi"}, by_pathway


@pytest.mark.parametrize("name", DECLARED)
def test_yaml_invariant(pathways: Pathways, name: str) -> None:
    """Each YAML invariant declared in a pathway file is one test item, with a steered search of its own."""
    from carepath.testing.runner import check_yaml_invariant

    inv = next((i for i in yaml_invariants(pathways.engine) if i.name == name), None)
    assert inv is not None, f"{name}: declared in a pathway file but not loaded"
    res = check_yaml_invariant(pathways.engine, inv, profile="pytest", examples=30)
    if res.violation is not None:
        raise res.violation
    assert res.applied > 0, f"the generator never produced a case where `given` holds: {inv.describe()}"


# A committee's own test: a few lines.
@settings(max_examples=50, deadline=None)
@given(case=cases(conditions=["I10"], pregnant=True, setting="community"))
def test_committee_style_no_acei_in_pregnancy(pathways: Pathways, case: dict[str, Any]) -> None:
    decision = pathways.evaluate(case)
    assert not pathways.find(decision, kind="medication", action="start", atc="C09A")


def test_committee_style_assert_never(pathways: Pathways) -> None:
    pathways.assert_never("pregnant", {"kind": "medication", "action": "start", "atc": "C09"}, examples=60)


def test_check_cli_passes_on_bundled(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # one pathway (--pathway): every YAML invariant of all three is its own test item above, and the
    # built-ins run over all three in test_builtin_invariants_hold_incl_differential
    assert main(["check", "--pathway", "smi", "--examples", "10", "--no-coverage", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "all invariants hold" in out
    searched = {line.split()[1].split(":")[0] for line in out.splitlines() if line.startswith(("ok ", "FAIL "))}
    assert searched == {"smi"}, searched
    smi_invariants = [name for name in DECLARED if name.startswith("smi:")]
    assert all(name in out for name in smi_invariants)


def test_check_cli_names_the_known_pathways_for_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--pathway", "asthma", "--no-coverage"]) == 2
    err = capsys.readouterr().err
    assert "asthma" in err and "diabetes" in err and "smi" in err, err


def test_stable_down_names_a_down_referral_beside_a_stop(pathways: Pathways) -> None:
    """The stable_down property reads the decision: a down-referral beside a stop (what the policy
    now prevents, so no real case shows it) is a violation naming both."""
    checker = Checker(pathways.engine, only=["stable_down"])
    case: dict[str, Any] = {"patient_id": "p", "setting": "hospital"}
    down = {"kind": "referral", "direction": "down", "specialty": "community GP team", "rule": "x.down"}
    stop = {"kind": "medication", "action": "stop", "atc": "N05AH02", "name": "clozapine", "rule": "x.stop"}

    def fail(name: str, message: str, **kw: Any) -> Violation:
        return Violation(name, message, case, decision)

    decision: dict[str, Any] = {"recommendations": [down, stop], "trace": []}
    with pytest.raises(Violation, match=r"refer down .* in the same decision as stop clozapine"):
        checker._check_decision(case, decision, fail)
    decision = {"recommendations": [down], "trace": []}
    checker._check_decision(case, decision, fail)  # a down-referral alone is fine


def test_a_pattern_reads_days_at_most_as_within() -> None:
    """`days_at_most: 14` in an invariant's pattern is "within 2 weeks": a next-day follow-up
    satisfies it, a 28-day one does not; `days: 14` stays exact."""
    from carepath.testing.invariants import matches

    within = {"kind": "follow_up", "days_at_most": 14}
    assert matches({"kind": "follow_up", "days": 1}, within)
    assert matches({"kind": "follow_up", "days": 14}, within)
    assert not matches({"kind": "follow_up", "days": 28}, within)
    assert not matches({"kind": "test", "code": "sbp"}, within)
    assert not matches({"kind": "follow_up", "days": 1}, {"kind": "follow_up", "days": 14})
