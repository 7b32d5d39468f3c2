"""The pathway language v2 on its fixture (tests/fixtures/lang_v2): code sets, recency windows,
consecutive visits, target profiles, rules for everyone, site capabilities, shared definitions,
essential tests. Every decision is checked on both backends."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from carepath import lang
from carepath.errors import PathwayError
from carepath.evaluate import Engine
from carepath.site import load_site
from carepath.validate import load_vocabulary, validate_paths, validate_source

V2 = Path(__file__).parent.parent / "fixtures" / "lang_v2"
AS_OF = date(2026, 11, 24)


def ago(days: int) -> str:
    return (AS_OF - timedelta(days=days)).isoformat()


BASE: dict[str, Any] = {
    "patient_id": "v2-0001",
    "as_of": AS_OF.isoformat(),
    "setting": "community",
    "age": 60,
    "sex": "female",
    "pregnant": False,
    "conditions": ["I10"],
    "observations": [],
    "medications": [],
    "allergies": [],
    "findings": [],
}


def case(*readings: tuple[str, float, int], **changes: Any) -> dict[str, Any]:
    c = copy.deepcopy(BASE)
    units = {"sbp": "mmHg", "dbp": "mmHg", "potassium": "mmol/L", "hba1c": "%"}
    c["observations"] = [{"code": code, "value": v, "unit": units[code], "date": ago(d)} for code, v, d in readings]
    c.update(changes)
    return c


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_directory(V2)


def decide(engine: Engine, c: dict[str, Any]) -> dict[str, Any]:
    d = engine.evaluate(c)
    assert d == engine.with_backend("reference").evaluate(c), "durable-rules and the reference evaluator disagree"
    return d


def fired(d: dict[str, Any]) -> set[str]:
    return {t["rule"] for t in d["trace"]}


def recs(d: dict[str, Any]) -> list[tuple[str, Any]]:
    key = {"referral": "urgency", "medication": "atc", "test": "code", "follow_up": "days", "alert": "text"}
    return [(r["kind"], r[key[r["kind"]]]) for r in d["recommendations"]]


# ---------------------------------------------------------------- code sets


def test_a_code_set_is_the_list_it_names() -> None:
    vocab = load_vocabulary(V2 / "dictionary.yaml")
    by_set, _ = lang.parse("taking(ras_blocker)", vocab)
    by_list, _ = lang.parse("taking(C09A, C09B, C09C, C09D, C09XA)", vocab)
    assert isinstance(by_set, lang.Flag) and isinstance(by_list, lang.Flag)
    assert (by_set.kind, by_set.arg, by_set.key) == (by_list.kind, by_list.arg, by_list.key)
    assert vocab.code_sets["antihypertensive"].codes == (
        "C03A",
        "C03BA",
        "C07",
        "C08",
        "C09A",
        "C09B",
        "C09BA",
        "C09BB",
        "C09C",
        "C09D",
        "C09DA",
        "C09DB",
        "C09XA",
    )
    assert lang.reads(by_set) == (("taking(ras_blocker)", by_set.key, "flag"),), "values name the set, not its members"


def test_count_taking_counts_each_code_set_as_one_class(engine: Engine) -> None:
    triple = [{"atc": "C09DX01", "name": "valsartan/amlodipine/HCTZ"}]  # not in any set: counts nothing
    assert "v2.three_classes" not in fired(decide(engine, case(medications=triple)))
    two_pills = [{"atc": "C09BB04", "name": "perindopril/amlodipine"}, {"atc": "C03AA03", "name": "HCTZ"}]
    d = decide(engine, case(medications=two_pills))  # an ACEi+CCB pill counts in both sets
    assert "v2.three_classes" in fired(d)
    (entry,) = [t for t in d["trace"] if t["rule"] == "v2.three_classes"]
    assert entry["values"] == {"count_taking(ras_blocker, ccb, thiazide)": 3}


def test_a_recommendation_naming_a_code_set_is_one_per_member(engine: Engine) -> None:
    d = decide(engine, case(pregnant=True, medications=[{"atc": "C09CA01", "name": "losartan"}]))
    stops = sorted(a for k, a in recs(d) if k == "medication")
    assert stops == ["C09A", "C09B", "C09C", "C09D", "C09XA"]


PATHWAY = """id: p
title: t
version: 1.0.0
status: active
owners: [o]
applies_to: diagnosed(I10)
citations:
  c: {{guideline: guide, year: 2020, section: s}}
rules:
  - id: p.r
    when: {when}
    then:
      - {{kind: medication, action: {action}, atc: {atc}, name: n}}
    citation: c
