"""Hostile input gets a diagnostic or a case error naming the limit, never an internal error:
YAML alias bombs, recursive aliases, deep nesting, huge integers, deep conditions, deep case JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE_CASE, FIXTURES

from carepath import lang, load
from carepath.case import parse_json
from carepath.errors import CaseError
from carepath.evaluate import Engine
from carepath.population.batch import evaluate_lines
from carepath.validate import load_vocabulary, validate_source

MINI = (FIXTURES / "mini_htn.yaml").read_text(encoding="utf-8")
CASE = EXAMPLE_CASE.read_text(encoding="utf-8")


def alias_bomb(levels: int) -> str:
    """~10x more nodes per level: 292 bytes at 6 levels were 531,441 strings (2.7 s, 314 MB)."""
    return 'a0: &a0 ["lol"]\n' + "".join(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, levels + 1))


def diagnostics(text: str, file: str = "p.yaml") -> list[str]:
    checked, diags = validate_source(text, file, load_vocabulary(FIXTURES / "dictionary.yaml"))
    assert checked is None
    return [str(d) for d in diags]


@pytest.mark.parametrize("levels", [6, 8, 20])
def test_alias_bomb_is_refused_at_the_alias_without_expanding_it(levels: int) -> None:
    t0 = time.perf_counter()
    assert diagnostics(alias_bomb(levels)) == [
        "p.yaml:6:18: alias *a4 takes the file past 50,000 YAML nodes (the limit; aliases count as the nodes they repeat)"
    ]
    assert time.perf_counter() - t0 < 1.0


def test_aliases_within_the_budget_still_load() -> None:
    loc = load.load_text(alias_bomb(4), "p.yaml")  # 9**4 = 6,561 strings: allowed
    assert len(loc.data["a4"]) == 9 and loc.data["a4"][0][0][0][0] == ["lol"]
    merged = load.load_text("base: &b {x: 1}\nc: {<<: *b, y: 2}\n", "p.yaml")
    assert merged.data["c"] == {"x": 1, "y": 2}


DEEP = "nested more than 64 levels deep (the limit)"
BLOCK_2000 = "".join("  " * i + f"k{i}:\n" for i in range(2000)) + "  " * 2000 + "v\n"
VIA_ALIAS = "a: &a " + "[" * 60 + "1" + "]" * 60 + "\nb: [[[[[[*a]]]]]]\n"
HOSTILE = [
    ("a: &x [*x]\n", "p.yaml:1:8: alias *x is inside the node it names (a recursive structure)"),
    ("a: &x {b: [1, *x]}\n", "p.yaml:1:15: alias *x is inside the node it names (a recursive structure)"),
    ("a: &x {<<: *x}\n", "p.yaml:1:12: alias *x is inside the node it names (a recursive structure)"),
    ("[" * 900 + "]" * 900, f"p.yaml:1:65: {DEEP}"),
    ("{a: " * 2000 + "1" + "}" * 2000, f"p.yaml:1:254: {DEEP}"),
    (BLOCK_2000, f"p.yaml:64:127: {DEEP}"),
    (VIA_ALIAS, "p.yaml:2:10: alias *a nests the file more than 64 levels deep (the limit)"),
    ("id: " + "9" * 5000 + "\n", "p.yaml:1:5: cannot read '99999999999999999999...(5000 characters)' as int: more than 4300 digits"),
    ("as_of: 2026-02-30\n", "p.yaml:1:8: cannot read '2026-02-30' as timestamp: day is out of range for month"),
]
HOSTILE_IDS = [
    "self-alias", "alias-in-mapping", "self-merge", "seq-900", "flow-map-2000", "block-map-2000", "via-alias", "int-5000", "bad-date"
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), HOSTILE, ids=HOSTILE_IDS)
def test_hostile_yaml_is_a_located_diagnostic(text: str, expected: str) -> None:
    assert diagnostics(text) == [expected]


@pytest.mark.parametrize("text", [*(text for text, _ in HOSTILE), alias_bomb(8)], ids=[*HOSTILE_IDS, "alias-bomb"])
def test_the_fast_yaml_parser_keeps_the_bounds(text: str) -> None:
    """The bounds live in the composer, which both parsers feed: the fast path refuses hostile
    input itself, at the same place, before anything expands it."""
    with pytest.raises(load._TooMuch) as fast:
        load._compose(load._FastLoader(text))
    with pytest.raises(load._TooMuch) as ref:
        load._compose(load._Loader(text))
    where = [(e.value.message, e.value.mark.line, e.value.mark.column) for e in (fast, ref)]
    assert where[0] == where[1]


def test_nesting_at_the_yaml_limit_loads() -> None:
    assert load.load_text("[" * 64 + "]" * 64, "p.yaml").data is not None


def _when(condition: str) -> str:
    assert "when: due(egfr, 365)" in MINI
    return MINI.replace("when: due(egfr, 365)", f"when: {condition}")


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("(" * 2000 + "sbp > 140" + ")" * 2000, "nested more than 32 levels deep (parentheses and 'not'; the limit)"),
        ("not " * 5000 + "sbp > 140", "nested more than 32 levels deep (parentheses and 'not'; the limit)"),
        ("not " * 33 + "sbp > 140", "nested more than 32 levels deep (parentheses and 'not'; the limit)"),
    ],
    ids=["parens-2000", "not-5000", "not-33"],
)
def test_deep_condition_is_a_diagnostic(condition: str, message: str) -> None:
    found = [d for d in diagnostics(_when(condition)) if "rules[6].when" in d]
    assert len(found) == 1 and found[0].endswith(f"rules[6].when: {message}"), found


def test_definitions_that_multiply_are_refused() -> None:
    """Each definition uses the one before twice: 2**40 terms inlined (nnf would never finish)."""
    defs = "definitions:\n  d0: sbp > 140 and dbp > 90\n" + "".join(f"  d{i}: d{i - 1} or d{i - 1}\n" for i in range(1, 41))
    text = _when("d40").replace("rules:", defs + "rules:", 1)
    t0 = time.perf_counter()
    diags = diagnostics(text)
    assert time.perf_counter() - t0 < 2.0
    assert any(d.endswith("definitions.d11: 8,191 terms with its definitions inlined; the limit is 5,000") for d in diags), diags


def test_conditions_at_the_limit_validate_compile_and_evaluate(tmp_path: Path) -> None:
    deep = "not " * 32 + "sbp > 140"
    alternating = "sbp > 90"
    for i in range(32):
        alternating = f"(dbp > {60 + i} {'and' if i % 2 else 'or'} {alternating})"
    assert lang.shape(lang.parse(alternating, load_vocabulary(FIXTURES / "dictionary.yaml"))[0])[1] == 32
    for condition in (deep, alternating):
        text = _when(condition)
        checked, diags = validate_source(text, "p.yaml", load_vocabulary(FIXTURES / "dictionary.yaml"))
        assert diags == [] and checked is not None
        for f in FIXTURES.glob("*.yaml"):
            (tmp_path / f.name).write_text(text if f.name == "mini_htn.yaml" else f.read_text(encoding="utf-8"), encoding="utf-8")
        assert Engine.from_directory(tmp_path).evaluate(json.loads(CASE))["patient_id"] == "p-0001"


def test_shape_counts_shared_definitions_each_time_without_recursion() -> None:
    vocab = load_vocabulary(FIXTURES / "dictionary.yaml")
    leaf = lang.parse("sbp > 140", vocab)[0]
    e: lang.Expr = leaf
    for _ in range(5000):  # far deeper than Python's recursion limit
        e = lang.Not(e)
    assert lang.shape(e) == (5001, 5000)
    shared = lang.And((leaf, leaf))
    assert lang.shape(lang.Or((shared, shared, shared))) == (10, 2)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carepath.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_validate_reports_the_bomb_and_the_deep_condition(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(alias_bomb(6), encoding="utf-8")
    (tmp_path / "deep.yaml").write_text(_when("not " * 5000 + "sbp > 140"), encoding="utf-8")
    (tmp_path / "dictionary.yaml").write_text((FIXTURES / "dictionary.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    r = _cli("validate", str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert f"{tmp_path / 'bomb.yaml'}:6:18: alias *a4 takes the file past 50,000 YAML nodes" in r.stderr
    assert "rules[6].when: nested more than 32 levels deep (parentheses and 'not'; the limit)" in r.stderr
    assert "internal error" not in r.stderr


# ---------------------------------------------------------------- case JSON

DEEP_JSON = "[" * 2000 + "]" * 2000
BIG_INT = '{"age":' + "9" * 5000 + "}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (DEEP_JSON, "case is not valid JSON: nested too deeply (a case is 3 levels deep)"),
        ("[" * 1000 + "NaN" + "]" * 1000, "case is not valid JSON: nested too deeply (a case is 3 levels deep)"),
        (BIG_INT, "case is not valid JSON: a number has more than 4300 digits"),
    ],
    ids=["2000-deep", "1000-deep-then-bad", "5000-digits"],
)
def test_case_json_beyond_the_parsers_is_a_case_error(raw: str, message: str) -> None:
    for form in (raw, raw.encode()):
        with pytest.raises(CaseError) as info:
            parse_json(form)
        assert [(v.field, v.message) for v in info.value.violations] == [("", message)]


def test_batch_records_hostile_lines_as_case_errors() -> None:
    engine = Engine.from_directory(FIXTURES)
    out, ok, bad = evaluate_lines(engine, [(1, DEEP_JSON.encode()), (2, BIG_INT.encode()), (3, CASE.replace("\n", "").encode())])
    lines = [json.loads(x) for x in out.splitlines()]
    assert (ok, bad) == (1, 2)
    too_deep = "case is not valid JSON: nested too deeply (a case is 3 levels deep)"
    assert lines[0] == {"line": 1, "error": "case", "violations": [{"field": "", "message": too_deep}]}
    digits = "case is not valid JSON: a number has more than 4300 digits"
    assert lines[1] == {"line": 2, "error": "case", "violations": [{"field": "", "message": digits}]}
    assert lines[2]["patient_id"] == "p-0001"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.json", DEEP_JSON, "case error: case is not valid JSON: nested too deeply (a case is 3 levels deep)"),
        ("big.json", BIG_INT, "case error: case is not valid JSON: a number has more than 4300 digits"),
        ("deep.yaml", "[" * 900 + "]" * 900, "case error: case is not valid YAML: nested more than 64 levels deep (the limit)"),
        ("bomb.yaml", alias_bomb(8), "case error: case is not valid YAML: alias *a4 takes the file past 50,000 YAML nodes"),
    ],
    ids=["deep-json", "big-int", "deep-yaml", "alias-bomb-yaml"],
)
def test_cli_evaluate_hostile_case_exits_2(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    r = _cli("evaluate", "--pathways", str(FIXTURES), str(path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message), r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
