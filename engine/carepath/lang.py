"""The condition language: parsed into an AST (never eval'd), with Kleene three-valued semantics.

Grammar (keywords and/or/not; see docs/pathway-format.md)::

    expr    := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | primary
    primary := "(" expr ")" | term [cmp]
    term    := NAME | NAME "(" args ")"
    cmp     := OP NUMBER [UNIT] | ("=="|"!="|"is"|"is not") NAME
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TypeVar

# ---------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class ObsDef:
    code: str
    unit: str
    lo: float
    hi: float
    loinc: tuple[str, ...] = ()
    label: str = ""
    conversions: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    decimals: int = 6
    current: int | None = None  # days a value stays current (None: any age); see Num kinds obs and latest

    def to_canonical(self, value: float, unit: str) -> float | None:
        """Convert ``value`` in ``unit`` to the canonical unit; None when no conversion exists.

        A converted value keeps one digit more than the canonical unit's reporting precision:
        enough that a value just beside a threshold written at that precision is never rounded
        onto it (glucose 71 mg/dL is 3.94 mmol/L, above a hypoglycaemia threshold of 3.9, where
        rounding to the lab's 3.9 would have met it), while the labs' anchors still hold (53
        mmol/mol is HbA1c 7.00 %, 300 mg/dL is glucose 16.67 mmol/L, 126 mg/dL is 7.00).
        """
        if unit == self.unit:
            return value
        conv = self.conversions.get(unit)
        if conv is None:
            return None
        factor, offset = conv
        return round(value * factor + offset, self.decimals + 1)


@dataclass(frozen=True)
class CodeSetDef:
    """A named code set with its members worked out (includes followed): ``codes`` are ATC or
    ICD-10 codes and prefixes, sorted, each once."""

    name: str
    system: str  # atc or icd10
    label: str
    codes: tuple[str, ...]
    includes: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class TargetDef:
    """A target profile: rows of (who it is for, or None for everyone else; the at-target condition)."""

    name: str
    label: str
    rows: tuple[tuple[Expr | None, Expr], ...]
    texts: tuple[tuple[str | None, str], ...] = ()  # the rows as written (for, target), for the review pages
    citation: str = ""

    @cached_property
    def at(self) -> Expr:
        """at_target(name): one object for every use (like a definition), so it reads as a name."""
        return self.at_target((0, 0), at=True)

    @cached_property
    def above(self) -> Expr:
        """above_target(name), likewise."""
        return self.at_target((0, 0), at=False)

    def at_target(self, span: Span, at: bool = True) -> Expr:
        """at_target(name) (or, ``at`` False, above_target(name)): the first row whose `for` holds
        decides, as ``for_1 and T_1 or not for_1 and for_2 and T_2 or ...``; and since a patient
        at (or above) every row's target is at (above) target whichever row is theirs, ``or (T_1
        and T_2 and ...)`` too: with an unknown age, 155/70 is above target whether the target is
        < 150/90 or < 140/90, while 145/70 stays unknown."""
        alts: list[Expr] = []
        before: list[Expr] = []
        goals: list[Expr] = []
        for who, target in self.rows:
            goal = target if at else Not(target, span)
            goals.append(goal)
            alts.append(And((*before, *([who] if who is not None else []), goal), span) if before or who is not None else goal)
            if who is not None:
                before.append(Not(who, span))
        if len(goals) > 1:
            alts.append(And(tuple(goals), span))
        return alts[0] if len(alts) == 1 else Or(tuple(alts), span)


@dataclass(frozen=True)
class Vocabulary:
    observations: Mapping[str, ObsDef]
    findings: frozenset[str]
    definitions: Mapping[str, Expr] = field(default_factory=dict)
    code_sets: Mapping[str, CodeSetDef] = field(default_factory=dict)
    targets: Mapping[str, TargetDef] = field(default_factory=dict)
    capabilities: Mapping[str, str] = field(default_factory=dict)  # site capabilities: name -> description
    visit_reading: str = "last"  # which same-day reading a visit counts (consecutive_visits): last or mean
    shared_texts: Mapping[str, str] = field(default_factory=dict)  # the dictionary's definitions as written (review pages)

    @cached_property
    def loinc(self) -> dict[str, str]:
        """LOINC code -> observation code (worked out once, not per case)."""
        return {lc: od.code for od in self.observations.values() for lc in od.loinc}


# ---------------------------------------------------------------- AST

Span = tuple[int, int]
NUMERIC_FIELDS = {"age": (0.0, 130.0), "smi_risk_grade": (0.0, 5.0)}
ENUM_FIELDS = {"sex": ("female", "male", "other"), "setting": ("community", "hospital")}
OPTIONAL_FIELDS = ("age", "sex", "pregnant", "smi_risk_grade")
OPS = ("<=", ">=", "==", "!=", "<", ">")
NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
SYMBOL = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "=", "!=": "≠"}


@dataclass(frozen=True)
class Num:
    """A numeric quantity read from the facts: ``kind`` is obs (the latest value while it is current:
    see ObsDef.current), latest (the latest value whatever its age), prev, rise, rise_pct, days, field, count,
    days_on, after (days_after_start: arg is (observation, ATC)), srise and srise_pct (rise_since_start
    and rise_pct_since_start: arg is (observation, ATC, ...))."""

    kind: str
    arg: str | tuple[str, ...]
    label: str = field(default="", compare=False)  # as written, when it names code sets (e.g. count_taking(ras_blocker, ccb))

    @cached_property
    def key(self) -> str:
        if self.kind == "obs":
            return f"o_{self.arg}"
        if self.kind == "latest":
            return f"l_{self.arg}"
        if self.kind == "prev":
            return f"p_{self.arg}"
        if self.kind == "rise":
            return f"r_{self.arg}"
        if self.kind == "rise_pct":
            return f"rp_{self.arg}"
        if self.kind == "days":
            return f"d_{self.arg}"
        if self.kind == "field":
            return str(self.arg)
        if self.kind == "count":
            assert isinstance(self.arg, tuple)
            return "n_" + "_".join(sanitize(a) for a in self.arg)
        if self.kind == "after":
            code, prefix = self.pair
            return f"a_{code}_{sanitize(prefix)}"
        if self.kind in ("srise", "srise_pct"):
            code, *prefixes = self.started
            return ("bp_" if self.kind == "srise_pct" else "b_") + "_".join([code, *(sanitize(p) for p in prefixes)])
        return f"s_{sanitize(str(self.arg))}"

    @property
    def started(self) -> tuple[str, ...]:
        """rise_since_start's and rise_pct_since_start's (observation, ATC prefix, ...)."""
        assert isinstance(self.arg, tuple) and len(self.arg) >= 2, self
        return self.arg

    @property
    def code(self) -> str | None:
        """The observation this quantity reads, if any."""
        if self.kind in ("obs", "latest", "prev", "rise", "rise_pct", "days"):
            return str(self.arg)
        if self.kind in ("after", "srise", "srise_pct"):
            return str(self.arg[0])
        return None

    @property
    def pair(self) -> tuple[str, str]:
        """days_after_start's (observation, ATC prefix)."""
        assert isinstance(self.arg, tuple) and len(self.arg) == 2, self
        return self.arg[0], self.arg[1]

    def labelled(self, call: str, args: list[tuple[str, int]], first_code: int) -> Num:
        """This quantity named as written when one of its code arguments (from ``first_code`` on) is
        a code set: reasons and values then show the set's name, not its members."""
        if not any(a[:1].islower() for a, _ in args[first_code:]):
            return self
        return replace(self, label=f"{call}({', '.join(a for a, _ in args)})")

    @property
    def integer(self) -> bool:
        return self.kind in ("days", "count", "days_on", "after") or (self.kind == "field")

    def text(self) -> str:
        if self.label:
            return self.label
        if self.kind in ("obs", "field"):
            return str(self.arg)
        if self.kind == "latest":
            return f"latest({self.arg})"
        if self.kind == "prev":
            return f"previous({self.arg})"
        if self.kind == "rise":
            return f"rise({self.arg})"
        if self.kind == "rise_pct":
            return f"rise_pct({self.arg})"
        if self.kind == "days":
            return f"days_since({self.arg})"
        if self.kind == "count":
            assert isinstance(self.arg, tuple)
            return f"count_taking({', '.join(self.arg)})"
        if self.kind == "after":
            return "days_after_start({}, {})".format(*self.pair)
        if self.kind in ("srise", "srise_pct"):
            name = "rise_since_start" if self.kind == "srise" else "rise_pct_since_start"
            return f"{name}({', '.join(self.started)})"
        return f"days_on({self.arg})"


