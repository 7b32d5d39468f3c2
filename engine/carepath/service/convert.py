"""Contract JSON (dicts) <-> carepath.v1 messages (the codec, carepath_client.codec, re-exported),
and the worker's response encoder: an EvaluateResponse's bytes written from a decision or its plan."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from carepath.decide import Planned, Values, merged_read, render
from carepath_client.codec import (
    DETAIL_FIELDS,
    SETTINGS,
    SEXES,
    NotRepresentable,
    case_from_dict,
    case_to_dict,
    decision_to_dict,
    decision_to_proto,
)

__all__ = [
    "SETTINGS",
    "SEXES",
    "NotRepresentable",
    "case_from_dict",
    "case_to_dict",
    "decision_to_dict",
    "decision_to_proto",
    "evaluate_response_bytes",
    "planned_response_bytes",
]


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
_REC_ALLOWED = {kind: _REC_NEEDED.union(names) for kind, names in DETAIL_FIELDS.items()}
_TRACE_NEEDED = frozenset({"pathway", "rule", "values"})
_TRACE_ALLOWED = frozenset({"pathway", "rule", "values", "suppressed"})
_DECISION_KEYS = frozenset({"patient_id", "as_of", "pathways", "recommendations", "trace", "site"})
_PATHWAY_KEYS = frozenset({"id", "version", "sha256", "enrolled"})


def _detail(kind: str, r: Mapping[str, Any]) -> bytes:
    names = DETAIL_FIELDS[kind]
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


def _site_entry(site: object) -> bytes:
    """The decision's site profile (field 6, after the trace: protobuf writes fields in number order)."""
    if type(site) is not dict or site.keys() != {"id", "sha256"}:
        raise _Unexpected
    return _sub(b"\x32", _opt(b"\x0a", site["id"]) + _opt(b"\x12", site["sha256"]))


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
            key = (kind, rule, r["reason"], r["citation"], *[(type(v := r.get(n, _ABSENT)), v) for n in DETAIL_FIELDS[kind]])
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
    parts.append(_site_entry(d["site"]))
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
    from carepath_client._proto.v1 import decision_service_pb2

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
    parts.append(_site_entry(p.site))
    return b"".join(parts)


def _pathways_bytes(p: Planned) -> bytes:
    fired = sorted(p.fired, key=lambda f: str(f[1].id))
    return b"".join([_pathway_entry(cp.identity, p.enrolled[cp.id]) for _, cp, _ in fired])
