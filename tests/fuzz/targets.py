"""The fuzz targets' checks, without atheris (tests/unit/test_fuzz.py replays the corpus and the
regressions through them; tests/fuzz/fuzz_targets.py runs them under atheris).

- ``case``: bytes as case JSON, through the case parser (carepath.case.parse_json) and the engine's
  validation and evaluation (Engine.evaluate on the test fixture pathway). Allowed outcomes: a
  decision, or CaseError naming a field. Anything else raised is a crash.
- ``request``: bytes as a carepath.v1.EvaluateRequest, through the service worker's decoder and
  evaluation (Worker.evaluate, what every Evaluate and stream case runs). Allowed: OK, a case error
  or NOT_FOUND; INTERNAL (an unexpected exception inside) or anything raised is a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from carepath.case import parse_json
from carepath.errors import CaseError
from carepath.evaluate import Engine
from carepath.service.worker import CASE_ERROR, NOT_FOUND, OK, Worker, load

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "pathways"
CORPUS = Path(__file__).resolve().parent / "corpus"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"

_engine: Engine | None = None
_worker: Worker | None = None


def check_case(data: bytes) -> None:
    global _engine
    if _engine is None:
        _engine = Engine.from_directory(FIXTURES)
    try:
        decision = _engine.evaluate(parse_json(data))
    except CaseError as exc:
        assert exc.violations and all(isinstance(v.field, str) and v.message for v in exc.violations), exc.violations
        return
    assert isinstance(decision["recommendations"], list)


def check_request(data: bytes) -> None:
    global _worker
    if _worker is None:
        logging.getLogger("carepath").setLevel(logging.CRITICAL)  # an INTERNAL is reported by the assert below
        engine, sources = load(str(FIXTURES))
        _worker = Worker(engine, sources)
    status, payload, _ = _worker.evaluate(data, "Evaluate")
    assert status in (OK, CASE_ERROR, NOT_FOUND), f"the worker answered {status} ({payload!r})"
    if status == CASE_ERROR:
        assert payload and all(isinstance(f, str) and m for f, m in payload), payload


TARGETS: dict[str, Callable[[bytes], None]] = {"case": check_case, "request": check_request}
