"""Population runs: synth determinism, batch (bad lines, stable bytes, Ctrl-C), report, local vs Dask."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import FIXTURES

from carepath.errors import CaseError
from carepath.evaluate import Engine
from carepath.population.batch import run_batch
from carepath.population.report import aggregate, render_markdown
from carepath.population.synth import exams_known, synth_lines

NO_EXAMS: frozenset[str] = frozenset()  # cohorts for the fixture pathways, which define no diabetes exam codes
CLI = [sys.executable, "-c", "import sys; from carepath.cli import main; sys.exit(main())"]


def test_synth_is_deterministic_and_valid() -> None:
    a = list(synth_lines(400, seed=11))
    assert a == list(synth_lines(400, seed=11))
    assert a != list(synth_lines(400, seed=12))
    fixture, bundled = Engine.from_directory(FIXTURES), Engine.from_directory(None)
    fixture_exams = exams_known(set(fixture.vocab.observations))
    assert fixture_exams == frozenset() and exams_known(set(bundled.vocab.observations)) == {"fundus_exam", "foot_exam"}
    b = list(synth_lines(400, seed=11, exams=fixture_exams))  # for the fixture pathways: no diabetes-local codes
    conditions: set[str] = set()
    for engine, lines in ((bundled, a), (fixture, b)):
        for line in lines:
            case = json.loads(line)
            conditions.update(c[:3] for c in case["conditions"])
            try:
                engine.evaluate(case)
            except CaseError as exc:
                pytest.fail(f"synthetic case {case['patient_id']} is invalid: {exc}")
    assert {"I10", "E11", "F20"} <= conditions
    assert '"fundus_exam"' in "".join(a) and '"foot_exam"' in "".join(a)
    assert "_exam" not in "".join(b)
    strip = [{**json.loads(x), "observations": [o for o in json.loads(x)["observations"] if not o["code"].endswith("_exam")]} for x in a]
    assert strip == [json.loads(x) for x in b]  # the exams are left out, nothing else changes


def test_synth_cli_is_byte_identical() -> None:
    args = [*CLI, "synth", "--n", "300", "--seed", "5", "--as-of", "2026-06-30"]
    one = subprocess.run(args, check=True, capture_output=True).stdout
    two = subprocess.run(args, check=True, capture_output=True).stdout
    assert one == two and one.count(b"\n") == 300
    assert json.loads(one.splitlines()[0])["as_of"] == "2026-06-30"
    assert b'"fundus_exam"' in one
    lean = subprocess.run([*args, "--pathways", str(FIXTURES)], check=True, capture_output=True).stdout
    assert lean.count(b"\n") == 300 and b"_exam" not in lean


@pytest.fixture(scope="module")
def cohort_with_bad_lines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = list(synth_lines(600, seed=2, exams=NO_EXAMS))
    lines.insert(10, '{"patient_id": "bad-1", "as_of": "2026-11-24", "setting": "community", "age": true}\n')  # line 11
    lines.insert(20, "this is not json\n")  # line 21
    lines.insert(30, "\n")  # line 31: blank, skipped
    lines.insert(40, '{"patient_id": "big", "pad": "' + "x" * (1 << 20) + '"}\n')  # line 41: over 1 MiB
    path = tmp_path_factory.mktemp("cohort") / "cohort.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_batch_error_records_and_stable_bytes(cohort_with_bad_lines: Path, tmp_path: Path) -> None:
    out1, out2 = tmp_path / "d1.jsonl", tmp_path / "d2.jsonl"
    base = [*CLI, "batch", "--pathways", str(FIXTURES)]
    r = subprocess.run([*base, str(cohort_with_bad_lines), "--out", str(out1), "--workers", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with cohort_with_bad_lines.open("rb") as fh:  # stdin form, one worker, odd chunking: same bytes
        r2 = subprocess.run([*base, "-", "--workers", "1", "--chunk", "7"], stdin=fh, capture_output=True)
    assert r2.returncode == 0, r2.stderr
    out2.write_bytes(r2.stdout)
    assert out1.read_bytes() == out2.read_bytes()
    records = [json.loads(x) for x in out1.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 603  # 600 cases + 3 bad lines; the blank line gives none
    errors = [x for x in records if "error" in x]
    assert [e["line"] for e in errors] == [11, 21, 41]
    assert errors[0]["patient_id"] == "bad-1" and errors[0]["violations"][0]["field"] == "age"
    assert "not valid JSON" in errors[1]["violations"][0]["message"]
    assert "1 MiB" in errors[2]["violations"][0]["message"]
    ids = [x["patient_id"] for x in records if "error" not in x]
    assert ids == [f"LH2-{i:07d}" for i in range(1, 601)]  # input order
    assert "603 cases (3 error records)" in r.stderr  # not a TTY: a summary line, no progress bar
    assert "\r" not in r.stderr

    md = render_markdown(aggregate(out1.read_bytes().splitlines()), "t")
    assert "## Tests due, by test" in md and "| egfr |" in md and "error records | 3" in md
    r3 = subprocess.run([*CLI, "report", str(out1), "--out", str(tmp_path / "r.html")], capture_output=True, text=True)
    assert r3.returncode == 0, r3.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<svg") >= 3 and "Referral mix" in page and "mini.uncontrolled" in page

    # the report counts lines that are not decisions, with their line numbers, and refuses a file
    # with no decisions at all (the cohort given instead of batch's output)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(out1.read_bytes() + b'{"patient_id": "p-1", "as_of": "2026-11-24"}\nnot json\n')
    s = aggregate(mixed.read_bytes().splitlines())
    assert s.decisions == 600 and s.foreign == 2 and s.foreign_lines == [604, 605]
    assert "lines that are not decisions | 2 (first lines of this file: 604, 605)" in render_markdown(s, "t")
    # lines that only look like decisions, or are not UTF-8, are not decisions either (they were exit 70)
    first = json.loads(out1.read_bytes().splitlines()[0])
    odd = []
    for field, value in (("days", "abc"), ("days", 1e400), ("rules", 5)):
        d = json.loads(json.dumps(first))
        next(r for r in d["recommendations"] if r["kind"] == "follow_up")[field] = value
        odd.append(json.dumps(d).encode())
    d = json.loads(json.dumps(first))
    d["trace"][0]["values"] = [1, 2]
    odd += [json.dumps(d).encode(), b"\xff\xfe not utf-8"]
    s = aggregate([*out1.read_bytes().splitlines(), *odd])
    assert s.decisions == 600 and s.foreign_lines == [604, 605, 606, 607, 608]
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    r5 = subprocess.run([*CLI, "report", str(binary)], capture_output=True, text=True)
    assert r5.returncode == 2 and "holds no carepath decisions" in r5.stderr and "Traceback" not in r5.stderr
    r4 = subprocess.run([*CLI, "report", str(cohort_with_bad_lines)], capture_output=True, text=True)
    assert r4.returncode == 2 and r4.stdout == ""
    assert f"{cohort_with_bad_lines} holds no carepath decisions" in r4.stderr and "not the cohort" in r4.stderr


def batch_with_open_stdin(out: Path, n: int) -> subprocess.Popen[bytes]:
    """`carepath batch -` (2 workers) fed n synthetic cases on a stdin left open: it waits for more."""
    p = subprocess.Popen(
        [*CLI, "batch", "-", "--pathways", str(FIXTURES), "--workers", "2", "--out", str(out)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdin is not None
    p.stdin.write("".join(synth_lines(n, seed=4, exams=NO_EXAMS)).encode())
    p.stdin.flush()
    return p


def test_ctrl_c_writes_a_prefix(tmp_path: Path) -> None:
    """Ctrl-C while the input is still open: batch stops cleanly with a clean, in-order prefix written."""
    out = tmp_path / "d.jsonl"
    p = batch_with_open_stdin(out, 3000)  # batch has more work coming, so only Ctrl-C can end it

    def partial() -> int:  # the output is written beside its target until the run ends
        return sum(f.stat().st_size for f in tmp_path.glob(".d.jsonl.*.partial"))

    deadline = time.monotonic() + 60
    while partial() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert partial() > 0, "batch wrote nothing within 60 s"
    assert not out.exists()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert b"interrupted" in err
    got = out.read_bytes().splitlines()
    assert 0 < len(got) <= 3000
    ids = [json.loads(x)["patient_id"] for x in got]
    assert ids == [f"LH4-{i:07d}" for i in range(1, len(got) + 1)]  # a clean prefix, in order
    assert not list(tmp_path.glob("*.partial"))


def test_ctrl_c_before_any_case_is_done_leaves_an_earlier_output_as_it_was(tmp_path: Path) -> None:
    """Ctrl-C while batch is still checking pathways, reading ahead or starting workers: nothing was
    done, so the earlier file stays (it used to be replaced by an empty one)."""
    out = tmp_path / "d.jsonl"
    out.write_text("yesterday's worklist\n", encoding="utf-8")
    p = batch_with_open_stdin(out, 10)  # less than a chunk, so no case can be done
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".d.jsonl.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.decode().strip() == f"interrupted before any case was done: {out} left as it was"
    assert out.read_text(encoding="utf-8") == "yesterday's worklist\n"
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_a_batch_waiting_on_an_idle_stdin(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """Two chunks done and the rest of the input not come yet (stdin open, nothing arriving): Ctrl-C
    or SIGTERM ends the wait at once; the signal used to be noted and ignored until the next line."""
    out = tmp_path / "d.jsonl"
    p = batch_with_open_stdin(out, 600)  # 2 chunks of 256 and 88 lines waiting for more
    try:
        deadline = time.monotonic() + 60  # the workers start once the first chunks are read
        while len(psutil.Process(p.pid).children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # the two chunks are sent and batch is blocked reading the third
        p.send_signal(sig)
        assert p.wait(timeout=20) == code  # stdin still open: only the signal can end it
    finally:
        assert p.stdin is not None and p.stderr is not None
        p.stdin.close()
        err = p.stderr.read()
        p.kill()
    assert err.startswith(b"interrupted: output holds input lines 1-"), err
    ids = [json.loads(x)["patient_id"] for x in out.read_bytes().splitlines()]
    assert len(ids) in (256, 512) and ids == [f"LH4-{i:07d}" for i in range(1, len(ids) + 1)]
    assert not list(tmp_path.glob("*.partial"))


def _running_batch(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[psutil.Process]]:
    """A batch with 3000 cases fed and stdin left open, once it has written something; and its workers."""
    p = subprocess.Popen(
        [*CLI, "batch", "-", "--pathways", str(FIXTURES), "--workers", "2", "--out", str(tmp_path / "d.jsonl")],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdin is not None
    p.stdin.write("".join(synth_lines(3000, seed=4, exams=NO_EXAMS)).encode())
    p.stdin.flush()
    deadline = time.monotonic() + 60
    while sum(f.stat().st_size for f in tmp_path.glob(".d.jsonl.*.partial")) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = psutil.Process(p.pid).children()
    assert len(workers) == 2, workers
    return p, workers


def _still_running(procs: list[psutil.Process], within: float = 20.0) -> list[psutil.Process]:
    deadline = time.monotonic() + within
    while True:
        alive = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_sigterm_stops_batch_as_ctrl_c_does(tmp_path: Path) -> None:
    """`kill PID` (the main process only): workers ended, the prefix done written, no .partial, exit 143."""
    p, workers = _running_batch(tmp_path)
    p.terminate()
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert err.startswith(b"interrupted: output holds input lines 1-")
    ids = [json.loads(x)["patient_id"] for x in (tmp_path / "d.jsonl").read_bytes().splitlines()]
    assert 0 < len(ids) <= 3000 and ids == [f"LH4-{i:07d}" for i in range(1, len(ids) + 1)]
    assert not list(tmp_path.glob("*.partial"))
    assert _still_running(workers) == []


def test_batch_workers_die_with_their_parent(tmp_path: Path) -> None:
    """Even a SIGKILLed batch leaves no worker processes behind (they would hold cores for nothing)."""
    p, workers = _running_batch(tmp_path)
    p.kill()
    p.communicate(timeout=60)
    assert _still_running(workers) == []


def test_sigterm_stops_synth_without_a_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    out.write_text("yesterday's cohort\n", encoding="utf-8")
    p = subprocess.Popen([*CLI, "synth", "--n", "10000000", "--out", str(out)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while sum(f.stat().st_size for f in tmp_path.glob(".c.jsonl.*.partial")) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    p.terminate()
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert out.read_text(encoding="utf-8") == "yesterday's cohort\n"
    assert not list(tmp_path.glob("*.partial"))


def test_a_failed_run_leaves_an_earlier_output_as_it_was(tmp_path: Path) -> None:
    """No lost data: batch, synth and report write beside their target and move the file over it
    only when they finish, so a run that fails leaves an earlier file of the same name alone."""
    cohort = tmp_path / "cohort.jsonl"
    cohort.write_text("".join(synth_lines(20, seed=5, exams=NO_EXAMS)), encoding="utf-8")
    out = tmp_path / "decisions.jsonl"
    out.write_text("yesterday's worklist\n", encoding="utf-8")
    for argv, why in (
        (["batch", str(cohort), "--out", str(out), "--pathways", str(tmp_path / "missing")], "cannot read"),
        (["report", str(cohort), "--out", str(tmp_path / "r.md")], "holds no carepath decisions"),
    ):
        r = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and why in r.stderr, r.stderr
        assert out.read_text(encoding="utf-8") == "yesterday's worklist\n"
    r = subprocess.run([*CLI, "batch", str(cohort), "--out", str(out), "--pathways", str(FIXTURES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text(encoding="utf-8").splitlines()) == 20 and oct(out.stat().st_mode & 0o777) != "0o600"
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "r.md").exists()
    for argv, why in (
        (["batch", str(cohort), "--out", str(tmp_path / "no" / "d.jsonl")], "cannot write"),
        (["batch", str(cohort), "--out", str(tmp_path)], "is a directory"),
        (["report", str(out), "--out", str(tmp_path / "r.pdf")], "a report is .html"),
        (["synth", "--n", "2", "--out", str(tmp_path / "no" / "c.jsonl")], "cannot write"),
    ):
        r = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and why in r.stderr and "internal error" not in r.stderr, r.stderr


def test_batch_starts_no_more_workers_than_there_are_chunks(tmp_path: Path) -> None:
    """--workers is a ceiling: a 40-line cohort is one chunk of work, so one worker process starts."""
    import os

    cohort = tmp_path / "cohort.jsonl"
    cohort.write_text("".join(synth_lines(40, seed=5, exams=NO_EXAMS)), encoding="utf-8")
    most = 4 * (os.cpu_count() or 1)
    r = subprocess.run([*CLI, "batch", str(cohort), "--pathways", str(FIXTURES), "--workers", str(most)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 40 and r.stderr.rstrip().endswith(" cases/s, 1 worker"), r.stderr
    r = subprocess.run(
        [*CLI, "batch", str(cohort), "--pathways", str(FIXTURES), "--workers", "2", "--chunk", "10"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stderr.rstrip().endswith(" cases/s, 2 workers"), r.stderr


def test_an_unreachable_dask_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    import os

    cohort = tmp_path / "cohort.jsonl"
    cohort.write_text("".join(synth_lines(5, seed=5, exams=NO_EXAMS)), encoding="utf-8")
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    argv = [*CLI, "batch", str(cohort), "--pathways", str(FIXTURES), "--backend", "dask", "--scheduler", "tcp://127.0.0.1:1"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in r.stderr, r.stderr


def test_local_and_dask_agree_on_10000_cases() -> None:
    """The dask extra is installed by scripts/setup; without it this test fails rather than hides."""
    data = "".join(synth_lines(10_000, seed=10, exams=NO_EXAMS)).encode()
    local, dask = io.BytesIO(), io.BytesIO()
    s1 = run_batch(io.BytesIO(data), local, workers=2, pathways=str(FIXTURES), backend="local")
    s2 = run_batch(io.BytesIO(data), dask, workers=2, pathways=str(FIXTURES), backend="dask")
    assert s1.cases == s2.cases == 10_000 and s1.errors == s2.errors == 0
    assert local.getvalue() == dask.getvalue()
