"""The checked-in generated code matches the protos (regenerated into a temporary directory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "engine" / "carepath" / "_proto"


def test_generated_code_has_not_drifted(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-protos"), "--out", str(tmp_path)], check=True, capture_output=True)
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    ours = {p.relative_to(CHECKED_IN): p.read_text() for p in CHECKED_IN.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(fresh) == sorted(ours), "file list differs: run scripts/gen-protos"
    drifted = [str(k) for k in fresh if fresh[k] != ours[k]]
    assert not drifted, f"generated code is stale, run scripts/gen-protos: {drifted}"
