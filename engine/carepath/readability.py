"""Readability checks: warnings that ``carepath validate`` prints and ``--strict`` turns into errors.

A committee has to be able to read a pathway. Two things make that hard, and both are checked
over the pathways that validated cleanly:

- a condition (a rule's ``when``, ``applies_to``, a definition, an invariant's ``given``) longer
  than ``MAX_CONDITION_CHARS`` characters as written (runs of white space count as one);
- the same sub-expression pasted into ``MIN_REPEATS`` or more rules of the set: a compound
  (and/or/not) of at least ``MIN_LITERALS`` terms, compared by meaning of its shape (negations
  pushed onto the terms, the order of and/or items ignored, spans ignored), which a definition
  should name; or a list of ``MIN_SET_CODES`` or more codes in ``taking()``, ``diagnosed()`` or
  ``allergic()``, which a code set should name.

A definition used by name is not a repeat: the parser inlines a definition by returning the very
object the pathway's vocabulary holds, so a sub-tree that *is* that object is a name, and the
walk neither counts it nor looks inside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import lang
from .errors import Diagnostic
from .lang import And, Cmp, Const, Enum, Expr, Flag, Not, Or, Present
from .load import Located, YamlPath, load_text
from .validate import CheckedPathway

MAX_CONDITION_CHARS = 200  # a condition longer than this, as written, is hard to read aloud
MIN_REPEATS = 3  # a sub-expression in this many rules or more should be a definition
MIN_LITERALS = 2  # the smallest compound worth naming: two terms
MIN_SET_CODES = 4  # a code list this long in this many rules should be a code set
SHOWN_CHARS = 160  # a repeated text longer than this is shortened in the warning

LONG, REPEAT, CODES = "long", "repeat", "codes"  # the kinds of finding


@dataclass(frozen=True)
class Finding:
    """One readability violation: ``subject`` is the rule id (or invariant id, or
    ``<pathway>.applies_to`` / ``<pathway>.definitions.<name>``), ``kind`` long, repeat or codes,
    and the warning to print."""

    subject: str
    kind: str
    diagnostic: Diagnostic


def check(pathways: Sequence[CheckedPathway]) -> list[Finding]:
    """Every readability finding in a validated set, in file and line order."""
    locs = {cp.file: load_text(cp.source, cp.file) for cp in pathways}
    found = _long_conditions(pathways, locs) + _repeats(pathways, locs)
    return sorted(found, key=lambda f: f.diagnostic)


def warnings(pathways: Sequence[CheckedPathway]) -> list[Diagnostic]:
    return [f.diagnostic for f in check(pathways)]


def _warn(loc: Located, path: YamlPath, message: str, offset: int | None = None) -> Diagnostic:
    return dataclasses.replace(loc.diag(path, message, offset), severity="warning")


# ---------------------------------------------------------------- long conditions


def written_length(text: str) -> int:
    """A condition's length as written, each run of white space (a folded line) counted as one."""
    return len(" ".join(text.split()))


def _long_conditions(pathways: Sequence[CheckedPathway], locs: dict[str, Located]) -> list[Finding]:
    out: list[Finding] = []
    for cp in pathways:
        m, loc = cp.model, locs[cp.file]
        texts: list[tuple[str, YamlPath, str]] = [(f"{m.id}.applies_to", ("applies_to",), m.applies_to)]
        texts += [(f"{m.id}.definitions.{name}", ("definitions", name), text) for name, text in m.definitions.items()]
        texts += [(r.id, ("rules", i, "when"), r.when) for i, r in enumerate(m.rules)]
        texts += [(inv.id, ("invariants", i, "given"), inv.given) for i, inv in enumerate(m.invariants)]
        for subject, path, text in texts:
            n = written_length(text)
            if n > MAX_CONDITION_CHARS:
                message = (
                    f"condition is {n:,} characters long (the limit is {MAX_CONDITION_CHARS}); "
                    "name its parts in definitions so that it reads aloud"
                )
                out.append(Finding(subject, LONG, _warn(loc, path, message)))
    return out


