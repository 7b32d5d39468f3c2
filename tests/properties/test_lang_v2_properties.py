"""Properties of the pathway language v2 (tests/fixtures/lang_v2), on both backends:
recency (a value one day inside / outside its window), visits (same-day repeats, pre-treatment
readings), code-set expansion (a set is the list it names) and rules for everyone (they fire with
no diagnosis code at all); and durable-rules equal to the reference evaluator on generated cases."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carepath import lang
from carepath.case import validate_case
from carepath.derive import Features, derive
from carepath.evaluate import Engine
from carepath.testing.strategies import CaseSpace

V2 = Path(__file__).parents[1] / "fixtures" / "lang_v2"
AS_OF = date(2026, 11, 24)
ENGINE = Engine.from_directory(V2)
REFERENCE = ENGINE.with_backend("reference")
VOCAB = ENGINE.pathways[0].vocab
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
ATC = ["C09AA02", "C09BB04", "C09CA01", "C09DB01", "C09XA02", "C08CA01", "C03AA03", "C03BA11", "C09BA02", "C07AB02", "A10BA02", "N05AN01"]


def case(observations: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"patient_id": "prop", "as_of": AS_OF.isoformat(), "setting": "community", "age": 60, "sex": "female"}
    c.update(pregnant=False, conditions=["I10"], observations=observations, medications=[], allergies=[], findings=[])
    c.update(more)
    return c


def reading(code: str, value: float, days_ago: int) -> dict[str, Any]:
    unit = VOCAB.observations[code].unit
    return {"code": code, "value": value, "unit": unit, "date": (AS_OF - timedelta(days=days_ago)).isoformat()}


def both(c: dict[str, Any]) -> dict[str, Any]:
    d = ENGINE.evaluate(c)
    assert d == REFERENCE.evaluate(c)
    return d


def fired(d: dict[str, Any]) -> set[str]:
    return {t["rule"] for t in d["trace"]}


@SETTINGS
@given(value=st.floats(1.5, 9.0).map(lambda v: round(v, 1)), offset=st.sampled_from([-1, 0, 1]))
def test_a_value_counts_inside_its_window_and_is_unknown_a_day_outside(value: float, offset: int) -> None:
    window = VOCAB.observations["potassium"].current
    assert window == 90
    c = case([reading("potassium", value, window + offset)])
    _, facts = ENGINE.prepare(c)
    le, _ = lang.parse("potassium <= 5.0", VOCAB)
    at_latest, _ = lang.parse("latest(potassium) <= 5.0", VOCAB)
    assert lang.eval3(at_latest, facts) is (value <= 5.0), "latest() reads the value whatever its age"
    assert lang.eval3(le, facts) is ((value <= 5.0) if offset <= 0 else None)
    both(c)


visit_days = st.lists(st.integers(0, 120), min_size=1, max_size=6)
bp_value = st.integers(110, 175)


@st.composite
def bp_history(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for d in draw(visit_days):
        out += [reading("sbp", draw(bp_value), d), reading("dbp", draw(st.integers(60, 105)), d)]
    return out


def _visits() -> lang.Visits:
    e, _ = lang.parse("consecutive_visits(2, above_target(bp), apart 14 days, since antihypertensive)", VOCAB)
    assert isinstance(e, lang.Visits)
    return e


VISITS = _visits()


def visits_fact(observations: list[dict[str, Any]], start: int) -> object:
    meds = [{"atc": "C08CA01", "name": "amlodipine", "since": (AS_OF - timedelta(days=start)).isoformat()}]
    c = case(observations, medications=meds)
    both(c)
    return ENGINE.prepare(c)[1].get(VISITS.key)


@SETTINGS
@given(history=bp_history(), start=st.integers(0, 120))
def test_a_same_day_repeat_of_every_reading_changes_no_visit(history: list[dict[str, Any]], start: int) -> None:
    assert visits_fact(history, start) == visits_fact(history + [dict(r) for r in history], start)


@SETTINGS
@given(history=bp_history(), before=bp_history(), start=st.integers(0, 120))
def test_readings_up_to_the_start_are_never_follow_ups(history: list[dict[str, Any]], before: list[dict[str, Any]], start: int) -> None:
    pre = [r for r in before if (AS_OF - date.fromisoformat(r["date"])).days >= start]  # on or before the start day
    assert visits_fact(history, start) == visits_fact(history + pre, start)


@SETTINGS
@given(meds=st.lists(st.sampled_from(ATC), max_size=4), allergies=st.lists(st.sampled_from(ATC), max_size=2))
def test_a_code_set_evaluates_as_the_list_it_names(meds: list[str], allergies: list[str]) -> None:
    c = validate_case(case([], medications=[{"atc": a} for a in meds], allergies=allergies), VOCAB)
    for name, cs in VOCAB.code_sets.items():
        system_calls = ("taking", "allergic", "count_taking") if cs.system == "atc" else ("diagnosed",)
        for call in system_calls:
            by_name, _ = lang.parse(f"{call}({name})" + (" >= 1" if call == "count_taking" else ""), VOCAB)
            listed, _ = lang.parse(f"{call}({', '.join(cs.codes)})" + (" >= 1" if call == "count_taking" else ""), VOCAB)
            feat = Features()
            feat.add(by_name)
            feat.add(listed)
            facts = derive(*c, feat)
            got = lang.eval3(by_name, facts)
            if call == "count_taking":  # a set is one class: taking any member counts once
                assert got == any(m.startswith(cs.codes) for m in meds)
            else:
                assert got == lang.eval3(listed, facts)
            if call == "taking":
                assert got == any(m.startswith(cs.codes) for m in meds)


@SETTINGS
@given(
    findings=st.lists(st.sampled_from(["suicide_plan", "chest_pain", "tremor_ataxia"]), max_size=2, unique=True),
    setting=st.sampled_from(["community", "hospital"]),
    age=st.integers(0, 100),
)
def test_rules_for_everyone_fire_with_no_diagnosis_code(findings: list[str], setting: str, age: int) -> None:
    d = both(case([], conditions=[], findings=findings, setting=setting, age=age))
    assert ("v2safety.suicide_plan" in fired(d)) is ("suicide_plan" in findings)
    assert all(not p["enrolled"] for p in d["pathways"] if p["id"] == "v2_htn")


SPACE = CaseSpace(ENGINE.pathways)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(SPACE.cases())
def test_durable_rules_equals_the_reference_on_generated_cases(c: dict[str, Any]) -> None:
    both(c)