"""


def diagnostics(when: str, atc: str = "C08CA", action: str = "start") -> list[str]:
    _, diags = validate_source(PATHWAY.format(when=when, atc=atc, action=action), "p.yaml", load_vocabulary(V2 / "dictionary.yaml"))
    return [str(d) for d in diags]


def test_unknown_and_mismatched_code_sets_are_errors_at_their_place() -> None:
    assert diagnostics("taking(ras_blockers)") == [
        "p.yaml:11:18: rules[0].when: unknown code set 'ras_blockers' (did you mean 'ras_blocker'?)"
    ]
    assert diagnostics("diagnosed(ras_blocker)") == [
        "p.yaml:11:21: rules[0].when: code set 'ras_blocker' holds ATC codes; ICD-10 codes are needed here"
    ]
    assert diagnostics("taking(C09)", atc="ccbs") == ["p.yaml:13:48: rules[0].then[0].atc: unknown code set 'ccbs' (did you mean 'ccb'?)"]
    assert diagnostics("taking(C09)", atc="diabetes", action="avoid") == [
        "p.yaml:13:48: rules[0].then[0].atc: code set 'diabetes' holds ICD-10 codes; a medication needs ATC codes"
    ]


def test_code_set_includes_are_checked(tmp_path: Path) -> None:
    text = (V2 / "dictionary.yaml").read_text()
    bad = text.replace("includes: [ace_inhibitor, arb]", "includes: [ace_inhibitor, arbs, ras_blocker]")
    (tmp_path / "dictionary.yaml").write_text(bad)
    with pytest.raises(PathwayError) as err:
        load_vocabulary(tmp_path / "dictionary.yaml")
    assert [d.message for d in err.value.diagnostics] == ["unknown code set 'arbs' (did you mean 'arb'?)"]
    (tmp_path / "dictionary.yaml").write_text(text.replace("includes: [ace_inhibitor, arb]", "includes: [ace_inhibitor, antihypertensive]"))
    with pytest.raises(PathwayError) as err:
        load_vocabulary(tmp_path / "dictionary.yaml")
    assert any("includes itself (through ras_blocker -> antihypertensive -> ras_blocker)" in d.message for d in err.value.diagnostics)
    (tmp_path / "dictionary.yaml").write_text(text.replace("includes: [ace_inhibitor, arb]", "includes: [ace_inhibitor, diabetes]"))
    with pytest.raises(PathwayError) as err:
        load_vocabulary(tmp_path / "dictionary.yaml")
    assert [d.message for d in err.value.diagnostics] == ["code set 'diabetes' holds ICD10 codes, not ATC"]


# ---------------------------------------------------------------- recency


def test_a_stale_crisis_reading_is_no_emergency_and_asks_for_todays_bp(engine: Engine) -> None:
    d = decide(engine, case(("sbp", 186, 95), ("dbp", 100, 95)))
    assert "v2.crisis" not in fired(d)
    assert ("test", "sbp") in recs(d) and "v2.old_crisis" in fired(d)
    text = engine.explain(case(("sbp", 186, 95), ("dbp", 100, 95)))
    assert "sbp 186 mmHg is 95 days old; for this rule current means today" in text


def test_todays_crisis_reading_is_an_emergency_that_keeps_the_essential_test(engine: Engine) -> None:
    d = decide(engine, case(("sbp", 186, 0), ("dbp", 100, 0)))
    assert ("referral", "emergency") in recs(d)
    assert ("test", "sbp") not in recs(d), "BP is current: nothing to refresh"
    # an essential test survives the emergency policy; a plain one would be suppressed
    k = decide(engine, case(("potassium", 6.8, 0), medications=[{"atc": "C09AA02", "name": "enalapril"}]))
    assert ("referral", "emergency") in recs(k) and ("test", "potassium") in recs(k)


def test_latest_reads_a_value_whatever_its_age_and_potassium_is_current_for_90_days(engine: Engine) -> None:
    inside = decide(engine, case(("sbp", 150, 0), ("dbp", 95, 0), ("potassium", 4.0, 90)))
    assert ("medication", "C08CA") in recs(inside)
    outside = decide(engine, case(("sbp", 150, 0), ("dbp", 95, 0), ("potassium", 4.0, 91)))
    assert ("medication", "C08CA") not in recs(outside), "a 91-day-old potassium is not current: no start from it"


# ---------------------------------------------------------------- target profiles


@pytest.mark.parametrize(
    ("age", "conditions", "sbp", "above"),
    [
        (60, ["I10"], 139, False),
        (60, ["I10"], 140, True),
        (82, ["I10"], 145, False),  # from 80 without diabetes or CKD: < 150/90
        (82, ["I10", "E11.9"], 145, True),  # with diabetes the diabetic target holds at any age
        (60, ["I10", "N18.3"], 132, True),  # CKD: < 130/80
    ],
)
def test_one_target_profile_for_every_rule(engine: Engine, age: int, conditions: list[str], sbp: int, above: bool) -> None:
    c = case(("sbp", sbp, 0), ("dbp", 70, 0), ("potassium", 4.0, 10), age=age, conditions=conditions)
    assert (("medication", "C08CA") in recs(decide(engine, c))) is above


def test_an_unknown_age_leaves_the_target_unknown_only_where_the_rows_disagree() -> None:
    vocab = load_vocabulary(V2 / "dictionary.yaml")
    above, _ = lang.parse("above_target(bp)", vocab)
    at, _ = lang.parse("at_target(bp)", vocab)
    facts: dict[str, object] = {"o_sbp": 145, "o_dbp": 70, "dx_E10_E11_E13_E14_I12_I13_N18": 0}
    assert lang.eval3(above, facts) is None and lang.eval3(at, facts) is None  # < 150 from 80, not < 140 under 80
    facts["o_sbp"] = 155
    assert lang.eval3(above, facts) is True and lang.eval3(at, facts) is False  # above every row's target


def test_a_target_profile_needs_a_last_row_for_everyone_else(tmp_path: Path) -> None:
    text = (V2 / "dictionary.yaml").read_text().replace('- {target: "sbp < 140 and dbp < 90"}', '- {for: "age < 80", target: "sbp < 140"}')
    (tmp_path / "dictionary.yaml").write_text(text)
    with pytest.raises(PathwayError) as err:
        load_vocabulary(tmp_path / "dictionary.yaml")
    assert [d.message for d in err.value.diagnostics] == ["the last row is for everyone else: leave out its 'for'"]


# ---------------------------------------------------------------- consecutive visits

ON_CCB = [{"atc": "C08CA01", "name": "amlodipine", "since": ago(60)}]


def bp(*visits: tuple[int, int, int]) -> list[tuple[str, float, int]]:
    return [r for s, dia, d in visits for r in (("sbp", s, d), ("dbp", dia, d))]


def test_two_uncontrolled_follow_ups_on_treatment_refer(engine: Engine) -> None:
    d = decide(engine, case(*bp((150, 92, 30), (152, 94, 0)), medications=ON_CCB))
    assert "v2.refer_uncontrolled" in fired(d)


def test_the_reading_before_the_start_is_not_a_follow_up(engine: Engine) -> None:
    d = decide(engine, case(*bp((170, 100, 61), (150, 92, 0)), medications=ON_CCB))
    assert "v2.refer_uncontrolled" not in fired(d)


def test_same_day_readings_are_one_visit_and_count_as_their_mean(engine: Engine) -> None:
    same_day = case(*bp((150, 92, 0), (152, 94, 0)), medications=ON_CCB)
    assert "v2.refer_uncontrolled" not in fired(decide(engine, same_day)), "two readings on one day are one visit"
    mean_at_target = case(*bp((150, 92, 30), (150, 88, 0), (128, 80, 0)), medications=ON_CCB)  # today's mean 139/84
    assert "v2.refer_uncontrolled" not in fired(decide(engine, mean_at_target))


def test_visits_closer_than_apart_do_not_count_and_a_controlled_visit_breaks_the_run(engine: Engine) -> None:
    close = case(*bp((150, 92, 10), (152, 94, 0)), medications=ON_CCB)
    assert "v2.refer_uncontrolled" not in fired(decide(engine, close))
    broken = case(*bp((150, 92, 40), (130, 80, 10), (152, 94, 0)), medications=ON_CCB)
    assert "v2.refer_uncontrolled" not in fired(decide(engine, broken))
    spaced = case(*bp((150, 92, 40), (151, 93, 10), (152, 94, 0)), medications=ON_CCB)
    assert "v2.refer_uncontrolled" in fired(decide(engine, spaced))


def test_visits_are_unknown_with_an_undated_start_and_false_without_the_drug() -> None:
    vocab = load_vocabulary(V2 / "dictionary.yaml")
    e, _ = lang.parse("consecutive_visits(2, above_target(bp), apart 14, since antihypertensive)", vocab)
    assert isinstance(e, lang.Visits) and e.n == 2 and e.apart == 14 and "C08" in e.since
    engine = Engine.from_directory(V2)
    for meds, want in (([{"atc": "C08CA01"}], None), ([], 0)):
        _, facts = engine.prepare(case(*bp((150, 92, 30), (152, 94, 0)), medications=meds))
        assert facts.get(e.key) == want


def test_a_run_of_visits_that_ended_before_the_window_is_unknown() -> None:
    """The latest visit counted must be current (the fixture: BP current only today): two
    uncontrolled visits weeks ago say nothing about today, so the run is unknown, not true."""
    vocab = load_vocabulary(V2 / "dictionary.yaml")
    e, _ = lang.parse("consecutive_visits(2, above_target(bp), apart 14, since antihypertensive)", vocab)
    assert isinstance(e, lang.Visits)
    engine = Engine.from_directory(V2)
    for visits, want in (((150, 92, 40), (152, 94, 20)), None), (((150, 92, 40), (152, 94, 0)), 1):
        _, facts = engine.prepare(case(*bp(*visits), medications=ON_CCB))
        assert facts.get(e.key) == want, visits
    assert "v2.refer_uncontrolled" not in fired(decide(engine, case(*bp((150, 92, 40), (152, 94, 20)), medications=ON_CCB)))


def test_visits_syntax_errors_name_the_place() -> None:
    assert diagnostics("consecutive_visits(2, taking(C09))") == [
        "p.yaml:11:33: rules[0].when: the condition at each visit must compare an observation's value"
        " (visits are the dates of its readings)"
    ]
    assert diagnostics("consecutive_visits(2, rise(sbp) > 10)") == [
        "p.yaml:11:33: rules[0].when: inside consecutive_visits an observation is compared by its value at the visit;"
        " rise(sbp) cannot be used here"
    ]
    assert diagnostics("consecutive_visits(2, sbp > 140, every 14)") == [
        "p.yaml:11:44: rules[0].when: expected 'apart' or 'since', found 'every'"
    ]


# ---------------------------------------------------------------- everyone, sites, definitions


def test_safety_rules_run_whatever_the_diagnosis(engine: Engine) -> None:
    nobody = case(conditions=[], findings=["suicide_plan"])
    d = decide(engine, nobody)
    assert "v2safety.suicide_plan" in fired(d) and ("referral", "emergency") in recs(d)
    preg = decide(engine, case(conditions=[], pregnant=True, medications=[{"atc": "C09CA01", "name": "losartan"}]))
    assert "v2.ras_pregnancy" in fired(preg), "a scope: everyone rule of a pathway the patient is not enrolled in"
    assert [p["enrolled"] for p in preg["pathways"] if p["id"] == "v2_htn"] == [False]
    assert fired(decide(engine, case(conditions=[], age=50))) == set(), "the enrolled-only rules stay quiet"


def test_the_site_profile_decides_what_is_done_here(tmp_path: Path) -> None:
    pathways, diags = validate_paths([V2], V2)
    assert not diags
    (tmp_path / "chc.yaml").write_text("id: chc-luohu\ntitle: a centre with a retinal camera\ncapabilities: [fundus_photography]\n")
    here = Engine(pathways, site=load_site(tmp_path / "chc.yaml"))
    elsewhere = Engine(pathways)
    c = case(conditions=["I10", "E11.9"])
    assert "v2.fundus_here" in fired(decide(here, c)) and "v2.fundus_refer" not in fired(decide(here, c))
    assert "v2.fundus_refer" in fired(decide(elsewhere, c))
    site = load_site(tmp_path / "chc.yaml")
    assert decide(here, c)["site"] == {"id": "chc-luohu", "sha256": site.sha256} and len(site.sha256) == 64
    assert decide(elsewhere, c)["site"] == {"id": "default", "sha256": ""}, "the decision names the site profile it used"
    (tmp_path / "bad.yaml").write_text("id: bad\ntitle: t\ncapabilities: [poc_hba1c, fundus]\n")
    with pytest.raises(PathwayError) as err:
        Engine(pathways, site=load_site(tmp_path / "bad.yaml"))
    assert [str(d) for d in err.value.diagnostics] == [f"{tmp_path / 'bad.yaml'}:3:27: capabilities[1]: unknown site capability 'fundus'"]


def test_dictionary_definitions_are_shared_and_cannot_be_redefined() -> None:
    assert diagnostics("diabetic_or_ckd and taking(C09)") == []
    text = PATHWAY.format(when="taking(C09)", atc="C08CA", action="start") + "definitions:\n  diabetic_or_ckd: diagnosed(E11)\n"
    _, diags = validate_source(text, "p.yaml", load_vocabulary(V2 / "dictionary.yaml"))
    assert [d.message for d in diags] == ["definition 'diabetic_or_ckd' is already in the shared dictionary"]
