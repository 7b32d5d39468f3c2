"""The condition language: parsing, Kleene semantics, NNF, and the satisfiability check."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES

from carepath import lang
from carepath.validate import load_vocabulary, satisfiable

VOCAB = load_vocabulary(FIXTURES / "dictionary.yaml")


def parse(text: str) -> lang.Expr:
    expr, errors = lang.parse(text, VOCAB)
    assert not errors, errors
    return expr


def test_comparison_reads_latest_value_key() -> None:
    e = parse("sbp >= 180")
    assert isinstance(e, lang.Cmp)
    assert (e.num.key, e.op, e.value) == ("o_sbp", ">=", 180.0)


def test_units_are_converted_to_canonical() -> None:
    e = parse("fpg >= 126 mg/dL")
    assert isinstance(e, lang.Cmp)
    assert e.value == pytest.approx(7.0, abs=0.01)
    e = parse("hba1c >= 53 mmol/mol")
    assert isinstance(e, lang.Cmp)
    assert e.value == pytest.approx(7.0, abs=0.01)


def test_precedence_and_binds_tighter_than_or() -> None:
    e = parse("sbp >= 180 or dbp >= 110 and severe_headache")
    assert isinstance(e, lang.Or)
    assert isinstance(e.items[1], lang.And)


def test_missing_is_unknown_not_normal() -> None:
    e = parse("sbp < 140")
    assert lang.eval3(e, {}) is None
    assert lang.eval3(parse("not sbp >= 140"), {}) is None
    assert lang.eval3(parse("missing(sbp)"), {"h_sbp": 0}) is True


def test_kleene_and_or() -> None:
    facts = {"o_sbp": 150.0, "h_sbp": 1}
    assert lang.eval3(parse("sbp >= 140 or dbp >= 90"), facts) is True
    assert lang.eval3(parse("sbp >= 140 and dbp >= 90"), facts) is None
    assert lang.eval3(parse("sbp >= 160 and dbp >= 90"), facts) is False


def test_pregnancy_is_three_valued() -> None:
    assert lang.eval3(parse("not pregnant"), {"h_pregnant": 0}) is None
    assert lang.eval3(parse("not pregnant"), {"h_pregnant": 1, "pregnant": 0}) is True
    assert lang.eval3(parse("missing(pregnant)"), {"h_pregnant": 0}) is True


def test_due_is_missing_or_older() -> None:
    e = parse("due(egfr, 365)")
    assert lang.eval3(e, {"h_egfr": 0}) is True
    assert lang.eval3(e, {"h_egfr": 1, "d_egfr": 400, "o_egfr": 50.0}) is True
    assert lang.eval3(e, {"h_egfr": 1, "d_egfr": 30, "o_egfr": 50.0}) is False


@pytest.mark.parametrize(
    "text",
    [
        "sbp >= 140 and not (dbp < 90 or pregnant)",
        "not (taking(C09A) and allergic(C09AA)) or missing(potassium)",
        "not (sex == female and age < 50) and setting is community",
        "not due(hba1c, 90) or count_taking(C09A, C08CA, C03AA) >= 2",
    ],
)
def test_nnf_keeps_three_valued_truth(text: str) -> None:
    e = parse(text)
    n = lang.nnf(e)
    samples: list[dict[str, object]] = [
        {},
        {"o_sbp": 150.0, "h_sbp": 1, "o_dbp": 85.0, "h_dbp": 1, "pregnant": 0, "h_pregnant": 1},
        {"on_C09A": 1, "al_C09AA": 1, "h_potassium": 0, "sex": "female", "age": 30, "setting": "community"},
        {"h_hba1c": 1, "d_hba1c": 10, "o_hba1c": 7.0, "n_C03AA_C08CA_C09A": 2, "sex": "male", "setting": "hospital"},
    ]
    for facts in samples:
        assert lang.eval3(n, facts) == lang.eval3(e, facts)


@pytest.mark.parametrize(
    ("text", "sat"),
    [
        ("sbp >= 180", True),
        ("sbp > 300", False),
        ("sbp >= 150 and sbp < 140", False),
        ("missing(sbp) and sbp > 100", False),
        ("taking(C09AA) and not taking(C09A)", False),
        ("taking(C09A) and not taking(C09AA)", True),
        ("age > 64 and age < 65", False),
        ("sex == female and sex == male", False),
        ("smi_risk_grade >= 3 or smi_risk_grade > 5", True),
        ("pregnant and not pregnant", False),
    ],
)
def test_satisfiability(text: str, sat: bool) -> None:
    assert satisfiable(parse(text), VOCAB) is sat


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("sbp >= ", 7, "expected a number"),
        ("sbp >= 180 or", 13, "expected a condition"),
        ("(sbp >= 180", 11, "expected ')'"),
        ("sbp >= 180 $", 11, "unexpected character '$'"),
        ("sex == female female", 14, "unexpected 'female'"),
    ],
)
def test_syntax_errors_point_at_the_offending_character(text: str, offset: int, message: str) -> None:
    with pytest.raises(lang.ParseError) as info:
        lang.parse(text, VOCAB)
    assert info.value.offset == offset
    assert message in info.value.message


def test_describe_shows_the_value_read() -> None:
    e = parse("sbp >= 180")
    assert isinstance(e, lang.Cmp)
    assert lang.describe(e, {"o_sbp": 186.0}, VOCAB) == "sbp 186 mmHg ≥ 180"


def test_definitions_are_inlined_and_checked_in_order(tmp_path: Path) -> None:
    import shutil

    from carepath.validate import validate_paths

    src = (Path(__file__).parent.parent / "fixtures" / "pathways" / "mini_htn.yaml").read_text()
    src = src.replace("applies_to:", "definitions:\n  high: sbp >= 140 or dbp >= 90\n  uses_later: later\n  later: high\napplies_to:")
    src = src.replace("when: (sbp >= 140 or dbp >= 90) and sbp < 180", "when: high and sbp < 180")
    (tmp_path / "p.yaml").write_text(src)
    shutil.copy(Path(__file__).parent.parent / "fixtures" / "pathways" / "dictionary.yaml", tmp_path)
    checked, diags = validate_paths([tmp_path], tmp_path)
    assert [d.message for d in diags] == ["unknown name 'later'"]
    assert diags[0].path == "definitions.uses_later"
    fixed = src.replace("  uses_later: later\n", "")
    (tmp_path / "p.yaml").write_text(fixed)
    checked, diags = validate_paths([tmp_path], tmp_path)
    assert not diags
    rule = next(r for r in checked[0].rules if r.rule.id == "mini.uncontrolled")
    assert lang.eval3(rule.when, {"o_sbp": 150.0, "o_dbp": 80.0}) is True


def test_converted_values_keep_a_digit_more_than_reporting_precision() -> None:
    # the brief's anchors hold: 53 mmol/mol is 7.0 %, 300 mg/dL is 16.7 mmol/L (16.67), 70 mg/dL is below 3.9
    assert VOCAB.observations["hba1c"].to_canonical(53, "mmol/mol") == 7.0
    assert VOCAB.observations["random_glucose"].to_canonical(300, "mg/dL") == 16.67
    assert VOCAB.observations["fpg"].to_canonical(70, "mg/dL") == 3.89
    # and a value just above a threshold is not rounded onto it (issue 23): 71 mg/dL is 3.94, not 3.9
    assert VOCAB.observations["fpg"].to_canonical(71, "mg/dL") == 3.94
    e = parse("hba1c >= 53 mmol/mol")
    assert isinstance(e, lang.Cmp) and e.value == 7.0


def test_rise_is_latest_minus_previous_and_unknown_without_two_readings() -> None:
    from datetime import date

    from carepath.case import validate_case
    from carepath.derive import Features, derive

    e = parse("rise(sbp) > 20")
    assert isinstance(e, lang.Cmp) and e.num.key == "r_sbp" and e.num.text() == "rise(sbp)"
    feat = Features()
    feat.add(e)
    base = {"patient_id": "p", "as_of": "2026-11-24", "setting": "community", "age": 60, "sex": "male", "pregnant": None}

    def facts(*readings: tuple[float, str]) -> dict[str, object]:
        obs = [{"code": "sbp", "value": v, "unit": "mmHg", "date": d} for v, d in readings]
        case, o = validate_case({**base, "observations": obs, "conditions": [], "medications": [], "allergies": [], "findings": []}, VOCAB)
        assert case.as_of == date(2026, 11, 24)
        return derive(case, o, feat)

    risen = facts((150.0, "2026-11-20"), (128.0, "2026-08-01"))  # given newest first: the dates decide
    assert risen["r_sbp"] == 22.0 and lang.eval3(e, risen) is True
    assert lang.describe(e, risen, VOCAB) == "rise(sbp) 22 mmHg > 20"
    fallen = facts((128.0, "2026-11-20"), (150.0, "2026-08-01"))
    assert fallen["r_sbp"] == -22.0 and lang.eval3(e, fallen) is False
    assert lang.eval3(e, facts((150.0, "2026-11-20"))) is None  # one reading: unknown, never "no rise"


def test_rise_takes_only_the_canonical_unit() -> None:
    _, errors = lang.parse("rise(hba1c) > 5 mmol/mol", VOCAB)  # an offset conversion would be wrong for a difference
    assert errors and "compared in hba1c's own unit '%'" in str(errors[0])
    assert not lang.parse("rise(hba1c) > 0.5 %", VOCAB)[1]


def test_rise_pct_is_the_rise_as_a_percentage_of_the_previous_reading() -> None:
    from carepath.case import validate_case
    from carepath.derive import Features, derive

    e = parse("rise_pct(bmi) >= 5")
    with_sign = parse("rise_pct(bmi) >= 5 %")
    assert isinstance(e, lang.Cmp) and isinstance(with_sign, lang.Cmp) and e.num.key == "rp_bmi"
    assert (with_sign.num, with_sign.op, with_sign.value) == (e.num, e.op, e.value)
    assert "is a percentage" in str(lang.parse("rise_pct(bmi) >= 5 kg/m2", VOCAB)[1][0])
    feat = Features()
    feat.add(e)
    obs = [
        {"code": "bmi", "value": 25.2, "unit": "kg/m2", "date": "2026-11-20"},
        {"code": "bmi", "value": 24.0, "unit": "kg/m2", "date": "2026-05-01"},
    ]
    base: dict[str, object] = {"patient_id": "p", "as_of": "2026-11-24", "setting": "community"}
    base |= {"conditions": [], "medications": [], "allergies": [], "findings": []}
    case, o = validate_case({**base, "observations": obs}, VOCAB)
    facts = derive(case, o, feat)
    assert facts["rp_bmi"] == 5.0 and lang.eval3(e, facts) is True
    assert lang.describe(e, facts, VOCAB) == "rise_pct(bmi) 5% ≥ 5"


def test_days_after_start_dates_the_latest_reading_against_the_drug_start() -> None:
    """A recheck after starting a drug must not be satisfied by the baseline taken before it."""
    from carepath.case import validate_case
    from carepath.derive import Features, derive

    e = parse("days_after_start(potassium, C09) <= 0")
    assert isinstance(e, lang.Cmp) and e.num.key == "a_potassium_C09" and e.num.text() == "days_after_start(potassium, C09)"
    assert e.num.integer
    feat = Features()
    feat.add(e)
    base = {"patient_id": "p", "as_of": "2026-11-24", "setting": "community", "conditions": [], "allergies": [], "findings": []}

    def facts(k_dates: list[str], starts: list[str | None]) -> dict[str, object]:
        obs = [{"code": "potassium", "value": 4.4, "unit": "mmol/L", "date": d} for d in k_dates]
        meds = [{"atc": atc, "since": s} for atc, s in zip(("C09AA05", "C09CA01"), starts, strict=False)]
        case, o = validate_case({**base, "observations": obs, "medications": meds}, VOCAB)
        return derive(case, o, feat)

    before = facts(["2026-11-12"], ["2026-11-14"])  # baseline 2 days before the start
    assert before["a_potassium_C09"] == -2 and lang.eval3(e, before) is True
    assert lang.describe(e, before, VOCAB) == "days_after_start(potassium, C09) -2 days ≤ 0"
    same_day = facts(["2026-11-14"], ["2026-11-14"])
    assert same_day["a_potassium_C09"] == 0 and lang.eval3(e, same_day) is True
    after = facts(["2026-11-12", "2026-11-21"], ["2026-11-14"])  # the latest reading decides
    assert after["a_potassium_C09"] == 7 and lang.eval3(e, after) is False
    # the latest start of the class counts, as for days_on: an ARB added on 22 November is not covered
    # by a K+ from the 21st, whatever was started before
    two = facts(["2026-11-21"], ["2026-11-14", "2026-11-22"])
    assert two["a_potassium_C09"] == -1 and lang.eval3(e, two) is True
    # unknown, never "checked": no reading, not taking, or no start date
    assert lang.eval3(e, facts([], ["2026-11-14"])) is None
    assert lang.eval3(e, facts(["2026-11-21"], [])) is None
    assert lang.eval3(e, facts(["2026-11-21"], [None])) is None


def test_days_after_start_arguments_and_unit_are_checked() -> None:
    with pytest.raises(lang.ParseError, match="takes 2 arguments"):
        lang.parse("days_after_start(potassium) > 1", VOCAB)
    _, errors = lang.parse("days_after_start(potasium, C09) > 1", VOCAB)
    assert "did you mean 'potassium'" in str(errors[0])
    _, errors = lang.parse("days_after_start(potassium, C9X) > 1", VOCAB)
    assert "not an ATC code" in str(errors[0])
    _, errors = lang.parse("days_after_start(potassium, C09) > 1 mmol/L", VOCAB)
    assert "is in days" in str(errors[0])
    assert not lang.parse("days_after_start(potassium, C09) >= 7 days", VOCAB)[1]


def test_rise_since_start_measures_from_the_last_reading_before_the_drug() -> None:
    """A slow drift (400 -> 430 -> 465) never rises 60 since the previous reading, but does since the
    baseline taken before the drug was started; without a baseline or an on-treatment reading: unknown."""
    from carepath.case import validate_case
    from carepath.derive import Features, derive

    e = parse("rise_since_start(qtc, N05AX, N05AH) > 60")
    pct = parse("rise_pct_since_start(qtc, N05AH, N05AX) >= 16")
    assert isinstance(e, lang.Cmp) and isinstance(pct, lang.Cmp)
    assert e.num.key == "b_qtc_N05AH_N05AX" and e.num.text() == "rise_since_start(qtc, N05AH, N05AX)"  # prefixes sorted
    assert pct.num.key == "bp_qtc_N05AH_N05AX"
    feat = Features()
    feat.add(e)
    feat.add(pct)
    base = {"patient_id": "p", "as_of": "2026-11-24", "setting": "community", "conditions": [], "allergies": [], "findings": []}

    def facts(readings: list[tuple[float, str]], starts: list[str | None]) -> dict[str, object]:
        obs = [{"code": "qtc", "value": v, "unit": "ms", "date": d} for v, d in readings]
        meds = [{"atc": atc, "since": s} for atc, s in zip(("N05AX08", "N05AH03"), starts, strict=False)]
        case, o = validate_case({**base, "observations": obs, "medications": meds}, VOCAB)
        return derive(case, o, feat)

    drift = [(465.0, "2026-11-20"), (430.0, "2026-06-01"), (400.0, "2025-10-01"), (380.0, "2024-01-01")]
    f = facts(drift, ["2025-10-15"])
    assert f["b_qtc_N05AH_N05AX"] == 65.0 and lang.eval3(e, f) is True  # from 400, the last reading before the start
    assert f["bp_qtc_N05AH_N05AX"] == 16.25 and lang.eval3(pct, f) is True
    assert lang.describe(e, f, VOCAB) == "rise_since_start(qtc, N05AH, N05AX) 65 ms > 60"
    assert facts(drift, ["2025-10-01"])["b_qtc_N05AH_N05AX"] == 65.0  # a reading on the day of the start is the baseline
    assert facts(drift, ["2026-06-01", "2025-10-15"])["b_qtc_N05AH_N05AX"] == 65.0  # earliest start
    assert lang.eval3(e, facts(drift, ["2023-01-01"])) is None  # no reading before the start: no baseline
    assert lang.eval3(e, facts(drift, ["2026-11-21"])) is None  # no reading since the start
    assert lang.eval3(e, facts(drift, [None])) is None  # start unknown
    # a second drug of the classes with no start date: the baseline may be on treatment, so unknown
    assert lang.eval3(e, facts(drift, ["2025-10-15", None])) is None
    assert lang.eval3(e, facts(drift, [])) is None  # not taking
    assert lang.eval3(e, facts(drift[:1], ["2025-10-15"])) is None  # one reading
    _, errors = lang.parse("rise_since_start(qtc, N5) > 60", VOCAB)
    assert "not an ATC code" in str(errors[0])
    with pytest.raises(lang.ParseError, match="at least one ATC code"):
        lang.parse("rise_pct_since_start(bmi) > 5", VOCAB)
    assert "is a percentage" in str(lang.parse("rise_pct_since_start(bmi, N05A) >= 5 kg/m2", VOCAB)[1][0])


def test_days_on_counts_from_the_latest_start_in_the_class() -> None:
    """A drug added to a class already taken restarts the clock (no titration, recheck or down-referral
    on the strength of the older drug); a drug of the class with no start makes it unknown."""
    from carepath.case import validate_case
    from carepath.derive import Features, derive

    e = parse("days_on(C09) >= 28")
    feat = Features()
    feat.add(e)
    base = {"patient_id": "p", "as_of": "2026-11-24", "setting": "community", "conditions": [], "allergies": [], "findings": []}

    def facts(starts: list[str | None]) -> dict[str, object]:
        meds = [{"atc": atc, "since": s} for atc, s in zip(("C09AA05", "C09CA01"), starts, strict=False)]
        case, o = validate_case({**base, "observations": [], "medications": meds}, VOCAB)
        return derive(case, o, feat)

    assert facts(["2024-01-01"])["s_C09"] == 1058 and lang.eval3(e, facts(["2024-01-01"])) is True
    added = facts(["2024-01-01", "2026-11-14"])  # an ARB added 10 days ago
    assert added["s_C09"] == 10 and lang.eval3(e, added) is False
    assert lang.eval3(e, facts(["2024-01-01", None])) is None
    assert lang.eval3(e, facts([None])) is None
