"""FHIR R4 input: a Bundle (or the resources a CDS Hooks prefetch carries) mapped to the case contract.

>>> from carepath.evaluate import Engine
>>> from carepath.fhir import to_case
>>> engine = Engine.from_directory()
>>> mapped = to_case(bundle, vocab=engine.vocab, as_of=date(2021, 4, 1), setting="community")
>>> engine.evaluate(mapped.case)        # mapped.report lists everything that was left out, and why

The mapping tables (LOINC, UCUM, SNOMED CT → ICD-10, RxNorm → ATC, pregnancy status) are CSV files
in ``mappings/`` with the source and date of every row; see :mod:`carepath.fhir.tables`.
"""

from __future__ import annotations

from .mapper import MAX_FHIR_BYTES, FhirInputError, Issue, Mapped, Report, default_setting, is_fhir, is_fhir_input, read_fhir_json, to_case
from .tables import VERSION, Tables, tables

__all__ = [
    "MAX_FHIR_BYTES",
    "VERSION",
    "FhirInputError",
    "Issue",
    "Mapped",
    "Report",
    "Tables",
    "default_setting",
    "is_fhir",
    "is_fhir_input",
    "read_fhir_json",
    "tables",
    "to_case",
]