@dataclass(frozen=True)
class Cmp:
    num: Num
    op: str
    value: float
    unit: str | None = None
    span: Span = (0, 0)


@dataclass(frozen=True)
class Enum:
    """``field`` is one of ``values`` (unknown when the field is missing)."""

    field: str
    values: frozenset[str]
    span: Span = (0, 0)


@dataclass(frozen=True)
class Flag:
    """A two- or three-valued flag: finding, dx (ICD prefix), on (ATC prefix), allergy, pregnant,
    site (a capability of the site profile) or visits (see Visits)."""

    kind: str
    arg: str
    value: bool = True
    span: Span = (0, 0)
    label: str = field(default="", compare=False)  # the codes as written, when they name code sets (e.g. ras_blocker)

    @cached_property
    def key(self) -> str:
        if self.kind == "pregnant":
            return "pregnant"
        if self.kind == "sub":  # a factored-out sub-condition (compile.rule_pattern)
            return self.arg
        return _FLAG_PREFIX[self.kind] + sanitize(self.arg)


_FLAG_PREFIX = {"finding": "f_", "dx": "dx_", "on": "on_", "allergy": "al_", "site": "c_", "visits": "v_"}


@dataclass(frozen=True)
class Visits(Flag):
    """``consecutive_visits(n, cond, apart=D, since=CODES)``: ``cond`` held at each of the patient's
    last ``n`` visits, visits being the dates with readings of the observations ``cond`` reads
    (same-day readings are one visit: Vocabulary.visit_reading), counted from the latest back,
    each counted visit at least ``apart`` days before the one counted after it, every visit in that
    span holding ``cond``, and all after the latest start of a current drug of ``since`` (when
    given). Worked out by derive (one fact, ``v_...``: 1, 0 or absent when unknown), so every
    backend reads the same value. ``source`` is the call as written, for reasons."""

    n: int = 2
    cond: Expr | None = None
    apart: int = 0
    since: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class Present:
    """Whether a value exists (always known)."""

    kind: str  # obs or field
    name: str
    value: bool = True
    span: Span = (0, 0)

    @cached_property
    def key(self) -> str:
        return f"h_{self.name}"


@dataclass(frozen=True)
class Not:
    item: Expr
    span: Span = (0, 0)


@dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]
    span: Span = (0, 0)


@dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]
    span: Span = (0, 0)


@dataclass(frozen=True)
class Const:
    value: bool
    span: Span = (0, 0)


Literal = Cmp | Enum | Flag | Present
Expr = Cmp | Enum | Flag | Present | Not | And | Or | Const


def sanitize(code: str) -> str:
    return code.replace(".", "_").replace("|", "_")


# ---------------------------------------------------------------- parser


class ParseError(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


@dataclass
class NameError_:
    offset: int
    message: str


_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<op><=|>=|==|!=|<|>)|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*))"
)
_UNIT = re.compile(r"\s*(?P<unit>%|[A-Za-zµ/^0-9][A-Za-z0-9µ/^.%]*)")
_ICD = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{0,4})?$|^[A-Z][0-9]?$")
_ATC = re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$")
KEYWORDS = {"and", "or", "not", "is"}
CALLS = {
    "missing",
    "present",
    "older_than",
    "due",
    "days_since",
    "previous",
    "rise",
    "rise_pct",
    "finding",
    "diagnosed",
    "taking",
    "allergic",
    "count_taking",
    "days_on",
    "days_after_start",
    "rise_since_start",
    "rise_pct_since_start",
    "latest",
    "at_target",
    "above_target",
    "site_has",
    "consecutive_visits",
}


def unknown_code(name: str, label: str, code_sets: Mapping[str, object]) -> str:
    """The error for a lower-case name where a code or code set is expected (``label``: ATC or ICD-10)."""
    close = did_you_mean(name, code_sets)
    if close or (code_sets and not (_ATC if label == "ATC" else _ICD).match(name.upper())):
        return f"unknown code set {name!r}{close}"
    example = " (e.g. C09AA)" if label == "ATC" else ""
    return f"{name!r} is not an {label} code or {'class ' if label == 'ATC' else ''}prefix{example}" + (
        ", nor a code set" if code_sets else ""
    )


def did_you_mean(name: str, options: object) -> str:
    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)  # type: ignore[call-overload]
    return f" (did you mean {close[0]!r}?)" if close else ""


# Bounds on one condition (the bundled pathways' largest: 60 nodes, 7 levels deep), so that the
# parser and every later pass over the tree (nnf, compile, the reference evaluator) stay small
# and never hit Python's recursion limit:
MAX_NESTING = 32  # levels: parentheses and 'not' while parsing; and/or/not with definitions inlined
MAX_NODES = 5_000  # and/or/not and comparisons, with each use of a definition counted in full


def shape(e: Expr) -> tuple[int, int]:
    """(nodes, depth) of a condition tree: depth counts and/or/not levels (a comparison alone is 0);
    a shared sub-condition (an inlined definition) counts each time it is used. No recursion, and
    linear in the distinct nodes."""
    memo: dict[int, tuple[int, int]] = {}
    stack: list[tuple[Expr, bool]] = [(e, False)]
    while stack:
        x, ready = stack.pop()
        if id(x) in memo:
            continue
        kids: tuple[Expr, ...] = (x.item,) if isinstance(x, Not) else x.items if isinstance(x, (And, Or)) else ()
        if kids and not ready:
            stack.append((x, True))
            stack.extend((k, False) for k in kids if id(k) not in memo)
            continue
        sub = [memo[id(k)] for k in kids]
        memo[id(x)] = (1 + sum(n for n, _ in sub), 1 + max(d for _, d in sub) if sub else 0)
    return memo[id(e)]


