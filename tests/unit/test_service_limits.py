"""The service's pure bounds: what an error status may carry (the gRPC behaviour is in
tests/integration/test_grpc_robustness.py)."""

from __future__ import annotations

import grpc

from carepath.service import status


def test_carried_violations_are_capped_in_number_length_and_bytes() -> None:
    many = [(f"conditions[{i}]", "'X' is not an ICD-10 code (e.g. E11.9)") for i in range(300)]
    shown = status.carried(many)
    assert len(shown) <= status.MAX_VIOLATIONS + 1
    assert shown[:3] == tuple(many[:3])
    assert shown[-1] == ("", f"and {300 - (len(shown) - 1)} more violation(s), not shown")
    assert sum(len(f.encode()) + len(m.encode()) + 10 for f, m in shown) <= status.DETAILS_BUDGET
    few = [("age", "must be at most 130")]
    assert status.carried(few) == (("age", "must be at most 130"),)
    long = status.carried([("x" * 1000, "y" * 1000)])
    assert long == (("x" * 127 + "…", "y" * 255 + "…"),)


def test_status_message_is_clipped_by_utf8_bytes() -> None:
    assert status.clip_bytes("short", 512) == "short"
    clipped = status.clip_bytes("本" * 1000, 512)
    assert len(clipped.encode()) <= 512 and clipped.endswith("…") and clipped.startswith("本" * 100)
    failure = status.Failure(grpc.StatusCode.NOT_FOUND, "x" * 100_000)
    assert len(failure.rich().details.encode()) == 512
    assert len(failure.stream_error().message.encode()) == 512


def test_case_failure_message_names_the_first_violation_and_counts_the_rest() -> None:
    f = status.case_failure([("conditions[0]", "bad"), ("conditions[1]", "bad")])
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f.message == "invalid case: conditions[0]: bad (and 1 more)"
    assert f.violations == (("conditions[0]", "bad"), ("conditions[1]", "bad"))
