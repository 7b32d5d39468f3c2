"""carepath diff: two pathway sets over one cohort, who gains or loses which recommendation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carepath.errors import CarepathError
from carepath.evaluate import Engine
from carepath.population.diff import Diff, pathway_source, render, run

ROOT = Path(__file__).resolve().parents[2]
V2 = ROOT / "tests" / "fixtures" / "lang_v2"


def case(pid: str, sbp: int, **more: object) -> dict[str, object]:
    obs = [{"code": c, "value": v, "unit": "mmHg", "date": "2026-11-24"} for c, v in (("sbp", sbp), ("dbp", 80))]
    return {"patient_id": pid, "as_of": "2026-11-24", "setting": "community", "conditions": ["I10"], "observations": obs, **more}


@pytest.fixture
def edited(tmp_path: Path) -> Path:
    """The v2 fixture with its crisis threshold lowered from 180 to 170 systolic."""
    out = tmp_path / "new"
    shutil.copytree(V2, out)
    text = (out / "v2_htn.yaml").read_text()
    (out / "v2_htn.yaml").write_text(text.replace("crisis: sbp >= 180", "crisis: sbp >= 170"))
    return out


def cohort(tmp_path: Path) -> Path:
    lines = [case("a", 175), case("b", 185), case("c", 150), case("d", 172, findings=["suicide_plan"])]
    path = tmp_path / "cohort.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in lines) + "\n{not json\n" + json.dumps({"patient_id": "x"}) + "\n")
    return path


def test_a_lower_threshold_shows_who_gains_an_emergency_referral(tmp_path: Path, edited: Path) -> None:
    with cohort(tmp_path).open("rb") as fh:
        d = run(Engine.from_directory(V2), Engine.from_directory(edited), fh, "old", "new")
    assert d.patients == 6 and d.invalid == {"both": 2}
    assert d.rules["v2.crisis"].gained == 2 and d.rules["v2.crisis"].gained_ids == ["a", "d"]
    assert d.old_rules["v2.crisis"] == 1 and d.new_rules["v2.crisis"] == 3
    assert d.recs["referral up emergency emergency"].gained_ids == ["a", "d"]
    assert d.recs["referral up emergency psychiatry"].lost_ids == ["d"], "one referral: d's goes to the emergency department now"
    assert d.referrals[("none", "emergency")] == 1 and d.referral_ids[("none", "emergency")] == ["a"]
    assert (d.referred_old, d.referred_new, d.unchanged) == (2, 3, 2)
    text = render(d, "t")
    assert "| none | emergency | 1 | 25.0% | a |" in text and "| v2.crisis | 1 | 3 | 2 | 0 | a, d |" in text
    assert "<h2>Referral changes (old -&gt; new)</h2>" in render(d, "t", html=True)


def test_the_command_reads_git_revisions_and_directories(tmp_path: Path) -> None:
    c = cohort(tmp_path)
    out = tmp_path / "diff.md"
    cmd = [sys.executable, "-m", "carepath", "diff", "HEAD", str(ROOT / "pathways"), "--cohort", str(c), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert "patients whose decision changed (rules fired or recommendations) | 0 (0.0%)" in out.read_text()


def test_a_source_that_is_neither_a_directory_nor_a_revision_is_named() -> None:
    with pytest.raises(CarepathError, match="no-such-rev: not a directory nor a git revision with pathways/"):
        with pathway_source("no-such-rev", ROOT):
            pass


def test_an_empty_diff_says_none() -> None:
    assert "(none)" in render(Diff("a", "b"), "t")
