"""carepath batch's progress bar (tqdm, on stderr): drawn on a terminal, silent on a pipe, closed at the end."""

from __future__ import annotations

import io
import subprocess
import sys

from conftest import FIXTURES

from carepath.population.batch import Progress, run_batch
from carepath.population.synth import synth_lines


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def cohort(n: int) -> bytes:
    return "".join(synth_lines(n, seed=3, exams=frozenset())).encode()


def test_a_stream_that_is_not_a_terminal_gets_nothing() -> None:
    stream = io.StringIO()
    p = Progress(stream, 10_000, stream.isatty())
    p.update(10, 5_000)
    p.update(20, 10_000, force=True)
    p.close()
    assert stream.getvalue() == ""


def test_a_run_on_a_terminal_shows_bytes_and_the_case_count() -> None:
    data = cohort(300)
    tty, out = FakeTTY(), io.BytesIO()
    progress = Progress(tty, len(data), tty.isatty())
    stats = run_batch(io.BytesIO(data), out, workers=1, pathways=str(FIXTURES), chunk_lines=64, progress=progress)
    assert stats.cases == 300 and out.getvalue().count(b"\n") == 300
    shown = tty.getvalue()
    last = shown.rstrip("\n").split("\r")[-1]  # the bar as left on the screen
    assert last.lstrip().startswith("100%") and "300 cases" in last and "cases/s" in last
    assert shown.endswith("\n")  # closed: the summary line that follows starts on a line of its own


def test_without_a_size_the_bar_counts_cases() -> None:
    tty = FakeTTY()
    run_batch(io.BytesIO(cohort(150)), io.BytesIO(), workers=1, pathways=str(FIXTURES), progress=Progress(tty, None, True))
    last = tty.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("150 cases") and "cases/s" in last and "%" not in last


def test_close_twice_and_thousands() -> None:
    tty = FakeTTY()
    p = Progress(tty, 50_000_000, True)
    p.update(12_345, 25_000_000, force=True)
    p.close()
    p.close()  # the run's finally and an interrupted caller may both close it
    p.update(99_999, 50_000_000, force=True)  # after close: nothing more is drawn
    shown = tty.getvalue()
    assert "12,345 cases" in shown and "50%" in shown and "99,999" not in shown and shown.count("\n") == 1


def test_batch_on_a_pipe_draws_no_bar() -> None:
    code = "import sys; from carepath.cli import main; sys.exit(main())"
    r = subprocess.run(
        [sys.executable, "-c", code, "batch", "-", "--pathways", str(FIXTURES), "--workers", "1"],
        input=cohort(40),
        capture_output=True,
    )
    assert r.returncode == 0, r.stderr
    assert b"\r" not in r.stderr and b"%|" not in r.stderr and r.stderr.startswith(b"40 cases")