class _Parser:
    def __init__(self, text: str, vocab: Vocabulary) -> None:
        self.text = text
        self.vocab = vocab
        self.pos = 0
        self.level = 0  # parentheses and 'not' open at this point
        self.errors: list[NameError_] = []
        self._peeked: tuple[str, str, int, int] | None = None

    # tokens: (kind, text, start, end)
    def peek(self) -> tuple[str, str, int, int]:
        if self._peeked is None:
            m = _TOKEN.match(self.text, self.pos)
            if m is None or (m.end() == self.pos and self.pos < len(self.text)):
                rest = self.text[self.pos :].lstrip()
                if not rest:
                    self._peeked = ("eof", "", len(self.text), len(self.text))
                else:
                    start = len(self.text) - len(rest)
                    raise ParseError(start, f"unexpected character {rest[0]!r}")
            else:
                kind = m.lastgroup or "eof"
                if kind == "eof" or m.lastgroup is None:
                    self._peeked = ("eof", "", len(self.text), len(self.text))
                else:
                    self._peeked = (kind, m.group(kind), m.start(kind), m.end())
        return self._peeked

    def next(self) -> tuple[str, str, int, int]:
        tok = self.peek()
        self.pos = tok[3]
        self._peeked = None
        return tok

    def expect(self, kind: str, what: str) -> tuple[str, str, int, int]:
        tok = self.peek()
        if tok[0] != kind:
            found = repr(tok[1]) if tok[0] != "eof" else "the end"
            raise ParseError(tok[2], f"expected {what}, found {found}")
        return self.next()

    def is_kw(self, word: str) -> bool:
        tok = self.peek()
        return tok[0] == "name" and tok[1] == word

    def parse(self) -> Expr:
        if not self.text.strip():
            raise ParseError(0, "empty condition")
        expr = self.parse_or()
        tok = self.peek()
        if tok[0] != "eof":
            raise ParseError(tok[2], f"unexpected {tok[1]!r}; expected 'and', 'or' or the end")
        return expr

    def parse_or(self) -> Expr:
        start = self.peek()[2]
        items = [self.parse_and()]
        while self.is_kw("or"):
            self.next()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items), (start, self.pos))

    def parse_and(self) -> Expr:
        start = self.peek()[2]
        items = [self.parse_unary()]
        while self.is_kw("and"):
            self.next()
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else And(tuple(items), (start, self.pos))

    def deeper(self, offset: int) -> None:
        self.level += 1
        if self.level > MAX_NESTING:
            raise ParseError(offset, f"nested more than {MAX_NESTING} levels deep (parentheses and 'not'; the limit)")

    def parse_unary(self) -> Expr:
        if self.is_kw("not"):
            start = self.next()[2]
            self.deeper(start)
            item = self.parse_unary()
            self.level -= 1
            return Not(item, (start, self.pos))
        return self.parse_primary()

    def parse_primary(self) -> Expr:
        tok = self.peek()
        if tok[0] == "lp":
            self.next()
            self.deeper(tok[2])
            expr = self.parse_or()
            self.expect("rp", "')'")
            self.level -= 1
            return expr
        if tok[0] != "name" or tok[1] in KEYWORDS:
            found = repr(tok[1]) if tok[0] != "eof" else "the end"
            raise ParseError(tok[2], f"expected a condition, found {found}")
        self.next()
        name, start = tok[1], tok[2]
        if self.peek()[0] == "lp":
            return self.parse_call(name, start)
        return self.parse_name(name, start)

    # ------------------------------------------------------------ terms
    def err(self, offset: int, message: str) -> None:
        self.errors.append(NameError_(offset, message))

    def obs(self, name: str, offset: int) -> ObsDef | None:
        od = self.vocab.observations.get(name)
        if od is None:
            self.err(offset, f"unknown observation {name!r}" + did_you_mean(name, self.vocab.observations))
        return od

    def codes(self, args: list[tuple[str, int]], system: str) -> list[str]:
        """The codes the arguments name: each an ICD-10 / ATC code or prefix (``system`` icd10 or
        atc) or a code set's name, expanded to its members; anything else is reported."""
        pattern, label = (_ICD, "ICD-10") if system == "icd10" else (_ATC, "ATC")
        out: list[str] = []
        for code, off in args:
            if code[:1].islower():
                cs = self.vocab.code_sets.get(code)
                if cs is None:
                    self.err(off, unknown_code(code, label, self.vocab.code_sets))
                elif cs.system != system:
                    self.err(off, f"code set {code!r} holds {cs.system.upper()} codes; {label} codes are needed here")
                else:
                    out.extend(cs.codes)
            elif not pattern.match(code):
                self.err(off, f"{code!r} is not an {label} code or prefix" + (", nor a code set" if self.vocab.code_sets else ""))
            else:
                out.append(code)
        return out

    def code_class(self, arg: tuple[str, int], system: str) -> str:
        """One argument that names one class of codes (a code, or a code set): its codes joined by |."""
        return "|".join(sorted(set(self.codes([arg], system)))) or arg[0]

    def comparison(self, num: Num, start: int, od: ObsDef | None) -> Expr:
        tok = self.peek()
        if tok[0] != "op":
            raise ParseError(tok[2], f"{num.text()} is a number: compare it, e.g. '{num.text()} >= 1'")
        op = self.next()[1]
        ntok = self.peek()
        if ntok[0] != "num":
            found = repr(ntok[1]) if ntok[0] != "eof" else "the end"
            raise ParseError(ntok[2], f"expected a number after {op!r}, found {found}")
        self.next()
        value = float(ntok[1])
        unit: str | None = None
        m = _UNIT.match(self.text, self.pos)
        if m is not None and m.group("unit") not in KEYWORDS:
            unit = m.group("unit")
            self.pos = m.end()
            self._peeked = None
        unit_at = m.start("unit") if m is not None else start
        if unit is not None:
            if num.kind in ("rise", "srise"):  # a difference: an offset conversion (HbA1c mmol/mol) would be wrong
                if od is not None and unit != od.unit:
                    self.err(unit_at, f"{num.text()} is compared in {od.code}'s own unit {od.unit!r}, not {unit!r}")
            elif num.kind in ("rise_pct", "srise_pct"):
                if unit != "%":
                    self.err(unit_at, f"{num.text()} is a percentage: write the number alone or with '%', not {unit!r}")
            elif num.kind in ("obs", "prev"):
                if od is None:
                    return Cmp(num, op, value, unit, (start, self.pos))
                conv = od.to_canonical(value, unit)
                if conv is None:
                    accepted = ", ".join([od.unit, *od.conversions])
                    self.err(unit_at, f"unit {unit!r} does not match {od.code} (accepted: {accepted})")
                else:
                    value = conv
            elif num.kind in ("days", "days_on", "after"):
                if unit not in ("days", "day", "d"):
                    self.err(unit_at, f"{num.text()} is in days, not {unit!r}")
            else:
                self.err(unit_at, f"{num.text()} takes no unit, found {unit!r}")
        return Cmp(num, op, value, unit, (start, self.pos))

    def parse_name(self, name: str, start: int) -> Expr:
        if name in ENUM_FIELDS:
            tok = self.peek()
            negate = False
            if tok[0] == "op" and tok[1] in ("==", "!="):
                negate = self.next()[1] == "!="
            elif tok[0] == "name" and tok[1] == "is":
                self.next()
                if self.is_kw("not"):
                    self.next()
                    negate = True
            else:
                raise ParseError(tok[2], f"compare {name} with '==' or 'is', e.g. '{name} == {ENUM_FIELDS[name][0]}'")
            vtok = self.expect("name", f"a {name} value ({', '.join(ENUM_FIELDS[name])})")
            allowed = ENUM_FIELDS[name]
            if vtok[1] not in allowed:
                self.err(vtok[2], f"{name} is one of {', '.join(allowed)}, not {vtok[1]!r}")
            values = frozenset(v for v in allowed if (v == vtok[1]) != negate)
            return Enum(name, values, (start, self.pos))
        if name in NUMERIC_FIELDS:
            return self.comparison(Num("field", name), start, None)
        if name == "pregnant":
            return Flag("pregnant", "pregnant", True, (start, self.pos))
        if name in ("true", "false"):
            return Const(name == "true", (start, self.pos))
        if name in self.vocab.observations:
            return self.comparison(Num("obs", name), start, self.vocab.observations[name])
        if name in self.vocab.definitions:  # a named sub-condition of the pathway, inlined
            return self.vocab.definitions[name]
        if name in self.vocab.findings:
            return Flag("finding", name, True, (start, self.pos))
        options = set(self.vocab.findings) | set(self.vocab.observations) | set(NUMERIC_FIELDS) | set(ENUM_FIELDS)
        options |= set(self.vocab.definitions)
        self.err(start, f"unknown name {name!r}" + did_you_mean(name, options | {"pregnant"}))
        if self.peek()[0] == "op":  # keep parsing so later errors are reported too
            return self.comparison(Num("obs", name), start, None)
        return Const(False, (start, self.pos))

    def args(self) -> list[tuple[str, int]]:
        self.expect("lp", "'('")
        out: list[tuple[str, int]] = []
        while True:
            tok = self.peek()
            if tok[0] in ("name", "num"):
                self.next()
                out.append((tok[1], tok[2]))
            else:
                found = repr(tok[1]) if tok[0] != "eof" else "the end"
                raise ParseError(tok[2], f"expected an argument, found {found}")
            if self.peek()[0] == "comma":
                self.next()
                continue
            self.expect("rp", "',' or ')'")
            return out

    def parse_visits(self, start: int) -> Expr:
        """consecutive_visits(N, CONDITION [, apart DAYS] [, since CODE-OR-SET])"""
        self.expect("lp", "'('")
        ntok = self.expect("num", "the number of visits")
        n = float(ntok[1])
        if not n.is_integer() or not 1 <= n <= 12:
            raise ParseError(ntok[2], f"the number of visits is a whole number from 1 to 12, not {ntok[1]}")
        self.expect("comma", "',' and the condition at each visit")
        cond_at = self.peek()[2]
        cond = self.parse_or()
        apart, since = 0, ""
        while self.peek()[0] == "comma":
            self.next()
            word = self.expect("name", "'apart' or 'since'")
            if word[1] == "apart":
                days = self.expect("num", "a number of days")
                if not float(days[1]).is_integer() or float(days[1]) < 0:
                    raise ParseError(days[2], f"apart takes a whole number of days, not {days[1]}")
                apart = int(float(days[1]))
                if self.is_kw("days"):
                    self.next()
            elif word[1] == "since":
                what = self.expect("name", "a drug's ATC code or code set")
                since = self.code_class((what[1], what[2]), "atc")
            else:
                raise ParseError(word[2], f"expected 'apart' or 'since', found {word[1]!r}")
        self.expect("rp", "',' or ')'")
        read = {lit.num.code for lit in literals(cond) if isinstance(lit, Cmp) and lit.num.kind == "obs"}
        allowed = ("obs", "field", "count", "days_on")
        bad = [lit.num.text() for lit in literals(cond) if isinstance(lit, Cmp) and lit.num.kind not in allowed]
        if bad:
            why = f"inside consecutive_visits an observation is compared by its value at the visit; {bad[0]} cannot be used here"
            self.err(cond_at, why)
        elif not read:
            self.err(cond_at, "the condition at each visit must compare an observation's value (visits are the dates of its readings)")
        if any(isinstance(lit, Visits) for lit in literals(cond)):
            self.err(cond_at, "consecutive_visits cannot be nested")
        digest = hashlib.sha256(canon(cond).encode()).hexdigest()[:12]
        arg = f"{int(n)}_{apart}_{sanitize(since) or 'any'}_{digest}"
        source = " ".join(self.text[start : self.pos].split())
        since_codes = tuple(since.split("|")) if since else ()
        return Visits("visits", arg, True, (start, self.pos), n=int(n), cond=cond, apart=apart, since=since_codes, source=source)

    def parse_call(self, name: str, start: int) -> Expr:
        if name not in CALLS:
            self.err(start, f"unknown function {name!r}" + did_you_mean(name, CALLS))
            self.args()
            return Const(False, (start, self.pos))
        if name == "consecutive_visits":
            return self.parse_visits(start)
        args = self.args()
        end = self.pos

        def arity(n: int) -> None:
            if len(args) != n:
                raise ParseError(start, f"{name}() takes {n} argument{'s' if n > 1 else ''}, got {len(args)}")

        def days_arg(a: tuple[str, int]) -> float:
            try:
                return float(a[0])
            except ValueError:
                raise ParseError(a[1], f"expected a number of days, found {a[0]!r}") from None

        if name in ("missing", "present"):
            arity(1)
            what, off = args[0]
            if what in OPTIONAL_FIELDS:
                return Present("field", what, name == "present", (start, end))
            self.obs(what, off)
            return Present("obs", what, name == "present", (start, end))
        if name in ("older_than", "due"):
            arity(2)
            self.obs(args[0][0], args[0][1])
            days = days_arg(args[1])
            older = Cmp(Num("days", args[0][0]), ">", days, None, (start, end))
            if name == "older_than":
                return older
            return Or((Present("obs", args[0][0], False, (start, end)), older), (start, end))
        if name == "days_after_start":
            arity(2)
            self.obs(args[0][0], args[0][1])
            return self.comparison(Num("after", (args[0][0], self.code_class(args[1], "atc"))).labelled(name, args, 1), start, None)
        if name in ("rise_since_start", "rise_pct_since_start"):
            if len(args) < 2:
                raise ParseError(start, f"{name}() takes an observation and at least one ATC code, got {len(args)} argument(s)")
            od = self.obs(args[0][0], args[0][1])
            kind = "srise" if name == "rise_since_start" else "srise_pct"
            num = Num(kind, (args[0][0], *sorted(set(self.codes(args[1:], "atc")))))
            return self.comparison(num.labelled(name, args, 1), start, od)
        if name in ("days_since", "previous", "rise", "rise_pct", "latest"):
            arity(1)
            od = self.obs(args[0][0], args[0][1])
            kind = {"days_since": "days", "previous": "prev", "rise": "rise", "rise_pct": "rise_pct", "latest": "latest"}[name]
            if kind == "latest" and (od is None or od.current is None):
                kind = "obs"  # no recency window: the latest value is the current one (one fact, not two)
            return self.comparison(Num(kind, args[0][0]), start, od)
        if name in ("at_target", "above_target"):
            arity(1)
            profile = self.vocab.targets.get(args[0][0])
            if profile is None:
                self.err(args[0][1], f"unknown target profile {args[0][0]!r}" + did_you_mean(args[0][0], self.vocab.targets))
                return Const(False, (start, end))
            return profile.at if name == "at_target" else profile.above
        if name == "site_has":
            arity(1)
            if args[0][0] not in self.vocab.capabilities:
                self.err(args[0][1], f"unknown site capability {args[0][0]!r}" + did_you_mean(args[0][0], self.vocab.capabilities))
            return Flag("site", args[0][0], True, (start, end))
        if name == "finding":
            arity(1)
            if args[0][0] not in self.vocab.findings:
                self.err(args[0][1], f"unknown finding {args[0][0]!r}" + did_you_mean(args[0][0], self.vocab.findings))
            return Flag("finding", args[0][0], True, (start, end))
        if not args:
            raise ParseError(start, f"{name}() needs at least one code")
        system = "icd10" if name == "diagnosed" else "atc"
        if name == "count_taking":  # each argument is one class: a code, or a code set (taking any of its members)
            num = Num("count", tuple(sorted({self.code_class(a, system) for a in args})))
            return self.comparison(num.labelled(name, args, 0), start, None)
        if name == "days_on":
            arity(1)
            return self.comparison(Num("days_on", self.code_class(args[0], system)).labelled(name, args, 0), start, None)
        codes = self.codes(args, system)
        kind = {"diagnosed": "dx", "taking": "on", "allergic": "allergy"}[name]
        named = ", ".join(a for a, _ in args) if any(a[:1].islower() for a, _ in args) else ""
        # one derived flag for the whole list keeps compiled patterns small
        return Flag(kind, "|".join(sorted(set(codes))) or args[0][0], True, (start, end), named)


