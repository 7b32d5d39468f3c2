"""The worker writes EvaluateResponse bytes from the engine's decision with its one encoder
(carepath.service.encode.ResponseEncoder): they must be exactly what protobuf's own serialisation of
the decision writes, the first time and from what the encoder kept."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from conftest import FIXTURES, ROOT
from grpc_helpers import SAMPLE, varied_case

from carepath.decide import Values
from carepath.errors import CaseError
from carepath.evaluate import Engine
from carepath.population.synth import synth_lines
from carepath.scenarios import iter_scenarios
from carepath.service.convert import decision_to_proto
from carepath.service.encode import ResponseEncoder
from carepath_client._proto.v1 import decision_service_pb2 as ds


def reference(rid: str, d: Any) -> bytes:
    out: bytes = ds.EvaluateResponse(request_id=rid, decision=decision_to_proto(d)).SerializeToString()
    return out


def decisions() -> list[Any]:
    bundled = Engine.from_directory(ROOT / "pathways")
    fixture = Engine.from_directory(FIXTURES)
    out = [fixture.evaluate(SAMPLE), bundled.evaluate(SAMPLE)]
    out += [e.evaluate(varied_case(i)) for i in range(60) for e in (bundled, fixture)]
    for sc in iter_scenarios(ROOT / "tests" / "scenarios"):
        try:
            out.append(bundled.evaluate(sc.case))
        except Exception:  # scenarios that expect an error have no decision
            continue
    return out


def test_same_bytes_as_protobuf_for_real_decisions() -> None:
    ds_ = decisions()
    assert len(ds_) > 100
    encoder = ResponseEncoder()
    for i, d in enumerate(ds_):
        assert encoder.encode(f"r{i}", d) == reference(f"r{i}", d)
        assert encoder.encode("", d) == reference("", d)
    # the engine's values are shared objects; the encoder keeps their bytes (per field tag), by the
    # object, in itself: the second encoding above came from there
    shared = [v for d in ds_ for v in [t["values"] for t in d["trace"]] + [r["values"] for r in d["recommendations"]] if type(v) is Values]
    assert shared
    assert all(not hasattr(v, "__dict__") and not hasattr(v, "wire") for v in shared)  # nothing kept on the engine's objects
    kept = [encoder.kept(v) for v in shared]
    assert all(k is not None for k in kept)
    assert {key for k in kept if k is not None for key in k if type(key) is bytes} == {b"\x1a", b"\x52"}
    # ... and so are whole trace entries without suppression notes, under their (pathway, rule)
    plain = [t for d in ds_ for t in d["trace"] if "suppressed" not in t]
    assert plain and all((t["pathway"], t["rule"]) in (encoder.kept(t["values"]) or {}) for t in plain)
    # ... and whole recommendations made by one rule, under all of their fields
    single = [r for d in ds_ for r in d["recommendations"] if type(r["values"]) is Values and len(r["rules"]) == 1]
    assert single and all(
        any(type(k) is tuple and k[:3] == (len(r), r["kind"], r["rule"]) for k in encoder.kept(r["values"]) or {}) for r in single
    )
    # an equal values object that is another object finds nothing kept (kept by identity, not content)
    assert encoder.kept(Values(dict(shared[0]))) is None


def many_cases() -> list[tuple[Engine, Any]]:
    bundled = Engine.from_directory(ROOT / "pathways")
    fixture = Engine.from_directory(FIXTURES)
    out: list[tuple[Engine, Any]] = [(fixture, SAMPLE), (bundled, SAMPLE)]
    out += [(e, varied_case(i)) for i in range(60) for e in (bundled, fixture)]
    out += [(bundled, sc.case) for sc in iter_scenarios(ROOT / "tests" / "scenarios")]
    out += [(bundled, json.loads(line)) for line in synth_lines(1500, 12)]
    return out


@pytest.mark.parametrize("limit", [65536, 7])
def test_worker_bytes_are_protobufs_for_many_decisions(limit: int) -> None:
    """As a worker runs: one encoder over thousands of decisions (scenarios, synthetic cases), the
    same engines both rounds, so the second is written largely from what was kept; with a small
    limit, the store starts again many times over and the bytes stay the same."""
    compared = reused = 0
    encoder = ResponseEncoder(limit)
    cases = many_cases()
    for _ in range(2):
        for i, (engine, case) in enumerate(cases):
            try:
                decision = engine.evaluate(case)
            except CaseError:  # scenarios that expect an error have no decision
                continue
            reused += any(encoder.kept(t["values"]) for t in decision["trace"])
            assert encoder.encode(f"r{i}", decision) == reference(f"r{i}", decision)
            compared += 1
    assert compared > 3000
    assert reused > (1000 if limit > 1000 else 0), reused
    assert len(encoder._shared) <= limit


def test_kept_entries_are_told_apart_by_every_field() -> None:
    """Kept bytes are keyed by everything but the shared values: the same values under another
    rule, pathway, reason, citation or detail, with suppression notes, with a detail left out or
    set to another type, are written as protobuf writes them (or refused, as protobuf refuses them)."""
    d = Engine.from_directory(ROOT / "pathways").evaluate(varied_case(3))
    first, rec = d["trace"][0], d["recommendations"][0]
    assert type(first["values"]) is Values and type(rec["values"]) is Values
    encoder = ResponseEncoder()
    encoder.encode("", d)  # keeps the entries for the values
    moved = copy.copy(d)
    moved["trace"] = [{**first, "rule": first["rule"] + ".other"}, {**first, "suppressed": ["a note"]}, {**first, "pathway": "x"}]
    detail = next(k for k in rec if k not in ("kind", "rule", "rules", "reason", "citation", "values"))
    moved["recommendations"] = [
        {**rec, "rule": "other", "rules": ["other"]},
        {**rec, "reason": rec["reason"] + "!"},
        {**rec, "citation": "another"},
        {**rec, detail: str(rec[detail]) + "x" if isinstance(rec[detail], str) else rec[detail] + 1},
        {**rec, "rules": [rec["rule"], "second"]},
    ]
    assert encoder.encode("r", moved) == reference("r", moved)
    for odd in ({k: v for k, v in rec.items() if k != detail}, {**rec, detail: True if isinstance(rec[detail], int) else None}):
        moved["recommendations"] = [odd]
        try:
            want = reference("r", moved)
        except Exception:  # protobuf refuses it: so does the fallback behind the kept bytes
            with pytest.raises(Exception):  # noqa: B017
                encoder.encode("r", moved)
            continue
        assert encoder.encode("r", moved) == want


def _edges() -> list[Any]:
    base = Engine.from_directory(ROOT / "pathways").evaluate(SAMPLE)
    rec = {"kind": "test", "code": "egfr", "rule": "r", "rules": ["r", ""], "reason": "", "citation": "c", "values": {}}
    values: dict[str, object] = {
        "neg": -1,
        "zero": 0,
        "big": 2**62,
        "small": 127,
        "mid": 128,
        "f0": 0.0,
        "fneg": -0.0,
        "nan": float("nan"),
        "t": True,
        "f": False,
        "none": None,
        "s": "",
        "u": "élan ✓ 中",
        "": 1,
        "long" * 50: "x" * 20000,
    }
    out = []
    for extra in (
        {"kind": "test", "code": "egfr", "loinc": "", "values": values},
        {"kind": "test", "code": "", "loinc": "33914-3"},
        {"kind": "follow_up", "days": 0},
        {"kind": "follow_up", "days": -3},
        {"kind": "follow_up", "days": 2**31},  # out of int32: protobuf refuses it
        {"kind": "referral", "direction": "up", "urgency": "", "specialty": "x"},
        {"kind": "referral", "direction": "down", "specialty": "x"},
        {"kind": "medication", "action": "start", "atc": "A10BA02", "name": "metformin"},
        {"kind": "alert", "severity": "info", "text": "t"},
        {"kind": "alert", "severity": 3, "text": "t"},  # wrong type
        {"kind": "test", "code": "egfr", "values": {"x": 2**63}},  # out of int64
        {"kind": "test", "code": "egfr", "values": {"x": [1]}},  # not a scalar
        {"kind": "test", "code": "egfr", "extra": 1},  # not in the protos
    ):
        d = copy.deepcopy(base)
        d["recommendations"].append({**rec, **extra})
        out.append(d)
    d = copy.deepcopy(base)
    d["trace"].append({"pathway": "", "rule": "", "values": values, "suppressed": ["", "why"]})
    d["pathways"][0]["enrolled"] = False
    d["patient_id"] = ""
    out.append(d)
    d = copy.deepcopy(base)
    d["unknown"] = 1
    out.append(d)
    return out


@pytest.mark.parametrize("i", range(len(_edges())))
def test_edges_same_bytes_or_same_error(i: int) -> None:
    d = _edges()[i]
    assert outcome(ResponseEncoder().encode, "edge", d) == outcome(reference, "edge", d)


def outcome(write: Any, rid: str, d: Any) -> bytes | str:
    """The bytes written, or the name of the exception raised."""
    try:
        out: bytes = write(rid, d)
    except Exception as exc:
        return type(exc).__name__
    return out
