"""FHIR R4 → case (carepath.fhir): the mapping tables, the status/unit/range rules and the report,
the 26 Synthea bundles against their golden files, and every golden scenario rendered as FHIR."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from carepath.evaluate import Engine, bundled_pathways
from carepath.fhir import FhirInputError, Mapped, is_fhir, is_fhir_input, tables, to_case
from carepath.fhir.mapper import LOINC, RXNORM, SNOMED, codes_in
from carepath.fhir.render import case_to_bundle
from carepath.fhir.tables import PANEL, PREGNANCY_STATUS
from carepath.scenarios import iter_scenarios
from carepath.testing.strategies import CaseSpace, prefixes

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "scenarios"
GOLDEN_SCRIPT = ROOT / "tests" / "fixtures" / "fhir" / "make_goldens.py"
AS_OF = date(2021, 4, 1)


def _load_goldens() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_goldens", GOLDEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


goldens = _load_goldens()
BUNDLES: list[Path] = goldens.bundles()


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_directory()


# ------------------------------------------------------------------ small FHIR builders

PID = "p1"
SUBJECT = {"reference": f"Patient/{PID}"}


def patient(**kw: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PID, "gender": "female", "birthDate": "1970-06-15", **kw}


def obs(loinc: str, value: float | None, ucum: str | None, when: str = "2021-03-01", status: str = "final", **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": SUBJECT,
        "effectiveDateTime": when,
        **kw,
    }
    if value is not None:
        r["valueQuantity"] = {"value": value, "system": "http://unitsofmeasure.org", "code": ucum, "unit": ucum}
    return r


def condition(sct: str, clinical: str = "active", verification: str = "confirmed", **kw: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]},
        "code": {"coding": [{"system": SNOMED, "code": sct}]},
        "subject": SUBJECT,
        **kw,
    }


def med(rxnorm: str, status: str = "active", authored: str = "2020-01-01", kind: str = "MedicationRequest") -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": kind,
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxnorm}]},
    }
    r["subject"] = SUBJECT
    if kind == "MedicationRequest":
        r["intent"] = "order"
        r["authoredOn"] = authored
    else:
        r["effectiveDateTime"] = authored
    return r


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def mapped(*resources: dict[str, Any], engine: Engine | None = None, **kw: Any) -> Mapped:
    vocab = (engine or Engine.from_directory()).vocab
    kw.setdefault("as_of", AS_OF)
    kw.setdefault("setting", "community")
    return to_case(bundle(patient(), *resources), vocab=vocab, **kw)


def kinds(m: Mapped, level: str = "warning") -> list[str]:
    return [i.kind for i in m.report.issues.values() if i.level == level]


# ------------------------------------------------------------------ the tables


def test_tables_load_with_provenance_on_every_row() -> None:
    t = tables()
    assert t.sizes() == {"loinc": 43, "ucum": 34, "snomed_icd10": 72, "rxnorm_atc": 88, "pregnancy": 6}
    for rows in (t.loinc, t.snomed_icd10, t.rxnorm_atc):
        for row in rows.values():
            assert row.source.strip() and row.added <= date(2026, 12, 7)
    for u in t.ucum.values():
        assert u.source.strip() and u.factor > 0


def test_every_dictionary_observation_and_loinc_maps(engine: Engine) -> None:
    t = tables()
    targets = {r.target for r in t.loinc.values()}
    for name, od in engine.vocab.observations.items():
        for lc in od.loinc:  # every LOINC the dictionary lists maps to that observation
            assert t.loinc[lc].target == name, lc
        if od.loinc:
            assert name in targets
    for code, row in t.loinc.items():
        assert row.target in (PANEL, PREGNANCY_STATUS) or row.target in engine.vocab.observations, code
    # the issue's named codes
    for lc, name in {"8480-6": "sbp", "8462-4": "dbp", "85354-9": PANEL, "17856-6": "hba1c", "59261-8": "hba1c"}.items():
        assert t.loinc[lc].target == name
    for lc in ("33914-3", "62238-1", "98979-8"):
        assert t.loinc[lc].target == "egfr"
    for lc in ("2823-3", "6298-4"):
        assert t.loinc[lc].target == "potassium"


def test_every_dictionary_unit_has_a_ucum_row(engine: Engine) -> None:
    t = tables()
    units = {u.unit for u in t.ucum.values()}
    for od in engine.vocab.observations.values():
        for unit in [od.unit, *od.conversions]:
            assert unit in units or unit in t.ucum, f"{od.code}: no UCUM row gives {unit!r}"
    for ucum, unit in {"mm[Hg]": "mmHg", "mmol/mol": "mmol/mol", "mL/min/{1.73_m2}": "mL/min/1.73m2", "10*9/L": "10^9/L"}.items():
        assert t.ucum[ucum].unit == unit


# ------------------------------------------------------------------ Synthea: coverage and goldens


@functools.cache
def _pathway_read_codes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ICD-10 and ATC prefixes the bundled pathways read (diagnosed, taking, allergic, days_on, ...)."""
    icd: set[str] = set()
    from carepath import lang
    from carepath.lang import Flag

    for p in Engine.from_directory().pathways:
        for e in [p.applies, *(r.when for r in p.rules)]:
            for lit in lang.literals(e):
                if isinstance(lit, Flag) and lit.kind == "dx":
                    icd.update(prefixes(lit.arg))
    return tuple(sorted(icd)), SPACE.atc_prefixes


