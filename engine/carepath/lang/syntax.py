"""The condition language's syntax tree (quantities, comparisons, flags, and/or/not) and the
transformations of a tree: canonical text, negation normal form, the literals and what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

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
