"""The condition language's parser: text into the syntax tree (never eval'd), names checked against
the vocabulary.

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
from collections.abc import Mapping
from dataclasses import dataclass

from .syntax import (
    ENUM_FIELDS,
    NUMERIC_FIELDS,
    OPTIONAL_FIELDS,
    And,
    Cmp,
    Const,
    Enum,
    Expr,
    Flag,
    Not,
    Num,
    Or,
    Present,
    Visits,
    canon,
    literals,
    sanitize,
)
from .vocabulary import ObsDef, Vocabulary


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
ICD_CODE = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{0,4})?$|^[A-Z][0-9]?$")
ATC_CODE = re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$")
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
    if close or (code_sets and not (ATC_CODE if label == "ATC" else ICD_CODE).match(name.upper())):
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
        pattern, label = (ICD_CODE, "ICD-10") if system == "icd10" else (ATC_CODE, "ATC")
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