def test_synthea_bundles_are_there() -> None:
    assert len(BUNDLES) == 26, f"expected the 26 Synthea bundles in {goldens.SYNTHEA}"


@pytest.mark.parametrize("path", BUNDLES, ids=lambda p: p.name.split("_")[0] + "_" + p.name.split("_")[1])
def test_synthea_codes_map_and_none_the_pathways_read_is_unmapped(path: Path, engine: Engine) -> None:
    data = json.loads(path.read_bytes())
    t = tables()
    icd_read, _ = _pathway_read_codes()
    conditions = codes_in(data, SNOMED, ("Condition",))
    drugs = codes_in(data, RXNORM, ("MedicationRequest", "MedicationStatement"))
    assert conditions and drugs
    # every SNOMED condition and RxNorm drug in the Synthea data has a row (not only those the pathways read),
    # active or not: so none that a pathway reads can be unmapped
    assert set(conditions) - set(t.snomed_icd10) == set()
    assert set(drugs) - set(t.rxnorm_atc) == set()
    m = to_case(data, vocab=engine.vocab, as_of=AS_OF, setting="community")
    assert not [i for i in m.report.issues.values() if i.kind == "unmapped_code" and not i.message.startswith("LOINC")]
    assert [c for c in m.case["conditions"] if c.startswith(icd_read)], "enrols through a code the pathways read"
    assert any(o["code"] in ("sbp", "hba1c") for o in m.case["observations"])


def test_synthea_codes_the_pathways_read(engine: Engine) -> None:
    """Across the 26 bundles, the mapped conditions and drugs that a pathway reads (diagnosed, taking, ...)."""
    icd_read, atc_read = _pathway_read_codes()
    icd: set[str] = set()
    atc: set[str] = set()
    for path in BUNDLES:
        case = to_case(json.loads(path.read_bytes()), vocab=engine.vocab, as_of=AS_OF, setting="community").case
        icd |= {c for c in case["conditions"] if c.startswith(icd_read)}
        atc |= {m["atc"] for m in case["medications"] if m["atc"].startswith(atc_read)}
    # T2DM and its complications, hypertension, CHD, stroke, CKD 1, epilepsy (read with F06 by the SMI pathway)
    assert icd == {"E11", "E11.3", "E11.4", "G40.9", "I10", "I25.1", "I64", "N18.1"}
    # human insulin, metformin, HCTZ, amlodipine, simvastatin, naproxen (an NSAID beside lithium), carbamazepine
    assert atc == {"A10AD01", "A10BA02", "C03AA03", "C08CA01", "C10AA01", "M01AE02", "N03AF01"}


@pytest.mark.parametrize("path", BUNDLES, ids=lambda p: p.name.split("_")[0] + "_" + p.name.split("_")[1])
def test_synthea_golden(path: Path, engine: Engine) -> None:
    golden_file = goldens.OUT / path.name
    assert golden_file.exists(), "run scripts/fhir-goldens"
    got = goldens.render(goldens.golden(path, engine))
    assert got == golden_file.read_text(encoding="utf-8"), (
        f"{path.name}: the mapping or decision changed; run scripts/fhir-goldens and review the diff"
    )


