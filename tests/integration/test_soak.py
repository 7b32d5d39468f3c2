"""The soak benchmark's CI version (bench/soak.py): 60 seconds of mixed unary and stream load on a real
server with TLS, tokens and the audit trail, reloaded every 20 s and a worker SIGKILLed every 30 s.
Nothing may fail or hang (an UNAVAILABLE the client retried is not a failure), RSS may grow less
than 10% from a third of the run to its end, and every response received has its audit record.
Selected alone with ``-m soak``; left out with ``-m 'not soak'``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

sys.path.insert(0, str(ROOT / "bench"))

import soak

pytestmark = [pytest.mark.soak, pytest.mark.timeout(150)]


def test_a_minute_of_load_with_reloads_and_killed_workers_loses_nothing(tmp_path: Path) -> None:
    args = argparse.Namespace(
        seconds=60.0, callers=2, streams=1, workers=2, pathways=FIXTURES, reload_every=20.0, kill_every=30.0, max_rss_growth=10.0
    )
    report = soak.Soak(args, tmp_path).run()
    assert soak.passed(report, 10.0) == [], report
    assert report["kills"] >= 1 and report["workers_died"] >= report["kills"] and report["workers_replaced"] >= 1, report
    assert report["reloaded"] >= 2, report
    assert report["unary_ok"] > 100 and report["stream_cases_ok"] > 100, report
    assert report["per_minute"] and all(row["p99_ms"] > 0 for row in report["per_minute"].values())
