"""Evaluate and decide on the fixture pathway: the conflict policy, determinism, sessions, explain."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED, FIXTURES, SCENARIO_DIR

from carepath.cli import dumps
from carepath.errors import UnknownPathwayError
from carepath.evaluate import Engine

BASE: dict[str, Any] = {
    "patient_id": "p-0001",
    "as_of": "2026-11-24",
    "setting": "community",
    "age": 58,
    "sex": "female",
    "pregnant": False,
    "conditions": ["I10"],
    "observations": [
        {"code": "sbp", "value": 162, "unit": "mmHg", "date": "2026-11-20"},
        {"code": "dbp", "value": 98, "unit": "mmHg", "date": "2026-11-20"},
        {"code": "potassium", "value": 4.1, "unit": "mmol/L", "date": "2026-09-02"},
        {"code": "egfr", "value": 52, "unit": "mL/min/1.73m2", "date": "2026-09-02"},
    ],
    "medications": [],
    "allergies": [],
    "findings": [],
    "smi_risk_grade": None,
}


def case(**changes: Any) -> dict[str, Any]:
    c = copy.deepcopy(BASE)
    c.update(changes)
    return c


def kinds(decision: dict[str, Any]) -> list[tuple[Any, ...]]:
    out = []
    for r in decision["recommendations"]:
        key = {"referral": "urgency", "medication": "action", "test": "code", "follow_up": "days", "alert": "severity"}[r["kind"]]
        out.append((r["kind"], r.get(key), r.get("atc")))
    return out


def test_uncontrolled_bp_starts_acei_with_k_check_and_two_week_follow_up(engine: Engine) -> None:
    d = engine.evaluate(case())
    assert ("medication", "start", "C09AA") in kinds(d)
    assert ("test", "potassium", None) in kinds(d)
    assert ("follow_up", 14, None) in kinds(d)
    start = next(r for r in d["recommendations"] if r["kind"] == "medication")
    assert start["rule"] == "mini.start_acei"
    assert start["values"]["sbp"] == 162
    assert "sbp 162 mmHg ≥ 140" in start["reason"]
    assert start["citation"].startswith("National Basic Public Health Service")


def test_emergency_beats_everything(engine: Engine) -> None:
    d = engine.evaluate(case(findings=["severe_headache"]))
    ks = kinds(d)
    assert ("referral", "emergency", None) in ks
    assert not any(k[0] == "medication" and k[1] == "start" for k in ks)
    assert not any(k[0] == "test" for k in ks)
    suppressed = [s for t in d["trace"] for s in t.get("suppressed", [])]
    assert any("emergency up-referral" in s for s in suppressed)


def test_avoid_beats_start_and_missing_pregnancy_is_not_false(engine: Engine) -> None:
    d = engine.evaluate(case(pregnant=None, age=30))
    ks = kinds(d)
    assert ("medication", "avoid", "C09") in ks
    assert not any(k[1] == "start" for k in ks)


def test_allergy_blocks_a_start(engine: Engine) -> None:
    d = engine.evaluate(case(allergies=["C09AA"]))
    assert not any(r["kind"] == "medication" and r["action"] == "start" for r in d["recommendations"])
    notes = [s for t in d["trace"] for s in t.get("suppressed", [])]
    assert "start ACE inhibitor (C09AA): patient is allergic to C09AA" in notes


def test_referral_direction_follows_setting(engine: Engine) -> None:
    crisis = [{"code": "sbp", "value": 190, "unit": "mmHg", "date": "2026-11-24"}]
    assert not any(r["kind"] == "referral" for r in engine.evaluate(case(setting="hospital", observations=crisis))["recommendations"])
    stable = case(
        setting="hospital",
        observations=[
            {"code": "sbp", "value": 128, "unit": "mmHg", "date": "2026-11-24"},
            {"code": "dbp", "value": 78, "unit": "mmHg", "date": "2026-11-24"},
        ],
        medications=[{"atc": "C08CA01", "name": "amlodipine", "since": "2026-06-01"}],
    )
    refs = [r for r in engine.evaluate(stable)["recommendations"] if r["kind"] == "referral"]
    assert [(r["direction"], r["rule"]) for r in refs] == [("down", "mini.down")]
    refs = [r for r in engine.evaluate(dict(stable, setting="community"))["recommendations"] if r["kind"] == "referral"]
    assert refs == []


def test_shortest_follow_up_wins_and_duplicates_merge(engine: Engine) -> None:
    d = engine.evaluate(case(observations=[{"code": "sbp", "value": 185, "unit": "mmHg", "date": "2026-11-24"}], findings=["chest_pain"]))
    fus = [r for r in d["recommendations"] if r["kind"] == "follow_up"]
    assert len(fus) == 1 and fus[0]["days"] == 14
    refs = [r for r in d["recommendations"] if r["kind"] == "referral"]
    assert len(refs) == 1
    assert refs[0]["rules"] == ["mini.crisis", "mini.symptom"]


def test_unit_conversion_on_input(engine: Engine) -> None:
    obs = [{"code": "8480-6", "value": 185, "unit": "mmHg", "date": "2026-11-24"}]
    d = engine.evaluate(case(observations=obs))
    assert any(r["kind"] == "referral" and r["urgency"] == "emergency" for r in d["recommendations"])


def test_decision_is_byte_identical_and_names_pathway_versions(engine: Engine) -> None:
    a = dumps(engine.evaluate(case()))
    b = dumps(Engine.from_directory(FIXTURES).evaluate(json.loads(json.dumps(case()))))
    assert a == b
    p = json.loads(a)["pathways"][0]
    assert (p["id"], p["version"], len(p["sha256"]), p["enrolled"]) == ("mini_htn", "0.1.0", 64, True)


def test_durable_and_reference_backends_agree_on_fixture_cases(engine: Engine) -> None:
    reference = Engine.from_directory(FIXTURES, backend="reference")
    assert (engine.backend.name, reference.backend.name) == ("durable", "reference")
    for c in (case(), case(findings=["severe_headache"]), case(pregnant=None, age=30), case(allergies=["C09AA"])):
        assert engine.evaluate(c) == reference.evaluate(c)
        assert engine.explain(c) == reference.explain(c)


def test_an_engine_takes_a_backend_instance(engine: Engine) -> None:
    """Engine(..., backend=X) takes any object with the Backend protocol (here one that compiles
    with the reference backend and counts), compiles the set with it once, and asks only it."""
    from collections.abc import Sequence

    from carepath.backends import Backend, CompiledSet
    from carepath.backends.reference import ReferenceBackend
    from carepath.validate import CheckedPathway

    class Counting:
        name = "counting"

        def __init__(self) -> None:
            self.compiled = 0

        def compile(self, pathways: Sequence[CheckedPathway]) -> CompiledSet:
            self.compiled += 1
            return ReferenceBackend().compile(pathways)

    backend = Counting()
    assert isinstance(backend, Backend)
    mine = Engine.from_directory(FIXTURES, backend=backend)
    assert backend.compiled == 1 and mine.backend is backend and isinstance(mine.compiled, CompiledSet)
    assert mine.evaluate(case()) == engine.evaluate(case())
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        Engine.from_directory(FIXTURES, backend="nope")


def test_thousands_of_evaluations_leave_no_state_behind(engine: Engine) -> None:
    # durable-rules refuses the 1025th live session, and a fact left in the session would make
    # the next assertion of the case a duplicate that fires nothing: each case is retracted
    first = engine.evaluate(case())
    other = engine.evaluate(case(findings=["severe_headache"]))
    assert first != other
    for _ in range(600):
        assert engine.evaluate(case()) == first
        assert engine.evaluate(case(findings=["severe_headache"])) == other


def test_a_failure_inside_durable_rules_resets_the_session(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the action loop fails halfway, the case fact is still in the session: the engine must
    drop the session so the next case is evaluated from a clean one, not refused as a duplicate."""
    import durable_rules_engine

    from carepath.backends import durable

    want = engine.evaluate(case())

    class Failing:
        calls = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(durable_rules_engine, name)

        def complete_and_start_action(self, handle: int, state: Any) -> Any:
            Failing.calls += 1
            raise RuntimeError("injected failure")

    monkeypatch.setattr(durable, "_dre", Failing())
    with pytest.raises(RuntimeError, match="injected"):
        engine.evaluate(case())
    assert Failing.calls == 1
    monkeypatch.undo()
    assert engine.evaluate(case()) == want


