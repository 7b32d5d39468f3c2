"""An injected fault fails `carepath check` with a shrunk counterexample that `carepath evaluate` replays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES as FIXTURE

from carepath.cli import main


def faulty(tmp: Path, drop_rule: str) -> Path:
    d = tmp / "pathways"
    d.mkdir()
    shutil.copy(FIXTURE / "dictionary.yaml", d / "dictionary.yaml")
    data = yaml.safe_load((FIXTURE / "mini_htn.yaml").read_text(encoding="utf-8"))
    data["rules"] = [r for r in data["rules"] if r["id"] != drop_rule]
    (d / "mini_htn.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return d


def test_fault_gives_shrunk_counterexample_that_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = faulty(tmp_path, "mini.symptom")  # the danger-sign emergency rule is gone
    out = tmp_path / "cx"
    rc = main(["check", "--pathways", str(pw), "--profile", "dev", "--out", str(out), "--no-coverage"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "INVARIANT VIOLATED: emergency" in text
    assert "Replay:" in text and "carepath evaluate --pathways" in text
    files = sorted(out.glob("*.json"))
    assert files, text
    case = json.loads(files[0].read_text(encoding="utf-8"))
    # shrunk: nothing but what it takes (an enrolling diagnosis and the emergency finding)
    assert case["observations"] == [] and case["medications"] == [] and case["allergies"] == []
    assert len(case["findings"]) == 1 and len(case["conditions"]) == 1
    assert case["setting"] == "community"
    # and it replays: the decision lacks the emergency referral
    assert main(["evaluate", "--pathways", str(pw), str(files[0])]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert not [r for r in decision["recommendations"] if r["kind"] == "referral" and r.get("urgency") == "emergency"]


def test_fixture_passes_and_covers_every_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["check", "--pathways", str(FIXTURE), "--profile", "dev", "--strict-coverage", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "9/9 rules fired" in text
