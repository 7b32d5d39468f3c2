"""Every decision has exactly the shape carepath.contract types it with (what the typed client
promises its users): the golden scenarios' decisions and a synthetic cohort's, key for key."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest

from carepath import contract
from carepath.evaluate import Engine
from carepath.population.synth import synth
from carepath.scenarios import iter_scenarios

ROOT = Path(__file__).resolve().parents[2]


def violations(value: Any, tp: Any, where: str = "decision") -> list[str]:
    """Where ``value`` is not of type ``tp`` (TypedDicts exactly: no key missing, none extra)."""
    if tp is Any:
        return []
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if isinstance(value, dict) and "kind" in value:  # a recommendation: the option of its kind
            options = tuple(o for o in options if value["kind"] in get_args(get_type_hints(o)["kind"])) or options
        found = [violations(value, o, where) for o in options]
        return [] if any(not f for f in found) else min(found, key=len)
    if origin is Literal:
        return [] if value in get_args(tp) else [f"{where}: {value!r} is not one of {get_args(tp)}"]
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        hints = get_type_hints(tp)
        out = [f"{where}.{k}: missing" for k in sorted(tp.__required_keys__) if k not in value]
        out += [f"{where}.{k}: not in {tp.__name__}" for k in value if k not in hints]
        for k, v in value.items():
            if k in hints:
                out += violations(v, hints[k], f"{where}.{k}")
        return out
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in violations(item, get_args(tp)[0], f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        kt, vt = get_args(tp)
        return [e for k, v in value.items() for e in (violations(k, kt, f"{where} key") + violations(v, vt, f"{where}.{k}"))]
    if tp is type(None):
        return [] if value is None else [f"{where}: expected null, got {value!r}"]
    if tp is float:  # as in Python typing, an int is a float
        ok = type(value) in (float, int)
    elif tp is int:
        ok = type(value) is int
    else:
        ok = type(value) is tp
    return [] if ok else [f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_directory()


def test_scenario_and_cohort_decisions_have_the_contract_shape(engine: Engine) -> None:
    cases = [s.case for s in iter_scenarios(ROOT / "tests" / "scenarios")] + list(synth(600, 3))
    kinds: set[str] = set()
    checked = 0
    for case in cases:
        decision = engine.evaluate(case)
        assert violations(decision, contract.Decision) == [], case["patient_id"]
        kinds |= {r["kind"] for r in decision["recommendations"]}
        checked += 1
    assert checked > 600
    assert kinds == {"test", "medication", "referral", "follow_up", "alert"}  # every kind was checked


def test_the_checker_sees_a_wrong_shape(engine: Engine) -> None:
    decision = engine.evaluate(next(s.case for s in iter_scenarios(ROOT / "tests" / "scenarios") if s.pathway == "hypertension"))
    rec = dict(decision["recommendations"][0])
    assert violations(decision, contract.Decision) == []
    assert violations({**decision, "extra": 1}, contract.Decision) == ["decision.extra: not in Decision"]
    assert violations({k: v for k, v in decision.items() if k != "trace"}, contract.Decision) == ["decision.trace: missing"]
    bad = {**decision, "recommendations": [{**rec, "rules": "r1"}]}
    assert violations(bad, contract.Decision) == ["decision.recommendations[0].rules: expected a list, got str"]
    bad = {**decision, "recommendations": [{**rec, "kind": "medication", "action": "prescribe", "atc": "C08", "name": "x"}]}
    found = violations(bad, contract.Decision)
    assert "decision.recommendations[0].action: 'prescribe' is not one of ('start', 'titrate', 'add', 'switch', 'stop', 'avoid')" in found
    entry = {**decision["trace"][0], "values": {"sbp": [1]}}
    assert violations({**decision, "trace": [entry]}, contract.Decision)[0].startswith("decision.trace[0].values.sbp:")


def test_not_required_keys_are_the_optional_ones() -> None:
    assert contract.TestRecommendation.__optional_keys__ == {"loinc"}
    assert contract.ReferralRecommendation.__optional_keys__ == {"urgency"}
    assert contract.TraceEntry.__optional_keys__ == {"suppressed"}