def test_not_enrolled_patient_gets_nothing(engine: Engine) -> None:
    d = engine.evaluate(case(conditions=["E11.9"]))
    assert d["recommendations"] == []
    assert d["pathways"][0]["enrolled"] is False


def test_unknown_pathway_is_refused(engine: Engine) -> None:
    with pytest.raises(UnknownPathwayError):
        engine.evaluate(case(), pathway_ids=["nope"])


def test_explain_says_why_and_what_came_close(engine: Engine) -> None:
    text = engine.explain(case())
    assert "* start ACE inhibitor (C09AA)" in text
    assert "because Start an ACE inhibitor: sbp 162 mmHg ≥ 140" in text
    assert "Rules that came close but did not fire:" in text
    assert "mini.crisis: sbp 162 mmHg ≥ 180 is not met" in text


def test_engines_give_back_durable_rules_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    # durable-rules has 131,071 ruleset handles per process; each engine used to keep ~128 for good
    # (failed at the 1,023rd engine on the bundled pathways), which a long-lived process reloading
    # pathways, or a mutation run, would exhaust. The real C calls run; the test only counts them
    # (building 1,100 engines showed the same thing in 98 s of the suite).
    import gc

    import durable_rules_engine as dre

    from carepath.backends import durable
    from carepath.validate import validate_paths

    checked, diags = validate_paths([BUNDLED], BUNDLED)
    assert not diags
    created: list[int] = []
    live: set[int] = set()
    real_create, real_delete = dre.create_ruleset, dre.delete_ruleset

    def create(*args: Any) -> int:
        handle: int = real_create(*args)
        created.append(handle)
        live.add(handle)
        return handle

    def delete(handle: int) -> Any:
        live.discard(handle)
        return real_delete(handle)

    monkeypatch.setattr(dre, "create_ruleset", create)
    monkeypatch.setattr(dre, "delete_ruleset", delete)
    engines = [Engine(checked) for _ in range(3)]
    kept = {rs.handle for e in engines for rs in e.compiled.rulesets}  # type: ignore[attr-defined]
    per_engine = sum(-(-max(len(p.rules), 1) // durable.CHUNK) for p in checked)  # a ruleset per CHUNK rules of a pathway
    assert len(kept) == 3 * per_engine and kept <= live  # each engine's own rulesets, in use
    assert len(created) > 3 * per_engine  # ... and the pattern-size probes, already given back
    assert live == kept
    del engines
    gc.collect()
    assert not live, f"{len(live)} of {len(created)} durable-rules ruleset handles were never deleted"


def test_memoised_reasons_and_plans_equal_freshly_made_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """decide() memoises each rule's values and reason on the facts it reads, and the engine keeps
    the conflict policy's plan for each shape of decision: warm memos and plans (even ones cleared
    when full) must give exactly the decision cold ones give, whatever callers do to decisions."""
    from carepath import decide
    from carepath.population.synth import synth_lines

    bundled = Engine.from_directory(None)
    rules = [cr for p in bundled.pathways for cr in p.rules]
    cases = [json.loads(line) for line in synth_lines(400, 7)]
    cold = []
    for c in cases:
        for cr in rules:
            cr.memo.clear()
        bundled._plans.clear()
        cold.append(dumps(bundled.evaluate(c)))
    monkeypatch.setattr(decide, "MEMO_LIMIT", 8)
    monkeypatch.setattr(decide, "PLAN_LIMIT", 16)
    warm = []
    for c in cases + cases:
        got = bundled.evaluate(c)
        warm.append(dumps(got))
        for rec in got["recommendations"]:  # a caller changing its decision changes no later one
            rec["rules"].append("x")
            rec["kind"] = "x"
        for t in got["trace"]:
            t.get("suppressed", []).append("x")
        got["pathways"][0]["id"] = "x"
    assert warm == cold + cold
    assert max(len(cr.memo) for cr in rules) <= 8
    assert sum(len(cr.memo) for cr in rules) > 0
    assert 0 < len(bundled._plans) <= 16
    assert any("suppressed" in t for c in cold for t in json.loads(c)["trace"])
    # The values are the memo's own, shared between decisions: read-only, and what a caller can
    # change (merged recommendations' values, copies) never reaches the memo.
    first = bundled.evaluate(cases[0])
    shared = [t["values"] for t in first["trace"]] + [r["values"] for r in first["recommendations"]]
    for values in shared:
        if type(values) is decide.Values:
            for change in (values.clear, lambda v=values: v.update(x=1), lambda v=values: v.setdefault("x", 1), values.popitem):
                with pytest.raises(TypeError, match="read-only"):
                    change()
            with pytest.raises(TypeError, match="read-only"):
                values["x"] = 1
            for copied in (dict(values), copy.copy(values), copy.deepcopy(values), pickle.loads(pickle.dumps(values))):
                assert type(copied) is dict and copied == values
                copied["x"] = 1
        else:
            values.clear()  # a merged recommendation's values are its own
    assert any(type(v) is decide.Values for v in shared)
    assert dumps(bundled.evaluate(cases[0])) == cold[0]


def test_compiled_reasons_equal_the_interpreted_walk() -> None:
    """decide() writes reasons with compiled closures (lang.reasoner); they must say exactly what
    lang.true_literals + lang.describe say, on every golden scenario and 300 synthetic cases."""
    from carepath import lang
    from carepath.lang import reasoner
    from carepath.population.synth import synth_lines
    from carepath.scenarios import iter_scenarios

    bundled = Engine.from_directory(None)
    cases = [s.case for s in iter_scenarios(SCENARIO_DIR)] + [json.loads(line) for line in synth_lines(300, 3)]
    compiled = {(cp.id, cr.index): reasoner(cr.when_nnf, cp.vocab) for cp in bundled.pathways for cr in cp.rules}
    checked = 0
    for case in cases:
        _, facts = bundled.prepare(case)
        for cp in bundled.pathways:
            for cr in cp.rules:
                if lang.eval3(cr.when_nnf, facts) is True:
                    walked = [lang.describe(lit, facts, cp.vocab) for lit in lang.true_literals(cr.when_nnf, facts)]
                    assert compiled[(cp.id, cr.index)](facts) == walked, cr.rule.id
                    checked += 1
    assert checked > 1000


def test_posting_into_every_ruleset_fires_the_same_rules() -> None:
    """fire() skips the rulesets of pathways the patient is not enrolled in; posting everywhere
    (the benchmarks' baseline) must find the same rules."""
    from carepath.population.synth import synth_lines

    bundled = Engine.from_directory(None)
    for line in synth_lines(300, 5):
        _, facts = bundled.prepare(json.loads(line))
        lean, full = bundled.fire(facts), bundled.fire(facts, every_ruleset=True)
        assert [(i, ks) for i, _, ks in lean] == [(i, ks) for i, _, ks in full]


def test_facts_post_only_the_values_some_pattern_tests() -> None:
    """The durable backend leaves out a flag value no pattern tests for (fact_tests): the rules that
    fire must be those the reference backend finds on every fact, and the pruning must bite."""
    from carepath import lang
    from carepath.backends import durable as comp
    from carepath.population.synth import synth_lines

    vocab = lang.Vocabulary({}, frozenset({"chest_pain", "dyspnoea"}))
    expr, errors = lang.parse("finding(chest_pain) and not finding(dyspnoea)", vocab)
    assert not errors
    tests = comp.fact_tests([expr])
    assert sorted(tests.items()) == [("f_chest_pain", frozenset({1})), ("f_dyspnoea", frozenset({0}))]
    bundled = Engine.from_directory(None)
    reference = bundled.with_backend("reference")
    pruned = 0
    for line in synth_lines(300, 11):
        _, facts = bundled.prepare(json.loads(line))
        got = bundled.fire(facts, every_ruleset=True)
        assert [(i, ks) for i, _, ks in got] == [(i, ks) for i, _, ks in reference.fire(facts)]
        assert isinstance(bundled.compiled, comp.DurableSet)
        for c in bundled.compiled.rulesets:
            posted = c.build(facts)
            left_out = [k for k, want in c.valued if k in facts and facts[k] not in want]
            assert not {c.names[k] for k in left_out} & set(posted)
            assert all(posted[c.names[k]] == facts[k] for k, _ in c.valued if c.names[k] in posted)
            pruned += len(left_out)
    assert pruned > 300 * 10


def test_generated_truth_functions_agree_with_the_reference_evaluator() -> None:
    """The durable backend's generated code (holds: enrolment, factored-out sub-conditions) is TRUE
    exactly when the reference evaluator (lang.truth) says TRUE, for every condition of every
    bundled pathway, their negations and their NNF sub-expressions, on synthetic patients."""
    from carepath import lang
    from carepath.backends import durable as comp
    from carepath.population.synth import synth_lines

    bundled = Engine.from_directory(None)
    exprs: list[lang.Expr] = []
    for p in bundled.pathways:
        for e in [p.applies, *(r.condition for r in p.rules)]:
            exprs += [e, lang.Not(e)]
            stack = [lang.nnf(e)]
            while stack:
                x = stack.pop()
                exprs.append(x)
                if isinstance(x, (lang.And, lang.Or)):
                    stack.extend(x.items)
    pairs = [(comp.holds(e), lang.truth(e)) for e in exprs]
    truths = {True: 0, False: 0, None: 0}
    for line in synth_lines(200, 13):
        _, facts = bundled.prepare(json.loads(line))
        for fast, ref in pairs:
            t = ref(facts)
            truths[t] += 1
            assert fast(facts) is (t is True)
    assert min(truths.values()) > 1000  # each truth value met often


def test_down_referral_needs_every_pathway_to_find_the_patient_stable() -> None:
    """Policy 1: a stop, a critical alert or an emergency/priority up-referral criterion from any
    pathway keeps a hospital patient from being down-referred by another (brief A8.3, D1)."""
    engine = Engine.from_directory(None)  # the bundled pathways
    stable = case(
        setting="hospital",
        conditions=["I10", "F20.0"],
        observations=[
            {"code": "sbp", "value": 128, "unit": "mmHg", "date": "2026-11-24"},
            {"code": "dbp", "value": 78, "unit": "mmHg", "date": "2026-11-24"},
            {"code": "anc", "value": 0.3, "unit": "10^9/L", "date": "2026-11-24"},
        ],
        medications=[
            {"atc": "C08CA01", "name": "amlodipine", "since": "2025-06-01"},
            {"atc": "N05AH02", "name": "clozapine", "since": "2025-06-01"},
        ],
        smi_risk_grade=0,
    )
    decision = engine.evaluate(stable)
    assert not [r for r in decision["recommendations"] if r["kind"] == "referral"]
    notes = {t["rule"]: t.get("suppressed", []) for t in decision["trace"]}
    assert (
        "refer down (routine) to community GP team: not stable: stop clozapine (N05AH02) (safety.clozapine.severe_neutropenia)"
        in notes["htn.down.stable"]
    )
    # the same patient with a normal ANC goes down
    fine = copy.deepcopy(stable)
    fine["observations"][2]["value"] = 3.0
    refs = [r for r in engine.evaluate(fine)["recommendations"] if r["kind"] == "referral"]
    assert [(r["direction"], r["rule"]) for r in refs] == [("down", "htn.down.stable")]


def test_a_pathway_larger_than_a_durable_rules_ruleset_is_split(tmp_path: Path) -> None:
    """durable-rules walks its network with a fixed stack of 64 nodes: 80 rules 'age >= k' and a
    patient of 90 match 80 first-level tests at once (error 303, 'Could not assert fact'). The
    backend compiles a pathway into rulesets of at most CHUNK rules, so the case is decided, and
    decided as the reference evaluator decides it."""
    import shutil

    from carepath.backends import durable

    rules = "".join(
        f"  - {{id: big.r{k}, title: rule {k}, when: age >= {k}, citation: src,"
        f" then: [{{kind: alert, severity: info, text: age at least {k}}}]}}\n"
        for k in range(1, 81)
    )
    (tmp_path / "big.yaml").write_text(
        "id: big\ntitle: Many rules\nversion: 1.0.0\nstatus: draft\nowners: [test]\napplies_to: everyone\n"
        "citations:\n  src: {guideline: test, year: 2026, section: test}\nrules:\n" + rules
    )
    shutil.copy(BUNDLED / "dictionary.yaml", tmp_path / "dictionary.yaml")
    engine = Engine.from_directory(tmp_path)
    assert len(engine.compiled.rulesets) == -(-80 // durable.CHUNK)  # type: ignore[attr-defined]
    case = {"patient_id": "p", "as_of": "2026-11-24", "setting": "community", "age": 90, "sex": "male"}
    decision = engine.evaluate(case)
    assert len(decision["trace"]) == 80
    assert decision["recommendations"] == engine.with_backend("reference").evaluate(case)["recommendations"]


def test_in_hospital_an_emergency_is_a_critical_alert_even_beside_an_overruled_start(tmp_path: Path) -> None:
    """Policy 1: in hospital an emergency up-referral stands as a critical alert from its rule. The alert
    survives policy 4b, which drops the alerts of a rule whose drug start was overruled (here by the
    emergency itself, policy 2): a rule making both must still show the emergency."""
    (tmp_path / "dictionary.yaml").write_text((FIXTURES / "dictionary.yaml").read_text())
    text = (FIXTURES / "mini_htn.yaml").read_text()
    text = text.replace(
        "    when: setting == community and (sbp >= 180 or dbp >= 110)\n    then:\n",
        "    when: sbp >= 180 or dbp >= 110\n    then:\n      - {kind: medication, action: start, atc: C08CA, name: CCB}\n",
        1,
    )
    (tmp_path / "mini_htn.yaml").write_text(text)
    e = Engine.from_directory(tmp_path)
    crisis = [{"code": "sbp", "value": 190, "unit": "mmHg", "date": "2026-11-24"}]
    hospital = e.evaluate(case(setting="hospital", observations=crisis))["recommendations"]
    alerts = [r for r in hospital if r["kind"] == "alert" and r["rule"] == "mini.crisis"]
    assert [a["severity"] for a in alerts] == ["critical"] and alerts[0]["text"].startswith("EMERGENCY criterion met")
    assert alerts[0]["values"]["sbp"] == 190 and alerts[0]["citation"]
    assert not any(r["kind"] in ("referral", "medication") and r.get("action") != "avoid" for r in hospital)
    community = e.evaluate(case(observations=crisis))["recommendations"]
    assert [(r["kind"], r.get("urgency")) for r in community if r["rule"] == "mini.crisis" and r["kind"] != "follow_up"] == [
        ("referral", "emergency")
    ]