def parse(text: str, vocab: Vocabulary) -> tuple[Expr, list[NameError_]]:
    """Parse a condition. Raises ParseError on bad syntax; returns name errors to report together."""
    p = _Parser(text, vocab)
    expr = p.parse()
    nodes, depth = shape(expr)
    if depth > MAX_NESTING:
        raise ParseError(0, f"nested more than {MAX_NESTING} levels deep with its definitions inlined (and, or, not; the limit)")
    if nodes > MAX_NODES:
        raise ParseError(0, f"{nodes:,} terms with its definitions inlined; the limit is {MAX_NODES:,}")
    return expr, p.errors


# ---------------------------------------------------------------- transformations


def canon(e: Expr) -> str:
    """A condition as canonical text: equal for equal meaning as written (spans ignored), so
    sub-conditions can be compared and keyed."""
    if isinstance(e, Cmp):
        return f"{e.num.text()}{e.op}{e.value!r}"
    if isinstance(e, Enum):
        return f"{e.field} in {sorted(e.values)}"
    if isinstance(e, Visits):
        return f"visits:{e.arg}:{e.value}"
    if isinstance(e, Flag):
        return f"{e.kind}:{e.arg}:{e.value}"
    if isinstance(e, Present):
        return f"{'present' if e.value else 'missing'}({e.name})"
    if isinstance(e, Not):
        return f"not({canon(e.item)})"
    if isinstance(e, (And, Or)):
        return f"{'and' if isinstance(e, And) else 'or'}({', '.join(canon(i) for i in e.items)})"
    return repr(e.value)


