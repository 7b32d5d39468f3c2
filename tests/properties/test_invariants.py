"""The built-in and YAML invariants over the bundled pathways (issue 6).

The full CI budget is `carepath check --profile ci` (CI runs it); here a smaller seeded budget
keeps the default test run fast, plus one CI-profile run that asserts every rule fires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from carepath.cli import main
from carepath.evaluate import Engine
from carepath.testing import cases
from carepath.testing.invariants import yaml_invariants
from carepath.testing.plugin import Pathways
from carepath.testing.runner import check_engine

HERE = Path(__file__).parent
PROPOSED = HERE / "proposed_invariants.yaml"


def with_proposed(tmp: Path) -> Path:
    """A copy of the bundled pathways with the proposed invariants merged in."""
    import yaml

    from carepath.evaluate import bundled_pathways

    src = bundled_pathways()
    extra = yaml.safe_load(PROPOSED.read_text(encoding="utf-8"))
    for f in src.glob("*.yaml"):
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("id") in extra:
            have = {i["id"] for i in data.get("invariants", [])}
            data["invariants"] = [*data.get("invariants", []), *(i for i in extra[data["id"]] if i["id"] not in have)]
            (tmp / f.name).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        else:
            (tmp / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp


def test_builtin_invariants_hold_incl_differential(pathways: Pathways) -> None:
    report = check_engine(pathways.engine, profile="pytest", database=False, yaml_searches=False)
    assert report.ok, report.format(coverage=False)
    assert report.examples >= 150 * len(pathways.engine.pathways)


def test_ci_profile_fires_every_rule(pathways: Pathways) -> None:
    """The CI profile must fire every rule of the bundled pathways (else: a generator gap or a dead rule)."""
    report = check_engine(pathways.engine, profile="ci", database=False, yaml_searches=False, only=["differential", "one_referral"])
    assert report.ok, report.format(coverage=False)
    assert not report.never_fired(), report.format()


@pytest.fixture(scope="module")
def proposed(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.from_directory(with_proposed(tmp_path_factory.mktemp("proposed")))


def _proposed_ids() -> list[str]:
    import yaml

    raw: dict[str, list[dict[str, Any]]] = yaml.safe_load(PROPOSED.read_text(encoding="utf-8"))
    return [f"{pid}:{i['id']}" for pid, invs in raw.items() for i in invs]


@pytest.mark.parametrize("name", _proposed_ids())
def test_yaml_invariant(proposed: Engine, name: str) -> None:
    """Each YAML invariant (declared + proposed) is one test item, with a steered search of its own."""
    from carepath.testing.runner import check_yaml_invariant

    inv = next((i for i in yaml_invariants(proposed) if i.name == name), None)
    if inv is None:
        pytest.skip(f"{name}: its pathway is not bundled")
    res = check_yaml_invariant(proposed, inv, profile="pytest", examples=60)
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
    assert main(["check", "--profile", "dev", "--examples", "30", "--no-coverage", "--out", str(tmp_path)]) == 0
    assert "all invariants hold" in capsys.readouterr().out
