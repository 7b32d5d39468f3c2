"""Compile checked pathways two ways: durable-rules rulesets (production) and a pure-Python reference."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from . import lang
from .lang import And, Cmp, Const, Enum, Expr, Flag, Not, Or, Present, Truth

Json = dict[str, Any]
_DR_OP = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
TRUE: Json = {"cp": 1}
FALSE: Json = {"cp": 0}


def to_durable(e: Expr) -> Json:
    """An NNF expression as a durable-rules condition (TRUE-only semantics: an absent key never matches)."""
    if isinstance(e, And):
        return {"$and": [to_durable(i) for i in e.items]}
    if isinstance(e, Or):
        return {"$or": [to_durable(i) for i in e.items]}
    if isinstance(e, Cmp):
        key = e.num.key
        if e.op == "==":
            return {key: e.value}
        if e.op == "!=":
            return {"$or": [{"$lt": {key: e.value}}, {"$gt": {key: e.value}}]}
        return {_DR_OP[e.op]: {key: e.value}}
    if isinstance(e, Enum):
        opts = [{e.field: v} for v in sorted(e.values)]
        if not opts:
            return FALSE
        return opts[0] if len(opts) == 1 else {"$or": opts}
    if isinstance(e, (Flag, Present)):
        return {e.key: int(e.value)}
    if isinstance(e, Const):
        return TRUE if e.value else FALSE
    raise TypeError(f"not in negation normal form: {e!r}")


def fact_tests(conditions: list[Expr]) -> dict[str, frozenset[object] | None]:
    """Each fact key the conditions read, with the values their patterns can match (None: any).

    durable-rules walks every property of a posted fact at each alpha node it reaches, so a
    property no pattern can match (a flag that is 0 where every rule tests it for 1) only costs
    time: Engine._post leaves such properties out. Numbers are always kept (comparisons).
    """
    tests: dict[str, set[object] | None] = {}
    for cond in conditions:
        for lit in lang.literals(lang.nnf(cond)):
            values: set[object] | None
            if isinstance(lit, Cmp):
                key, values = lit.num.key, None
            elif isinstance(lit, Enum):
                key, values = lit.field, set(lit.values)
            else:
                key, values = lit.key, {int(lit.value)}
            if key not in tests:
                tests[key] = values
            else:
                known = tests[key]
                tests[key] = None if known is None or values is None else known | values
    return {k: None if v is None else frozenset(v) for k, v in tests.items()}


_ruleset_counter = itertools.count(1)


def _size(e: Expr) -> int:
    return 1 + sum(_size(i) for i in e.items) if isinstance(e, (And, Or)) else 1


def _largest_compound(e: Expr) -> Expr | None:
    """The largest AND/OR strictly below the root (the next sub-condition to factor out)."""
    best: Expr | None = None
    stack = list(e.items) if isinstance(e, (And, Or)) else []
    while stack:
        x = stack.pop()
        if isinstance(x, (And, Or)):
            if best is None or _size(x) > _size(best):
                best = x
            stack.extend(x.items)
    return best


def _replace(e: Expr, old: Expr, new: Expr) -> Expr:
    if e is old:
        return new
    if isinstance(e, And):
        return And(tuple(_replace(i, old, new) for i in e.items), e.span)
    if isinstance(e, Or):
        return Or(tuple(_replace(i, old, new) for i in e.items), e.span)
    return e


def rule_pattern(cond: Expr, subs: list[tuple[str, Expr]]) -> Json:
    """The durable-rules pattern for one rule.

    durable-rules caps a pattern at 32 nested expressions. A condition over the cap has
    its largest sub-conditions factored out, one at a time, into derived facts
    (``x_N`` = 1 when the sub-condition is TRUE, 0 when FALSE, absent when unknown),
    appended to ``subs`` for the deriver; Kleene truth is kept because the NNF only
    tests them for TRUE.
    """
    n = lang.nnf(cond)
    while True:
        pattern = to_durable(n)
        if _fits(pattern):
            return pattern
        target = _largest_compound(n)
        if target is None:
            return pattern
        key = f"x_{len(subs)}"
        subs.append((key, target))
        n = _replace(n, target, Flag("sub", key))


def _fits(pattern: Json) -> bool:
    """Whether durable-rules accepts the pattern as one rule (it caps nested expressions).

    The probe ruleset is deleted at once: durable-rules has a fixed table of 131,071 ruleset
    handles per process, and every compiled rule is probed.
    """
    import json

    import durable_rules_engine as dre

    name = f"carepath_probe_{next(_ruleset_counter)}"
    try:
        handle = dre.create_ruleset(name, json.dumps({"r": {"all": [{"m": pattern}]}}))
    except dre.error:
        return False
    dre.delete_ruleset(handle)
    return True


def durable_ruleset(conditions: list[Expr], subs: list[tuple[str, Expr]]) -> tuple[str, Json]:
    """A ruleset with rule ``r{k}`` for condition k, plus a catch-all so no assertion goes unhandled.

    The engine reads which rules fired from durable-rules' action queue (Engine._post), so
    the actions themselves do nothing.
    """
    name = f"carepath_{next(_ruleset_counter)}"
    rules: Json = {}
    for k, cond in enumerate(conditions):
        rules[f"r{k}"] = {"all": [{"m": rule_pattern(cond, subs)}], "run": _noop}
    rules["catch_all"] = {"all": [{"m": TRUE}], "run": _noop}
    return name, {name: rules}


def _noop(c: Any) -> None:
    return None


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """A short name for each fact key a ruleset reads (``k0``, ``k1``, ... in sorted order).

    Fact keys are descriptive and long (``on_A10BD07_A10BD08_...``: up to ~250 characters), and
    durable-rules parses the posted fact's JSON, hashes every property name and writes the whole
    fact into the message of every rule that fires, so every character is paid for many times a
    case. Only the ruleset and the fact posted to it use these names; nothing outside the engine
    sees them.
    """
    return {k: f"k{i}" for i, k in enumerate(sorted(set(keys)))}


def rename(pattern: Any, names: Mapping[str, str]) -> Any:
    """A durable-rules pattern with its fact keys renamed (operators, ``$``-keys, stay)."""
    if isinstance(pattern, list):
        return [rename(p, names) for p in pattern]
    if isinstance(pattern, dict):
        return {k if k.startswith("$") else names.get(k, k): rename(v, names) for k, v in pattern.items()}
    return pattern


def renamed_ruleset(definition: Json, names: Mapping[str, str]) -> Json:
    """A durable_ruleset definition whose patterns read the facts under short_names."""
    return {
        name: {rule: {**body, "all": [{"m": rename(p["m"], names)} for p in body["all"]]} for rule, body in rules.items()}
        for name, rules in definition.items()
    }


# ---------------------------------------------------------------- generated code for the hot path


def _truth_source(e: Expr, consts: dict[str, object]) -> str:
    """A Python expression, over ``g`` (the facts' get), that is True exactly when the NNF
    expression `e` is TRUE in Kleene logic (False when it is false or unknown). Built from the
    AST's own values (numbers by repr, texts as named constants): never from pathway text."""
    if isinstance(e, And):
        return "(" + " and ".join(_truth_source(i, consts) for i in e.items) + ")"
    if isinstance(e, Or):
        return "(" + " or ".join(_truth_source(i, consts) for i in e.items) + ")"
    if isinstance(e, Cmp):
        if e.op not in ("<", "<=", ">", ">=", "==", "!="):
            raise TypeError(f"unknown comparison {e.op!r}")
        return f"((v := g({e.num.key!r})) is not None and v {e.op} {float(e.value)!r})"
    if isinstance(e, Enum):
        name = f"E{len(consts)}"
        consts[name] = frozenset(e.values)
        return f"(g({e.field!r}) in {name})"
    if isinstance(e, Flag):
        return f"bool(g({e.key!r}))" if e.value else f"((v := g({e.key!r})) is not None and not v)"
    if isinstance(e, Present):
        return f"bool(g({e.key!r}))" if e.value else f"(not g({e.key!r}))"
    if isinstance(e, Const):
        return repr(bool(e.value))
    raise TypeError(f"not in negation normal form: {e!r}")


def holds(e: Expr) -> Callable[[lang.Facts], bool]:
    """Is `e` TRUE for these facts? One generated function (the reference closures, which
    dispatch per node and carry all three truth values, took 4-5 times as long); the
    differential tests hold it to ``reference``."""
    consts: dict[str, object] = {}
    body = _truth_source(lang.nnf(e), consts)
    return cast(Callable[[lang.Facts], bool], _generate(f"def holds(f):\n    g = f.get\n    return {body}\n", "holds", consts))


def fact_builder(
    any_keys: tuple[str, ...],
    valued: tuple[tuple[str, frozenset[object]], ...],
    subs: list[tuple[str, Expr]],
    extra: dict[str, object],
    names: Mapping[str, str],
) -> Callable[[lang.Facts], dict[str, object]]:
    """The fact durable-rules is given for a case: the numbers under `any_keys` that are known, the
    `valued` keys whose value some pattern tests for, 1 for each TRUE sub-condition, and `extra`,
    each under its name in `names` (short_names; `extra` as given); straight-line generated code,
    one statement per key (Engine._post)."""
    consts: dict[str, object] = {}
    lines = ["def build(f):", "    g = f.get", "    d = {}"]
    for k in any_keys:
        lines += [f"    v = g({k!r})", f"    if v is not None: d[{names[k]!r}] = v"]
    for k, want in valued:
        if want and all(type(w) in (int, str) for w in want):  # a literal tuple: no global to look up
            wanted = "(" + "".join(f"{w!r}, " for w in sorted(want, key=repr)) + ")"  # None is never in it
            lines.append(f"    if (v := g({k!r})) in {wanted}: d[{names[k]!r}] = v")
            continue
        name = f"W{len(consts)}"
        consts[name] = want
        lines += [f"    v = g({k!r})", f"    if v is not None and v in {name}: d[{names[k]!r}] = v"]
    for key, e in subs:
        lines.append(f"    if {_truth_source(lang.nnf(e), consts)}: d[{names[key]!r}] = 1")
    for k, value in extra.items():
        lines.append(f"    d[{k!r}] = {value!r}")
    lines.append("    return d")
    return cast(Callable[[lang.Facts], dict[str, object]], _generate("\n".join(lines) + "\n", "build", consts))


def _generate(source: str, name: str, consts: dict[str, object]) -> Callable[..., object]:
    namespace: dict[str, object] = {"__builtins__": {"bool": bool}, **consts}
    exec(compile(source, f"<carepath generated {name}>", "exec"), namespace)  # keys by repr, texts as constants: no pathway text runs
    return cast(Callable[..., object], namespace[name])


# ---------------------------------------------------------------- reference evaluator

Program = Callable[[lang.Facts], Truth]


def reference(e: Expr) -> Program:
    """Kleene evaluation of the original AST (not the NNF), compiled to closures."""
    if isinstance(e, Cmp):
        key, value, test = e.num.key, e.value, lang._CMP[e.op]

        def cmp(f: lang.Facts) -> Truth:
            v = f.get(key)
            return None if v is None else test(float(v), value)  # type: ignore[arg-type]

        return cmp
    if isinstance(e, Enum):
        fld, values = e.field, e.values

        def enum(f: lang.Facts) -> Truth:
            v = f.get(fld)
            return None if v is None else v in values

        return enum
    if isinstance(e, Flag):
        key, want = e.key, e.value

        def flag(f: lang.Facts) -> Truth:
            v = f.get(key)
            return None if v is None else bool(v) == want

        return flag
    if isinstance(e, Present):
        key, want = e.key, e.value
        return lambda f: bool(f.get(key)) == want
    if isinstance(e, Not):
        inner = reference(e.item)

        def neg(f: lang.Facts) -> Truth:
            t = inner(f)
            return None if t is None else not t

        return neg
    if isinstance(e, And):
        parts = [reference(i) for i in e.items]

        def conj(f: lang.Facts) -> Truth:
            return lang.all3(p(f) for p in parts)

        return conj
    if isinstance(e, Or):
        parts = [reference(i) for i in e.items]

        def disj(f: lang.Facts) -> Truth:
            return lang.any3(p(f) for p in parts)

        return disj
    assert isinstance(e, Const)
    value = e.value
    return lambda f: value


def reasoner(e: Expr, vocab: lang.Vocabulary) -> Callable[[lang.Facts], list[str]]:
    """``lang.true_literals`` then ``lang.describe``, compiled: the words for what made a TRUE
    expression (in NNF) true. One walk that evaluates and explains together, without dispatching
    on node types for every case."""
    explain = _explainer(e, vocab)

    def words(f: lang.Facts) -> list[str]:
        return explain(f) or []

    return words


def _explainer(e: Expr, vocab: lang.Vocabulary) -> Callable[[lang.Facts], list[str] | None]:
    """The words for what makes `e` TRUE, or None when it is not TRUE (false or unknown).

    An AND is TRUE when every item is (its words are theirs, in order); an OR when some item is
    (the first such item's words): exactly true_literals' choices on a TRUE expression.
    """
    if isinstance(e, And):
        parts = [_explainer(i, vocab) for i in e.items]

        def every(f: lang.Facts) -> list[str] | None:
            out: list[str] = []
            for p in parts:
                w = p(f)
                if w is None:
                    return None
                out.extend(w)
            return out

        return every
    if isinstance(e, Or):
        alts = [_explainer(i, vocab) for i in e.items]

        def first(f: lang.Facts) -> list[str] | None:
            for p in alts:
                w = p(f)
                if w is not None:
                    return w
            return None

        return first
    holds = reference(e)
    if isinstance(e, (Const, Not)):  # true or not, they name no literal
        return lambda f: [] if holds(f) is True else None
    say = lang.describer(e, vocab)
    return lambda f: [say(f)] if holds(f) is True else None