def test_synthea_known_quirks(engine: Engine) -> None:
    by_name = {p.name.split("_")[0]: p for p in BUNDLES}
    angelic = to_case(json.loads(by_name["Angelic"].read_bytes()), vocab=engine.vocab, as_of=AS_OF, setting="community")
    unit = [i for i in angelic.report.warnings() if i.kind == "unknown_unit"]
    assert unit and "egfr" in unit[0].message and "'mL/min'" in unit[0].message
    dirk = to_case(json.loads(by_name["Dirk"].read_bytes()), vocab=engine.vocab, as_of=AS_OF, setting="community")
    assert "E11" in dirk.case["conditions"] and "N08.3" in dirk.case["conditions"]
    assert not [c for c in dirk.case["conditions"] if c.startswith("E14")]  # diabetic renal disease is not 'type unclear'
    assert {"C03AA03", "A10BA02"} <= {m["atc"] for m in dirk.case["medications"]}


# ------------------------------------------------------------------ rules: status, units, range, dates


def test_observation_status_filter(engine: Engine) -> None:
    m = mapped(
        obs("8480-6", 150, "mm[Hg]", status="final"),
        obs("8480-6", 151, "mm[Hg]", status="amended", when="2021-03-02"),
        obs("8480-6", 152, "mm[Hg]", status="corrected", when="2021-03-03"),
        obs("8480-6", 190, "mm[Hg]", status="preliminary", when="2021-03-04"),
        obs("8480-6", 191, "mm[Hg]", status="entered-in-error", when="2021-03-05"),
        engine=engine,
    )
    assert [o["value"] for o in m.case["observations"]] == [150, 151, 152]
    skipped = [i for i in m.report.warnings() if i.kind == "skipped_status"]
    assert sum(i.count for i in skipped) == 2 and any("'preliminary'" in i.message for i in skipped)


def test_condition_status_filter(engine: Engine) -> None:
    m = mapped(
        condition("38341003"),
        condition("44054006", verification="refuted"),
        condition("46635009", verification="entered-in-error"),
        condition("84114007", clinical="resolved"),
        condition("709044004", clinical="recurrence"),
        condition("195967001", abatementDateTime="2020-01-01"),
        engine=engine,
    )
    assert m.case["conditions"] == ["I10", "N18.9"]
    infos = [i.message for i in m.report.infos() if i.kind == "skipped_status"]
    assert len(infos) == 4 and any("refuted" in s for s in infos) and any("abated" in s for s in infos)


def test_medication_status_filter_and_merge(engine: Engine) -> None:
    m = mapped(
        med("316049", authored="2019-05-01"),
        med("316049", authored="2018-01-01"),  # a second active order of the same drug
        med("197361", status="stopped"),
        med("29046", status="draft"),
        med("6809", kind="MedicationStatement"),
        med("4603", status="completed", kind="MedicationStatement"),
        med("999999999"),
        engine=engine,
    )
    assert m.case["medications"] == [
        {"atc": "C03AA03", "since": "2018-01-01"},
        {"atc": "A10BA02", "since": "2020-01-01"},
    ]
    assert [i.kind for i in m.report.warnings()] == ["unmapped_code"]
    assert "RxNorm 999999999" in m.report.warnings()[0].message


def test_unit_conversion_and_unknown_units(engine: Engine) -> None:
    m = mapped(
        obs("59261-8", 64, "mmol/mol"),  # HbA1c IFCC: accepted, the engine converts
        obs("2345-7", 180, "mg/dL"),
        obs("751-8", 1.2, "10*3/uL"),
        obs("33914-3", 55, "mL/min/{1.73_m2}"),
        obs("2823-3", 4.1, "meq/L"),
        obs("33914-3", 65, "mL/min", when="2021-03-02"),  # not per 1.73 m2: reported
        obs("8480-6", 120, "kPa", when="2021-03-02"),  # not in the table
        engine=engine,
    )
    got = {(o["code"], o["value"], o["unit"]) for o in m.case["observations"]}
    assert got == {
        ("hba1c", 64, "mmol/mol"),
        ("random_glucose", 180, "mg/dL"),
        ("anc", 1.2, "10^9/L"),
        ("egfr", 55, "mL/min/1.73m2"),
        ("potassium", 4.1, "mEq/L"),
    }
    units = [i.message for i in m.report.warnings() if i.kind == "unknown_unit"]
    assert len(units) == 2 and any("'mL/min'" in u for u in units) and any("'kPa'" in u for u in units)
    Engine.evaluate(engine, m.case)  # a valid case: the engine converts the accepted units


