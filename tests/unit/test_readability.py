"""Readability warnings (carepath.readability): long conditions, repeated sub-expressions and code
lists, `carepath validate --strict`, and a ceiling on the bundled pathways' violations."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from carepath import readability
from carepath.errors import Diagnostic
from carepath.validate import validate_paths

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "pathways"

HEAD = """\
id: readable
title: Readability fixture
version: 0.1.0
status: active
owners: [carepath tests]
applies_to: diagnosed(I10)
citations:
  c: {guideline: A guideline for tests, year: 2020, section: One}
"""


def pathway(tmp_path: Path, whens: list[str], definitions: dict[str, str] | None = None, applies_to: str = "") -> Path:
    """A pathway of one follow-up rule per condition (rules r.n0, r.n1, ...), with the fixture dictionary."""
    text = HEAD.replace("diagnosed(I10)", applies_to) if applies_to else HEAD
    if definitions:
        text += "definitions:\n" + "".join(f"  {k}: {v!r}\n" for k, v in definitions.items())
    text += "rules:\n"
    for i, when in enumerate(whens):
        text += f"  - id: r.n{i}\n    when: {when!r}\n    then: [{{kind: follow_up, days: 14}}]\n    citation: c\n"
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    shutil.copy(FIXTURES / "dictionary.yaml", tmp_path)
    return tmp_path


def findings(tmp_path: Path) -> list[readability.Finding]:
    checked, diags = validate_paths([tmp_path], tmp_path)
    assert not diags, diags
    return readability.check(checked)


def kinds(found: list[readability.Finding]) -> list[tuple[str, str]]:
    return [(f.subject, f.kind) for f in found]


# ---------------------------------------------------------------- long conditions


def test_a_condition_over_the_limit_is_a_warning_at_its_start(tmp_path: Path) -> None:
    limit = readability.MAX_CONDITION_CHARS
    ok = "sbp >= 140" + " and age > 3" * 14 + " and age > 3."
    ok += "0" * (limit - len(ok))  # age > 3.000000000: exactly at the limit
    assert readability.written_length(ok) == limit
    pathway(tmp_path, [ok, ok + "0", "sbp >= 180"])
    found = findings(tmp_path)
    assert kinds(found) == [("r.n1", "long")]
    d = found[0].diagnostic
    assert (d.path, d.severity, d.line, d.col) == ("rules[1].when", "warning", 15, 11)
    assert f"condition is {limit + 1} characters long (the limit is {limit})" in d.message
    assert str(d).startswith(f"{tmp_path / 'p.yaml'}:15:11: rules[1].when: warning: condition is")


def test_long_applies_to_definitions_and_invariants_are_warned_and_white_space_runs_count_once(tmp_path: Path) -> None:
    long = "sbp >= 140 and " * 14 + "dbp >= 90"  # 219 characters
    spaced = "sbp >= 140   and\n " * 14 + "dbp >= 90"  # as folded YAML might give it: the same length as written
    assert readability.written_length(spaced) == readability.written_length(long) > readability.MAX_CONDITION_CHARS
    pathway(tmp_path, ["big", "sbp >= 180"], {"big": long}, applies_to=f"diagnosed(I10) and ({long})")
    text = (tmp_path / "p.yaml").read_text(encoding="utf-8")
    text += f"invariants:\n  - {{id: r.inv.one, given: {long!r}, never: {{kind: referral}}}}\n"
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    assert sorted(kinds(findings(tmp_path))) == [
        ("r.inv.one", "long"),
        ("readable.applies_to", "long"),
        ("readable.definitions.big", "long"),
    ]


# ---------------------------------------------------------------- repeats


def test_a_sub_expression_in_three_rules_is_a_warning_naming_the_rules(tmp_path: Path) -> None:
    pathway(
        tmp_path,
        [
            "(sbp >= 140 or dbp >= 90) and age >= 60",
            "potassium < 5 and (dbp >= 90 or sbp >= 140)",  # the other order
            "not (sbp < 140 and dbp < 90) and missing(egfr)",  # the same, written with not
            "sbp >= 180",
        ],
    )
    found = findings(tmp_path)
    assert kinds(found) == [("r.n0", "repeat")]
    d = found[0].diagnostic
    assert (d.path, d.line, d.col) == ("rules[0].when", 11, 13)  # after the quote and the '(': at sbp
    assert "'sbp >= 140 or dbp >= 90' is repeated in 3 rules (r.n0, r.n1, r.n2)" in d.message
    assert "definitions" in d.message


def test_two_rules_are_not_a_repeat_nor_is_a_different_threshold(tmp_path: Path) -> None:
    pathway(tmp_path, ["sbp >= 140 or dbp >= 90", "sbp >= 140 or dbp >= 90", "sbp >= 140 or dbp >= 91", "age > 3 or sbp > 200"])
    assert findings(tmp_path) == []


def test_a_not_around_a_group_is_the_same_as_its_terms_negated(tmp_path: Path) -> None:
    pathway(
        tmp_path,
        [
            "(age > 3 and not (sbp > 150 or dbp > 95)) or missing(egfr)",
            "not sbp > 150 and age > 3 and not dbp > 95",
            "age > 3 and sbp <= 150 and dbp <= 95",
        ],
    )
    assert kinds(findings(tmp_path)) == [("r.n0", "repeat")]


def test_a_definition_used_by_name_in_three_rules_is_not_a_repeat(tmp_path: Path) -> None:
    pathway(
        tmp_path,
        ["above and age >= 60", "above and potassium < 5", "not above", "above"],
        {"above": "sbp >= 140 or dbp >= 90", "worse": "above and dbp >= 100"},
    )
    assert findings(tmp_path) == []


def test_a_definition_written_out_beside_its_name_counts_only_where_written(tmp_path: Path) -> None:
    defs = {"above": "sbp >= 140 or dbp >= 90"}
    pathway(tmp_path, ["above", "above", "(sbp >= 140 or dbp >= 90) and age > 3", "(dbp >= 90 or sbp >= 140) and age < 90"], defs)
    assert findings(tmp_path) == []  # two written uses
    written = ["sbp >= 140 or dbp >= 90", "(sbp >= 140 or dbp >= 90) and age > 3", "(dbp >= 90 or sbp >= 140) and age < 9"]
    pathway(tmp_path, ["above", *written], defs)
    assert kinds(findings(tmp_path)) == [("r.n1", "repeat")]


def test_one_call_is_one_term_not_a_compound(tmp_path: Path) -> None:
    # due(x, n) is parsed as 'missing(x) or older_than(x, n)': still one term as written
    pathway(tmp_path, ["due(egfr, 365)", "due(egfr, 365) and age > 3", "not due(egfr, 365)"])
    assert findings(tmp_path) == []
    pathway(tmp_path, ["due(egfr, 365) and age > 3", "age > 3 and due(egfr, 365)", "(due(egfr, 365) and age > 3) or sbp > 100"])
    assert kinds(findings(tmp_path)) == [("r.n0", "repeat")]


def test_only_the_largest_repeat_is_reported_where_its_parts_repeat_in_the_same_rules(tmp_path: Path) -> None:
    # sub-trees are compared: a group of terms inside a longer 'and' is one only in parentheses
    big = "(sbp >= 140 or dbp >= 90) and (age >= 60 or potassium < 5)"
    pathway(tmp_path, [big, f"({big}) and missing(egfr)", f"missing(uacr) and ({big})", "(sbp >= 140 or dbp >= 90) and age < 9"])
    found = findings(tmp_path)
    # the whole in r.n0-r.n2; its first part in four rules, so that is said too; its second part is not
    assert found[0].diagnostic.col == 12 and found[1].diagnostic.col == 13
    assert [(f.subject, f.kind, f.diagnostic.message.split(" is repeated")[0]) for f in found] == [
        ("r.n0", "repeat", f"{big!r}"),
        ("r.n0", "repeat", "'sbp >= 140 or dbp >= 90'"),
    ]
    assert "in 4 rules (r.n0, r.n1, r.n2, r.n3)" in found[1].diagnostic.message


def test_a_code_list_of_four_in_three_rules_suggests_a_code_set(tmp_path: Path) -> None:
    four = "C09AA, C09CA, C08CA, C03AA"
    pathway(tmp_path, [f"taking({four})", "not allergic(C03AA, C08CA, C09CA, C09AA) and age > 3", f"sbp > 150 and not taking({four})"])
    found = findings(tmp_path)
    assert kinds(found) == [("r.n0", "codes")]
    assert f"the list of 4 codes in 'taking({four})' is repeated in 3 rules (r.n0, r.n1, r.n2); name it once as a code set" in (
        found[0].diagnostic.message
    )
    three = "C09AA, C09CA, C08CA"
    pathway(tmp_path, [f"taking({three})", f"taking({three}) and age > 3", f"sbp > 150 and not taking({three})"])
    assert findings(tmp_path) == []


# ---------------------------------------------------------------- the command


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carepath.cli", *args], capture_output=True, text=True, timeout=60)


def test_validate_prints_warnings_and_exits_0_and_strict_makes_them_errors(tmp_path: Path) -> None:
    pathway(tmp_path, ["sbp >= 140 or dbp >= 90", "dbp >= 90 or sbp >= 140", "(sbp >= 140 or dbp >= 90) and age > 3"])
    file = tmp_path / "p.yaml"
    r = run("validate", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "readable 0.1.0" in r.stdout
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"{file}:11:12: rules[0].when: warning: 'sbp >= 140 or dbp >= 90' is repeated in 3 rules")
    assert lines[-1] == "1 warning"
    r = run("validate", "--strict", str(tmp_path))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"{file}:11:12: rules[0].when: 'sbp >= 140 or dbp >= 90' is repeated")
    assert lines[-1] == "1 error"
    assert "ok " not in r.stdout


def test_a_clean_pathway_passes_strict() -> None:
    r = run("validate", "--strict", str(FIXTURES))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_an_error_prints_as_before() -> None:
    d = Diagnostic("p.yaml", 3, 7, "rules[0].when", "unknown name 'sbq'")
    assert str(d) == "p.yaml:3:7: rules[0].when: unknown name 'sbq'"
    assert str(Diagnostic("p.yaml", 3, 7, "rules[0].when", "too long", "warning")) == "p.yaml:3:7: rules[0].when: warning: too long"


# ---------------------------------------------------------------- the bundled pathways: a ceiling


def test_the_bundled_pathways_read_aloud() -> None:
    """The bundled pathways pass `carepath validate --strict` (CI runs it too): no condition over the
    length limit, no repeated sub-expression or code list. It was a ceiling that could only go down
    (63 findings before the v2 rewrite); now a new finding fails, with the diagnostic to fix it."""
    checked, diags = validate_paths([ROOT / "pathways"], ROOT / "pathways")
    assert not diags
    found = readability.check(checked)
    assert not found, "readability findings (use a definition or a code set):\n" + "\n".join(str(f.diagnostic) for f in found)


# ---------------------------------------------------------------- evaluate --explain: the closest rules only


def came_close(text: str) -> list[str]:
    return text.split("Rules that came close but did not fire:\n", 1)[1].splitlines()


def test_explain_lists_the_closest_rules_first_and_says_how_many_more() -> None:
    import json

    from carepath.evaluate import NEAR, Engine

    engine = Engine.from_directory(ROOT / "pathways")
    case = json.loads((ROOT / "examples" / "case.json").read_text(encoding="utf-8"))
    every = [ln for ln in came_close(engine.explain(case, near=1000)) if not ln.startswith("* pathway ")]
    assert len(every) > NEAR + 2
    terms = [ln.count(" is not met") + ln.count(" is unknown") for ln in every]
    assert terms == sorted(terms) and terms[0] == 1 and terms[-1] == 2  # fewest false or unknown terms first
    shown = came_close(engine.explain(case))
    assert shown[0].startswith("* pathway smi: patient not enrolled")  # said as before, not counted
    assert shown[1:] == [*every[:NEAR], f"* and {len(every) - NEAR} more (--near {len(every)} lists them all)"]
    assert came_close(engine.explain(case, near=0))[1:] == [f"* and {len(every)} more (--near {len(every)} lists them all)"]
    # ties keep pathway and rule order
    ones = [ln.split(":")[0][2:] for ln, n in zip(every, terms, strict=True) if n == 1]
    order = [cr.rule.id for cp in engine.pathways for cr in cp.rules]
    assert ones == sorted(ones, key=order.index)


def test_explain_near_on_the_command_line() -> None:
    case = str(ROOT / "examples" / "case.json")
    r = run("evaluate", "--explain", "--near", "2", case)
    assert r.returncode == 0, r.stderr
    lines = came_close(r.stdout)
    assert len(lines) == 4 and lines[-1].startswith("* and ") and "more (--near" in lines[-1]
    r = run("evaluate", "--explain", "--near", "-1", case)
    assert r.returncode == 2 and "--near: must be 0 or more, got -1" in r.stderr


# ---------------------------------------------------------------- review pages: definitions linked by name


def test_review_pages_link_each_use_of_a_definition_to_its_anchor(tmp_path: Path) -> None:
    import re

    from carepath.docs import render

    defs = {"above": "sbp >= 140 or dbp >= 90", "community": "setting == community", "worse": "above and dbp >= 100"}
    whens = ["above and age > 3", "setting == hospital and worse", "not community and due(egfr, 365)", "not (above)", "sex is not female"]
    pathway(tmp_path, whens, defs, applies_to="diagnosed(I10) and not community")
    checked, diags = validate_paths([tmp_path], tmp_path)
    assert not diags
    page = render(checked[0])
    assert "- **who is in it:** diagnosed I10 and not [community](#def-community)" in page
    assert '| <a id="def-above"></a>`above` | sbp ≥ 140 or dbp ≥ 90 |' in page
    assert '| <a id="def-community"></a>`community` | setting is community |' in page  # a value compared with, not a use
    assert '| <a id="def-worse"></a>`worse` | [above](#def-above) and dbp ≥ 100 |' in page
    rows = [ln for ln in page.splitlines() if ln.startswith("| `r.n")]
    assert [row.split(" | ")[1] for row in rows] == [
        "[above](#def-above) and age > 3",
        "setting is hospital and [worse](#def-worse)",
        "not [community](#def-community) and egfr missing or older than 365 days",
        "not ([above](#def-above))",
        "sex is not female",
    ]
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', page))
    assert set(re.findall(r"\]\(#([^)]+)\)", page)) == anchors == {"def-above", "def-community", "def-worse"}


def test_code_sets_and_target_profiles_used_by_name_are_not_repeats(tmp_path: Path) -> None:
    whens = [f"above_target(bp) and taking(antihypertensive) and age > {i}" for i in range(4)]
    whens += [f"at_target(bp) and not diagnosed(diabetes) and age < {50 + i}" for i in range(4)]
    pathway(tmp_path, whens)
    shutil.copy(ROOT / "tests" / "fixtures" / "lang_v2" / "dictionary.yaml", tmp_path)
    assert findings(tmp_path) == []
    pasted = ["(sbp >= 140 or dbp >= 90) and taking(C03A, C03BA, C09BA, C09DA) and age > 1"] * 3
    pathway(tmp_path, pasted)
    shutil.copy(ROOT / "tests" / "fixtures" / "lang_v2" / "dictionary.yaml", tmp_path)
    assert kinds(findings(tmp_path)) == [("r.n0", "repeat"), ("r.n0", "codes")], "the same text pasted is still reported"
