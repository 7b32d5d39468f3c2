"""Validate pathways: structure by pydantic, then the semantic checks a committee needs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import lang
from .errors import Diagnostic, PathwayError
from .lang import And, Cmp, Const, Enum, Expr, Flag, Or, Present, Vocabulary
from .load import Located, YamlPath, load_file, load_text
from .model import Dictionary, MedicationRec, Pathway, ReferralRec, Rule, TestRec
from .recommendations import BLOCKS, STARTS, atc_overlap

DICTIONARY_FILE = "dictionary.yaml"


@dataclass(frozen=True)
class CheckedRule:
    index: int
    rule: Rule
    when: Expr
    condition: Expr  # applies_to AND when
    when_nnf: Expr = field(init=False, compare=False)
    reads: tuple[tuple[str, str, str], ...] = field(init=False, compare=False)  # (name, fact key, kind)
    bodies: tuple[dict[str, Any], ...] = field(init=False, compare=False)  # the `then` items as plain dicts (as decisions show them)
    essential: tuple[bool, ...] = field(init=False, compare=False)  # per `then` item: a test the conflict policy never suppresses
    stable: tuple[bool, ...] = field(init=False, compare=False)  # per `then` item: an alert saying the patient is stable
    read_keys: tuple[str, ...] = field(init=False, compare=False)  # the fact keys its condition reads
    memo: dict[tuple[object, ...], Any] = field(init=False, compare=False, repr=False)  # decide(): values read -> reason

    def __post_init__(self) -> None:
        # precomputed once: decide() uses them for every decision
        object.__setattr__(self, "when_nnf", lang.nnf(self.when))
        object.__setattr__(self, "reads", lang.reads(self.when))
        object.__setattr__(self, "bodies", tuple(r.model_dump(exclude_none=True, exclude={"essential", "stable"}) for r in self.rule.then))
        object.__setattr__(self, "stable", tuple(bool(getattr(r, "stable", None)) for r in self.rule.then))
        object.__setattr__(self, "essential", tuple(bool(getattr(r, "essential", None)) for r in self.rule.then))
        object.__setattr__(self, "read_keys", tuple(dict.fromkeys(key for _, key, _ in self.reads)))
        object.__setattr__(self, "memo", {})


@dataclass(frozen=True)
class CheckedPathway:
    """A pathway that passed validation, with its parsed conditions and merged vocabulary."""

    model: Pathway
    file: str
    source: str
    sha256: str
    vocab: Vocabulary
    applies: Expr
    rules: tuple[CheckedRule, ...]
    invariants: tuple[tuple[int, Expr], ...]

    @property
    def id(self) -> str:
        return self.model.id

    @cached_property
    def identity(self) -> dict[str, str]:
        """How a decision names this pathway: id, version and content hash."""
        return {"id": self.id, "version": self.version, "sha256": self.sha256}

    @cached_property
    def decide_cache(self) -> dict[int, Any]:
        """decide()'s per-rule preparations, made on a rule's first firing (by the pathway's place in the engine, then rule index)."""
        return {}

    @cached_property
    def citation_texts(self) -> dict[str, str]:
        """Each citation key as the text a decision shows."""
        return {k: f"{c.guideline} ({c.year}), {c.section}" for k, c in self.model.citations.items()}

    @property
    def version(self) -> str:
        return self.model.version

    def info(self, file: str | None = None, source: bool = False) -> dict[str, str]:
        """How PathwayService describes this pathway (the pathway-info shape, codec.PATHWAY_INFO_KEYS):
        id, version, sha256, title, ``file`` (default: the file's name, never the server's path to
        it) and, with ``source``, its text."""
        out = {**self.identity, "title": self.model.title, "file": Path(self.file).name if file is None else file}
        if source:
            out["source"] = self.source
        return out


# ---------------------------------------------------------------- structure


def _real_path(data: Any, loc: tuple[Any, ...]) -> YamlPath:
    """Map a pydantic error location onto the YAML path (dropping union tags like 'medication')."""
    out: list[str | int] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif isinstance(part, str) and isinstance(cur, dict) and part not in cur:
            # a missing field or a discriminator tag; keep real missing fields
            if part in {"function-after", "function-before"} or part[:1].isupper() or "[" in part:
                continue
            if isinstance(cur.get("kind"), str) and part == cur.get("kind"):
                continue
            out.append(part)
            cur = None
        else:
            continue
    return tuple(out)


_PATTERN_HELP = {
    "atc": "is not an ATC code or class prefix (e.g. C09AA)",
    "version": "is not a semantic version (e.g. 1.2.0)",
    "id": "is not a valid id (lowercase, dotted for rules: e.g. htn.crisis.bp)",
    "code": "is not a dictionary name (lowercase letters, digits, _)",
}


def _structure_errors(loc: Located, exc: ValidationError) -> list[Diagnostic]:
    diags = []
    for err in exc.errors():
        path = _real_path(loc.data, tuple(err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        last = path[-1] if path else ""
        if err["type"] == "string_pattern_mismatch" and last in _PATTERN_HELP:
            msg = f"{err['input']!r} {_PATTERN_HELP[str(last)]}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (not part of the pathway format)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        diags.append(loc.diag(path, msg))
    return diags


def load_vocabulary(path: Path) -> Vocabulary:
    return _vocabulary(load_file(path, str(path)))


def vocabulary_text(text: str, name: str) -> Vocabulary:
    """The vocabulary of a dictionary file's text (raises PathwayError)."""
    return _vocabulary(load_text(text, name))


def _vocabulary(loc: Located) -> Vocabulary:
    try:
        d = Dictionary.model_validate(loc.data)
    except ValidationError as exc:
        raise PathwayError(_structure_errors(loc, exc)) from None
    diags: list[Diagnostic] = []
    vocab = merge_vocabulary(Vocabulary({}, frozenset()), d, loc, (), diags)
    if diags:
        raise PathwayError(diags)
    return vocab


def merge_vocabulary(base: Vocabulary, add: Dictionary, loc: Located, at: YamlPath, diags: list[Diagnostic]) -> Vocabulary:
    """``base`` with a dictionary block added (the shared dictionary, or a pathway's own ``dictionary:``
    at ``at``): observations, findings, code sets, definitions, target profiles and site capabilities.
    Problems go to ``diags``, located in ``loc``."""
    obs = dict(base.observations)
    for code, od in add.observations.items():
        obs[code] = lang.ObsDef(
            code=code,
            unit=od.unit,
            lo=od.range[0],
            hi=od.range[1],
            loinc=tuple(od.loinc),
            label=od.label or code,
            conversions={u: (c.factor, c.offset) for u, c in od.conversions.items()},
            decimals=od.decimals,
            current=od.current,
        )
    for name in add.code_sets:
        if name in base.code_sets:
            diags.append(loc.diag((*at, "code_sets", name), f"code set {name!r} is already in the shared dictionary"))
    sets = {**base.code_sets, **_code_sets(add, base, loc, at, diags)}
    for name in add.site_capabilities:
        if name in base.capabilities:
            diags.append(loc.diag((*at, "site_capabilities", name), f"site capability {name!r} is already in the shared dictionary"))
    vocab = Vocabulary(
        obs,
        base.findings | frozenset(add.findings),
        dict(base.definitions),
        sets,
        dict(base.targets),
        {**base.capabilities, **add.site_capabilities},
        add.visit_reading or base.visit_reading,
    )
    defs = _definitions(add.definitions, vocab, loc, (*at, "definitions"), diags)
    vocab = replace(vocab, definitions=defs, shared_texts={**base.shared_texts, **add.definitions})
    targets = dict(base.targets)
    for name, tp in add.target_profiles.items():
        tpath: YamlPath = (*at, "target_profiles", name)
        if name in base.targets:
            diags.append(loc.diag(tpath, f"target profile {name!r} is already in the shared dictionary"))
            continue
        rows: list[tuple[Expr | None, Expr]] = []
        for i, row in enumerate(tp.targets):
            rpath: YamlPath = (*tpath, "targets", i)
            last = i == len(tp.targets) - 1
            if (row.for_ is None) != last:
                why = "the last row is for everyone else: leave out its 'for'" if last else "only the last row may leave out 'for'"
                diags.append(loc.diag(rpath, why))
            who = None if row.for_ is None else _parse(loc, (*rpath, "for"), row.for_, vocab, diags)
            goal = _parse(loc, (*rpath, "target"), row.target, vocab, diags)
            if goal is not None and (row.for_ is None or who is not None):
                rows.append((who, goal))
        if len(rows) == len(tp.targets):
            texts = tuple((row.for_, row.target) for row in tp.targets)
            targets[name] = lang.TargetDef(name, tp.label, tuple(rows), texts, tp.citation or "")
    return replace(vocab, targets=targets)


class _SetProblem(Exception):
    """A code set whose members cannot be worked out; ``message`` None: a set it includes is the one at fault."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message)
        self.message = message


def _code_sets(add: Dictionary, base: Vocabulary, loc: Located, at: YamlPath, diags: list[Diagnostic]) -> dict[str, lang.CodeSetDef]:
    """The dictionary block's code sets with their members worked out: each set's codes checked
    against its system, then its includes followed (sets of the same system, no cycles)."""
    known = {n: c.system for n, c in base.code_sets.items()} | {n: c.system for n, c in add.code_sets.items()}
    pattern = {"atc": lang.ATC_CODE, "icd10": lang.ICD_CODE}

    def members(name: str, trail: tuple[str, ...]) -> set[str]:
        if name in base.code_sets:
            return set(base.code_sets[name].codes)
        cs = add.code_sets[name]
        codes = set(cs.codes)
        for inc in cs.includes:
            own = len(trail) == 1  # a problem of this set's own list, not of a set it includes
            if inc not in known:
                raise _SetProblem(f"unknown code set {inc!r}" + lang.did_you_mean(inc, known) if own else None)
            if inc in trail:
                raise _SetProblem(f"code set {trail[0]!r} includes itself (through {' -> '.join((*trail, inc))})")
            if known[inc] != cs.system:
                raise _SetProblem(f"code set {inc!r} holds {known[inc].upper()} codes, not {cs.system.upper()}" if own else None)
            codes |= members(inc, (*trail, inc))
        return codes

    out: dict[str, lang.CodeSetDef] = {}
    for name, cs in add.code_sets.items():
        bad = [j for j, c in enumerate(cs.codes) if not pattern[cs.system].match(c)]
        for j in bad:
            diags.append(loc.diag((*at, "code_sets", name, "codes", j), f"{cs.codes[j]!r} is not an {cs.system.upper()} code or prefix"))
        try:
            got = members(name, (name,))
        except _SetProblem as problem:
            if problem.message is not None:
                diags.append(loc.diag((*at, "code_sets", name, "includes"), problem.message))
            continue
        if not bad:
            out[name] = lang.CodeSetDef(name, cs.system, cs.label, tuple(sorted(got)), tuple(cs.includes), cs.source or "")
    return out


def _definitions(texts: dict[str, str], vocab: Vocabulary, loc: Located, at: YamlPath, diags: list[Diagnostic]) -> dict[str, Expr]:
    """Named conditions, each parsed with the ones above it (and the vocabulary's own) in scope."""
    defs: dict[str, Expr] = dict(vocab.definitions)
    reserved = set(vocab.observations) | vocab.findings | set(lang.NUMERIC_FIELDS) | set(lang.ENUM_FIELDS) | lang.CALLS | lang.KEYWORDS
    reserved |= {"pregnant", "true", "false", "everyone"}
    for name, text in texts.items():
        if name in reserved:
            diags.append(loc.diag((*at, name), f"definition name {name!r} is already a name in the condition language"))
            continue
        if name in vocab.definitions:
            diags.append(loc.diag((*at, name), f"definition {name!r} is already in the shared dictionary"))
            continue
        d = _parse(loc, (*at, name), text, replace(vocab, definitions=dict(defs)), diags)
        if d is not None:
            defs[name] = d
    return defs


# ---------------------------------------------------------------- satisfiability

_MAX_TERMS = 2048


def _dnf(e: Expr) -> list[list[lang.Literal]] | None:
    """Disjunctive normal form of an NNF expression; None when it would be too large."""
    if isinstance(e, Const):
        return [[]] if e.value else []
    if isinstance(e, Or):
        out: list[list[lang.Literal]] = []
        for i in e.items:
            d = _dnf(i)
            if d is None:
                return None
            out.extend(d)
            if len(out) > _MAX_TERMS:
                return None
        return out
    if isinstance(e, And):
        acc: list[list[lang.Literal]] = [[]]
        for i in e.items:
            d = _dnf(i)
            if d is None or len(acc) * len(d) > _MAX_TERMS:
                return None
            acc = [a + b for a in acc for b in d]
        return acc
    assert not isinstance(e, lang.Not)
    return [[e]]


def _domain(num: lang.Num, vocab: Vocabulary) -> tuple[float, float]:
    code = num.code
    if num.kind in ("obs", "prev", "rise", "rise_pct", "srise", "srise_pct") and code in vocab.observations:
        od = vocab.observations[str(code)]
        if num.kind in ("rise", "srise"):
            return od.lo - od.hi, od.hi - od.lo
        if num.kind in ("rise_pct", "srise_pct"):
            return -100.0, (100.0 * (od.hi - od.lo) / od.lo if od.lo > 0 else math.inf)
        return od.lo, od.hi
    if num.kind == "field":
        return lang.NUMERIC_FIELDS[str(num.arg)]
    if num.kind == "count":
        return 0.0, float(len(num.arg))
    if num.kind == "after":  # a reading before the start is negative
        return -math.inf, math.inf
    return 0.0, math.inf


def _consistent(term: list[lang.Literal], vocab: Vocabulary) -> bool:
    bounds: dict[str, list[float | bool]] = {}  # key -> [lo, lo_strict, hi, hi_strict]
    present: dict[str, bool] = {}
    flags: dict[str, tuple[str, str, bool]] = {}
    enums: dict[str, frozenset[str]] = {}

    def known(pkey: str, value: bool = True) -> bool:
        """Record that a value is (not) on record; False when the term already said otherwise."""
        return present.setdefault(pkey, value) == value

    for lit in term:
        if isinstance(lit, Cmp):
            key = lit.num.key
            needs = lit.num.code if lit.num.kind != "field" else str(lit.num.arg)
            if needs is not None and not known(f"h_{needs}"):
                return False  # a comparison needs the value on record
            lo, hi = _domain(lit.num, vocab)
            b = bounds.setdefault(key, [lo, False, hi, False])
            v = lit.value
            if lit.num.integer:
                if lit.op == ">":
                    v, op = math.floor(v) + 1, ">="
                elif lit.op == "<":
                    v, op = math.ceil(v) - 1, "<="
                else:
                    op = lit.op
            else:
                op = lit.op
            if op == "==":
                ops = [(">=", v), ("<=", v)]
            elif op == "!=":
                continue
            else:
                ops = [(op, v)]
            for o, val in ops:
                if o in (">", ">="):
                    strict = o == ">"
                    if val > b[0] or (val == b[0] and strict):
                        b[0], b[1] = val, strict
                else:
                    strict = o == "<"
                    if val < b[2] or (val == b[2] and strict):
                        b[2], b[3] = val, strict
            if b[0] > b[2] or (b[0] == b[2] and (b[1] or b[3])):
                return False
        elif isinstance(lit, Present):
            if not known(lit.key, lit.value):
                return False
        elif isinstance(lit, Enum):
            cur = enums.get(lit.field, lit.values) & lit.values
            if not cur or not known(f"h_{lit.field}"):
                return False
            enums[lit.field] = cur
        elif isinstance(lit, Flag):
            if lit.kind == "pregnant" and not known("h_pregnant"):
                return False
            prev = flags.get(lit.key)
            if prev is not None and prev[2] != lit.value:
                return False
            flags[lit.key] = (lit.kind, lit.arg, lit.value)
    # prefix implications: taking C09AA implies taking C09A; a diagnosis likewise
    for (k1, a1, v1), (k2, a2, v2) in itertools.permutations(flags.values(), 2):
        if k1 == k2 and k1 in ("dx", "on") and v1 and not v2 and all(x.startswith(tuple(a2.split("|"))) for x in a1.split("|")):
            return False
    return True


def satisfiable(e: Expr, vocab: Vocabulary) -> bool:
    """Whether some case makes ``e`` TRUE; errs towards True when the check is too large."""
    d = _dnf(lang.nnf(e))
    if d is None:
        return True
    return any(_consistent(t, vocab) for t in d)


# ---------------------------------------------------------------- semantic checks


def _contradiction(r1: Rule, r2: Rule) -> str | None:
    for x, y in itertools.product(r1.then, r2.then):
        if isinstance(x, MedicationRec) and isinstance(y, MedicationRec) and atc_overlap(x.atc, y.atc):
            acts = {x.action, y.action}
            if acts & STARTS and acts & BLOCKS:
                return f"{x.action} {x.atc} vs {y.action} {y.atc}"
        if isinstance(x, ReferralRec) and isinstance(y, ReferralRec) and x.direction != y.direction:
            return "up-referral vs down-referral"
    return None


def _parse(loc: Located, path: YamlPath, text: str, vocab: Vocabulary, diags: list[Diagnostic]) -> Expr | None:
    try:
        expr, errs = lang.parse(text, vocab)
    except lang.ParseError as exc:
        diags.append(loc.diag(path, exc.message, exc.offset))
        return None
    for err in errs:
        diags.append(loc.diag(path, err.message, err.offset))
    return None if errs else expr


def _yaml_kind(v: object) -> str:
    if isinstance(v, list):
        return "list"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return "string" if isinstance(v, str) else type(v).__name__


def check_pathway(loc: Located, base: Vocabulary) -> tuple[CheckedPathway | None, list[Diagnostic]]:
    """Validate one loaded pathway; return it (if clean) and every diagnostic found."""
    if not isinstance(loc.data, dict):
        found = "nothing" if loc.data is None else f"a {_yaml_kind(loc.data)}"
        return None, [loc.diag((), f"a pathway file is a YAML mapping (id, version, title, status, applies_to, rules, ...); found {found}")]
    try:
        model = Pathway.model_validate(loc.data)
    except ValidationError as exc:
        return None, _structure_errors(loc, exc)
    diags: list[Diagnostic] = []
    for code in model.dictionary.observations:
        if code in base.observations:
            diags.append(loc.diag(("dictionary", "observations", code), f"observation {code!r} is already in the shared dictionary"))
    if model.dictionary.visit_reading is not None:
        diags.append(
            loc.diag(("dictionary", "visit_reading"), "visit_reading is the clinic's convention: set it once, in the shared dictionary")
        )
    vocab = merge_vocabulary(base, model.dictionary, loc, ("dictionary",), diags)
    vocab = replace(vocab, definitions=_definitions(model.definitions, vocab, loc, ("definitions",), diags))
    if model.applies_to.strip() == "everyone":  # a safety pathway: its rules run for every case
        applies: Expr | None = Const(True)
    else:
        applies = _parse(loc, ("applies_to",), model.applies_to, vocab, diags)
    for i, f in enumerate(model.emergency_findings):
        if f not in vocab.findings:
            diags.append(loc.diag(("emergency_findings", i), f"unknown finding {f!r}" + lang.did_you_mean(f, vocab.findings)))
    for i, o in enumerate(model.worse_is_higher):
        if o not in vocab.observations:
            diags.append(loc.diag(("worse_is_higher", i), f"unknown observation {o!r}" + lang.did_you_mean(o, vocab.observations)))
    rules: list[CheckedRule] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(model.rules):
        rp: YamlPath = ("rules", i)
        if rule.id in seen:
            diags.append(loc.diag((*rp, "id"), f"duplicate rule id {rule.id!r} (first at rules[{seen[rule.id]}])"))
        seen.setdefault(rule.id, i)
        if rule.citation not in model.citations:
            diags.append(
                loc.diag((*rp, "citation"), f"unknown citation {rule.citation!r}" + lang.did_you_mean(rule.citation, model.citations))
            )
        then: list[Any] = []
        for j, rec in enumerate(rule.then):
            if isinstance(rec, TestRec) and rec.code not in vocab.observations:
                diags.append(
                    loc.diag(
                        (*rp, "then", j, "code"),
                        f"unknown observation {rec.code!r}" + lang.did_you_mean(rec.code, vocab.observations),
                    )
                )
            if isinstance(rec, MedicationRec) and rec.atc[:1].islower():  # a code set: one recommendation per member
                cs = vocab.code_sets.get(rec.atc)
                if cs is None:
                    diags.append(loc.diag((*rp, "then", j, "atc"), lang.unknown_code(rec.atc, "ATC", vocab.code_sets)))
                    continue
                if cs.system != "atc":
                    diags.append(
                        loc.diag((*rp, "then", j, "atc"), f"code set {rec.atc!r} holds ICD-10 codes; a medication needs ATC codes")
                    )
                    continue
                then.extend(rec.model_copy(update={"atc": code}) for code in cs.codes)
            else:
                then.append(rec)
        if len(then) != len(rule.then):
            rule = rule.model_copy(update={"then": then})
        when = _parse(loc, (*rp, "when"), rule.when, vocab, diags)
        if when is None or applies is None:
            continue
        cond = when if rule.scope == "everyone" else lang.conj(applies, when)
        if not satisfiable(cond, vocab):
            diags.append(loc.diag((*rp, "when"), "this condition can never be true (together with applies_to)"))
            continue
        rules.append(CheckedRule(i, rule, when, cond))
    for a, b in itertools.combinations(rules, 2):
        why = _contradiction(a.rule, b.rule)
        if why and a.rule.priority == b.rule.priority and satisfiable(lang.conj(a.condition, b.condition), vocab):
            diags.append(
                loc.diag(
                    ("rules", b.index, "when"),
                    f"can fire together with rules[{a.index}] ({a.rule.id}) with a contradictory recommendation "
                    f"({why}); make the conditions exclusive or declare different priorities",
                )
            )
    invariants: list[tuple[int, Expr]] = []
    for i, inv in enumerate(model.invariants):
        if inv.citation is not None and inv.citation not in model.citations:
            diags.append(
                loc.diag(
                    ("invariants", i, "citation"),
                    f"unknown citation {inv.citation!r}" + lang.did_you_mean(inv.citation, model.citations),
                )
            )
        g = _parse(loc, ("invariants", i, "given"), inv.given, vocab, diags)
        if g is not None:
            invariants.append((i, g))
    if diags or applies is None:
        return None, diags
    checked = CheckedPathway(
        model=model,
        file=loc.file,
        source=loc.text,
        sha256=loc.sha256,
        vocab=vocab,
        applies=applies,
        rules=tuple(rules),
        invariants=tuple(invariants),
    )
    return checked, []


def pathway_files(paths: Sequence[Path | str]) -> list[Path]:
    """Expand directories into their pathway files (every *.yaml except the dictionary)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.glob("*.y*ml") if f.name != DICTIONARY_FILE and f.suffix in (".yaml", ".yml")))
        else:
            out.append(p)
    return out


def find_dictionary(files: Sequence[Path], default_dir: Path) -> Path:
    for f in files:
        cand = f.parent / DICTIONARY_FILE
        if cand.exists():
            return cand
    return default_dir / DICTIONARY_FILE


def check_set(locs: Sequence[Located], base: Vocabulary) -> tuple[list[CheckedPathway], list[Diagnostic]]:
    """Validate several pathways together: each alone, then ids unique across the set."""
    checked: list[CheckedPathway] = []
    diags: list[Diagnostic] = []
    ids: dict[str, str] = {}
    rule_ids: dict[str, str] = {}
    local_obs: dict[str, tuple[object, str]] = {}
    for loc in locs:
        cp, d = check_pathway(loc, base)
        diags.extend(d)
        if cp is None:
            continue
        for code, od in cp.model.dictionary.observations.items():
            prior = local_obs.setdefault(code, (od, cp.file))
            if prior[0] != od:  # one case is checked against every pathway's additions at once
                diags.append(loc.diag(("dictionary", "observations", code), f"observation {code!r} is defined differently in {prior[1]}"))
        if cp.id in ids:
            diags.append(loc.diag(("id",), f"pathway id {cp.id!r} is also used by {ids[cp.id]}"))
        ids.setdefault(cp.id, cp.file)
        for r in cp.rules:
            if r.rule.id in rule_ids:
                diags.append(loc.diag(("rules", r.index, "id"), f"rule id {r.rule.id!r} is also used in {rule_ids[r.rule.id]}"))
            rule_ids.setdefault(r.rule.id, cp.file)
        checked.append(cp)
    return checked, diags


def validate_paths(paths: Sequence[Path | str], default_dir: Path) -> tuple[list[CheckedPathway], list[Diagnostic]]:
    """Load and validate files and directories; collect every diagnostic rather than stopping at the first.
    (read_set, then validate_set: the service compiles exactly what this checks.)"""
    sources, unread = read_set(paths, default_dir)
    if sources is None:
        return [], unread
    checked, diags = validate_set(sources)
    return checked, sorted(unread + diags)


@dataclass(frozen=True)
class SourceSet:
    """A pathway set as the text it was read from (the dictionary and every pathway file, each as
    (display name, text)): read once, so that the same set can be compiled again without the files
    (e.g. by a process that replaces one that compiled it), whatever has happened on disk since."""

    dictionary: tuple[str, str]
    pathways: tuple[tuple[str, str], ...]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PathwayError([Diagnostic(str(path), 1, 1, "", f"not valid UTF-8: {exc.reason}")]) from None
    except OSError as exc:
        raise PathwayError([Diagnostic(str(path), 1, 1, "", f"cannot read: {exc.strerror}")]) from None


def read_set(paths: Sequence[Path | str], default_dir: Path) -> tuple[SourceSet | None, list[Diagnostic]]:
    """Read the dictionary and the pathway files of ``paths`` as text. A file that cannot be read is a
    diagnostic (the others are still read); None when there is no pathway file or the dictionary
    cannot be read."""
    files = pathway_files(paths)
    if not files:
        return None, [Diagnostic(str(paths[0]) if paths else ".", 1, 1, "", "no pathway files found")]
    dictionary = find_dictionary(files, default_dir)
    try:
        dictionary_text = _read(dictionary)
    except PathwayError as exc:
        return None, exc.diagnostics
    diags: list[Diagnostic] = []
    texts: list[tuple[str, str]] = []
    for f in files:
        try:
            texts.append((str(f), _read(f)))
        except PathwayError as exc:
            diags.extend(exc.diagnostics)
    return SourceSet((str(dictionary), dictionary_text), tuple(texts)), diags


def validate_set(sources: SourceSet) -> tuple[list[CheckedPathway], list[Diagnostic]]:
    """Validate a set read by read_set: the same checks as validate_paths, on the text in hand."""
    try:
        base = vocabulary_text(sources.dictionary[1], sources.dictionary[0])
    except PathwayError as exc:
        return [], exc.diagnostics
    diags: list[Diagnostic] = []
    locs: list[Located] = []
    for file, source in sources.pathways:
        try:
            locs.append(load_text(source, file))
        except PathwayError as exc:
            diags.extend(exc.diagnostics)
    checked, more = check_set(locs, base)
    return checked, sorted(diags + more)


def validate_source(text: str, file: str, base: Vocabulary) -> tuple[CheckedPathway | None, list[Diagnostic]]:
    """Validate pathway text (for the gRPC ValidatePathway call and editors)."""
    try:
        loc = load_text(text, file)
    except PathwayError as exc:
        return None, exc.diagnostics
    return check_pathway(loc, base)


def validate_pathways(paths: Sequence[Path | str] | None = None, *, strict: bool = False) -> tuple[list[CheckedPathway], list[Diagnostic]]:
    """Validate pathway files or directories (default: the bundled set) as ``carepath validate`` does.

    Returns the pathways that validated and every diagnostic, sorted: the errors, and the
    readability warnings of the pathways that validated (``strict``: as errors). When no diagnostic
    is an error, ``Engine(pathways)`` compiles them (``Engine.from_paths`` does both, raising
    PathwayError on an error).
    """
    from .readability import warnings
    from .settings import bundled_pathways

    checked, diags = validate_paths(list(paths) if paths else [bundled_pathways()], bundled_pathways())
    warned = warnings(checked)
    if strict:
        warned = [replace(w, severity="error") for w in warned]
    return checked, sorted(diags + warned)