def conj(*items: Expr) -> Expr:
    flat: list[Expr] = []
    for it in items:
        flat.extend(it.items if isinstance(it, And) else (it,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def nnf(e: Expr, neg: bool = False) -> Expr:
    """Push negations onto literals. Valid in Kleene logic (De Morgan holds), so truth is kept."""
    if isinstance(e, Not):
        return nnf(e.item, not neg)
    if isinstance(e, And):
        items = tuple(nnf(i, neg) for i in e.items)
        return Or(items, e.span) if neg else And(items, e.span)
    if isinstance(e, Or):
        items = tuple(nnf(i, neg) for i in e.items)
        return And(items, e.span) if neg else Or(items, e.span)
    if not neg:
        return e
    if isinstance(e, Cmp):
        return Cmp(e.num, NEGATE[e.op], e.value, e.unit, e.span)
    if isinstance(e, Enum):
        return Enum(e.field, frozenset(ENUM_FIELDS[e.field]) - e.values, e.span)
    if isinstance(e, Flag):
        return replace(e, value=not e.value)  # a Visits stays one
    if isinstance(e, Present):
        return Present(e.kind, e.name, not e.value, e.span)
    assert isinstance(e, Const)
    return Const(not e.value, e.span)


def literals(e: Expr) -> list[Literal]:
    if isinstance(e, (And, Or)):
        return [lit for i in e.items for lit in literals(i)]
    if isinstance(e, Not):
        return literals(e.item)
    if isinstance(e, Const):
        return []
    return [e]


def reads(e: Expr) -> tuple[tuple[str, str, str], ...]:
    """What a condition reads: (name in the language, fact key, kind) per distinct literal."""
    out: dict[str, tuple[str, str, str]] = {}
    for lit in literals(e):
        if isinstance(lit, Cmp):
            out.setdefault(lit.num.text(), (lit.num.text(), lit.num.key, "number"))
        elif isinstance(lit, Enum):
            out.setdefault(lit.field, (lit.field, lit.field, "text"))
        elif isinstance(lit, Flag):
            args = lit.label or lit.arg.replace("|", ", ")
            name = {"finding": "{}", "dx": "diagnosed({})", "on": "taking({})", "allergy": "allergic({})", "site": "site_has({})"}.get(
                lit.kind, "{}"
            ).format(args)
            if isinstance(lit, Visits):
                name = lit.source
            out.setdefault(name, (name, lit.key, "flag"))
        else:
            out.setdefault(f"present({lit.name})", (f"present({lit.name})", lit.key, "present"))
    return tuple(out.values())


# ---------------------------------------------------------------- three-valued evaluation

Facts = Mapping[str, object]
Truth = bool | None  # None = unknown

_CMP: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def all3(truths: Iterable[Truth]) -> Truth:
    """Kleene AND: False if any is False, else unknown if any is unknown, else True (short-circuits)."""
    out: Truth = True
    for t in truths:
        if t is False:
            return False
        if t is None:
            out = None
    return out


def any3(truths: Iterable[Truth]) -> Truth:
    """Kleene OR: True if any is True, else unknown if any is unknown, else False (short-circuits)."""
    out: Truth = False
    for t in truths:
        if t is True:
            return True
        if t is None:
            out = None
    return out


# The reference evaluator: the one definition of what a condition means on derived facts. Every
# other evaluation is held to it: the durable backend's rulesets and generated code (differential
# tests), the reasons decisions give and --explain's "came close" (built on `truth` below).

Program = Callable[[Facts], Truth]


def truth(e: Expr) -> Program:
    """The condition as a function of the facts: its Kleene truth, True, False or None (unknown).
    Compiled once into closures over the AST as written (not the NNF); ``eval3`` is the same for
    one evaluation."""
    if isinstance(e, Cmp):
        key, value, test = e.num.key, e.value, _CMP[e.op]

        def cmp(f: Facts) -> Truth:
            v = f.get(key)
            return None if v is None else test(float(v), value)  # type: ignore[arg-type]

        return cmp
    if isinstance(e, Enum):
        fld, values = e.field, e.values

        def enum(f: Facts) -> Truth:
            v = f.get(fld)
            return None if v is None else v in values

        return enum
    if isinstance(e, Flag):
        key, want = e.key, e.value

        def flag(f: Facts) -> Truth:
            v = f.get(key)
            return None if v is None else bool(v) == want

        return flag
    if isinstance(e, Present):
        key, want = e.key, e.value
        return lambda f: bool(f.get(key)) == want
    if isinstance(e, Not):
        inner = truth(e.item)

        def neg(f: Facts) -> Truth:
            t = inner(f)
            return None if t is None else not t

        return neg
    if isinstance(e, And):
        parts = [truth(i) for i in e.items]

        def conj(f: Facts) -> Truth:
            return all3(p(f) for p in parts)

        return conj
    if isinstance(e, Or):
        parts = [truth(i) for i in e.items]

        def disj(f: Facts) -> Truth:
            return any3(p(f) for p in parts)

        return disj
    assert isinstance(e, Const)
    value = e.value
    return lambda f: value


_PROGRAMS: dict[int, tuple[Expr, Program]] = {}  # eval3's compiled conditions, by the node's identity (kept alive here)
_PROGRAMS_LIMIT = 4096


def eval3(e: Expr, facts: Facts) -> Truth:
    """Kleene evaluation of the AST on derived facts: True, False or None (unknown); ``truth(e)``
    applied, compiled on the first evaluation of the node and kept."""
    got = _PROGRAMS.get(id(e))
    if got is None or got[0] is not e:
        if len(_PROGRAMS) >= _PROGRAMS_LIMIT:
            _PROGRAMS.clear()
        got = _PROGRAMS[id(e)] = (e, truth(e))
    return got[1](facts)


T = TypeVar("T")


def witness(e: Expr, leaf: Callable[[Literal], Callable[[Facts], T]]) -> Callable[[Facts], list[T] | None]:
    """What made an NNF expression TRUE, compiled: for each literal on the way, ``leaf(literal)``
    applied to the facts; None when the expression is not TRUE (false or unknown). An AND is TRUE
    when every item is (its witnesses are theirs, in order); an OR when some item is (the first such
    item's). Truth comes from ``truth``: decide() writes reasons with it (``leaf``: the literal's
    words), ``true_literals`` names the literals."""
    if isinstance(e, And):
        parts = [witness(i, leaf) for i in e.items]

        def every(f: Facts) -> list[T] | None:
            out: list[T] = []
            for p in parts:
                w = p(f)
                if w is None:
                    return None
                out.extend(w)
            return out

        return every
    if isinstance(e, Or):
        alts = [witness(i, leaf) for i in e.items]

        def first(f: Facts) -> list[T] | None:
            for p in alts:
                w = p(f)
                if w is not None:
                    return w
            return None

        return first
    holds = truth(e)
    if isinstance(e, (Const, Not)):  # true or not, they name no literal
        return lambda f: [] if holds(f) is True else None
    say = leaf(e)
    return lambda f: [say(f)] if holds(f) is True else None


def num_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def describe(lit: Literal, facts: Facts, vocab: Vocabulary) -> str:
    """A literal in words with the value it read, e.g. ``sbp 186 mmHg ≥ 180``."""
    return describer(lit, vocab)(facts)


def describer(lit: Literal, vocab: Vocabulary) -> Callable[[Facts], str]:
    """``describe`` for one literal with everything but the value worked out once (decide() writes
    reasons for every case)."""
    if isinstance(lit, Cmp):
        key = lit.num.key
        unit = ""
        code = lit.num.code
        if lit.num.kind in ("obs", "latest", "prev", "rise", "srise") and code in vocab.observations:
            unit = " " + vocab.observations[str(code)].unit
        elif lit.num.kind in ("days", "days_on", "after"):
            unit = " days"
        elif lit.num.kind in ("rise_pct", "srise_pct"):
            unit = "%"
        head, tail = lit.num.text(), f"{SYMBOL[lit.op]} {num_text(lit.value)}"

        def cmp(facts: Facts) -> str:
            v = facts.get(key)
            shown = "unknown" if v is None else f"{num_text(float(v))}{unit}"  # type: ignore[arg-type]
            return f"{head} {shown} {tail}"

        return cmp
    if isinstance(lit, Enum):
        fld = lit.field
        return lambda facts: f"{fld} {facts.get(fld) or 'unknown'}"
    if isinstance(lit, Flag):
        if lit.kind == "pregnant":
            text = "pregnant" if lit.value else "not pregnant"
        elif isinstance(lit, Visits):
            text = f"{'' if lit.value else 'not '}{lit.source}"
        elif lit.kind == "site":
            text = f"the site {'can' if lit.value else 'cannot'} do {lit.arg} ({vocab.capabilities.get(lit.arg, lit.arg)})"
        else:
            verb = {"finding": "", "dx": "diagnosed ", "on": "taking ", "allergy": "allergic to "}[lit.kind]
            text = f"{'' if lit.value else 'not '}{verb}{lit.label or lit.arg.replace('|', '/')}"
    else:
        text = f"{lit.name} on record" if lit.value else f"no {lit.name} on record"
    return lambda facts: text


_RECENT_KINDS = ("obs", "prev", "rise", "rise_pct", "srise", "srise_pct")  # unknown once the latest value is no longer current


def staleness(lit: Literal, facts: Facts, vocab: Vocabulary) -> str | None:
    """Why a comparison is unknown when the reason is a value too old to count, in words
    (``sbp 186 mmHg is 95 days old; for this rule current means today``); None otherwise."""
    if not isinstance(lit, Cmp) or lit.num.kind not in _RECENT_KINDS:
        return None
    code = lit.num.code
    od = vocab.observations.get(str(code))
    if od is None or od.current is None or facts.get(f"o_{code}") is not None:
        return None
    value, ago = facts.get(f"l_{code}"), facts.get(f"d_{code}")
    if not isinstance(value, (int, float)) or not isinstance(ago, int):
        return None
    window = "today" if od.current == 0 else f"within {od.current} day{'s' if od.current > 1 else ''}"
    return f"{code} {num_text(float(value))} {od.unit} is {ago} day{'s' if ago != 1 else ''} old; for this rule current means {window}"


def true_literals(e: Expr, facts: Facts) -> list[Literal]:
    """The literals that made a TRUE expression true (for reasons); e must be in NNF."""

    def named(lit: Literal) -> Callable[[Facts], Literal]:
        return lambda f: lit

    return witness(e, named)(facts) or []


def blocking(e: Expr, facts: Facts) -> list[tuple[Literal, Truth]]:
    """Why an expression is not TRUE: the false or unknown literals on the way (for --explain)."""
    t = eval3(e, facts)
    if t is True:
        return []
    if isinstance(e, (And, Or)):
        return [b for i in e.items for b in blocking(i, facts)]
    if isinstance(e, (Const, Not)):
        return []
    return [(e, t)]


def reasoner(e: Expr, vocab: Vocabulary) -> Callable[[Facts], list[str]]:
    """The words for what made a TRUE expression (in NNF) true: ``true_literals`` then ``describe``,
    compiled (one walk that evaluates and explains together; decide() writes reasons with it)."""

    def words_of(lit: Literal) -> Callable[[Facts], str]:
        return describer(lit, vocab)

    explain = witness(e, words_of)

    def words(f: Facts) -> list[str]:
        return explain(f) or []

    return words
