"""The case contract (spec/case-format.md): strict structure, then codes, units, ranges and dates."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from datetime import date
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from .errors import CaseError, FieldViolation
from .lang import Vocabulary, did_you_mean

MAX_CASE_BYTES = 1 << 20
MAX_ITEMS = 10_000
LISTS = ("conditions", "observations", "medications", "allergies", "findings")  # each at most MAX_ITEMS items


def too_many(lengths: Iterable[tuple[str, int]]) -> list[FieldViolation]:
    """The case's lists over MAX_ITEMS, from their lengths alone: checked before anything looks at
    the items (a 120,000-item list is refused in microseconds, not after validating every item)."""
    return [FieldViolation(name, f"must have at most {MAX_ITEMS} items (got {n})") for name, n in lengths if n > MAX_ITEMS]


ICD10 = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
"""An ICD-10 code as a case gives a condition (E11, E11.9; the FHIR mapper keeps only these)."""
ATC = re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$")
"""An ATC code or one of its levels (C, C09, C09A, C09AA, C09AA02), as a case gives a drug or allergy."""
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


_DATES: dict[str, date] = {}  # the dates seen lately: a cohort repeats the same few hundred


def _date(v: Any) -> Any:
    """Dates are ISO strings (YYYY-MM-DD) or date objects; never numbers or datetimes."""
    if type(v) is str:
        hit = _DATES.get(v)
        if hit is not None:
            return hit
    if isinstance(v, date) and type(v) is date:
        return v
    if isinstance(v, str) and _DATE.match(v):
        try:
            d = date.fromisoformat(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a real calendar date") from None
        if len(_DATES) >= 65_536:
            _DATES.clear()
        _DATES[v] = d
        return d
    raise ValueError("expected a date as YYYY-MM-DD")


# Native (Rust-side) constraints where pydantic has them: validation is on every call's hot path.
_SAFE_TEXT = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]*$"
Date = Annotated[date, BeforeValidator(_date)]
Text = Annotated[str, Field(pattern=_SAFE_TEXT)]
Code = Annotated[str, Field(min_length=1, max_length=32, pattern=_SAFE_TEXT)]
Number = Annotated[float, Field(allow_inf_nan=False)]  # strict model: no bools, no strings


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Observation(_Model):
    code: Code
    value: Number
    unit: Annotated[str, Field(max_length=32, pattern=_SAFE_TEXT)]
    date: Date


class Medication(_Model):
    atc: Code
    name: Annotated[Text, Field(max_length=256)] | None = None
    dose_mg_per_day: Annotated[Number, Field(ge=0)] | None = None
    since: Date | None = None


class Case(_Model):
    patient_id: Annotated[Text, Field(min_length=1, max_length=128)]
    as_of: Date
    setting: Literal["community", "hospital"]
    age: Annotated[StrictInt, Field(ge=0, le=130)] | None = None
    sex: Literal["female", "male", "other", "unknown"] | None = None
    pregnant: StrictBool | None = None
    conditions: Annotated[list[Code], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    observations: Annotated[list[Observation], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    medications: Annotated[list[Medication], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    allergies: Annotated[list[Code], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    findings: Annotated[list[Code], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    smi_risk_grade: Annotated[StrictInt, Field(ge=0, le=5)] | None = None


def field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "lax-", "strict-")) and part not in (
            "int",
            "float",
            "str",
            "bool",
            "none",
        ):
            out += f".{part}" if out else part
    return out


def _message(err: Any) -> str:
    t = err["type"]
    if t == "extra_forbidden":
        return "unknown field"
    if t == "missing":
        return "required field is missing"
    if t == "string_pattern_mismatch":
        return "contains control or bidirectional formatting characters"
    if t in ("float_type", "float_parsing"):
        return "expected a number"
    if t == "finite_number":
        return "expected a finite number"
    if t == "too_long" and isinstance(err.get("input"), str):
        return f"must be at most {err['ctx']['max_length']} characters"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def parse_json(raw: bytes | str) -> Any:
    """Decode case JSON with the size limit checked before parsing."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_CASE_BYTES:  # a file's or a line's last newline is not part of the case
        size = len(raw.rstrip().encode() if isinstance(raw, str) else raw.rstrip())
    if size > MAX_CASE_BYTES:
        raise CaseError([FieldViolation("", f"case is {size} bytes; the limit is {MAX_CASE_BYTES} (1 MiB)")])
    try:  # orjson for speed; anything it refuses goes to the json module for the exact error message
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):  # json.loads would only hit the recursion limit
            raise CaseError([FieldViolation("", _TOO_DEEP)]) from None
    else:
        # Duplicate keys (last wins in orjson) would drop data silently. Every key is followed by a
        # colon, so when the text has exactly as many colons as the parsed data has keys, no key was
        # repeated (about 1 µs for a typical case); otherwise (a colon inside a string, or a
        # duplicate) the json module settles it.
        if (raw.count(b":") if isinstance(raw, bytes) else raw.count(":")) != _count_keys(data):
            _refuse_duplicate_keys(raw)
        return data
    if isinstance(raw, bytes) and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM, as some editors write
        return parse_json(raw[3:])
    if isinstance(raw, str) and raw.startswith("\ufeff"):
        return parse_json(raw[1:])
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise CaseError([FieldViolation("", f"case is not valid UTF-8 ({exc.reason})")]) from None
    except json.JSONDecodeError as exc:
        msg = exc.msg.removesuffix(" at")  # "Invalid control character at": the position follows
        raise CaseError([FieldViolation("", f"case is not valid JSON: {msg} at line {exc.lineno} column {exc.colno}")]) from None
    except RecursionError:  # nested less than orjson's limit but past Python's
        raise CaseError([FieldViolation("", _TOO_DEEP)]) from None
    except ValueError:  # int("9" * 5000): Python's limit on the digits of an integer
        digits = sys.get_int_max_str_digits() or 4300
        raise CaseError([FieldViolation("", f"case is not valid JSON: a number has more than {digits} digits")]) from None


