"""The durable-rules backend (production): each pathway compiled into a durable-rules ruleset in one
host, and the case posted to it as one fact under short names, built by generated code.

Only this module imports durable-rules (``Engine(..., backend="durable")`` imports it, through
``backends.resolve``); the reference backend and the rest of carepath run without it.
"""

from __future__ import annotations

import itertools
import json
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import durable_rules_engine as _dre
import orjson
from durable.engine import Host

from .. import lang
from ..lang import And, Cmp, Const, Enum, Expr, Flag, Or, Present
from ..validate import CheckedPathway

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
    time: DurableSet.post leaves such properties out. Numbers are always kept (comparisons).
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
    name = f"carepath_probe_{next(_ruleset_counter)}"
    try:
        handle = _dre.create_ruleset(name, json.dumps({"r": {"all": [{"m": pattern}]}}))
    except _dre.error:
        return False
    _dre.delete_ruleset(handle)
    return True


def durable_ruleset(conditions: list[Expr], subs: list[tuple[str, Expr]]) -> tuple[str, Json]:
    """A ruleset with rule ``r{k}`` for condition k, plus a catch-all so no assertion goes unhandled.

    The backend reads which rules fired from durable-rules' action queue (DurableSet.post), so
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
    differential tests hold it to the reference evaluator (``lang.truth``)."""
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
    one statement per key (DurableSet.post)."""
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


# ---------------------------------------------------------------- the host and the posts

_SID = "case"  # the one durable-rules session of each ruleset (see DurableSet.post)
# Rules per durable-rules ruleset. Its network walk keeps the alpha nodes still to visit on a fixed
# stack of 64 (events.c MAX_STACK_SIZE): a case that matches more first-level tests at once than
# that is refused with error 303 (80 rules 'age >= k' and a patient of 90 do it). A pathway with
# more rules is compiled into several rulesets of at most CHUNK rules, each case posted to each.
CHUNK = 32
_RETRACT = orjson.dumps({"sid": _SID, "id": "case"}).decode()


class _SyncHost(Host):  # type: ignore[misc]
    """A durable-rules host without its background dispatch threads: all work is synchronous here."""

    def _run(self) -> None:
        return None


@dataclass
class _Ruleset:
    """One pathway, or a part of at most CHUNK of its rules, as compiled for durable-rules."""

    name: str
    handle: int  # the ruleset in durable-rules' C engine
    build: Callable[[lang.Facts], dict[str, object]]  # the fact posted for a case (fact_builder)
    valued: tuple[tuple[str, frozenset[object]], ...]  # keys posted only with a value some pattern tests
    names: dict[str, str]  # each fact key's name in the ruleset and the posted fact (short_names)
    enrols: Callable[[lang.Facts], bool]  # applies_to is TRUE (generated code: holds)
    everyone: bool  # some rule has scope everyone: the ruleset is asked whatever the enrolment
    offset: int = 0  # the pathway's index of this ruleset's first rule (its rule r0)


class DurableSet:
    """A pathway set compiled into durable-rules rulesets in one host. Not thread-safe (durable-rules
    is not): one per process, used by one thread."""

    def __init__(self, pathways: Sequence[CheckedPathway]) -> None:
        self._host = _SyncHost()
        self.rulesets: list[_Ruleset] = []  # every ruleset, in pathway order
        self._parts: list[list[_Ruleset]] = []  # each pathway's rulesets (one per CHUNK rules)
        for cp in pathways:
            everyone = any(r.rule.scope == "everyone" for r in cp.rules)
            enrols = holds(cp.applies)
            parts: list[_Ruleset] = []
            for offset in range(0, max(len(cp.rules), 1), CHUNK):
                conds = [r.condition for r in cp.rules[offset : offset + CHUNK]]
                subs: list[tuple[str, lang.Expr]] = []
                name, definition = durable_ruleset(conds, subs)
                tests = fact_tests(conds)  # sub-conditions are only ever tested for TRUE: 1 or absent
                names = short_names([*tests, *(k for k, _ in subs)])
                self._host.set_rulesets(renamed_ruleset(definition, names))
                handle = self._host.get_ruleset(name)._handle
                valued = tuple(sorted((k, v) for k, v in tests.items() if v is not None))
                numbers = tuple(sorted(k for k, v in tests.items() if v is None))
                build = fact_builder(numbers, valued, subs, {"sid": _SID, "id": "case", "cp": 1}, names)
                parts.append(_Ruleset(name, handle, build, valued, names, enrols, everyone, offset))
            self._parts.append(parts)
            self.rulesets += parts
        for rs in self.rulesets:  # rulesets register lazily on the first post: warm them up now
            self.post(rs, {})
        # durable-rules' ruleset handles are a fixed per-process table: give them back with the set
        weakref.finalize(self, _delete_rulesets, [rs.handle for rs in self.rulesets])

    def enrolled(self, index: int, facts: lang.Facts) -> bool:
        return self._parts[index][0].enrols(facts)

    def fire(self, index: int, facts: lang.Facts, enrolled: bool | None) -> list[int]:
        """Every rule's condition is ``applies_to AND when``, so a pathway the patient is not
        enrolled in (applies_to false or unknown) can fire nothing: durable-rules is not asked,
        unless some rule has scope everyone (``enrolled`` None: it is asked anyway)."""
        parts = self._parts[index]
        if enrolled is None or enrolled or parts[0].everyone:
            return [rs.offset + k for rs in parts for k in self.post(rs, facts)]
        return []

    @staticmethod
    def post(rs: _Ruleset, facts: lang.Facts) -> list[int]:
        """Assert the case as one fact, run every fired action, retract the fact.

        Every post goes to the same session (_SID) of the ruleset, left empty after each case:
        durable-rules makes a state fact for a session the first time it sees it and runs it
        through the whole network, so a fresh session per case (deleted after) made each post about
        1.5 times as dear. If anything goes wrong the session is deleted, so the next case starts
        from a new one.
        The loop is durable-rules' own action loop (Ruleset.do_actions) without its Python
        closure objects and JSON round trips: an action only needs the rule's name.
        """
        fact = rs.build(facts)  # a value no pattern tests for would only cost (fact_tests)
        fired: set[int] = set()
        done = False
        try:
            code, state = _dre.assert_fact(rs.handle, orjson.dumps(fact).decode())
            if code != 0:
                raise RuntimeError(f"durable-rules did not handle the case (code {code})")
            started = _dre.start_action_for_state(rs.handle, state)
            message = started[1] if started else None
            while message:
                name = message[2 : message.index('"', 2)]  # {"r12": {...}}: the rule that fired
                if name[0] == "r":
                    fired.add(int(name[1:]))
                message = _dre.complete_and_start_action(rs.handle, state)
            done = _dre.retract_fact(rs.handle, _RETRACT)[0] == 0
        finally:
            if not done:  # an error, or the fact still there: the next case gets a new session
                _dre.delete_state(rs.handle, _SID)
        return sorted(fired)


def _delete_rulesets(handles: list[int]) -> None:
    for handle in handles:
        _dre.delete_ruleset(handle)


class DurableBackend:
    name = "durable"

    def compile(self, pathways: Sequence[CheckedPathway]) -> DurableSet:
        return DurableSet(pathways)
