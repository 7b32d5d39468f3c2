"""Every decision has exactly the shape carepath.contract types it with (what the typed client and
docs/decision.schema.json promise integrators): the golden scenarios' decisions and a synthetic
cohort's, validated strictly by pydantic (no other keys, no missing ones, literals and types) and
by jsonschema against the committed schema file, as a non-Python integrator would."""

from __future__ import annotations

import json
from typing import Any

from conftest import BUNDLED, ROOT, SCENARIO_DIR
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter, ValidationError

from carepath import contract
from carepath.evaluate import Engine
from carepath.population.synth import synth
from carepath.scenarios import iter_scenarios

PATHWAYS = BUNDLED  # the `engine` fixture's (conftest.py)
DECISION: TypeAdapter[contract.Decision] = TypeAdapter(contract.Decision)
SCHEMA = Draft202012Validator(json.loads((ROOT / "docs" / "decision.schema.json").read_text(encoding="utf-8")))


def problems(decision: Any) -> list[str]:
    try:
        DECISION.validate_python(decision)
    except ValidationError as exc:
        return [".".join(map(str, e["loc"])) + ": " + e["type"] for e in exc.errors()]
    return []


def test_scenario_and_cohort_decisions_have_the_contract_shape(engine: Engine) -> None:
    cases = [s.case for s in iter_scenarios(SCENARIO_DIR)] + list(synth(400, 3))
    kinds: set[str] = set()
    optional: set[str] = set()
    for case in cases:
        decision = engine.evaluate(case)
        assert problems(decision) == [], case["patient_id"]
        assert [e.message for e in SCHEMA.iter_errors(json.loads(json.dumps(decision)))] == [], case["patient_id"]
        kinds |= {r["kind"] for r in decision["recommendations"]}
        optional |= {k for r in [*decision["recommendations"], *decision["trace"]] for k in r if k in ("loinc", "urgency", "suppressed")}
    assert len(cases) > 400
    assert kinds == {"test", "medication", "referral", "follow_up", "alert"}  # every kind was checked
    assert optional == {"loinc", "urgency", "suppressed"}  # ... and every optional key, present


def test_a_wrong_shape_is_named(engine: Engine) -> None:
    decision = engine.evaluate(iter_scenarios(SCENARIO_DIR)[0].case)
    rec = dict(decision["recommendations"][0])
    assert problems(decision) == []
    assert problems({**decision, "extra": 1}) == ["extra: extra_forbidden"]
    assert not SCHEMA.is_valid({**decision, "extra": 1})
    assert not SCHEMA.is_valid({**decision, "recommendations": [{**rec, "kind": "prescription"}]})
    assert problems({k: v for k, v in decision.items() if k != "trace"}) == ["trace: missing"]
    assert problems({**decision, "recommendations": [{**rec, "rules": "r1"}]}) == [f"recommendations.0.{rec['kind']}.rules: list_type"]
    assert problems({**decision, "recommendations": [{**rec, "kind": "prescription"}]}) == ["recommendations.0: union_tag_invalid"]
    entry = {**decision["trace"][0], "values": {"sbp": [1]}}
    assert problems({**decision, "trace": [entry]})[0].startswith("trace.0.values.sbp.")


def test_not_required_keys_are_the_optional_ones() -> None:
    assert contract.TestRecommendation.__optional_keys__ == {"loinc"}
    assert contract.ReferralRecommendation.__optional_keys__ == {"urgency"}
    assert contract.TraceEntry.__optional_keys__ == {"suppressed"}
    assert contract.Decision.__optional_keys__ == frozenset()
