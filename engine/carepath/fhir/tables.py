"""The FHIR mapping tables: versioned CSV files shipped in ``mappings/``, each row with its source and date.

| file | maps | key → value |
|---|---|---|
| loinc.csv | LOINC → dictionary observation | ``(panel)``: read through its components; ``(pregnancy_status)``: sets ``pregnant`` |
| ucum.csv | UCUM unit code → the dictionary's spelling of the unit, times ``factor`` | |
| snomed_icd10.csv | SNOMED CT condition → ICD-10 | |
| rxnorm_atc.csv | RxNorm drug → ATC | |
| pregnancy.csv | pregnancy-status answer → true / false / unknown | |

The tables are read once per process (:func:`tables`); a malformed row is a bug in the shipped data,
so it raises at load time (a test loads them).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path

MAPPINGS = Path(__file__).with_name("mappings")
VERSION = "2026.12.07"  # the mapping set's version: bump with any row change (it is in every mapping report)

PANEL = "(panel)"
PREGNANCY_STATUS = "(pregnancy_status)"

_ICD = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
_ATC = re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$")


@dataclass(frozen=True)
class Row:
    """One mapping row: what it maps to, and where that came from."""

    target: str
    display: str
    note: str
    source: str
    added: date
    tty: str = ""  # RxNorm term type (rxnorm_atc.csv only): IN ingredient, SCD/SBD clinical/branded drug, ...


@dataclass(frozen=True)
class UnitRow:
    unit: str  # the dictionary's spelling
    factor: float  # value in ``unit`` = value in the UCUM unit x factor
    source: str
    added: date


@dataclass(frozen=True)
class Tables:
    loinc: dict[str, Row]  # LOINC -> observation name, PANEL or PREGNANCY_STATUS
    ucum: dict[str, UnitRow]
    snomed_icd10: dict[str, Row]
    rxnorm_atc: dict[str, Row]
    pregnancy: dict[tuple[str, str], bool | None]  # (system, code) -> pregnant

    def sizes(self) -> dict[str, int]:
        return {
            "loinc": len(self.loinc),
            "ucum": len(self.ucum),
            "snomed_icd10": len(self.snomed_icd10),
            "rxnorm_atc": len(self.rxnorm_atc),
            "pregnancy": len(self.pregnancy),
        }


def _rows(name: str, columns: list[str]) -> list[dict[str, str]]:
    path = MAPPINGS / name
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != columns:
            raise ValueError(f"{path}: columns are {reader.fieldnames}, expected {columns}")
        rows = list(reader)
    for i, r in enumerate(rows, start=2):
        if not r["source"].strip():
            raise ValueError(f"{path}:{i}: a row without its source")
        date.fromisoformat(r["added"])
    return rows


@cache
def tables() -> Tables:
    """Load every mapping table (once)."""
    loinc: dict[str, Row] = {}
    for r in _rows("loinc.csv", ["loinc", "observation", "display", "note", "source", "added"]):
        if r["loinc"] in loinc:
            raise ValueError(f"loinc.csv: {r['loinc']} appears twice")
        loinc[r["loinc"]] = Row(r["observation"], r["display"], r["note"], r["source"], date.fromisoformat(r["added"]))
    ucum: dict[str, UnitRow] = {}
    for r in _rows("ucum.csv", ["ucum", "unit", "factor", "note", "source", "added"]):
        if r["ucum"] in ucum:
            raise ValueError(f"ucum.csv: {r['ucum']} appears twice")
        ucum[r["ucum"]] = UnitRow(r["unit"], float(r["factor"]), r["source"], date.fromisoformat(r["added"]))
    sct: dict[str, Row] = {}
    for r in _rows("snomed_icd10.csv", ["snomed", "icd10", "display", "note", "source", "added"]):
        if r["snomed"] in sct or not _ICD.match(r["icd10"]):
            raise ValueError(f"snomed_icd10.csv: {r['snomed']} appears twice or {r['icd10']!r} is not an ICD-10 code")
        sct[r["snomed"]] = Row(r["icd10"], r["display"], r["note"], r["source"], date.fromisoformat(r["added"]))
    rx: dict[str, Row] = {}
    for r in _rows("rxnorm_atc.csv", ["rxnorm", "atc", "display", "tty", "note", "source", "added"]):
        if r["rxnorm"] in rx or not _ATC.match(r["atc"]):
            raise ValueError(f"rxnorm_atc.csv: {r['rxnorm']} appears twice or {r['atc']!r} is not an ATC code")
        rx[r["rxnorm"]] = Row(r["atc"], r["display"], r["note"], r["source"], date.fromisoformat(r["added"]), r["tty"])
    preg: dict[tuple[str, str], bool | None] = {}
    answers: dict[str, bool | None] = {"true": True, "false": False, "unknown": None}
    for r in _rows("pregnancy.csv", ["system", "code", "pregnant", "display", "source", "added"]):
        if r["pregnant"] not in answers:
            raise ValueError(f"pregnancy.csv: pregnant must be true, false or unknown, not {r['pregnant']!r}")
        preg[(r["system"], r["code"])] = answers[r["pregnant"]]
    return Tables(loinc, ucum, sct, rx, preg)
