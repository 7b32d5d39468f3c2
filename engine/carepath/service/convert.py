"""Contract JSON (dicts) <-> carepath.v1 messages, exactly: the round trip reproduces the same JSON."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from datetime import date
from typing import Any, cast

from carepath._proto.v1 import case_pb2, decision_pb2
from carepath.contract import Decision
from carepath.decide import Planned, Values, merged_read, render

SETTINGS = {"community": case_pb2.SETTING_COMMUNITY, "hospital": case_pb2.SETTING_HOSPITAL}
SEXES = {"female": case_pb2.SEX_FEMALE, "male": case_pb2.SEX_MALE, "other": case_pb2.SEX_OTHER, "unknown": case_pb2.SEX_UNKNOWN}
_SETTING_NAMES = {v: k for k, v in SETTINGS.items()}
_SEX_NAMES = {v: k for k, v in SEXES.items()}
_OPTIONAL_TOP = ("age", "sex", "pregnant", "smi_risk_grade")
_OPTIONAL_MED = ("name", "dose_mg_per_day", "since")
_LISTS = ("conditions", "observations", "medications", "allergies", "findings")
_INT32 = 2**31


class NotRepresentable(ValueError):
    """The dict cannot be carried exactly by the Case message (send it as case_json instead)."""


# ------------------------------------------------------------------ case
def case_to_dict(pb: case_pb2.Case) -> dict[str, Any]:
    """A Case message in the contract's JSON form; unset fields are absent (unknown)."""
    out: dict[str, Any] = {}
    if pb.patient_id:
        out["patient_id"] = pb.patient_id
    if pb.as_of:
        out["as_of"] = pb.as_of
    if pb.setting:
        out["setting"] = _SETTING_NAMES.get(pb.setting, f"<enum value {pb.setting}>")
    if pb.HasField("age"):
        out["age"] = pb.age
    if pb.sex:
        out["sex"] = _SEX_NAMES.get(pb.sex, f"<enum value {pb.sex}>")
    if pb.HasField("pregnant"):
        out["pregnant"] = pb.pregnant
    if pb.conditions:
        out["conditions"] = list(pb.conditions)
    if pb.observations:
        out["observations"] = [{"code": o.code, "value": o.value, "unit": o.unit, "date": o.date} for o in pb.observations]
    if pb.medications:
        meds = []
        for m in pb.medications:
            md: dict[str, Any] = {"atc": m.atc}
            if m.HasField("name"):
                md["name"] = m.name
            if m.HasField("dose_mg_per_day"):
                md["dose_mg_per_day"] = m.dose_mg_per_day
            if m.HasField("since"):
                md["since"] = m.since
            meds.append(md)
        out["medications"] = meds
    if pb.allergies:
        out["allergies"] = list(pb.allergies)
    if pb.findings:
        out["findings"] = list(pb.findings)
    if pb.HasField("smi_risk_grade"):
        out["smi_risk_grade"] = pb.smi_risk_grade
    return out


def _str(v: Any) -> str:
    if isinstance(v, date) and type(v) is date:
        return v.isoformat()
    if not isinstance(v, str):
        raise NotRepresentable
    return v


def _int32(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not -_INT32 <= v < _INT32:
        raise NotRepresentable
    return v


def _double(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, int) and abs(v) > 2**53):
        raise NotRepresentable
    return float(v)


