"""Fuzzing in the suite: the committed corpus and every regression input replayed through the fuzz
targets' checks, and a fixed-budget atheris run of each target (tests/fuzz/; 8 s each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import targets

BUDGET_S = 8  # per target: with start-up, the two runs cost ~26 s of the suite


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_the_corpus_and_the_regressions_pass_the_checks(target: str) -> None:
    inputs = sorted((targets.CORPUS / target).iterdir()) + sorted(f for f in (targets.REGRESSIONS / target).glob("*") if f.suffix != ".md")
    assert len(inputs) >= 10
    for f in inputs:
        targets.TARGETS[target](f.read_bytes())


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_a_fixed_budget_of_coverage_guided_fuzzing_finds_no_crash(target: str, tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "fuzz" / "fuzz_targets.py"),
        target,
        f"-max_total_time={BUDGET_S}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
        str(new),
        str(targets.CORPUS / target),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=BUDGET_S + 60)
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    assert done.returncode == 0 and not crashes, f"{crashes}\n{done.stderr[-4000:]}"
    assert "stat::number_of_executed_units" in done.stderr