def test_implausible_values_are_reported_and_left_out(engine: Engine) -> None:
    m = mapped(obs("8480-6", 400, "mm[Hg]"), obs("4548-4", 2.1, "%"), obs("8462-4", 80, "mm[Hg]"), engine=engine)
    assert [o["code"] for o in m.case["observations"]] == ["dbp"]
    msgs = [i.message for i in m.report.warnings() if i.kind == "implausible_value"]
    assert len(msgs) == 2 and any("sbp 400 mmHg" in s for s in msgs)


def test_panels_dates_values_and_other_patients(engine: Engine) -> None:
    panel = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": SUBJECT,
        "effectivePeriod": {"start": "2021-02-01T10:00:00+08:00"},
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": 162, "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": 98, "code": "mm[Hg]"}},
        ],
    }
    late = obs("8867-4", 70, "/min", when="2021-05-01")
    undated = obs("8867-4", 70, "/min")
    del undated["effectiveDateTime"]
    absent = obs("8867-4", None, None, dataAbsentReason={"text": "patient refused"})
    censored = obs("2160-0", 5, "umol/L")
    censored["valueQuantity"]["comparator"] = "<"
    other = obs("8867-4", 72, "/min")
    other["subject"] = {"reference": "Patient/someone-else"}
    m = mapped(panel, late, undated, absent, censored, other, engine=engine)
    assert m.case["observations"] == [
        {"code": "dbp", "value": 98, "unit": "mmHg", "date": "2021-02-01"},
        {"code": "sbp", "value": 162, "unit": "mmHg", "date": "2021-02-01"},
    ]
    assert sorted(kinds(m)) == ["after_as_of", "censored_value", "no_date", "no_value", "other_patient"]


def test_pregnancy_from_the_latest_status_observation(engine: Engine) -> None:
    def status(answer: str, when: str) -> dict[str, Any]:
        r = obs("82810-3", None, None, when=when)
        r["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": answer}]}
        return r

    assert mapped(engine=engine).case["pregnant"] is None  # absent: unknown
    assert "no_pregnancy_status" in kinds(mapped(engine=engine), "info")
    assert mapped(status("60001007", "2020-01-01"), status("77386006", "2021-02-01"), engine=engine).case["pregnant"] is True
    assert mapped(status("77386006", "2020-01-01"), status("60001007", "2021-02-01"), engine=engine).case["pregnant"] is False
    assert mapped(status("261665006", "2021-02-01"), engine=engine).case["pregnant"] is None
    stale = mapped(status("60001007", "2019-01-01"), engine=engine)
    assert stale.case["pregnant"] is None and "stale" in kinds(stale)


def test_age_sex_as_of_and_setting_defaults(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    m = mapped(engine=engine, as_of=date(2021, 6, 14))
    assert (m.case["age"], m.case["sex"], m.case["patient_id"]) == (50, "female", PID)
    assert mapped(engine=engine, as_of=date(2021, 6, 15)).case["age"] == 51
    monkeypatch.delenv("CAREPATH_SETTING", raising=False)
    d = to_case(bundle(patient()), vocab=engine.vocab, today=date(2030, 1, 2))
    assert (d.case["as_of"], d.case["setting"]) == ("2030-01-02", "community")
    assert (d.report.as_of_source, d.report.setting_source) == ("default: today", "default")
    monkeypatch.setenv("CAREPATH_SETTING", "hospital")
    assert to_case(bundle(patient()), vocab=engine.vocab).case["setting"] == "hospital"
    monkeypatch.setenv("CAREPATH_SETTING", "ward")
    with pytest.raises(FhirInputError):
        to_case(bundle(patient()), vocab=engine.vocab)
    partial = to_case(bundle(patient(birthDate="1970")), vocab=engine.vocab, as_of=AS_OF, setting="community")
    assert "age" not in partial.case and "no_value" in kinds(partial)


def test_input_shapes_and_errors(engine: Engine) -> None:
    resources = [patient(), condition("38341003"), med("316049")]
    as_list = to_case(resources, vocab=engine.vocab, as_of=AS_OF, setting="community")
    prefetch = to_case(
        {"patient": resources[0], "conditions": bundle(resources[1]), "meds": bundle(resources[2]), "allergies": None},
        vocab=engine.vocab,
        as_of=AS_OF,
        setting="community",
    )
    assert as_list.case == prefetch.case == mapped(resources[1], resources[2], engine=engine).case
    two = bundle(patient(), {**patient(), "id": "p2"})
    with pytest.raises(FhirInputError, match="2 patients"):
        to_case(two, vocab=engine.vocab, as_of=AS_OF, setting="community")
    bad = mapped(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": {"value": "high"},
        },
        engine=engine,
    )
    assert "invalid_resource" in kinds(bad)
    assert is_fhir(bundle()) and not is_fhir({"patient_id": "x"})
    assert is_fhir_input(resources) and is_fhir_input({"patient": resources[0], "conditions": None})
    assert not is_fhir_input({"patient_id": "x"}) and not is_fhir_input({"smi_risk_grade": None}) and not is_fhir_input([])
    old = to_case(bundle(patient(birthDate="1880-01-01")), vocab=engine.vocab, as_of=AS_OF, setting="community")
    assert "age" not in old.case and "implausible_value" in kinds(old)