def _strs(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise NotRepresentable
    return v


def case_from_dict(data: Any) -> case_pb2.Case:
    """The Case message for a contract dict; NotRepresentable when it cannot be carried exactly
    (wrong types, unknown fields, explicit empties): send such a case as case_json so the server
    reports exactly what the engine would."""
    if not isinstance(data, Mapping):
        raise NotRepresentable
    try:
        pb = case_pb2.Case()
        for key, v in data.items():
            if v is None and key in _OPTIONAL_TOP:
                continue
            if key in ("patient_id", "as_of"):
                setattr(pb, key, _str(v))
            elif key == "setting":
                pb.setting = SETTINGS[v]
            elif key == "sex":
                pb.sex = SEXES[v]
            elif key in ("age", "smi_risk_grade"):
                setattr(pb, key, _int32(v))
            elif key == "pregnant":
                if not isinstance(v, bool):
                    raise NotRepresentable
                pb.pregnant = v
            elif key in ("conditions", "allergies", "findings"):
                getattr(pb, key).extend(_strs(v))
            elif key == "observations":
                if not isinstance(v, list):
                    raise NotRepresentable
                for o in v:
                    if not isinstance(o, Mapping) or set(o) != {"code", "value", "unit", "date"}:
                        raise NotRepresentable
                    pb.observations.add(code=_str(o["code"]), value=_double(o["value"]), unit=_str(o["unit"]), date=_str(o["date"]))
            elif key == "medications":
                if not isinstance(v, list):
                    raise NotRepresentable
                for m in v:
                    if not isinstance(m, Mapping) or "atc" not in m or not set(m) <= {"atc", *_OPTIONAL_MED}:
                        raise NotRepresentable
                    med = pb.medications.add(atc=_str(m["atc"]))
                    if m.get("name") is not None:
                        med.name = _str(m["name"])
                    if m.get("dose_mg_per_day") is not None:
                        med.dose_mg_per_day = _double(m["dose_mg_per_day"])
                    if m.get("since") is not None:
                        med.since = _str(m["since"])
            else:
                raise NotRepresentable
    except (KeyError, TypeError, ValueError) as exc:
        raise NotRepresentable from exc
    if not _same_case(case_to_dict(pb), data):
        raise NotRepresentable
    return pb


def _same_case(back: dict[str, Any], data: Mapping[str, Any]) -> bool:
    """Does the message carry the dict exactly (absent == null for optional fields)?"""

    def norm(d: Mapping[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if (v is None and k in optional) or (v == [] and k in _LISTS):
                continue
            if isinstance(v, date) and type(v) is date:
                v = v.isoformat()
            elif isinstance(v, float) and math.isnan(v):
                v = "NaN"
            elif k == "observations":
                v = [norm(o, ()) for o in v]
            elif k == "medications":
                v = [norm(m, _OPTIONAL_MED) for m in v]
            out[k] = v
        return out

    return norm(back, _OPTIONAL_TOP) == norm(data, _OPTIONAL_TOP)


# -------------------------------------------------------------- decision
_DETAIL_FIELDS: dict[str, tuple[str, ...]] = {
    "test": ("code", "loinc"),
    "medication": ("action", "atc", "name"),
    "referral": ("direction", "urgency", "specialty"),
    "follow_up": ("days",),
    "alert": ("severity", "text"),
}
_REC_TAIL = ("rule", "rules", "reason", "citation", "values")


def _scalar(v: object) -> decision_pb2.ScalarValue:
    if v is None:
        return decision_pb2.ScalarValue(null_value="NULL_VALUE")
    if isinstance(v, bool):
        return decision_pb2.ScalarValue(bool_value=v)
    if isinstance(v, int):
        return decision_pb2.ScalarValue(int_value=v)
    if isinstance(v, float):
        return decision_pb2.ScalarValue(double_value=v)
    if isinstance(v, str):
        return decision_pb2.ScalarValue(string_value=v)
    raise TypeError(f"value of type {type(v).__name__} cannot be carried in a decision")


def _from_scalar(s: decision_pb2.ScalarValue) -> object:
    which = s.WhichOneof("kind")
    if which is None or which == "null_value":
        return None
    return getattr(s, which)


_SCALAR_FIELD = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}


def _named_fields(values: Mapping[str, object]) -> list[dict[str, Any]]:
    """NamedValues as plain dicts: the message is then built in one constructor call (~2x faster)."""
    out: list[dict[str, Any]] = []
    for k, v in values.items():
        if v is None:
            out.append({"name": k, "value": {"null_value": 0}})
        elif type(v) in _SCALAR_FIELD:
            out.append({"name": k, "value": {_SCALAR_FIELD[type(v)]: v}})
        else:
            _scalar(v)  # raises TypeError naming the type
    return out


def decision_to_proto(d: Mapping[str, Any]) -> decision_pb2.Decision:
    """The Decision message for an engine decision. Raises ValueError on a field the protos lack."""
    extra = set(d) - {"patient_id", "as_of", "pathways", "recommendations", "trace"}
    if extra:
        raise ValueError(f"decision fields not in carepath.v1.Decision: {sorted(extra)}")
    for p in d["pathways"]:
        if set(p) != {"id", "version", "sha256", "enrolled"}:
            raise ValueError(f"pathway fields not in carepath.v1.PathwayRef: {sorted(p)}")
    recs: list[dict[str, Any]] = []
    for r in d["recommendations"]:
        kind = r["kind"]
        names = _DETAIL_FIELDS[kind]
        if not set(r) - {"kind"} <= {*names, *_REC_TAIL}:
            raise ValueError(f"recommendation fields not in carepath.v1.Recommendation: {sorted(set(r) - {'kind', *names, *_REC_TAIL})}")
        recs.append(
            {
                "rule": r["rule"],
                "rules": r["rules"],
                "reason": r["reason"],
                "citation": r["citation"],
                "values": _named_fields(r["values"]),
                kind: {name: r[name] for name in names if name in r},
            }
        )
    trace: list[dict[str, Any]] = []
    for t in d["trace"]:
        if not set(t) <= {"pathway", "rule", "values", "suppressed"}:
            raise ValueError(f"trace fields not in carepath.v1.TraceEntry: {sorted(t)}")
        trace.append(
            {"pathway": t["pathway"], "rule": t["rule"], "values": _named_fields(t["values"]), "suppressed": t.get("suppressed", [])}
        )
    return decision_pb2.Decision(patient_id=d["patient_id"], as_of=d["as_of"], pathways=d["pathways"], recommendations=recs, trace=trace)


def decision_to_dict(pb: decision_pb2.Decision) -> Decision:
    """The engine's decision dict, key for key and in the same order (so JSON output is byte-identical)."""
    recs: list[dict[str, Any]] = []
    for rec in pb.recommendations:
        kind = rec.WhichOneof("detail")
        if kind is None:
            raise ValueError("recommendation without a kind")
        detail = getattr(rec, kind)
        r: dict[str, Any] = {"kind": kind}
        for name in _DETAIL_FIELDS[kind]:
            if name in ("loinc", "urgency"):
                if detail.HasField(name):
                    r[name] = getattr(detail, name)
            else:
                r[name] = getattr(detail, name)
        r.update(
            rule=rec.rule,
            rules=list(rec.rules),
            reason=rec.reason,
            citation=rec.citation,
            values={v.name: _from_scalar(v.value) for v in rec.values},
        )
        recs.append(r)
    trace: list[dict[str, Any]] = []
    for t in pb.trace:
        entry: dict[str, Any] = {"pathway": t.pathway, "rule": t.rule, "values": {v.name: _from_scalar(v.value) for v in t.values}}
        if t.suppressed:
            entry["suppressed"] = list(t.suppressed)
        trace.append(entry)
    decision = {
        "patient_id": pb.patient_id,
        "as_of": pb.as_of,
        "pathways": [{"id": p.id, "version": p.version, "sha256": p.sha256, "enrolled": p.enrolled} for p in pb.pathways],
        "recommendations": recs,
        "trace": trace,
    }
    return cast(Decision, decision)  # built key by key from the message above (tests/unit/test_contract.py)


# ------------------------------------------------- decision -> wire bytes
# The worker's hot path: an EvaluateResponse's bytes written directly, byte for byte what
# EvaluateResponse(request_id=..., decision=decision_to_proto(d)).SerializeToString() gives
# (protobuf writes fields in number order; proto3 leaves out unset and default scalars but keeps
# set optional and oneof fields). Anything unexpected (a type, a field, a range) goes to that
# reference path instead, which raises the same errors as before.
class _Unexpected(Exception):
    pass


_VARINT = [bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(0x4000)]
_DOUBLE = struct.Struct("<d").pack
_NULL = b"\x12\x02\x08\x00"  # NamedValue.value = ScalarValue{null_value: NULL_VALUE}
_TRUE = b"\x12\x02\x10\x01"
_FALSE = b"\x12\x02\x10\x00"


def _uvarint(n: int) -> bytes:
    if n < 0x4000:
        return _VARINT[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ivarint(n: int, bits: int) -> bytes:
    """An int32/int64 field's varint (negatives as 10-byte two's complement), range-checked."""
    if type(n) is not int or not -(1 << (bits - 1)) <= n < 1 << (bits - 1):
        raise _Unexpected
    return _uvarint(n if n >= 0 else n + (1 << 64))


def _text(tag: bytes, s: object) -> bytes:
    """A string field (tag, length, UTF-8); the caller leaves out empty non-optional strings."""
    if type(s) is not str:
        raise _Unexpected
    b = s.encode()
    return tag + _uvarint(len(b)) + b


_TEXTS: dict[tuple[bytes, str], bytes] = {}


def _const(tag: bytes, s: object) -> bytes:
    """_opt for strings the pathways define (rule ids, citations, detail fields): memoized, bounded."""
    key = (tag, s)
    try:
        return _TEXTS[key]  # type: ignore[index]
    except (KeyError, TypeError):
        pass
    out = _opt(tag, s)
    if len(_TEXTS) < _MEMO_MAX:
        _TEXTS[key] = out  # type: ignore[index]
    return out


def _sub(tag: bytes, body: bytes) -> bytes:
    return tag + _uvarint(len(body)) + body


class _Name:
    """A NamedValue's name as encoded, and the constant encodings it can take (each with its
    length, without the field tag: the same values go under two tags, trace and recommendation)."""

    __slots__ = ("double", "false", "name", "null", "true")

    def __init__(self, k: str) -> None:
        self.name = name = b"" if k == "" else _text(b"\x0a", k)
        n = len(name)
        self.double = _uvarint(n + 11) + name + b"\x12\x09\x21"  # + the 8 bytes of the double
        self.true = _uvarint(n + 4) + name + _TRUE
        self.false = _uvarint(n + 4) + name + _FALSE
        self.null = _uvarint(n + 4) + name + _NULL


# names come from the pathways' conditions (not from cases): a bounded memo of their encodings
_NAMES: dict[str, _Name] = {}
_MEMO_MAX = 65536
_ITEMS = "items"  # Values.wire key: the values' NamedValue items, without their tags


def _values(tag: bytes, values: object) -> bytes:
    """A decision's values as repeated NamedValue fields. The engine's values are shared Values
    objects (one per combination a rule read, read-only): their bytes are written once, kept on
    the object (the items once, and under each tag)."""
    t = type(values)
    if t is Values:
        wire: dict[object, Any] = values.wire  # type: ignore[attr-defined]
        out: bytes | None = wire.get(tag)
        if out is None:
            items = wire.get(_ITEMS)
            if items is None:
                items = wire[_ITEMS] = _value_items(values)
            out = wire[tag] = tag + tag.join(items) if items else b""
        return out
    if t is not dict:
        raise _Unexpected
    items = _value_items(values)
    return tag + tag.join(items) if items else b""


def _value_items(values: Any) -> list[bytes]:
    """Each value as a NamedValue with its length: one field each once its tag goes before it."""
    parts: list[bytes] = []
    append = parts.append
    names = _NAMES
    for k, v in values.items():
        nm = names.get(k)
        if nm is None:
            nm = _Name(k)
            if len(names) < _MEMO_MAX:
                names[k] = nm
        t = type(v)
        if t is float:
            append(nm.double + _DOUBLE(v))
        elif t is bool:
            append(nm.true if v else nm.false)
        elif t is int:
            nv = nm.name + b"\x12" + _SMALL_INT[v] if 0 <= v < 0x80 else nm.name + _sub(b"\x12", b"\x18" + _ivarint(v, 64))
            append(_uvarint(len(nv)) + nv)
        elif t is str:
            nv = nm.name + _sub(b"\x12", _text(b"\x2a", v))
            append(_uvarint(len(nv)) + nv)
        elif v is None:
            append(nm.null)
        else:
            raise _Unexpected
    return parts


_SMALL_INT = [b"\x02\x18" + bytes([n]) for n in range(0x80)]  # ScalarValue{int_value: n}, n < 128, with its length


def _strings(tag: bytes, items: object, const: bool = False) -> bytes:
    if type(items) is not list:
        raise _Unexpected
    if const:
        return b"".join([_const_any(tag, s) for s in items])
    return b"".join([_text(tag, s) for s in items])


def _const_any(tag: bytes, s: object) -> bytes:
    """A repeated string element: written even when empty."""
    return _const(tag, s) if s != "" else _text(tag, s)


def _opt(tag: bytes, s: object) -> bytes:
    return _text(tag, s) if s != "" else b""


_DETAIL_TAGS = {"test": b"\x0a", "medication": b"\x12", "referral": b"\x1a", "follow_up": b"\x22", "alert": b"\x2a"}
_OPTIONAL_DETAIL = {"loinc", "urgency"}  # proto3 `optional`: written when set, even if empty
_REC_NEEDED = frozenset({"kind", "rule", "rules", "reason", "citation", "values"})
_REC_ALLOWED = {kind: _REC_NEEDED.union(names) for kind, names in _DETAIL_FIELDS.items()}
_TRACE_NEEDED = frozenset({"pathway", "rule", "values"})
_TRACE_ALLOWED = frozenset({"pathway", "rule", "values", "suppressed"})
_DECISION_KEYS = frozenset({"patient_id", "as_of", "pathways", "recommendations", "trace"})
_PATHWAY_KEYS = frozenset({"id", "version", "sha256", "enrolled"})


def _detail(kind: str, r: Mapping[str, Any]) -> bytes:
    names = _DETAIL_FIELDS[kind]
    if kind == "follow_up":
        days = r.get("days", 0)
        return b"\x08" + _ivarint(days, 32) if days != 0 or type(days) is not int else b""
    parts = []
    for i, name in enumerate(names):
        if name in r:
            v = r[name]
            if name in _OPTIONAL_DETAIL:
                parts.append(_const_any(_STRING_TAGS[i], v))
            else:
                parts.append(_const(_STRING_TAGS[i], v))
    return b"".join(parts)


_STRING_TAGS = (b"\x0a", b"\x12", b"\x1a")


def _pathway_entry(identity: Mapping[str, Any], enrolled: bool) -> bytes:
    """A decision's pathway: id, version, sha256 and whether the patient is enrolled."""
    body = _const(b"\x0a", identity["id"]) + _const(b"\x12", identity["version"]) + _const(b"\x1a", identity["sha256"])
    return _sub(b"\x1a", body + (b"\x20\x01" if enrolled else b""))


def _rec_kind(r: Mapping[str, Any]) -> str:
    """A recommendation's kind, when it is one the protos carry with only the fields they have."""
    kind = r.get("kind")
    if type(kind) is not str or kind not in _DETAIL_TAGS or not _REC_NEEDED <= r.keys() <= _REC_ALLOWED[kind]:
        raise _Unexpected
    return kind


def _rec_fixed(kind: str, r: Mapping[str, Any], rules: object) -> tuple[bytes, bytes]:
    """A recommendation up to its reason (detail, rule, rules), and its citation."""
    head = _sub(_DETAIL_TAGS[kind], _detail(kind, r)) + _const(b"\x32", r["rule"]) + _strings(b"\x3a", rules, const=True)
    return head, _const(b"\x4a", r["citation"])


def _rec_entry(fixed: tuple[bytes, bytes], reason: object, values: object) -> bytes:
    """A whole recommendation: its fixed parts (_rec_fixed) around its reason, then its values."""
    head, citation = fixed
    return _sub(b"\x22", head + _opt(b"\x42", reason) + citation + _values(b"\x52", values))


def _decision_bytes(d: Mapping[str, Any]) -> bytes:
    if type(d) is not dict or d.keys() != _DECISION_KEYS:
        raise _Unexpected
    parts = [_opt(b"\x0a", d["patient_id"]), _opt(b"\x12", d["as_of"])]
    pathways = d["pathways"]
    if type(pathways) is not list:
        raise _Unexpected
    for p in pathways:
        if type(p) is not dict or p.keys() != _PATHWAY_KEYS or type(p["enrolled"]) is not bool:
            raise _Unexpected
        parts.append(_pathway_entry(p, p["enrolled"]))
    recs = d["recommendations"]
    if type(recs) is not list:
        raise _Unexpected
    for r in recs:
        if type(r) is not dict:
            raise _Unexpected
        kind = _rec_kind(r)
        values, rules, rule = r["values"], r["rules"], r["rule"]
        key = None
        if type(values) is Values and type(rules) is list and len(rules) == 1 and rules[0] == rule:
            # one rule's recommendation: a function of its fields and the shared values, kept on them
            key = (kind, rule, r["reason"], r["citation"], *[(type(v := r.get(n, _ABSENT)), v) for n in _DETAIL_FIELDS[kind]])
            entry = values.wire.get(key)
            if entry is not None:
                parts.append(entry)
                continue
        entry = _rec_entry(_rec_fixed(kind, r, rules), r["reason"], values)
        if key is not None:
            values.wire[key] = entry
        parts.append(entry)
    trace = d["trace"]
    if type(trace) is not list:
        raise _Unexpected
    for t in trace:
        if type(t) is not dict or not _TRACE_NEEDED <= t.keys() <= _TRACE_ALLOWED:
            raise _Unexpected
        values = t["values"]
        notes = t.get("suppressed", _ABSENT)
        parts.append(_trace_entry(t["pathway"], t["rule"], values, notes, len(t) == 3 and type(values) is Values))
    return b"".join(parts)


def _trace_entry(pathway: object, rule: object, values: Any, notes: object, keep: bool) -> bytes:
    """A trace entry (``notes`` _ABSENT: none). ``keep``: no suppression notes and shared values,
    so the whole entry is a function of where it is and the values: kept on them."""
    where = (pathway, rule)
    if keep:
        entry: bytes | None = values.wire.get(where)
        if entry is not None:
            return entry
    head = _TRACE_HEADS.get(where)
    if head is None:
        head = _opt(b"\x0a", pathway) + _opt(b"\x12", rule)
        if len(_TRACE_HEADS) < _MEMO_MAX:
            _TRACE_HEADS[where] = head
    body = head + _values(b"\x1a", values)
    if notes is not _ABSENT:
        body += _strings(b"\x22", notes, const=True)  # notes are made of the pathways' words
    entry = _sub(b"\x2a", body)
    if keep:
        values.wire[where] = entry
    return entry


_TRACE_HEADS: dict[tuple[object, object], bytes] = {}  # a trace entry's pathway and rule, encoded (from the pathways)
_ABSENT = object()  # a detail field left out (not the same recommendation as one set to None)


def evaluate_response_bytes(request_id: str, d: Mapping[str, Any]) -> bytes:
    """A serialized carepath.v1.EvaluateResponse for an engine decision (see the note above)."""
    try:
        return _opt(b"\x0a", request_id) + _sub(b"\x12", _decision_bytes(d))
    except (_Unexpected, KeyError, TypeError, ValueError, UnicodeError):
        pass
    from carepath._proto.v1 import decision_service_pb2

    out: bytes = decision_service_pb2.EvaluateResponse(request_id=request_id, decision=decision_to_proto(d)).SerializeToString()
    return out


def planned_response_bytes(request_id: str, p: Planned) -> bytes:
    """evaluate_response_bytes(request_id, render(p)), byte for byte, without making the decision's
    dicts: the fixed parts of a recommendation (kind, detail, rule, rules, citation) are encoded
    once and kept on the rule's _Body, the pathways once per enrolment on the plan, the rest from
    the values and reasons the rules read (kept on the shared values, as there). Anything
    unexpected goes the long way, through render."""
    try:
        return _opt(b"\x0a", request_id) + _sub(b"\x12", _planned_bytes(p))
    except (_Unexpected, KeyError, TypeError, ValueError, UnicodeError):
        return evaluate_response_bytes(request_id, render(p))


def _planned_bytes(p: Planned) -> bytes:
    plan, reads, case = p.plan, p.reads, p.case
    wire = plan.wire
    parts = [_opt(b"\x0a", case.patient_id), _opt(b"\x12", case.as_of.isoformat())]
    enrolment = tuple([p.enrolled[cp.id] for _, cp, _ in p.fired])
    pathways = wire.get(enrolment)
    if pathways is None:
        pathways = wire[enrolment] = _pathways_bytes(p)
    parts.append(pathways)
    for body, rules, srcs in plan.recs:
        fixed = body.wire.get(rules)
        if fixed is None:
            template = body.template
            fixed = body.wire[rules] = _rec_fixed(_rec_kind(template), template, list(rules))
        if len(srcs) == 1:  # one rule's recommendation: a function of its body and the shared values
            values, reason = reads[srcs[0]]
            entry = values.wire.get(body)
            if entry is None:
                entry = values.wire[body] = _rec_entry(fixed, reason, values)
        else:
            merged, reason = merged_read(reads, srcs)
            entry = _rec_entry(fixed, reason, merged)
        parts.append(entry)
    for (pathway, rule, notes), (values, _) in zip(plan.trace, reads, strict=True):
        parts.append(_trace_entry(pathway, rule, values, list(notes) if notes else _ABSENT, not notes))
    return b"".join(parts)


def _pathways_bytes(p: Planned) -> bytes:
    fired = sorted(p.fired, key=lambda f: str(f[1].id))
    return b"".join([_pathway_entry(cp.identity, p.enrolled[cp.id]) for _, cp, _ in fired])
