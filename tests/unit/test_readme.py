"""The README's examples run: the worked pathway validates and behaves as the text says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from carepath.evaluate import Engine

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    block = re.search(r"```yaml\n(id: example_htn.*?)```", README, re.S)
    assert block, "README has the worked example"
    d = tmp_path_factory.mktemp("readme")
    (d / "example.yaml").write_text(block.group(1), encoding="utf-8")
    shutil.copy(ROOT / "pathways" / "dictionary.yaml", d / "dictionary.yaml")
    return Engine.from_directory(d)


def case(**kw: object) -> dict[str, object]:
    c: dict[str, object] = {"patient_id": "r1", "as_of": "2026-11-24", "setting": "community", "conditions": ["I10"], "pregnant": False}
    c.update(kw)
    return c


def obs(code: str, value: float, unit: str, date: str = "2026-11-20") -> dict[str, object]:
    return {"code": code, "value": value, "unit": unit, "date": date}


def test_missing_potassium_asks_for_the_test_and_does_not_start(engine: Engine) -> None:
    d = engine.evaluate(case(observations=[obs("sbp", 150, "mmHg")]))
    got = {(r["kind"], r.get("action") or r.get("code")) for r in d["recommendations"]}
    assert ("test", "potassium") in got
    assert ("medication", "start") not in got


def test_with_potassium_the_start_fires(engine: Engine) -> None:
    d = engine.evaluate(case(observations=[obs("sbp", 150, "mmHg"), obs("dbp", 92, "mmHg"), obs("potassium", 4.2, "mmol/L")]))
    assert any(r["kind"] == "medication" and r["action"] == "start" for r in d["recommendations"])


def test_without_dbp_a_crisis_cannot_be_ruled_out_so_nothing_starts(engine: Engine) -> None:
    d = engine.evaluate(case(observations=[obs("sbp", 150, "mmHg"), obs("potassium", 4.2, "mmol/L")]))
    assert not any(r["kind"] == "medication" for r in d["recommendations"])


def test_crisis_reason_reads_like_the_readme(engine: Engine) -> None:
    d = engine.evaluate(case(observations=[obs("sbp", 186, "mmHg")]))
    ref = next(r for r in d["recommendations"] if r["kind"] == "referral")
    assert "BP in the crisis range" in ref["reason"] and "sbp 186 mmHg ≥ 180" in ref["reason"]


def test_quick_start_cli_commands_run() -> None:
    for args in (["validate"], ["evaluate", "examples/case.json"], ["evaluate", "--explain", "examples/case.json"]):
        r = subprocess.run([sys.executable, "-m", "carepath.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout


def test_every_documented_command_exists() -> None:
    from carepath.cli import _COMMANDS, PLUGINS

    documented = set(re.findall(r"`carepath ([\w-]+)", README))
    assert documented <= set(_COMMANDS) | set(PLUGINS)
