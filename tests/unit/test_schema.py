"""The committed JSON Schemas (for editors) match the models they are generated from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

DOCS = ROOT / "docs"


@pytest.mark.parametrize(
    ("args", "name"), [([], "pathway.schema.json"), (["--case"], "case.schema.json"), (["--decision"], "decision.schema.json")]
)
def test_committed_schema_is_current(args: list[str], name: str) -> None:
    out = subprocess.run([sys.executable, "-m", "carepath.cli", "schema", *args], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == json.loads((DOCS / name).read_text(encoding="utf-8")), f"run: carepath schema {' '.join(args)} > docs/{name}"