def test_medication_reference_and_drug_allergies(engine: Engine) -> None:
    medication = {"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": RXNORM, "code": "29046"}]}}
    ref = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": SUBJECT,
        "medicationReference": {"reference": "Medication/m1"},
    }
    allergy = {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "category": ["medication"],
        "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C09AA"}]},
        "patient": SUBJECT,
    }
    food = {
        "resourceType": "AllergyIntolerance",
        "category": ["food"],
        "code": {"coding": [{"system": SNOMED, "code": "91935009"}]},
        "patient": SUBJECT,
    }
    m = mapped(medication, ref, allergy, food, engine=engine)
    assert m.case["medications"] == [{"atc": "C09AA03"}]
    assert m.case["allergies"] == ["C09AA"]
    assert "not_a_drug" in kinds(m, "info") and not m.report.warnings()


def test_report_json_and_lines(engine: Engine) -> None:
    m = mapped(obs("8480-6", 400, "mm[Hg]"), obs("8480-6", 401, "mm[Hg]", when="2021-03-02"), obs("72514-3", 3, "{score}"), engine=engine)
    j = m.report.to_json()
    assert j["as_of"] == "2021-04-01" and j["setting"] == "community" and j["mappings_version"]
    assert [w["kind"] for w in j["warnings"]] == ["implausible_value", "implausible_value"]
    assert any(i["kind"] == "unmapped_code" for i in j["info"])
    lines = m.report.lines()
    assert lines[0].startswith("fhir: as_of 2021-04-01 (given), setting community (given)")
    assert sum(ln.startswith("fhir warning: implausible_value") for ln in lines) == 2


# ------------------------------------------------------------------ scenarios and generated cases through FHIR


def _through_fhir(case: dict[str, Any], engine: Engine) -> dict[str, Any]:
    """The case rendered as a Bundle and mapped back, with what FHIR does not carry put back."""
    r = case_to_bundle(case)
    back = to_case(
        json.loads(json.dumps(r.bundle)),
        vocab=engine.vocab,
        as_of=date.fromisoformat(case["as_of"]),
        setting=case["setting"],
        patient_id=case["patient_id"],
    ).case
    back["findings"] = r.rest["findings"]
    back["smi_risk_grade"] = r.rest["smi_risk_grade"]
    back["observations"] = sorted(back["observations"] + r.rest.get("observations", []), key=lambda o: (o["date"], o["code"]))
    return back


def _valid_scenarios(engine: Engine) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    from carepath.errors import CaseError

    for s in iter_scenarios(SCENARIOS):
        try:
            decision = engine.evaluate(s.case)
        except CaseError:
            continue
        yield s.name, s.case, decision


def test_every_golden_scenario_through_fhir_gives_the_same_decision(engine: Engine) -> None:
    compared = 0
    carried = 0
    for name, case, decision in _valid_scenarios(engine):
        back = _through_fhir(copy.deepcopy(case), engine)
        assert engine.evaluate(back) == decision, name
        compared += 1
        carried += bool(case.get("findings") or case.get("smi_risk_grade") is not None)
    assert compared >= 250, compared
    print(f"{compared} scenarios compared; {carried} carry findings or an SMI risk grade outside FHIR")


