"""The two error corpora: broken pathway files and bad cases, each with the exact error expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES

from carepath.errors import CaseError
from carepath.evaluate import Engine
from carepath.validate import load_vocabulary, validate_source

HERE = Path(__file__).parent
BROKEN = sorted((HERE / "broken_pathways").glob("*.yaml"))
BAD_CASES = yaml.safe_load((HERE / "bad_cases" / "expected.yaml").read_text(encoding="utf-8"))


def test_corpora_are_large_enough() -> None:
    assert len(BROKEN) >= 30
    assert len(BAD_CASES) >= 30


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_pathway_reports_line_col_path_and_message(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    m = re.match(r"# expect: (\d+):(\d+): (.*)\n", text)
    assert m, "each broken pathway starts with '# expect: LINE:COL: path: message'"
    line, col, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    checked, diags = validate_source(text, str(path), load_vocabulary(FIXTURES / "dictionary.yaml"))
    assert checked is None
    rendered = [str(d) for d in diags]
    assert f"{path}:{line}:{col}: {rest}" in rendered, rendered


@pytest.mark.parametrize("name", sorted(BAD_CASES), ids=sorted(BAD_CASES))
def test_bad_case_names_the_field(engine: Engine, name: str) -> None:
    from carepath.case import parse_json

    expected = BAD_CASES[name]
    raw = (HERE / "bad_cases" / name).read_bytes()
    with pytest.raises(CaseError) as info:
        engine.evaluate(parse_json(raw))
    matches = [v for v in info.value.violations if v.field == expected["field"] and expected["message"] in v.message]
    assert matches, [str(v) for v in info.value.violations]