# ---------------------------------------------------------------- repeated sub-expressions


def _literal_text(e: Expr, neg: bool) -> str:
    """A term's canonical text with a negation applied (as lang.nnf would), spans ignored."""
    if isinstance(e, Cmp):
        op = lang.NEGATE[e.op] if neg else e.op
        return f"{e.num.text()} {op} {lang.num_text(e.value)}"
    if isinstance(e, Enum):
        values = frozenset(lang.ENUM_FIELDS[e.field]) - e.values if neg else e.values
        return f"{e.field} in {{{', '.join(sorted(values))}}}"
    if isinstance(e, Flag):
        return f"{'not ' if e.value == neg else ''}{e.kind}({e.arg})"
    if isinstance(e, Present):
        return f"{'present' if e.value != neg else 'missing'}({e.name})"
    if isinstance(e, Const):
        return str(e.value != neg).lower()
    # a node this module does not know (a newer construct): its fields without the span
    plain = dataclasses.replace(e, span=(0, 0)) if dataclasses.is_dataclass(e) and hasattr(e, "span") else e
    return f"{'not ' if neg else ''}{plain!r}"


def _is_one_call(e: And | Or) -> bool:
    """A compound the parser made of one call (``due(x, n)`` is missing or older than): every
    item has the call's own span."""
    return e.span != (0, 0) and all(getattr(i, "span", None) == e.span for i in e.items)


@dataclass
class _Occurrence:
    rule: tuple[int, int]  # (pathway place, rule index)
    span: lang.Span
    neg: bool


@dataclass
class _Seen:
    terms: int
    occurrences: list[_Occurrence] = dataclasses.field(default_factory=list)
    inner: set[str] = dataclasses.field(default_factory=set)  # the keys of the compounds inside it

    @property
    def rules(self) -> list[tuple[int, int]]:
        return list(dict.fromkeys(o.rule for o in self.occurrences))


class _Walker:
    """Canonical keys of every compound sub-tree of the rules' conditions, definitions' objects left out."""

    def __init__(self, names: set[int]) -> None:
        self.names = names  # id() of every definition's and target profile's object: a use by name
        self.seen: dict[str, _Seen] = {}
        self.codes: dict[tuple[str, ...], list[tuple[tuple[int, int], lang.Span]]] = {}
        self.memo: dict[tuple[int, bool], tuple[str, int]] = {}

    def canon(self, e: Expr, neg: bool) -> tuple[str, int]:
        """(canonical text, number of terms as written) of ``e`` under ``neg``."""
        hit = self.memo.get((id(e), neg))
        if hit is not None:
            return hit
        if isinstance(e, Not):
            out = self.canon(e.item, not neg)
        elif isinstance(e, (And, Or)):
            conj = isinstance(e, And) != neg
            parts: list[str] = []
            terms = 0
            for item in e.items:
                text, n = self.canon(item, neg)
                terms += n
                inner, inner_neg = _unwrap(item, neg)
                inner_conj = isinstance(inner, And) != inner_neg if isinstance(inner, (And, Or)) else None
                if inner_conj is conj and text.startswith("("):  # flatten a and (b and c)
                    parts.extend(_split(text[1:-1], " and " if conj else " or "))
                else:
                    parts.append(text)
            joiner = " and " if conj else " or "
            out = (f"({joiner.join(sorted(parts))})", 1 if _is_one_call(e) else terms)
        else:
            out = (_literal_text(e, neg), 1)
        self.memo[(id(e), neg)] = out
        return out

    def walk(self, e: Expr, rule: tuple[int, int], neg: bool = False, outer: tuple[str, ...] = ()) -> None:
        if id(e) in self.names:
            return  # a definition used by its name
        if isinstance(e, Not):
            self.walk(e.item, rule, not neg, outer)
            return
        if isinstance(e, Flag) and e.kind in ("dx", "on", "allergy"):
            codes = tuple(e.arg.split("|"))
            if len(codes) >= MIN_SET_CODES and not e.label:  # a code set used by name is not a pasted list
                family = "icd" if e.kind == "dx" else "atc"
                self.codes.setdefault((family, *codes), []).append((rule, e.span))
            return
        if not isinstance(e, (And, Or)) or _is_one_call(e):
            return
        key, terms = self.canon(e, neg)
        if terms >= MIN_LITERALS:
            seen = self.seen.setdefault(key, _Seen(terms))
            seen.occurrences.append(_Occurrence(rule, e.span, neg))
            for o in outer:
                self.seen[o].inner.add(key)
            outer = (*outer, key)
        for item in e.items:
            self.walk(item, rule, neg, outer)


