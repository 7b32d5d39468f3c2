"""A synthetic, Luohu-like chronic-disease cohort in the case contract (spec/case-format.md).

Deterministic by seed: one ``random.Random(seed)`` stream, cases drawn in order, values rounded,
``as_of`` fixed (never the clock), so the same ``--n --seed --as-of`` gives byte-identical JSONL.

Prevalences and their sources (what each draw below rests on)
---------------------------------------------------------------
Luohu (clinical brief §E, S20: Wang X et al., Bull WHO 2018;96:843-852): about 1.47 million
residents, >451,000 with chronic disease (2014). The cohort models the people managed under the
three carepath pathways; its condition mix comes from national adult prevalences:

* Hypertension ≈ 23.2% of adults (weighted; crude 27.9%): China Hypertension Survey 2012-2015,
  Wang Z et al., Circulation 2018;137:2344-2356. Control among all hypertensives ≈ 15%, among
  treated ≈ 37%; community-managed patients (NBPHS) are assumed better controlled (≈ 50%).
* Diabetes ≈ 12.4% of adults (2018): Wang L et al., JAMA 2021;326:2498-2506 (12.8% by ADA
  criteria in Li Y et al., BMJ 2020;369:m997). HbA1c < 7% in about half of treated patients (JAMA 2021).
* Diabetes among hypertensives ≈ 24%: **assumed** (community cohorts report 20-30%).
  Hence, of the cardiometabolic patients: hypertension only ≈ 58%, diabetes only ≈ 23%, both ≈ 19%.
* Severe mental illness: lifetime schizophrenia/psychotic disorders 0.7% and bipolar disorder 0.6%
  (China Mental Health Survey, Huang Y et al., Lancet Psychiatry 2019;6:211-224); registered SMI
  patients are **assumed** at ≈ 4 per 1000 residents, i.e. ≈ 1.5% of this cohort; of them
  schizophrenia (F20) ≈ 70%, bipolar (F31) ≈ 12%, schizoaffective (F25) 8%, delusional (F22) 5%,
  psychosis due to a medical condition/epilepsy (F06) 5%: **assumed** shares. SMI patients also
  have hypertension (20%) or diabetes (10%): **assumed**.
* Emergencies: ≈ 1% of cases carry a danger sign or a crisis-range value: **assumed**.
* Setting: 90% community (GP team), 10% hospital (candidates for down-referral): **assumed**.
* Diabetic eye and foot examinations (the diabetes pathway's own observations ``fundus_exam`` and
  ``foot_exam``, 0 normal / 1 abnormal): on record for 60% (fundus) and 65% (foot) of diabetics,
  a third of those older than a year: **assumed** (annual screening is patchy in primary care).
  Abnormal fundus 18% (diabetic retinopathy in 18.45% of people with diabetes in China: Song P et
  al., J Glob Health 2018;8:010803); abnormal foot examination 15%: **assumed**. They are written
  only when the target pathway set defines these codes (``synth --pathways``), so a cohort stays
  valid for any pathway set; the draws are made either way, so the rest of a case does not change.

Ages are adult (18-95) with condition-specific means; value distributions (BP, HbA1c, eGFR, K+, ...)
are plausible shapes chosen here (**assumed**), clipped to the dictionary's plausible ranges; a
share of every test is stale (older than a year) or missing, so "due" rules have work to do.
Drug choices follow common Chinese primary-care regimens (CCB and ARB first for hypertension,
metformin first for diabetes, second-generation antipsychotics for SMI).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

DEFAULT_AS_OF = date(2026, 11, 24)

# condition mix (shares of the cohort, see the module docstring)
MIX = (("htn", 0.574), ("dm", 0.226), ("both", 0.185), ("smi", 0.015))
SMI_DX = (("F20.0", 0.50), ("F20.9", 0.20), ("F31.9", 0.12), ("F25.9", 0.08), ("F22.0", 0.05), ("F06.2", 0.05))
DM_DX = (("E11.9", 0.70), ("E11.2", 0.12), ("E11.4", 0.06), ("E11.5", 0.05), ("E11.6", 0.07))

# (atc, name, dose mg/day)
HTN_DRUGS: tuple[tuple[str, str, float, float], ...] = (  # atc, name, dose, weight
    ("C08CA01", "amlodipine", 5, 0.30),
    ("C08CA05", "nifedipine", 30, 0.08),
    ("C09CA01", "losartan", 50, 0.14),
    ("C09CA03", "valsartan", 80, 0.10),
    ("C09CA07", "telmisartan", 40, 0.05),
    ("C09AA02", "enalapril", 10, 0.07),
    ("C09AA04", "perindopril", 4, 0.03),
    ("C03AA03", "hydrochlorothiazide", 12.5, 0.09),
    ("C03BA11", "indapamide", 1.5, 0.06),
    ("C07AB02", "metoprolol", 47.5, 0.08),
)
DM_DRUGS: tuple[tuple[str, str, float, float], ...] = (
    ("A10BB09", "gliclazide", 60, 0.14),
    ("A10BF01", "acarbose", 150, 0.14),
    ("A10BH01", "sitagliptin", 100, 0.14),
    ("A10BK01", "dapagliflozin", 10, 0.16),
    ("A10BK03", "empagliflozin", 10, 0.08),
    ("A10BJ02", "liraglutide", 1.2, 0.06),
    ("A10AE04", "insulin glargine", 0, 0.12),
    ("A10BG03", "pioglitazone", 30, 0.04),
)
SMI_DRUGS: tuple[tuple[str, str, float, float], ...] = (
    ("N05AX08", "risperidone", 4, 0.28),
    ("N05AH03", "olanzapine", 10, 0.22),
    ("N05AX12", "aripiprazole", 15, 0.14),
    ("N05AH04", "quetiapine", 400, 0.10),
    ("N05AH02", "clozapine", 300, 0.12),
    ("N05AD01", "haloperidol", 10, 0.06),
    ("N05AF05", "zuclopenthixol", 20, 0.02),
    ("N05AL05", "amisulpride", 400, 0.06),
)
MOOD = (("N05AN01", "lithium", 900), ("N03AG01", "valproate", 1000))
ALLERGY = (("C09AA", 0.35), ("C09A", 0.05), ("A10BA", 0.15), ("C08CA", 0.15), ("N05AH02", 0.10), ("C03AA", 0.10), ("J01CA", 0.10))

EMERGENCY = {
    "htn": ("severe_headache", "chest_pain", "neuro_deficit", "visual_disturbance", "dyspnoea", "vomiting"),
    "dm": ("impaired_consciousness", "vomiting", "polyuria_polydipsia", "confusion", "hypoglycaemia_recent", "foot_ulcer"),
    "smi": ("suicide_plan", "self_harm_recent", "violence_recent", "fever_rigidity", "tremor_ataxia", "suicidal_ideation"),
}


def _pick(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    x = rng.random()
    acc = 0.0
    for name, w in table:
        acc += w
        if x < acc:
            return name
    return table[-1][0]


def _clip(v: float, lo: float, hi: float, nd: int = 1) -> float | int:
    v = round(min(max(v, lo), hi), nd)
    return int(v) if nd == 0 else v


class _Builder:
    def __init__(self, rng: random.Random, as_of: date) -> None:
        self.rng = rng
        self.as_of = as_of
        self.obs: list[dict[str, Any]] = []

    def age_days(self, recent: float, stale: float) -> int:
        """Days since the test: recent (within `recent` days), or stale (up to 2 years) with probability `stale`."""
        r = self.rng
        if r.random() < stale:
            return r.randint(366, 730)
        return r.randint(0, int(recent))

    def add(self, code: str, value: float | int, unit: str, days: int) -> None:
        self.obs.append({"code": code, "value": value, "unit": unit, "date": (self.as_of - timedelta(days=days)).isoformat()})


def _drug_class(atc: str) -> str:
    return "C09" if atc.startswith("C09") else atc[:5]  # never an ACE inhibitor with an ARB


def _regimen(
    rng: random.Random, table: tuple[tuple[str, str, float, float], ...], k: int, allergies: list[str]
) -> list[tuple[str, str, float]]:
    out: list[tuple[str, str, float]] = []
    weights = [w for *_, w in table]
    tries = 0
    while len(out) < k and tries < 20:
        tries += 1
        atc, name, dose, _ = rng.choices(table, weights)[0]
        if any(_drug_class(o[0]) == _drug_class(atc) for o in out) or any(atc.startswith(a) for a in allergies):
            continue
        out.append((atc, name, dose))
    return out


LOCAL_EXAMS = ("fundus_exam", "foot_exam")  # pathway-local observations (diabetes.yaml)


def synth_case(rng: random.Random, i: int, seed: int, as_of: date, exams: frozenset[str] = frozenset(LOCAL_EXAMS)) -> dict[str, Any]:
    """One case; `exams` are the pathway-local examination codes the target pathways define."""
    r = rng
    group = _pick(r, MIX)
    smi = group == "smi"
    htn = group in ("htn", "both") or (smi and r.random() < 0.20)
    dm = group in ("dm", "both") or (smi and r.random() < 0.10)
    mean_age = 45 if smi else (63 if htn and dm else 61 if htn else 58)
    age = int(min(95, max(18, round(r.gauss(mean_age, 12 if smi else 11)))))
    sex = "male" if r.random() < (0.52 if not smi else 0.50) else "female"
    if r.random() < 0.002:
        sex = "unknown"
    pregnant: bool | None = None
    if sex == "male":
        pregnant = False if r.random() < 0.7 else None
    elif sex == "female" and age < 50:
        x = r.random()
        pregnant = True if x < 0.01 else (False if x < 0.80 else None)  # unknown is not false
    elif sex == "female":
        pregnant = False
    setting = "hospital" if r.random() < 0.10 else "community"
    emergency = r.random() < 0.01
    b = _Builder(r, as_of)

    conditions: list[str] = []
    if htn:
        conditions.append("I10" if r.random() < 0.93 else "I11.9")
    if dm:
        conditions.append(_pick(r, DM_DX))
    if smi:
        conditions.append(_pick(r, SMI_DX))
    if r.random() < 0.25 and (htn or dm):
        conditions.append("E78.5")  # dyslipidaemia: common, read by no rule
    allergies: list[str] = []
    if r.random() < 0.06:
        allergies.append(_pick(r, ALLERGY))

    meds: list[dict[str, Any]] = []

    def med(atc: str, name: str, dose: float) -> None:
        since = as_of - timedelta(days=r.choice((r.randint(0, 60), r.randint(30, 2500))))
        m: dict[str, Any] = {"atc": atc, "name": name}
        if dose:
            m["dose_mg_per_day"] = dose
        m["since"] = since.isoformat()
        meds.append(m)

    # --- blood pressure: every patient has some; hypertensives are treated in 80% of cases
    treated_htn = htn and r.random() < 0.80
    n_htn = 0
    if treated_htn:
        n_htn = 1 if r.random() < 0.50 else (2 if r.random() < 0.70 else 3)
        for atc, name, dose in _regimen(r, HTN_DRUGS, n_htn, allergies):
            med(atc, name, dose)
    if htn:
        sbp = r.gauss(140 + 3 * (n_htn == 0), 15)
        dbp = 0.45 * (sbp - 140) + r.gauss(86, 8) - max(0, age - 65) * 0.3
    else:
        sbp = r.gauss(124, 12)
        dbp = 0.4 * (sbp - 124) + r.gauss(77, 7)
    if emergency and (htn or group == "both") and r.random() < 0.5:
        sbp, dbp = r.gauss(192, 8), r.gauss(112, 6)  # crisis range
    if r.random() < 0.97:
        d = b.age_days(90 if htn else 365, 0.08 if htn else 0.25)
        b.add("sbp", _clip(sbp, 70, 260, 0), "mmHg", d)
        b.add("dbp", _clip(dbp, 40, 150, 0), "mmHg", d)
        if r.random() < 0.45:  # an earlier reading
            d2 = d + r.randint(14, 120)
            b.add("sbp", _clip(sbp + r.gauss(3, 10), 70, 260, 0), "mmHg", d2)
            b.add("dbp", _clip(dbp + r.gauss(1, 6), 40, 150, 0), "mmHg", d2)
        if r.random() < 0.6:
            b.add("heart_rate", _clip(r.gauss(74, 10), 40, 160, 0), "/min", d)
    if r.random() < 0.7:
        b.add("bmi", _clip(r.gauss(25.2 if (htn or dm) else 23.5, 3.4) + (1.5 if smi else 0), 15, 50), "kg/m2", b.age_days(365, 0.2))

    # --- kidneys, potassium, lipids
    egfr = r.gauss(105 - 0.85 * max(0, age - 30), 14) - (8 if dm else 0)
    if r.random() < 0.03:
        egfr = r.uniform(10, 30)
    if r.random() < (0.80 if (htn or dm) else 0.5):
        d = b.age_days(365, 0.25)
        b.add("egfr", _clip(egfr, 5, 140, 0), "mL/min/1.73m2", d)
        if r.random() < 0.8:
            cr = 88.4 * (1.0 if sex != "female" else 0.8) * (90 / max(egfr, 8)) ** 0.85
            if r.random() < 0.1:
                b.add("creatinine", _clip(cr / 88.4, 0.2, 20, 2), "mg/dL", d)
            else:
                b.add("creatinine", _clip(cr, 20, 1500, 0), "µmol/L", d)
    on_raas = any(m["atc"].startswith("C09") for m in meds)
    if r.random() < (0.75 if on_raas else 0.45):
        k = r.gauss(4.3 + (0.15 if on_raas else 0) + (0.4 if egfr < 30 else 0), 0.42)
        if r.random() < 0.01:
            k = r.uniform(5.8, 6.8)
        b.add("potassium", _clip(k, 2.5, 8.0), "mmol/L" if r.random() < 0.95 else "mEq/L", b.age_days(365, 0.3))
    if r.random() < 0.55:
        ldl = r.gauss(2.9, 0.8)
        if r.random() < 0.15:
            b.add("ldl", _clip(ldl * 38.67, 20, 400, 0), "mg/dL", b.age_days(365, 0.35))
        else:
            b.add("ldl", _clip(ldl, 0.5, 9), "mmol/L", b.age_days(365, 0.35))
        if r.random() < 0.4:
            med("C10AA05", "atorvastatin", 20)

    # --- diabetes
    if dm:
        if r.random() < 0.88:
            if "A10BA" not in allergies:
                med("A10BA02", "metformin", r.choice((1000, 1500, 2000)))
            n_dm = 0 if r.random() < 0.45 else (1 if r.random() < 0.7 else 2)
            for atc, name, dose in _regimen(r, DM_DRUGS, n_dm, allergies):
                med(atc, name, dose)
        a1c = 5.6 + r.lognormvariate(0.45, 0.45)
        if emergency and r.random() < 0.4:
            a1c = r.uniform(11, 14)
        if r.random() < 0.88:
            d = b.age_days(180, 0.25)
            if r.random() < 0.1:
                b.add("hba1c", _clip((a1c - 2.15) * 10.929, 20, 180, 0), "mmol/mol", d)
            else:
                b.add("hba1c", _clip(a1c, 4.2, 16), "%", d)
            if r.random() < 0.3:
                b.add("hba1c", _clip(a1c + r.gauss(0.2, 0.6), 4.2, 16), "%", d + r.randint(90, 200))
        if r.random() < 0.7:
            fpg = 1.59 * a1c - 2.59 + r.gauss(0, 1.2)
            if r.random() < 0.15:
                b.add("fpg", _clip(fpg * 18, 60, 600, 0), "mg/dL", b.age_days(90, 0.2))
            else:
                b.add("fpg", _clip(fpg, 3.0, 30), "mmol/L", b.age_days(90, 0.2))
        if r.random() < 0.5:
            b.add("uacr", _clip(r.lognormvariate(2.8, 1.2), 1, 3000, 0), "mg/g", b.age_days(365, 0.4))
        if emergency and r.random() < 0.3:
            b.add("random_glucose", _clip(r.uniform(16.7, 33), 1, 60), "mmol/L", 0)
            b.add("ketones", _clip(r.uniform(1.5, 5), 0, 15), "mmol/L", 0)
        for code, on_record, abnormal in (("fundus_exam", 0.60, 0.18), ("foot_exam", 0.65, 0.15)):
            # all three draws every time, written or not: leaving a code out changes nothing else
            on_file, days, result = r.random() < on_record, b.age_days(365, 0.33), int(r.random() < abnormal)
            if on_file and code in exams:
                b.add(code, result, "result", days)
    elif r.random() < 0.3:
        b.add("hba1c", _clip(r.gauss(5.5, 0.35), 4.2, 6.4), "%", b.age_days(365, 0.5))

    # --- severe mental illness
    grade: int | None = None
    findings: list[str] = []
    if smi:
        grade = int(_pick(r, (("0", 0.70), ("1", 0.14), ("2", 0.08), ("3", 0.04), ("4", 0.025), ("5", 0.015))))
        if r.random() < 0.05:
            grade = None
        if r.random() < 0.85:
            for atc, name, dose in _regimen(r, SMI_DRUGS, 1 if r.random() < 0.8 else 2, allergies):
                med(atc, name, dose)
        bipolar = any(c.startswith("F31") or c.startswith("F25") for c in conditions)
        if bipolar and r.random() < 0.7:
            atc, name, dose = MOOD[0] if r.random() < 0.5 else MOOD[1]
            med(atc, name, dose)
            if atc == "N05AN01" and r.random() < 0.85:
                b.add("lithium", _clip(r.gauss(0.7, 0.2), 0.1, 2.5, 2), "mmol/L", b.age_days(120, 0.3))
        if any(m["atc"] == "N05AH02" for m in meds) and r.random() < 0.9:
            b.add("anc", _clip(r.gauss(4.0, 1.3), 0.3, 12), "10^9/L", b.age_days(30, 0.15))
        if r.random() < 0.5:
            b.add("qtc", _clip(r.gauss(425, 22), 340, 560, 0), "ms", b.age_days(365, 0.3))
        if any(m["atc"].startswith("N05A") and not m["atc"].startswith("N05AN") for m in meds) and r.random() < 0.4:
            b.add("waist", _clip(r.gauss(92 if sex == "male" else 85, 11), 55, 160, 0), "cm", b.age_days(365, 0.3))
        if sex != "male" and any(m["atc"] == "N03AG01" for m in meds) and r.random() < 0.6:
            findings.append("valproate_ppp_documented")  # the Pregnancy Prevention Programme on record
        if r.random() < 0.5:
            b.add("alt", _clip(r.lognormvariate(3.1, 0.45), 5, 400, 0), "U/L", b.age_days(365, 0.3))
        if r.random() < 0.15:
            b.add("tsh", _clip(r.lognormvariate(0.6, 0.5), 0.05, 20, 2), "mIU/L", b.age_days(365, 0.3))
        if r.random() < 0.06:
            findings.append("relapse_signs")
        if r.random() < 0.08:
            findings.append("nonadherence")
        if r.random() < 0.04:
            findings.append("adverse_effects")
        if emergency and r.random() < 0.7:
            findings.append(r.choice(EMERGENCY["smi"]))
    if emergency and not smi and r.random() < 0.6:
        findings.append(r.choice(EMERGENCY["htn" if htn and (not dm or r.random() < 0.5) else "dm"]))
    if dm and r.random() < 0.02:
        findings.append("hypoglycaemia_recent")

    case: dict[str, Any] = {
        "patient_id": f"LH{seed}-{i:07d}",
        "as_of": as_of.isoformat(),
        "setting": setting,
        "age": age,
        "sex": sex,
        "pregnant": pregnant,
        "conditions": conditions,
        "observations": b.obs,
        "medications": meds,
        "allergies": allergies,
        "findings": sorted(set(findings)),
        "smi_risk_grade": grade,
    }
    return case


def synth(n: int, seed: int, as_of: date = DEFAULT_AS_OF, exams: frozenset[str] = frozenset(LOCAL_EXAMS)) -> Iterator[dict[str, Any]]:
    """N synthetic cases, deterministic by seed (and by which local exam codes are written)."""
    rng = random.Random(seed)
    for i in range(n):
        yield synth_case(rng, i + 1, seed, as_of, exams)


def exams_known(known_codes: set[str] | frozenset[str]) -> frozenset[str]:
    """The local examination codes a pathway set defines (its observation codes given)."""
    return frozenset(c for c in LOCAL_EXAMS if c in known_codes)


def synth_lines(n: int, seed: int, as_of: date = DEFAULT_AS_OF, exams: frozenset[str] = frozenset(LOCAL_EXAMS)) -> Iterator[str]:
    """The cohort as JSONL lines (with their newline)."""
    for case in synth(n, seed, as_of, exams):
        yield json.dumps(case, ensure_ascii=False, separators=(",", ":")) + "\n"
