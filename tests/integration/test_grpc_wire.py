"""The worker writes EvaluateResponse bytes directly: they must be exactly what protobuf writes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from conftest import FIXTURES, ROOT
from grpc_helpers import SAMPLE, varied_case

from carepath.decide import Planned, Values, render
from carepath.errors import CaseError
from carepath.evaluate import Engine
from carepath.population.synth import synth_lines
from carepath.scenarios import iter_scenarios
from carepath.service.convert import decision_to_proto, evaluate_response_bytes, planned_response_bytes
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
    for i, d in enumerate(ds_):
        assert evaluate_response_bytes(f"r{i}", d) == reference(f"r{i}", d)
        assert evaluate_response_bytes("", d) == reference("", d)
    # the engine's values are shared objects whose bytes are kept on them (per field tag): the
    # second encoding above came from there, in trace entries and recommendations alike
    shared = [v for d in ds_ for v in [t["values"] for t in d["trace"]] + [r["values"] for r in d["recommendations"]] if type(v) is Values]
    assert shared
    assert {key for v in shared for key in v.wire if type(key) is bytes} == {b"\x1a", b"\x52"}
    # ... and so are whole trace entries without suppression notes, under their (pathway, rule)
    plain = [t for d in ds_ for t in d["trace"] if "suppressed" not in t]
    assert plain and all((t["pathway"], t["rule"]) in t["values"].wire for t in plain)
    # ... and whole recommendations made by one rule, under all of their fields
    single = [r for d in ds_ for r in d["recommendations"] if type(r["values"]) is Values and len(r["rules"]) == 1]
    assert single and all(any(type(k) is tuple and k[:2] == (r["kind"], r["rule"]) for k in r["values"].wire) for r in single)


def planned_cases() -> list[tuple[Engine, Any]]:
    bundled = Engine.from_directory(ROOT / "pathways")
    fixture = Engine.from_directory(FIXTURES)
    out: list[tuple[Engine, Any]] = [(fixture, SAMPLE), (bundled, SAMPLE)]
    out += [(e, varied_case(i)) for i in range(60) for e in (bundled, fixture)]
    out += [(bundled, sc.case) for sc in iter_scenarios(ROOT / "tests" / "scenarios")]
    out += [(bundled, json.loads(line)) for line in synth_lines(1500, 12)]
    return out


def test_planned_bytes_are_the_rendered_decisions_bytes() -> None:
    """The worker writes a decision's bytes from its plan, without the decision's dicts: byte for
    byte what protobuf writes for the rendered decision, the first time a plan, a rule's values or
    an enrolment is seen and again from what was kept of them."""
    compared = reused = 0
    cases = planned_cases()  # the same engines both rounds: the second from the parts they kept
    for _ in range(2):
        for i, (engine, case) in enumerate(cases):
            try:
                planned = engine.evaluate_planned(case)
            except CaseError:  # scenarios that expect an error have no decision
                continue
            reused += tuple(planned.enrolled[cp.id] for _, cp, _ in planned.fired) in planned.plan.wire
            decision = render(planned)
            assert planned_response_bytes(f"r{i}", planned) == reference(f"r{i}", decision)
            assert engine.evaluate(case) == decision
            assert planned.plan.wire  # written from the plan, not by the fallback
            compared += 1
    assert compared > 3000
    assert reused > 1000, reused  # plans whose encoded parts were kept, written again from them


def test_planned_bytes_fall_back_to_the_rendered_path_on_anything_unexpected() -> None:
    """A plan whose recommendation carries a field the protos lack, or an out-of-range value, is
    written (or refused) exactly as the rendered decision is."""
    engine = Engine.from_directory(ROOT / "pathways")
    planned = engine.evaluate_planned(SAMPLE)
    body, rules, srcs = planned.plan.recs[0]
    for template in ({**body.template, "extra": 1}, {**body.template, "kind": "nonsense"}):
        odd = copy.copy(body)
        odd.template, odd.wire = template, {}
        plan = copy.copy(planned.plan)
        plan.recs = [(odd, rules, srcs), *planned.plan.recs[1:]]
        plan.wire = {}
        moved = Planned(planned.case, plan, planned.reads, planned.fired, planned.enrolled, planned.site)
        assert outcome(planned_response_bytes, "r", moved) == outcome(lambda rid, p: reference(rid, render(p)), "r", moved)


def test_kept_entries_are_told_apart_by_every_field() -> None:
    """Kept bytes are keyed by everything but the shared values: the same values under another
    rule, pathway, reason, citation or detail, with suppression notes, with a detail left out or
    set to another type, are written as protobuf writes them (or refused, as protobuf refuses them)."""
    d = Engine.from_directory(ROOT / "pathways").evaluate(varied_case(3))
    first, rec = d["trace"][0], d["recommendations"][0]
    assert type(first["values"]) is Values and type(rec["values"]) is Values
    evaluate_response_bytes("", d)  # keeps the entries on the values
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
    assert evaluate_response_bytes("r", moved) == reference("r", moved)
    for odd in ({k: v for k, v in rec.items() if k != detail}, {**rec, detail: True if isinstance(rec[detail], int) else None}):
        moved["recommendations"] = [odd]
        try:
            want = reference("r", moved)
        except Exception:  # protobuf refuses it: so does the fallback behind the kept bytes
            with pytest.raises(Exception):  # noqa: B017
                evaluate_response_bytes("r", moved)
            continue
        assert evaluate_response_bytes("r", moved) == want


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
    assert outcome(evaluate_response_bytes, "edge", d) == outcome(reference, "edge", d)


def outcome(write: Any, rid: str, d: Any) -> bytes | str:
    """The bytes written, or the name of the exception raised."""
    try:
        out: bytes = write(rid, d)
    except Exception as exc:
        return type(exc).__name__
    return out