_TOO_DEEP = "case is not valid JSON: nested too deeply (a case is 3 levels deep)"


def _count_keys(data: Any) -> int:
    """The keys of a case-shaped value (an object, its objects and lists of objects); deeper keys are
    not counted, which can only send a case to the exact check, never let a duplicate through."""
    if type(data) is not dict:
        return 0
    n = len(data)
    for v in data.values():
        t = type(v)
        if t is list:
            for item in v:
                if type(item) is dict:
                    n += len(item)
        elif t is dict:
            n += len(v)
    return n


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise CaseError([FieldViolation("", f"case is not valid JSON: duplicate key {json.dumps(dup, ensure_ascii=False)}")])
    return out


def _refuse_duplicate_keys(raw: bytes | str) -> None:
    try:
        json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # orjson read it: only a difference in the limits, not a duplicate
        pass


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a finite number", name, 0)


def validate_case(data: Any, vocab: Vocabulary) -> tuple[Case, list[tuple[str, float, date]]]:
    """Check a case against the contract; return it with observations as (code, canonical value, date).

    Raises CaseError listing every violation, each naming its field path.
    """
    if not isinstance(data, dict):
        raise CaseError([FieldViolation("", "a case is a JSON object")])
    long = too_many((k, len(v)) for k in LISTS if isinstance(v := data.get(k), list))
    if long:
        raise CaseError(long)
    try:
        case = Case.model_validate(data)
    except ValidationError as exc:
        raise CaseError([FieldViolation(field_path(tuple(e["loc"])), _message(e)) for e in exc.errors()]) from None
    bad: list[FieldViolation] = []
    loinc = vocab.loinc
    known = vocab.observations
    as_of = case.as_of
    obs: list[tuple[str, float, date]] = []
    for i, o in enumerate(case.observations):
        code = o.code if o.code in known else loinc.get(o.code)
        od = known.get(code) if code is not None else None
        value = od.to_canonical(o.value, o.unit) if od is not None else None
        if code is not None and od is not None and value is not None and od.lo <= value <= od.hi and o.date <= as_of:
            obs.append((code, value, o.date))
            continue
        where = f"observations[{i}]"  # something is wrong with this one: say what, naming the field
        if code is None:
            bad.append(FieldViolation(f"{where}.code", f"unknown observation code {o.code!r}" + did_you_mean(o.code, vocab.observations)))
            continue
        assert od is not None  # a known code (or its LOINC) names a dictionary entry
        if value is None:
            accepted = ", ".join([od.unit, *od.conversions])
            bad.append(FieldViolation(f"{where}.unit", f"unit {o.unit!r} is not accepted for {code} (accepted: {accepted})"))
            continue
        if not od.lo <= value <= od.hi:
            bad.append(
                FieldViolation(
                    f"{where}.value", f"{code} {o.value:g} {o.unit} is outside the plausible range {od.lo:g}–{od.hi:g} {od.unit}"
                )
            )
        if o.date > case.as_of:
            bad.append(FieldViolation(f"{where}.date", f"{o.date.isoformat()} is after as_of {case.as_of.isoformat()}"))
        obs.append((code, value, o.date))
    for i, m in enumerate(case.medications):
        if not ATC.match(m.atc):
            bad.append(FieldViolation(f"medications[{i}].atc", f"{m.atc!r} is not an ATC code (e.g. C09AA02)"))
        if m.since is not None and m.since > case.as_of:
            bad.append(FieldViolation(f"medications[{i}].since", f"{m.since.isoformat()} is after as_of {case.as_of.isoformat()}"))
    for i, c in enumerate(case.conditions):
        if not ICD10.match(c):
            bad.append(FieldViolation(f"conditions[{i}]", f"{c!r} is not an ICD-10 code (e.g. E11.9)"))
    for i, a in enumerate(case.allergies):
        if not ATC.match(a):
            bad.append(FieldViolation(f"allergies[{i}]", f"{a!r} is not an ATC code or prefix"))
    for i, f in enumerate(case.findings):
        if f not in vocab.findings:
            bad.append(FieldViolation(f"findings[{i}]", f"unknown finding {f!r}" + did_you_mean(f, vocab.findings)))
    if bad:
        raise CaseError(bad)
    return case, obs
