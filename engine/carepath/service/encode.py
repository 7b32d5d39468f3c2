"""The service's one response encoder: an EvaluateResponse's bytes from the engine's canonical decision
(the contract's dict, as ``Engine.evaluate`` returns it), byte for byte what protobuf's own

    EvaluateResponse(request_id=..., decision=decision_to_proto(decision)).SerializeToString()

gives (protobuf writes fields in number order; proto3 leaves out unset and default scalars but keeps set
optional and oneof fields). Anything unexpected (a type, a field, a range) goes to that reference path
instead, which raises the same errors as it always does. tests/integration/test_grpc_wire.py holds the two
to the same bytes.

Why not protobuf's own serialisation alone: building the message from the decision's dicts costs more
than the engine's evaluation itself (the README's gRPC service section). Written here instead,
with what can be kept kept by the encoder, which each worker owns (never on the engine's objects):

- the encodings of the pathways' strings (names of values, rule ids, citations, detail fields, trace
  heads), bounded;
- per shared ``decide.Values`` object (the engine hands out one, read-only, per combination of values a
  rule read, shared by every decision that read the same): its items, its field under each tag, whole
  trace entries by (pathway, rule), whole one-rule recommendations by every other field. These are kept
  by the object's identity, the entry holding the object itself (so the id cannot be reused while the
  entry lives); at most LIMIT objects, then the store starts again.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from carepath.decide import Values
from carepath_client.codec import DETAIL_FIELDS, decision_to_proto

LIMIT = 65536  # shared values objects (and pathway strings) whose encodings an encoder keeps


class _Unexpected(Exception):
    pass


_VARINT = [bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(0x4000)]
_DOUBLE = struct.Struct("<d").pack
_NULL = b"\x12\x02\x08\x00"  # NamedValue.value = ScalarValue{null_value: NULL_VALUE}
_TRUE = b"\x12\x02\x10\x01"
_FALSE = b"\x12\x02\x10\x00"
_SMALL_INT = [b"\x02\x18" + bytes([n]) for n in range(0x80)]  # ScalarValue{int_value: n}, n < 128, with its length
_ITEMS = "items"  # a values object's NamedValue items, without their tags
_ABSENT = object()  # a detail field left out (not the same recommendation as one set to None)

_DETAIL_TAGS = {"test": b"\x0a", "medication": b"\x12", "referral": b"\x1a", "follow_up": b"\x22", "alert": b"\x2a"}
_STRING_TAGS = (b"\x0a", b"\x12", b"\x1a")
_OPTIONAL_DETAIL = {"loinc", "urgency"}  # proto3 `optional`: written when set, even if empty
_REC_NEEDED = frozenset({"kind", "rule", "rules", "reason", "citation", "values"})
_REC_ALLOWED = {kind: _REC_NEEDED.union(names) for kind, names in DETAIL_FIELDS.items()}
_TRACE_NEEDED = frozenset({"pathway", "rule", "values"})
_TRACE_ALLOWED = frozenset({"pathway", "rule", "values", "suppressed"})
_DECISION_KEYS = frozenset({"patient_id", "as_of", "pathways", "recommendations", "trace", "site"})
_PATHWAY_KEYS = frozenset({"id", "version", "sha256", "enrolled"})


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


def _opt(tag: bytes, s: object) -> bytes:
    return _text(tag, s) if s != "" else b""


def _sub(tag: bytes, body: bytes) -> bytes:
    return tag + _uvarint(len(body)) + body


class _Name:
    """A NamedValue's name as encoded, and the constant encodings it can take (each with its length,
    without the field tag: the same values go under two tags, trace and recommendation)."""

    __slots__ = ("double", "false", "name", "null", "true")

    def __init__(self, k: str) -> None:
        self.name = name = b"" if k == "" else _text(b"\x0a", k)
        n = len(name)
        self.double = _uvarint(n + 11) + name + b"\x12\x09\x21"  # + the 8 bytes of the double
        self.true = _uvarint(n + 4) + name + _TRUE
        self.false = _uvarint(n + 4) + name + _FALSE
        self.null = _uvarint(n + 4) + name + _NULL


class ResponseEncoder:
    """EvaluateResponse bytes from a decision, keeping what can be kept (see the module's note). One per
    worker: not thread-safe, and nothing in it outlives the worker."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._names: dict[str, _Name] = {}  # value names (from the pathways' conditions)
        self._texts: dict[tuple[bytes, str], bytes] = {}  # strings the pathways define, by tag
        self._heads: dict[tuple[object, object], bytes] = {}  # a trace entry's pathway and rule
        self._shared: dict[int, tuple[Values, dict[object, Any]]] = {}  # by id(values): the object, its encodings

    def clear(self) -> None:
        """Forget everything kept (e.g. when the worker's engine changes)."""
        self._names.clear()
        self._texts.clear()
        self._heads.clear()
        self._shared.clear()

    def kept(self, values: object) -> dict[object, Any] | None:
        """What is kept for a shared values object (None: nothing yet, or not a shared one)."""
        entry = self._shared.get(id(values))
        return entry[1] if entry is not None and entry[0] is values else None

    def encode(self, request_id: str, decision: Mapping[str, Any]) -> bytes:
        """A serialized carepath.v1.EvaluateResponse for the decision (the same bytes as protobuf's)."""
        try:
            return _opt(b"\x0a", request_id) + _sub(b"\x12", self._decision(decision))
        except (_Unexpected, KeyError, TypeError, ValueError, UnicodeError):
            pass
        from carepath_client._proto.v1 import decision_service_pb2

        out: bytes = decision_service_pb2.EvaluateResponse(request_id=request_id, decision=decision_to_proto(decision)).SerializeToString()
        return out

    # -- the parts

    def _wire(self, values: Values) -> dict[object, Any]:
        """The encodings kept for a shared values object (made empty on first sight)."""
        shared = self._shared
        entry = shared.get(id(values))
        if entry is not None and entry[0] is values:
            return entry[1]
        if len(shared) >= self.limit:
            shared.clear()
        wire: dict[object, Any] = {}
        shared[id(values)] = (values, wire)
        return wire

    def _const(self, tag: bytes, s: object) -> bytes:
        """_opt for strings the pathways define (rule ids, citations, detail fields): kept, bounded."""
        key = (tag, s)
        try:
            return self._texts[key]  # type: ignore[index]
        except (KeyError, TypeError):
            pass
        out = _opt(tag, s)
        if len(self._texts) < self.limit:
            self._texts[key] = out  # type: ignore[index]
        return out

    def _const_any(self, tag: bytes, s: object) -> bytes:
        """A repeated string element: written even when empty."""
        return self._const(tag, s) if s != "" else _text(tag, s)

    def _strings(self, tag: bytes, items: object) -> bytes:
        if type(items) is not list:
            raise _Unexpected
        return b"".join([self._const_any(tag, s) for s in items])

    def _values(self, tag: bytes, values: object) -> bytes:
        """A decision's values as repeated NamedValue fields: a shared values object's written once
        (the items once, and under each tag)."""
        t = type(values)
        if t is Values:
            wire = self._wire(values)  # type: ignore[arg-type]
            out: bytes | None = wire.get(tag)
            if out is None:
                items = wire.get(_ITEMS)
                if items is None:
                    items = wire[_ITEMS] = self._value_items(values)
                out = wire[tag] = tag + tag.join(items) if items else b""
            return out
        if t is not dict:
            raise _Unexpected
        items = self._value_items(values)
        return tag + tag.join(items) if items else b""

    def _value_items(self, values: Any) -> list[bytes]:
        """Each value as a NamedValue with its length: one field each once its tag goes before it."""
        parts: list[bytes] = []
        append = parts.append
        names = self._names
        for k, v in values.items():
            nm = names.get(k)
            if nm is None:
                nm = _Name(k)
                if len(names) < self.limit:
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

    def _detail(self, kind: str, r: Mapping[str, Any]) -> bytes:
        names = DETAIL_FIELDS[kind]
        if kind == "follow_up":
            days = r.get("days", 0)
            return b"\x08" + _ivarint(days, 32) if days != 0 or type(days) is not int else b""
        parts = []
        for i, name in enumerate(names):
            if name in r:
                v = r[name]
                if name in _OPTIONAL_DETAIL:
                    parts.append(self._const_any(_STRING_TAGS[i], v))
                else:
                    parts.append(self._const(_STRING_TAGS[i], v))
        return b"".join(parts)

    def _recommendation(self, kind: str, r: Mapping[str, Any]) -> bytes:
        const = self._const
        head = _sub(_DETAIL_TAGS[kind], self._detail(kind, r)) + const(b"\x32", r["rule"]) + self._strings(b"\x3a", r["rules"])
        body = head + _opt(b"\x42", r["reason"]) + const(b"\x4a", r["citation"]) + self._values(b"\x52", r["values"])
        return _sub(b"\x22", body)

    def _trace_entry(self, pathway: object, rule: object, values: Any, notes: object) -> bytes:
        """A trace entry (``notes`` _ABSENT: none). Without notes and with shared values, the entry is
        a function of where it is and the values: kept for them."""
        where = (pathway, rule)
        wire = None
        if notes is _ABSENT and type(values) is Values:
            wire = self._wire(values)
            entry: bytes | None = wire.get(where)
            if entry is not None:
                return entry
        head = self._heads.get(where)
        if head is None:
            head = _opt(b"\x0a", pathway) + _opt(b"\x12", rule)
            if len(self._heads) < self.limit:
                self._heads[where] = head
        body = head + self._values(b"\x1a", values)
        if notes is not _ABSENT:
            body += self._strings(b"\x22", notes)  # notes are made of the pathways' words
        entry = _sub(b"\x2a", body)
        if wire is not None:
            wire[where] = entry
        return entry

    def _decision(self, d: Mapping[str, Any]) -> bytes:
        if type(d) is not dict or d.keys() != _DECISION_KEYS:
            raise _Unexpected
        const = self._const
        shared = self._shared
        parts = [_opt(b"\x0a", d["patient_id"]), _opt(b"\x12", d["as_of"])]
        pathways = d["pathways"]
        if type(pathways) is not list:
            raise _Unexpected
        for p in pathways:
            if type(p) is not dict or p.keys() != _PATHWAY_KEYS or type(p["enrolled"]) is not bool:
                raise _Unexpected
            body = const(b"\x0a", p["id"]) + const(b"\x12", p["version"]) + const(b"\x1a", p["sha256"])
            parts.append(_sub(b"\x1a", body + (b"\x20\x01" if p["enrolled"] else b"")))
        recs = d["recommendations"]
        if type(recs) is not list:
            raise _Unexpected
        for r in recs:
            if type(r) is not dict:
                raise _Unexpected
            kind, values, rules, rule = r["kind"], r["values"], r["rules"], r["rule"]
            if type(values) is Values and type(rules) is list and len(rules) == 1 and rules[0] == rule:
                # one rule's recommendation: a function of its fields and the shared values, kept for
                # them. The key holds every field but the values (a detail left out as _ABSENT, each
                # with its type) and the number of fields, so a hit has no field the protos lack: only
                # checked recommendations are kept.
                key = (len(r), kind, rule, r["reason"], r["citation"], *[(type(v := r.get(n, _ABSENT)), v) for n in DETAIL_FIELDS[kind]])
                e = shared.get(id(values))
                wire = e[1] if e is not None and e[0] is values else self._wire(values)
                entry = wire.get(key)
                if entry is None:
                    entry = wire[key] = self._recommendation(_checked(kind, r), r)
                parts.append(entry)
            else:
                parts.append(self._recommendation(_checked(kind, r), r))
        trace = d["trace"]
        if type(trace) is not list:
            raise _Unexpected
        for t in trace:
            if type(t) is not dict:
                raise _Unexpected
            n, pathway, rule, values = len(t), t["pathway"], t["rule"], t["values"]
            if n == 3:  # pathway, rule and values
                if type(values) is Values:
                    e = shared.get(id(values))
                    entry = e[1].get((pathway, rule)) if e is not None and e[0] is values else None
                    parts.append(entry or self._trace_entry(pathway, rule, values, _ABSENT))
                else:
                    parts.append(self._trace_entry(pathway, rule, values, _ABSENT))
            elif n == 4:
                parts.append(self._trace_entry(pathway, rule, values, t["suppressed"]))
            else:
                raise _Unexpected
        site = d["site"]
        if type(site) is not dict or site.keys() != {"id", "sha256"}:
            raise _Unexpected
        parts.append(_sub(b"\x32", _opt(b"\x0a", site["id"]) + _opt(b"\x12", site["sha256"])))
        return b"".join(parts)


def _checked(kind: object, r: Mapping[str, Any]) -> str:
    """A recommendation's kind, when it is one the protos carry with only the fields they have."""
    if type(kind) is not str or kind not in _DETAIL_TAGS or not _REC_NEEDED <= r.keys() <= _REC_ALLOWED[kind]:
        raise _Unexpected
    return kind


__all__ = ["LIMIT", "ResponseEncoder"]
