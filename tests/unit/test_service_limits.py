"""The service's pure bounds: deadlines of unary calls and of a stream's batches, and what an error
status may carry (the gRPC behaviour is in tests/integration/test_grpc_robustness.py)."""

from __future__ import annotations

import grpc

from carepath.service import server, status


def test_a_batch_gets_at_most_max_deadline_and_never_passes_the_stream_end() -> None:
    now = 1000.0
    assert server.batch_deadline(None, now) == now + server.MAX_DEADLINE  # no deadline from the caller
    assert server.batch_deadline(now + 300, now) == now + server.MAX_DEADLINE  # timeout=300: this batch gets 60 s
    assert server.batch_deadline(now + 5, now) == now + 5  # the caller's deadline comes first
    later = now + 250  # the same stream, 250 s on: its batches still get their time
    assert server.batch_deadline(now + 300, later) == now + 300
    assert server.batch_deadline(None, later) == later + server.MAX_DEADLINE


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


def test_jobs_pack_onto_the_first_worker_with_room_then_go_to_the_least_loaded() -> None:
    """Generation.pick packs (a busy worker reads the next job without being woken), never past
    PACK cases while another worker has room, and skips dead workers."""
    from carepath.service.pool import PACK, Generation, Pool, _Proc

    gen = Generation(Pool(None, 3), 1, None, 3)
    a, b, c = (_Proc(gen, i, alive=True) for i in range(3))
    gen.workers = [a, b, c]
    assert gen.pick() is a
    a.load = PACK - 1
    assert gen.pick() is a  # still room: packed
    a.load = PACK
    assert gen.pick() is b  # full: the next worker with room
    a.load, b.load, c.load = PACK + 2, PACK + 3, PACK + 1
    assert gen.pick() is c  # none has room: the least loaded
    c.alive = False
    assert gen.pick() is a  # a dead worker is never picked
    a.alive = b.alive = False
    assert gen.pick() is None
