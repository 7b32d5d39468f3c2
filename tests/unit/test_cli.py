"""The CLI as a user runs it: exit codes, stdout/stderr, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

BROKEN = Path(__file__).parent / "broken_pathways"
CASE = Path(__file__).parent / "bad_cases" / "01-missing-patient-id.json"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carepath.cli", *args], capture_output=True, text=True, input=stdin, timeout=60)


def example_case() -> str:
    case = json.loads(CASE.read_text())
    case["patient_id"] = "p-0001"
    return json.dumps(case)


def test_validate_clean_exits_0() -> None:
    r = run("validate", str(FIXTURES))
    assert r.returncode == 0, r.stderr
    assert "mini_htn 0.1.0" in r.stdout


def test_validate_reports_all_errors_and_exits_1() -> None:
    files = sorted(BROKEN.glob("0[1-4]-*.yaml"))
    r = run("validate", *map(str, files))
    assert r.returncode == 1
    assert len([ln for ln in r.stderr.splitlines() if ":" in ln and ln.startswith(str(BROKEN))]) >= 4
    assert "Traceback" not in r.stderr


def test_evaluate_from_stdin_prints_decision_json() -> None:
    r = run("evaluate", "--pathways", str(FIXTURES), "-", stdin=example_case())
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["patient_id"] == "p-0001"
    assert any(rec["kind"] == "referral" for rec in d["recommendations"])


def test_evaluate_bad_case_names_field_without_traceback() -> None:
    r = run("evaluate", "--pathways", str(FIXTURES), str(CASE))
    assert r.returncode == 2
    assert r.stderr.startswith("case error: patient_id: required field is missing")
    assert "Traceback" not in r.stderr


def test_evaluate_missing_file_is_a_clear_error() -> None:
    r = run("evaluate", "--pathways", str(FIXTURES), "/nonexistent/case.json")
    assert r.returncode == 2
    assert "cannot read /nonexistent/case.json" in r.stderr


def test_schema_is_json_schema_of_the_pathway_format() -> None:
    r = run("schema")
    schema = json.loads(r.stdout)
    assert schema["title"] == "carepath pathway"
    assert {"id", "version", "rules", "citations"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_an_internal_error_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from carepath import cli

    def setup(p: argparse.ArgumentParser) -> None:
        return None

    @cli.command("explode-for-test", setup)
    def explode(args: argparse.Namespace) -> int:
        """A command with a bug."""
        raise RuntimeError("boom")

    try:
        assert cli.main(["explode-for-test"]) == 70
    finally:
        del cli._COMMANDS["explode-for-test"]
    err = capsys.readouterr().err
    assert err.startswith("carepath: internal error (RuntimeError: boom)")
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["serve", "batch"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be at least 1, got 0"),
        ("-2", "must be at least 1, got -2"),
        ("two", "expected a whole number of processes, got 'two'"),
    ],
)
def test_workers_must_be_a_positive_count(command: str, value: str, message: str, tmp_path: Path) -> None:
    extra = [str(tmp_path / "cohort.jsonl")] if command == "batch" else []
    r = run(command, "--workers", value, *extra)
    assert r.returncode == 2
    assert f"argument --workers: {message}" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-02-30", "expected a date as YYYY-MM-DD, got '2026-02-30' (day is out of range for month)"),
        ("2026-1-5", "expected a date as YYYY-MM-DD, got '2026-1-5'"),
        ("tomorrow", "expected a date as YYYY-MM-DD, got 'tomorrow'"),
        ("0001-01-01", "expected a date from 1900-01-01 on, got '0001-01-01'"),  # was exit 70, OverflowError
    ],
)
def test_synth_as_of_must_be_a_calendar_date(value: str, message: str) -> None:
    r = run("synth", "--n", "1", "--as-of", value)
    assert r.returncode == 2 and f"argument --as-of: {message}" in r.stderr and "fromisoformat" not in r.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1" + "0" * 130, "must be from 0 to 9223372036854775807, got 1" + "0" * 130),  # its patient ids were over 128 characters
        ("-1", "must be from 0 to 9223372036854775807, got -1"),
        ("x", "expected an integer, got 'x'"),
    ],
)
def test_synth_seed_is_bounded(value: str, message: str) -> None:
    r = run("synth", "--n", "1", "--seed", value)
    assert r.returncode == 2 and f"argument --seed: {message}" in r.stderr and "Traceback" not in r.stderr
    ok = run("synth", "--n", "1", "--seed", "9223372036854775807")
    assert ok.returncode == 0 and len(json.loads(ok.stdout)["patient_id"]) <= 128


def test_an_oversized_case_file_is_refused_without_a_made_up_size(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"patient_id": "p", "pad": "x" * (3 << 20)}))  # 3 MiB; only the first MiB is read
    r = run("evaluate", "--pathways", str(FIXTURES), str(big))
    assert r.returncode == 2
    assert "case is larger than 1048576 bytes (1 MiB), the limit" in r.stderr and "1048577" not in r.stderr


@pytest.mark.parametrize("content", ["", "\n  \n"])
@pytest.mark.parametrize("name", ["case.json", "case.yaml"])
def test_an_empty_case_file_says_so(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    r = run("evaluate", "--pathways", str(FIXTURES), str(path))
    assert r.returncode == 2 and "case error: the case is empty" in r.stderr


def test_docs_out_must_be_a_directory(tmp_path: Path) -> None:
    afile = tmp_path / "pages"
    afile.write_text("x")
    r = run("docs", "--pathways", str(FIXTURES), "--out", str(afile))
    assert r.returncode == 2 and f"cannot write the pages to {afile}: it is a file, not a directory" in r.stderr
    assert "internal error" not in r.stderr and afile.read_text() == "x"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["call", "--timeout", "0", "x.json"], "argument --timeout: must be more than 0 seconds, got 0"),
        (["call", "--timeout", "nan", "x.json"], "argument --timeout: expected a finite number of seconds, got nan"),
        (["call", "--timeout", "soon", "x.json"], "argument --timeout: expected a number of seconds, got 'soon'"),
        (["serve", "--grace", "-5"], "argument --grace: must be 0 seconds or more, got -5"),
        (["serve", "--grace", "inf"], "argument --grace: expected a finite number of seconds, got inf"),
    ],
)
def test_durations_must_make_sense(argv: list[str], message: str) -> None:
    r = run(*argv)
    assert r.returncode == 2 and message in r.stderr


def test_workers_beyond_four_per_core_are_refused(tmp_path: Path) -> None:
    import os

    limit = 4 * (os.cpu_count() or 1)
    for command in ("serve", "batch"):
        extra = [str(tmp_path / "cohort.jsonl")] if command == "batch" else []
        r = run(command, "--workers", str(limit + 1), *extra)
        assert r.returncode == 2, r.stderr
        assert f"argument --workers: must be at most {limit} (4 per core on this machine), got {limit + 1}" in r.stderr


def test_a_duplicate_key_in_a_case_is_refused_not_last_wins(tmp_path: Path) -> None:
    dup = example_case()[:-1] + ', "patient_id": "p-0002"}'
    r = run("evaluate", "--pathways", str(FIXTURES), "-", stdin=dup)
    assert r.returncode == 2 and r.stderr == 'case error: case is not valid JSON: duplicate key "patient_id"\n', r.stderr
    nested = json.loads(example_case())
    nested["observations"][0]["unit"] = "mmHg"
    text = json.dumps(nested).replace('"unit": "mmHg"', '"unit": "mmHg", "unit": "kPa"', 1)
    cohort = tmp_path / "cohort.jsonl"
    cohort.write_text(example_case() + "\n" + text + "\n" + json.dumps({**json.loads(example_case()), "patient_id": "a:b"}) + "\n")
    r = run("batch", "--pathways", str(FIXTURES), "--quiet", str(cohort))
    assert r.returncode == 0, r.stderr
    first, second, third = map(json.loads, r.stdout.splitlines())
    assert "error" not in first and "error" not in third and third["patient_id"] == "a:b"  # a colon in a value is no duplicate
    assert second["violations"] == [{"field": "", "message": 'case is not valid JSON: duplicate key "unit"'}]


def test_a_leading_utf8_bom_is_accepted_in_case_files_and_batch_lines(tmp_path: Path) -> None:
    bom = "\ufeff"
    for name in ("case.json", "case.yaml"):
        path = tmp_path / name
        path.write_text(bom + example_case(), encoding="utf-8")  # JSON is YAML too
        r = run("evaluate", "--pathways", str(FIXTURES), str(path))
        assert r.returncode == 0 and json.loads(r.stdout)["patient_id"] == "p-0001", r.stderr
    cohort = tmp_path / "cohort.jsonl"
    cohort.write_text(bom + example_case() + "\n", encoding="utf-8")
    r = run("batch", "--pathways", str(FIXTURES), "--quiet", str(cohort))
    assert r.returncode == 0 and json.loads(r.stdout)["patient_id"] == "p-0001", r.stdout


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("pregnant: yes", "case error: pregnant: Input should be a valid boolean"),
        ("pregnant: off", "case error: pregnant: Input should be a valid boolean"),
        ("age: 0x3A", "case error: age: Input should be a valid integer"),
        ("age: 072", "case error: age: Input should be a valid integer"),
        ("age: 1:05", "case error: age: Input should be a valid integer"),
    ],
)
def test_a_yaml_case_is_typed_as_json_not_yaml_1_1(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(f"patient_id: p-0001\nas_of: 2026-11-24\nsetting: community\n{line}\n")
    r = run("evaluate", "--pathways", str(FIXTURES), str(path))
    assert r.returncode == 2 and r.stderr == message + "\n", r.stderr


def test_a_yaml_case_keeps_json_numbers_booleans_and_refuses_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "case.yaml"
    path.write_text("patient_id: p-0001\nas_of: 2026-11-24\nsetting: community\nage: 58\npregnant: false\nsmi_risk_grade: null\n")
    r = run("evaluate", "--pathways", str(FIXTURES), str(path))
    assert r.returncode == 0 and json.loads(r.stdout)["patient_id"] == "p-0001", r.stderr
    path.write_text("patient_id: p-0001\nas_of: 2026-11-24\nsetting: community\npatient_id: p-0002\n")
    r = run("evaluate", "--pathways", str(FIXTURES), str(path))
    assert r.returncode == 2 and r.stderr.startswith("case error: case is not valid YAML: duplicate key 'patient_id'"), r.stderr


@pytest.mark.parametrize(
    ("file", "old", "new", "diagnostic"),
    [
        (
            "mini_htn.yaml",
            "title: ",
            "title: !!binary aGVsbG8=\nx: ",
            "mini_htn.yaml:2:8: !!binary values are not allowed (the format is JSON data)",
        ),
        (
            "dictionary.yaml",
            "range: [50, 300]",
            "range: [.nan, 300]",
            "dictionary.yaml:7:48: observations.sbp.range[0]: Input should be a finite number",
        ),
        (
            "dictionary.yaml",
            "factor: 0.0915",
            "factor: .nan",
            "dictionary.yaml:19:26: observations.hba1c.conversions.mmol/mol.factor: Input should be a finite number",
        ),
        ("mini_htn.yaml", "year: 2017", "year: true", "mini_htn.yaml:12:11: citations.nbphs.year: Input should be a valid integer"),
        (
            "mini_htn.yaml",
            "  - id: mini.crisis\n",
            "  - id: mini.crisis\n    priority: '5'\n",
            "mini_htn.yaml:24:15: rules[0].priority: Input should be a valid integer",
        ),
    ],
)
def test_pathway_values_of_the_wrong_type_are_diagnostics(tmp_path: Path, file: str, old: str, new: str, diagnostic: str) -> None:
    import shutil

    shutil.copytree(FIXTURES, tmp_path / "p")
    path = tmp_path / "p" / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    r = run("validate", str(tmp_path / "p"))
    assert r.returncode == 1 and r.stderr == f"{tmp_path / 'p'}/{diagnostic}\n1 error\n", r.stderr


def test_batch_refuses_to_write_over_its_cohort(tmp_path: Path) -> None:
    cohort = tmp_path / "c.jsonl"
    cohort.write_text(example_case().replace("\n", "") + "\n", encoding="utf-8")
    before = cohort.read_bytes()
    r = run("batch", str(cohort), "--out", str(cohort), "--pathways", str(FIXTURES))
    assert r.returncode == 2 and f"--out {cohort} is the cohort being read" in r.stderr
    assert cohort.read_bytes() == before  # it used to be replaced by the decisions


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_is_an_io_error_not_an_internal_one(tmp_path: Path) -> None:
    cohort = tmp_path / "c.jsonl"
    cohort.write_text(example_case().replace("\n", "") + "\n", encoding="utf-8")
    r = run("batch", str(cohort), "--out", "/dev/full", "--pathways", str(FIXTURES))
    assert r.returncode == 74 and "input/output failed: No space left on device" in r.stderr and "internal" not in r.stderr


def test_a_case_of_exactly_1_mib_with_its_line_break_is_accepted(tmp_path: Path) -> None:
    """The limit is on the case, not on its final newline (a 1 MiB case file ending in one was refused)."""
    compact = json.dumps(json.loads(example_case()), separators=(",", ":"))
    body = compact[:-1] + " " * ((1 << 20) - len(compact.encode())) + "}"
    exact, over = tmp_path / "exact.json", tmp_path / "over.json"
    exact.write_text(body + "\r\n", encoding="utf-8")
    over.write_text(body[:-1] + " }\n", encoding="utf-8")
    assert run("evaluate", str(exact), "--pathways", str(FIXTURES)).returncode == 0
    r = run("evaluate", str(over), "--pathways", str(FIXTURES))
    assert r.returncode == 2 and "larger than 1048576 bytes" in r.stderr
    lines = tmp_path / "c.jsonl"
    lines.write_text(body + "\n" + body[:-1] + " }\n", encoding="utf-8")
    out = run("batch", str(lines), "--pathways", str(FIXTURES)).stdout.splitlines()
    assert len(out) == 2 and "error" not in json.loads(out[0]) and json.loads(out[1])["error"] == "case"
