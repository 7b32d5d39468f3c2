"""What a condition means on a case's facts: its Kleene three-valued truth (``truth``, the one
reference evaluator), witnesses, and its reasons and staleness in words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from .syntax import SYMBOL, And, Cmp, Const, Enum, Expr, Flag, Literal, Not, Or, Present, Visits
from .vocabulary import Vocabulary

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
