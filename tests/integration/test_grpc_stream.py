"""EvaluateStream sends cases to the workers in batches: order, per-case errors and a worker's death."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES
from grpc_helpers import SAMPLE, Server, varied_case, wait_for

from carepath.cli import dumps
from carepath.client import CarepathClient
from carepath.errors import CaseError
from carepath.evaluate import Engine

pytestmark = pytest.mark.timeout(120)


def test_bad_cases_inside_batches_get_their_own_errors(tmp_path: Path) -> None:
    s = Server(tmp_path, FIXTURES, 2)
    s.wait_serving()
    engine = Engine.from_directory(FIXTURES)
    try:
        cases: list[Any] = [dict(SAMPLE, age=True) if i % 7 == 3 else varied_case(i) for i in range(400)]
        with CarepathClient(s.target) as c:
            results = list(c.evaluate_many(cases))
        assert [r.request_id for r in results] == [str(i) for i in range(400)]
        for i, (case, r) in enumerate(zip(cases, results, strict=True)):
            if i % 7 == 3:
                assert isinstance(r.error, CaseError) and r.error.violations[0].field == "age"
            else:
                assert r.error is None and dumps(r.decision) == dumps(engine.evaluate(case))
        wait_for(lambda: len([e for e in s.events("rpc") if e["method"] == "EvaluateStream"]) == 400, 5, "a log line per case")
        lines = [e for e in s.events("rpc") if e["method"] == "EvaluateStream"]
        assert sorted(e["request_id"] for e in lines) == sorted(str(i) for i in range(400))
        assert sum(e["status"] == "INVALID_ARGUMENT" for e in lines) == len([i for i in range(400) if i % 7 == 3])
    finally:
        assert s.stop() == 0


def test_worker_killed_mid_stream_cases_are_retried(tmp_path: Path) -> None:
    s = Server(tmp_path, FIXTURES, 2)
    s.wait_serving()
    engine = Engine.from_directory(FIXTURES)
    n = 3000
    try:
        pids = [e["pid"] for e in s.events("worker_started")]
        results = []
        with CarepathClient(s.target, retries=0) as c:

            def cases() -> Iterator[dict[str, Any]]:
                yield from (varied_case(i) for i in range(n))

            for r in c.evaluate_many(cases()):
                results.append(r)
                if len(results) == 300:
                    os.kill(pids[0], signal.SIGKILL)
        assert [r.request_id for r in results] == [str(i) for i in range(n)]
        # the killed worker's cases were retried (each once, on its own) on the other worker
        assert [r.error for r in results if r.error is not None] == []
        for i, r in enumerate(results):
            assert dumps(r.decision) == dumps(engine.evaluate(varied_case(i)))
        wait_for(lambda: bool(s.events("worker_replaced")), 60, "a replacement worker")
    finally:
        assert s.stop() == 0