SPACE = CaseSpace.from_directory()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=SPACE.cases())
def test_generated_case_round_trips_through_fhir(case: dict[str, Any]) -> None:
    engine = _ENGINE
    expected = engine.evaluate(case)
    assert engine.evaluate(_through_fhir(copy.deepcopy(case), engine)) == expected


_ENGINE = Engine.from_directory()


# ------------------------------------------------------------------ the command line


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {**os.environ, **(env or {})}
    full.pop("CAREPATH_SETTING", None)
    return subprocess.run([sys.executable, "-m", "carepath.cli", *args], capture_output=True, text=True, timeout=120, env=full)


def test_cli_evaluate_accepts_a_bundle() -> None:
    by_name = {p.name.split("_")[0]: p for p in BUNDLES}
    r = run("evaluate", "--as-of", "2021-04-01", str(by_name["Angelic"]))
    assert r.returncode == 0, r.stderr
    decision = json.loads(r.stdout)
    assert decision["as_of"] == "2021-04-01"
    golden = json.loads((goldens.OUT / by_name["Angelic"].name).read_text())
    assert decision == golden["decision"]
    assert "setting community (default)" in r.stderr and "fhir warning: unknown_unit" in r.stderr
    r = run("evaluate", "--setting", "hospital", str(by_name["Liz"]))  # as_of defaults to today
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["as_of"] == date.today().isoformat() and "(default: today)" in r.stderr


def test_cli_fhir_to_case(tmp_path: Path) -> None:
    by_name = {p.name.split("_")[0]: p for p in BUNDLES}
    r = run("fhir-to-case", "--as-of", "2021-04-01", str(by_name["Dirk"]))
    assert r.returncode == 0, r.stderr
    golden = json.loads((goldens.OUT / by_name["Dirk"].name).read_text())
    assert json.loads(r.stdout) == golden["case"]
    assert "fhir warning" in r.stderr and "Traceback" not in r.stderr
    r = run("fhir-to-case", "--json", "--as-of", "2021-04-01", "--setting", "community", str(by_name["Dirk"]))
    out = json.loads(r.stdout)
    assert out["case"] == golden["case"] and out["report"] == golden["report"]
    # the mapped case replays through evaluate
    case_file = tmp_path / "case.json"
    case_file.write_text(json.dumps(out["case"]))
    r = run("evaluate", str(case_file))
    assert r.returncode == 0 and json.loads(r.stdout) == golden["decision"]


def test_cli_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    example = ROOT / "examples" / "case.json"
    r = run("evaluate", "--as-of", "2021-04-01", str(example))
    assert r.returncode == 2 and "for FHIR input" in r.stderr
    two = tmp_path / "two.json"
    two.write_text(json.dumps(bundle(patient(), {**patient(), "id": "p2"})))
    r = run("fhir-to-case", str(two))
    assert r.returncode == 2 and "2 patients" in r.stderr and "Traceback" not in r.stderr
    prefetch = tmp_path / "prefetch.json"
    prefetch.write_text(json.dumps({"patient": patient(), "conditions": bundle(condition("38341003")), "medications": None}))
    r = run("evaluate", "--as-of", "2021-04-01", str(prefetch))
    assert r.returncode == 0, r.stderr
    assert [p["id"] for p in json.loads(r.stdout)["pathways"] if p.get("enrolled")] == ["hypertension"]
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"patient_id": "x" * (1 << 20)}))
    r = run("evaluate", str(big))
    assert r.returncode == 2 and "case is larger than 1048576 bytes (1 MiB), the limit" in r.stderr
    assert bundled_pathways().exists()


def test_readings_of_one_day_are_in_time_order(engine: Engine) -> None:
    # the engine takes the last reading of the latest day as the latest: the bundle's order must not decide
    evening = obs("8480-6", 182, "mm[Hg]", when="2021-03-01T19:30:00+08:00")
    morning = obs("8480-6", 146, "mm[Hg]", when="2021-03-01T08:10:00+08:00")
    m = mapped(evening, morning, engine=engine)
    assert [o["value"] for o in m.case["observations"]] == [146, 182]