def _unwrap(e: Expr, neg: bool) -> tuple[Expr, bool]:
    """``e`` without the 'not's around it, and whether an odd number of them was there."""
    while isinstance(e, Not):
        e, neg = e.item, not neg
    return e, neg


def _split(text: str, joiner: str) -> list[str]:
    """Split a canonical compound's items at the top level (items in parentheses stay whole)."""
    out: list[str] = []
    depth = start = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0 and text.startswith(joiner, i):
            out.append(text[start:i])
            i += len(joiner)
            start = i
            continue
        i += 1
    out.append(text[start:])
    return out


def _repeats(pathways: Sequence[CheckedPathway], locs: dict[str, Located]) -> list[Finding]:
    names = {id(d) for cp in pathways for d in cp.vocab.definitions.values()}
    names |= {id(e) for cp in pathways for t in cp.vocab.targets.values() for e in (t.at, t.above)}  # at_target(name), above_target(name)
    walker = _Walker(names)
    for p, cp in enumerate(pathways):
        for cr in cp.rules:
            walker.walk(cr.when, (p, cr.index))

    def rule_id(at: tuple[int, int]) -> str:
        return pathways[at[0]].model.rules[at[1]].id

    def where(at: tuple[int, int], span: lang.Span, message: str) -> Diagnostic:
        cp = pathways[at[0]]
        return _warn(locs[cp.file], ("rules", at[1], "when"), message, span[0])

    def written(at: tuple[int, int], span: lang.Span, neg: bool) -> str:
        text = " ".join(pathways[at[0]].model.rules[at[1]].when[span[0] : span[1]].split())
        text = f"not ({text})" if neg else text
        return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"

    def listed(rules: Iterable[tuple[int, int]]) -> str:
        return ", ".join(rule_id(r) for r in rules)

    out: list[Finding] = []
    repeated = {k: s for k, s in walker.seen.items() if len(s.rules) >= MIN_REPEATS}
    for key, seen in repeated.items():
        rules = seen.rules
        # the largest repeat says it: a part repeated only where its whole is adds nothing
        if any(key in big.inner and big.rules == rules for k, big in repeated.items() if k != key):
            continue
        first = seen.occurrences[0]
        text = written(first.rule, first.span, first.neg)
        message = f"{text!r} is repeated in {len(rules)} rules ({listed(rules)}); name it once in definitions and use the name in each rule"
        out.append(Finding(rule_id(first.rule), REPEAT, where(first.rule, first.span, message)))
    for codes, uses in walker.codes.items():
        rules = list(dict.fromkeys(r for r, _ in uses))
        if len(rules) < MIN_REPEATS:
            continue
        at, span = uses[0]
        text = written(at, span, False)
        message = (
            f"the list of {len(codes) - 1} codes in {text!r} is repeated in {len(rules)} rules ({listed(rules)}); "
            "name it once as a code set"
        )
        out.append(Finding(rule_id(at), CODES, where(at, span, message)))
    return out
