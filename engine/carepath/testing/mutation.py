"""Mutation suite: do the properties have teeth?

Defined faults ("mutants") are made in the pathway YAML data -- a threshold flipped or moved, a
contraindication rule dropped, a referral swapped up/down, an emergency rule removed or
downgraded, a citation dropped, a unit changed, a guard removed -- and each mutant must be
*killed*, in this order (the first that fails names the killer):

1. **validation**: ``carepath validate`` rejects the mutated pathway set;
2. **scenario**: a golden scenario (``tests/scenarios/<pathway>/*.yaml``, loaded with
   :mod:`carepath.scenarios`) evaluated with the mutated pathway set misses an expectation;
3. **invariant**: a built-in or YAML invariant fails in a short seeded Hypothesis search.

A survivor is listed with the reason it can survive: the operator's note, and whether its
behaviour differs at all from the unmutated pathways (on every scenario case and a seeded search
of generated cases). A survivor whose decisions never differ is *likely equivalent*; one whose
decisions differ shows a test gap, with the case that shows it.

The unmutated pathways must pass the same checks first, else the score means nothing.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ..errors import CaseError, PathwayError
from ..evaluate import Engine
from ..load import Located, load_text
from ..recommendations import BLOCKS, STARTS
from ..scenarios import Scenario, check, iter_scenarios
from ..settings import bundled_pathways
from ..validate import CheckedPathway, check_set, find_dictionary, load_vocabulary, pathway_files
from .runner import DEFAULT_SEED, check_engine, profile_settings
from .strategies import CaseSpace

Data = dict[str, Any]
Apply = Callable[[Data], None]

_CMP = re.compile(r"(?P<lhs>\b[a-z_]+(?:\([a-z_0-9, ]+\))?)\s*(?P<op>>=|<=|>|<)\s*(?P<num>\d+(?:\.\d+)?)")
_NEG = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
KINDS = ("validation", "scenario", "invariant")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    operator: str
    description: str
    if_survives: str
    apply: Apply = field(repr=False, compare=False)

    @property
    def pathway(self) -> str:
        return self.id.split(":", 1)[0]


@dataclass
class MutantResult:
    mutant: Mutant
    kind: str | None  # validation | scenario | invariant | None (survived)
    killer: str  # what killed it: "validate", the scenario "<pathway>/<name>", the invariant name; "" for a survivor
    detail: str  # the first failure message, or for a survivor why it survived
    seconds: float
    scenarios: list[str] = field(default_factory=list)  # every golden scenario the mutant fails
    invariant: str = ""  # the invariant that fails too, when searched (killed by it, or ``invariants_too``)

    @property
    def killed(self) -> bool:
        return self.kind is not None


@dataclass
class MutationReport:
    baseline_ok: bool
    baseline_detail: str
    results: list[MutantResult]
    scenarios: int = 0
    backend: str = "durable"
    seconds: float = 0.0
    invariants_too: bool = False

    @property
    def killed(self) -> int:
        return sum(1 for r in self.results if r.killed)

    @property
    def score(self) -> float:
        return self.killed / len(self.results) if self.results and self.baseline_ok else 0.0

    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if not r.killed]

    def by_pathway(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for r in self.results:
            k, n = out.get(r.mutant.pathway, (0, 0))
            out[r.mutant.pathway] = (k + r.killed, n + 1)
        return out

    def by_kind(self) -> Counter[str]:
        return Counter(r.kind or "survived" for r in self.results)

    def format(self) -> str:
        lines = [
            f"Mutation suite: {len(self.results)} mutants from {len({r.mutant.operator for r in self.results})} operators, "
            f"{self.scenarios} golden scenarios, invariants evaluated with the {self.backend} backend"
        ]
        if not self.baseline_ok:
            lines.append(f"BASELINE FAILS (the unmutated pathways must pass first): {self.baseline_detail}")
        for r in self.results:
            status = f"killed by {r.kind}" if r.kind else "SURVIVED"
            lines.append(f"  {status:<20} {r.mutant.id:<44} ({r.seconds:.1f}s)")
            lines.append(f"      {r.mutant.description}")
            if r.kind == "scenario":
                more = f" (+{len(r.scenarios) - 1} more)" if len(r.scenarios) > 1 else ""
                lines.append(f"      -> scenario {r.killer}{more}: {r.detail}")
            elif r.kind:
                lines.append(f"      -> {r.killer}: {r.detail}")
            if self.invariants_too and r.kind == "scenario":
                lines.append(f"      invariant search: {r.invariant or 'no violation found'}")
        lines.append("")
        lines.append(f"Mutation score: {self.killed}/{len(self.results)} killed = {self.score:.1%}  ({self.seconds:.0f}s)")
        for pid, (k, n) in sorted(self.by_pathway().items()):
            lines.append(f"  {pid:<14} {k}/{n} killed")
        kinds = self.by_kind()
        lines.append("  killed by: " + ", ".join(f"{k} {kinds.get(k, 0)}" for k in KINDS) + f"; survived {kinds.get('survived', 0)}")
        if self.invariants_too:
            searched = [r for r in self.results if r.kind != "validation"]
            alone = sum(1 for r in searched if r.invariant)
            lines.append(f"  invariants alone (searched on every mutant validation let through): {alone}/{len(searched)} killed")
        if self.survivors():
            lines.append("Survivors (and why they survive):")
            for r in self.survivors():
                lines.append(f"  - {r.mutant.id}: {r.mutant.description}")
                lines.append(f"      {r.detail}")
        return "\n".join(lines)


# ---------------------------------------------------------------- operators


def _rules(data: Data) -> list[Data]:
    rules = data.get("rules")
    return rules if isinstance(rules, list) else []


def _is(rule: Data, pred: Callable[[Data], bool]) -> bool:
    return any(isinstance(r, dict) and pred(r) for r in rule.get("then", []))


def _emergency(r: Data) -> bool:
    return r.get("kind") == "referral" and r.get("direction") == "up" and r.get("urgency") == "emergency"


def _block(r: Data) -> bool:
    return r.get("kind") == "medication" and r.get("action") in BLOCKS


def _start(r: Data) -> bool:
    return r.get("kind") == "medication" and r.get("action") in STARTS


def _up_non_emergency(r: Data) -> bool:
    return r.get("kind") == "referral" and r.get("direction") == "up" and r.get("urgency") != "emergency"


def _find(data: Data, pred: Callable[[Data], bool], nth: int = 0) -> int | None:
    hits = [i for i, rule in enumerate(_rules(data)) if _is(rule, pred)]
    return hits[nth] if len(hits) > nth else None


def _cmp_in(when: str, ops: Sequence[str]) -> re.Match[str] | None:
    return next((m for m in _CMP.finditer(when) if m.group("op") in ops), None)


Site = tuple[str, str, Apply]  # (description, if_survives, apply)


def _op_flip_threshold(kind: str, pred: Callable[[Data], bool], ops: Sequence[str], why: str) -> Callable[[Data, Data], list[Site]]:
    def find(data: Data, ctx: Data) -> list[Site]:
        for i, rule in enumerate(_rules(data)):
            if not _is(rule, pred):
                continue
            m = _cmp_in(str(rule.get("when", "")), ops)
            if m is None:
                continue
            new = f"{m.group('lhs')} {_NEG[m.group('op')]} {m.group('num')}"

            def apply(d: Data, i: int = i, m: re.Match[str] = m, new: str = new) -> None:
                w = str(d["rules"][i]["when"])
                d["rules"][i]["when"] = w[: m.start()] + new + w[m.end() :]

            return [(f"{rule['id']}: '{m.group(0)}' -> '{new}' ({kind})", why, apply)]
        return []

    return find


def _op_raise_threshold(data: Data, ctx: Data) -> list[Site]:
    for i, rule in enumerate(_rules(data)):
        if not _is(rule, _emergency):
            continue
        m = _cmp_in(str(rule.get("when", "")), (">=", ">"))
        if m is None:
            continue
        num = float(m.group("num"))
        new_num = f"{num * 1.25:g}"
        new = f"{m.group('lhs')} {m.group('op')} {new_num}"

        def apply(d: Data, i: int = i, m: re.Match[str] = m, new: str = new) -> None:
            w = str(d["rules"][i]["when"])
            d["rules"][i]["when"] = w[: m.start()] + new + w[m.end() :]

        why = "no built-in property knows the right threshold: needs a YAML invariant or a golden scenario just above the old one"
        return [(f"{rule['id']}: '{m.group(0)}' -> '{new}' (emergency threshold raised 25%)", why, apply)]
    return []


def _op_drop_rule(pred: Callable[[Data], bool], nth: int, what: str, why: str) -> Callable[[Data, Data], list[Site]]:
    def find(data: Data, ctx: Data) -> list[Site]:
        i = _find(data, pred, nth)
        if i is None:
            return []
        rid = _rules(data)[i]["id"]

        def apply(d: Data, rid: str = rid) -> None:
            d["rules"] = [r for r in d["rules"] if r.get("id") != rid]

        return [(f"drop rule {rid} ({what})", why, apply)]

    return find


def _op_findings_rule_drop(data: Data, ctx: Data) -> list[Site]:
    """An emergency rule stops reacting to one of its emergency findings, written in its `when` or
    in a definition it uses (the rewritten pathways name them: `danger_sign`)."""
    em = set(data.get("emergency_findings") or [])
    defs: dict[str, str] = {str(k): str(v) for k, v in (data.get("definitions") or {}).items()}

    def where(text: str, seen: frozenset[str] = frozenset()) -> tuple[str | None, str] | None:
        """(None, finding) if the text names a finding itself, else (definition, finding) of the first
        definition on the way that does."""
        names = re.findall(r"[a-z_][a-z0-9_]*", text)
        direct = sorted(set(names) & em)
        if direct:
            return None, direct[0]
        for n in names:
            if n in defs and n not in seen:
                got = where(defs[n], seen | {n})
                if got is not None:
                    return (got[0] or n), got[1]
        return None

    for i, rule in enumerate(_rules(data)):
        if not _is(rule, _emergency):
            continue
        found = where(str(rule.get("when", "")))
        if found is None:
            continue
        definition, finding = found

        def apply(d: Data, i: int = i, finding: str = finding, definition: str | None = definition) -> None:
            if definition is None:
                d["rules"][i]["when"] = re.sub(rf"\b{finding}\b", "false", str(d["rules"][i]["when"]))
            else:
                d["definitions"][definition] = re.sub(rf"\b{finding}\b", "false", str(d["definitions"][definition]))

        place = "" if definition is None else f" (in the definition {definition})"
        return [
            (
                f"{rule['id']}: the emergency finding {finding}{place} no longer triggers it",
                "caught by the emergency invariant unless the finding is missing from emergency_findings",
                apply,
            )
        ]
    return []


def _op_swap_direction(src: str) -> Callable[[Data, Data], list[Site]]:
    def find(data: Data, ctx: Data) -> list[Site]:
        for i, rule in enumerate(_rules(data)):
            for j, rec in enumerate(rule.get("then", [])):
                if isinstance(rec, dict) and rec.get("kind") == "referral" and rec.get("direction") == src:

                    def apply(d: Data, i: int = i, j: int = j) -> None:
                        rec = d["rules"][i]["then"][j]
                        if rec["direction"] == "up":
                            rec["direction"] = "down"
                            rec.pop("urgency", None)
                        else:
                            rec["direction"] = "up"
                            rec["urgency"] = "routine"

                    dst = "down" if src == "up" else "up"
                    why = (
                        "the conflict policy drops a referral from the wrong setting, so only a golden scenario "
                        "(or an 'always' invariant) sees the referral go missing"
                    )
                    return [(f"{rule['id']}: {src}-referral -> {dst}-referral", why, apply)]
        return []

    return find


def _op_downgrade_emergency(data: Data, ctx: Data) -> list[Site]:
    i = _find(data, _emergency)
    if i is None:
        return []
    rule = _rules(data)[i]

    def apply(d: Data, i: int = i) -> None:
        for rec in d["rules"][i]["then"]:
            if isinstance(rec, dict) and _emergency(rec):
                rec["urgency"] = "routine"

    return [
        (f"{rule['id']}: emergency -> routine up-referral", "needs an emergency finding or an 'always' invariant on its condition", apply)
    ]


def _op_citation(drop: bool) -> Callable[[Data, Data], list[Site]]:
    def find(data: Data, ctx: Data) -> list[Site]:
        if not _rules(data):
            return []
        rid = _rules(data)[0]["id"]

        def apply(d: Data) -> None:
            if drop:
                d["rules"][0].pop("citation", None)
            else:
                d["rules"][0]["citation"] = "no-such-guideline"

        what = "citation dropped" if drop else "citation points at no guideline"
        return [(f"{rid}: {what}", "validation must reject a rule without a valid citation", apply)]

    return find


def _op_change_unit(data: Data, ctx: Data) -> list[Site]:
    conv: dict[str, str] = ctx["conversions"]
    for i, rule in enumerate(_rules(data)):
        when = str(rule.get("when", ""))
        for m in _CMP.finditer(when):
            code = re.sub(r"^\w+\((\w+)\)$", r"\1", m.group("lhs"))
            unit = conv.get(code)
            rest = when[m.end() :].lstrip()
            if unit is None or (rest and not rest.startswith((")", "and", "or"))):
                continue

            def apply(d: Data, i: int = i, end: int = m.end(), unit: str = unit) -> None:
                w = str(d["rules"][i]["when"])
                d["rules"][i]["when"] = f"{w[:end]} {unit}{w[end:]}"

            why = "a unit change moves a threshold by a factor; caught only where a property or scenario pins that threshold"
            return [(f"{rule['id']}: '{m.group(0)}' -> '{m.group(0)} {unit}' (unit changed)", why, apply)]
    return []


def _op_setting_swap(data: Data, ctx: Data) -> list[Site]:
    for i, rule in enumerate(_rules(data)):
        if _is(rule, _emergency) and "setting == community" in str(rule.get("when", "")):

            def apply(d: Data, i: int = i) -> None:
                d["rules"][i]["when"] = str(d["rules"][i]["when"]).replace("setting == community", "setting == hospital", 1)

            why = "the conflict policy suppresses up-referrals from hospital; only a community emergency property sees it"
            return [(f"{rule['id']}: setting == community -> setting == hospital", why, apply)]
    return []


def _op_and_to_or(data: Data, ctx: Data) -> list[Site]:
    i = _find(data, _start)
    if i is None:
        return []
    rule = _rules(data)[i]
    if " and " not in str(rule.get("when", "")):
        return []

    def apply(d: Data, i: int = i) -> None:
        w = str(d["rules"][i]["when"])
        k = w.rfind(" and ")
        d["rules"][i]["when"] = w[:k] + " or " + w[k + 5 :]

    why = "a looser start condition is only wrong where a contraindication invariant or a scenario says so"
    return [(f"{rule['id']}: last 'and' -> 'or' (start condition loosened)", why, apply)]


def _op_drop_guard(data: Data, ctx: Data) -> list[Site]:
    guard = re.compile(r"\bnot (pregnant|allergic\([^)]*\)|diagnosed\([^)]*\))")
    for i, rule in enumerate(_rules(data)):
        if not _is(rule, _start):
            continue
        m = guard.search(str(rule.get("when", "")))
        if m is None:
            continue

        def apply(d: Data, i: int = i, m: re.Match[str] = m) -> None:
            w = str(d["rules"][i]["when"])
            d["rules"][i]["when"] = w[: m.start()] + "true" + w[m.end() :]

        why = (
            "the engine's safety net (no start on an allergy, avoid/stop beats start) can mask a dropped guard: "
            "then the mutant is equivalent for patients, and only a scenario on the rule's own output sees it"
        )
        return [(f"{rule['id']}: guard '{m.group(0)}' removed", why, apply)]
    return []


def _op_start_blocked_class(data: Data, ctx: Data) -> list[Site]:
    s = _find(data, _start)
    if s is None:
        return []
    rule = _rules(data)[s]
    own = [str(r["atc"]) for r in rule.get("then", []) if isinstance(r, dict) and _start(r)]
    # a class another rule avoids/stops that the start does not already overlap (else the mutant is a no-op)
    blocked = next(
        (
            str(r["atc"])
            for other in _rules(data)
            for r in other.get("then", [])
            if isinstance(r, dict) and _block(r) and not any(str(r["atc"]).startswith(o) or o.startswith(str(r["atc"])) for o in own)
        ),
        None,
    )
    if blocked is None:
        return []

    def apply(d: Data, s: int = s, blocked: str = blocked) -> None:
        for rec in d["rules"][s]["then"]:
            if isinstance(rec, dict) and _start(rec):
                rec["atc"] = blocked
                break

    why = "the conflict policy suppresses a start of an avoided class where both fire; elsewhere it is a plausible drug choice"
    return [(f"{rule['id']}: starts {blocked} (the class another rule avoids)", why, apply)]


def _op_follow_up(data: Data, ctx: Data) -> list[Site]:
    for i, rule in enumerate(_rules(data)):
        for j, rec in enumerate(rule.get("then", [])):
            if isinstance(rec, dict) and rec.get("kind") == "follow_up" and int(rec.get("days", 999)) <= 14:

                def apply(d: Data, i: int = i, j: int = j) -> None:
                    d["rules"][i]["then"][j]["days"] = 365

                why = "no built-in property knows the follow-up interval: needs a golden scenario (or an 'always' invariant)"
                return [(f"{rule['id']}: follow-up {rec['days']} -> 365 days", why, apply)]
    return []


def _op_drop_test(data: Data, ctx: Data) -> list[Site]:
    for i, rule in enumerate(_rules(data)):
        then = rule.get("then", [])
        for j, rec in enumerate(then):
            if isinstance(rec, dict) and rec.get("kind") == "test" and len(then) > 1:

                def apply(d: Data, i: int = i, j: int = j) -> None:
                    del d["rules"][i]["then"][j]

                why = "a missing test order breaks no safety property: needs a golden scenario"
                return [(f"{rule['id']}: test {rec.get('code')} no longer ordered", why, apply)]
    return []


def _op_block_priority(data: Data, ctx: Data) -> list[Site]:
    i = _find(data, _block)
    if i is None:
        return []
    rid = _rules(data)[i]["id"]

    def apply(d: Data, i: int = i) -> None:
        d["rules"][i]["priority"] = -5

    why = "equivalent mutant: the conflict policy lets avoid/stop beat any start whatever the priority"
    return [(f"{rid}: priority -> -5", why, apply)]


def _op_monotonic(data: Data, ctx: Data) -> list[Site]:
    worse = set(data.get("worse_is_higher") or [])
    for i, rule in enumerate(_rules(data)):
        if not _is(rule, _up_non_emergency) or "setting == hospital" in str(rule.get("when", "")):
            continue
        for m in _CMP.finditer(str(rule.get("when", ""))):
            if m.group("lhs") in worse and m.group("op") in (">=", ">"):
                new = f"{m.group('lhs')} {_NEG[m.group('op')]} {m.group('num')}"

                def apply(d: Data, i: int = i, m: re.Match[str] = m, new: str = new) -> None:
                    w = str(d["rules"][i]["when"])
                    d["rules"][i]["when"] = w[: m.start()] + new + w[m.end() :]

                why = "caught by monotonicity only if a case sits in the rule's other conditions on both sides of the threshold"
                return [(f"{rule['id']}: '{m.group(0)}' -> '{new}' (referral for the better value)", why, apply)]
    return []


OPERATORS: list[tuple[str, Callable[[Data, Data], list[Site]]]] = [
    (
        "flip_emergency_threshold",
        _op_flip_threshold(
            "emergency rule", _emergency, (">=", ">"), "the emergency condition flipped; caught if an emergency finding co-occurs"
        ),
    ),
    ("raise_emergency_threshold", _op_raise_threshold),
    (
        "flip_start_threshold",
        _op_flip_threshold("start rule", _start, ("<=", "<"), "a start allowed above a safety ceiling; needs a contraindication invariant"),
    ),
    (
        "drop_contraindication",
        _op_drop_rule(_block, 0, "first avoid/stop rule", "only a YAML invariant or scenario on that contraindication can see it"),
    ),
    (
        "drop_contraindication_2",
        _op_drop_rule(_block, 1, "second avoid/stop rule", "only a YAML invariant or scenario on that contraindication can see it"),
    ),
    ("drop_emergency_rule", _op_drop_rule(_emergency, 0, "first emergency rule", "caught if another property pins its condition")),
    ("drop_emergency_finding", _op_findings_rule_drop),
    ("swap_up_to_down", _op_swap_direction("up")),
    ("swap_down_to_up", _op_swap_direction("down")),
    ("downgrade_emergency", _op_downgrade_emergency),
    ("drop_citation", _op_citation(True)),
    ("unknown_citation", _op_citation(False)),
    ("change_unit", _op_change_unit),
    ("emergency_setting_swap", _op_setting_swap),
    ("loosen_start", _op_and_to_or),
    ("drop_start_guard", _op_drop_guard),
    ("start_blocked_class", _op_start_blocked_class),
    ("lengthen_follow_up", _op_follow_up),
    ("drop_test", _op_drop_test),
    ("contraindication_priority", _op_block_priority),
    ("invert_referral_threshold", _op_monotonic),
]


# ---------------------------------------------------------------- building


def _load_sources(pathways: Path | str | None) -> tuple[Path, list[tuple[Path, str]]]:
    root = Path(pathways) if pathways else bundled_pathways()
    files = pathway_files([root])
    return root, [(f, f.read_text(encoding="utf-8")) for f in files]


def make_mutants(pathways: Path | str | None = None) -> list[Mutant]:
    """Every operator at its first applicable site in every pathway file."""
    root, sources = _load_sources(pathways)
    base = load_vocabulary(find_dictionary([f for f, _ in sources], root))
    out: list[Mutant] = []
    for f, text in sources:
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            continue
        conv: dict[str, str] = {}
        for code, od in base.observations.items():
            alt = [u for u, (factor, _) in od.conversions.items() if factor != 1]
            if alt:
                conv[code] = alt[0]
        for code, od_raw in (data.get("dictionary", {}) or {}).get("observations", {}).items():
            alt = [u for u, c in (od_raw.get("conversions") or {}).items() if c.get("factor", 1) != 1]
            if alt:
                conv[code] = alt[0]
        ctx: Data = {"conversions": conv}
        for name, finder in OPERATORS:
            for desc, why, apply in finder(data, ctx):
                out.append(Mutant(f"{data.get('id', f.stem)}:{name}", f.name, name, desc, why, apply))
    return out


class _SetChecker:
    """Validates the pathway set with some files replaced by (mutated) data, as a fresh load would.

    Every replaced file goes through YAML text (yaml.safe_dump, then carepath's loader), so a
    mutant is validated as written. The vocabulary, and the baseline's loads (``keep``: every file
    replaced by its unmutated data) are kept: a file a later call does not replace is that load,
    so a mutant costs one file's dump and load.
    """

    def __init__(self, sources: list[tuple[Path, str]], root: Path) -> None:
        self.sources = sources
        self.base = load_vocabulary(find_dictionary([f for f, _ in sources], root))
        self.loaded: dict[str, Located] = {}  # file name -> the baseline's load

    def __call__(self, replace: dict[str, Data], keep: bool = False) -> tuple[list[CheckedPathway], list[str]]:
        locs = []
        for f, text in self.sources:
            kept = self.loaded.get(f.name)
            if f.name not in replace and kept is not None:
                locs.append(kept)
                continue
            if f.name in replace:
                text = yaml.safe_dump(replace[f.name], sort_keys=False, allow_unicode=True)
            try:
                loc = load_text(text, str(f))
            except PathwayError as exc:
                return [], [str(d) for d in exc.diagnostics]
            if keep:
                self.loaded[f.name] = loc
            locs.append(loc)
        checked, diags = check_set(locs, self.base)
        return checked, [str(d) for d in diags]


def default_scenarios(root: Path) -> Path | None:
    """``tests/scenarios`` beside the pathway directory (the repository layout), if it exists."""
    cand = root.resolve().parent / "tests" / "scenarios"
    return cand if cand.is_dir() else None


def scenario_failures(engine: Engine, scenarios: Sequence[Scenario]) -> list[tuple[str, str]]:
    """``(pathway/name, first failure)`` for every golden scenario whose expectations the engine's decision misses
    (evaluated with the engine's own backend)."""
    out: list[tuple[str, str]] = []
    for s in scenarios:
        try:
            decision = engine.evaluate(s.case)
        except CaseError as exc:  # e.g. a mutated dictionary no longer accepts the scenario's case
            out.append((f"{s.pathway}/{s.name}", f"case rejected: {exc}"))
            continue
        fails = check(s, decision)
        if fails:
            out.append((f"{s.pathway}/{s.name}", fails[0]))
    return out


_CLINICAL_DROP = ("rule", "rules", "reason", "values", "citation")


def clinical_content(decision: dict[str, Any]) -> str:
    """What a clinician acts on: the recommendations without provenance (rule ids, reasons, citations)."""
    recs = [{k: v for k, v in r.items() if k not in _CLINICAL_DROP} for r in decision["recommendations"]]
    return json.dumps(sorted(json.dumps(r, sort_keys=True) for r in recs))


def _differs(original: Engine, mutant: Engine, case: dict[str, Any]) -> bool:
    try:
        a = clinical_content(original.evaluate(case))
    except CaseError:
        return False
    try:
        m = clinical_content(mutant.evaluate(case))
    except CaseError:
        return True
    return a != m


def _changed_rules(original: Engine, mutant: Engine, focus: str) -> list[Any]:
    """The conditions of the rules the mutant changed or dropped (mutated version where it exists)."""
    before = {r.rule.id: r for r in original.pathway(focus).rules}
    after = {r.rule.id: r for r in mutant.pathway(focus).rules}
    out = [r.condition for rid, r in after.items() if rid not in before or before[rid].rule != r.rule]
    out += [r.condition for rid, r in before.items() if rid not in after or after[rid].rule != r.rule]
    return out


def observable_difference(
    original: Engine,
    mutant: Engine,
    focus: str,
    scenarios: Sequence[Scenario],
    *,
    examples: int,
    seed: int | None,
) -> str | None:
    """A description of a case whose decision (clinical content) differs between the two engines, or None.

    Tried: every scenario case, then generated cases enrolled in ``focus``, half of them steered so
    that a changed (or dropped) rule's condition holds.
    """
    for s in scenarios:
        if _differs(original, mutant, s.case):
            return f"scenario {s.pathway}/{s.name}'s case"
    found: list[dict[str, Any]] = []

    space = CaseSpace(mutant.pathways)
    cfg = settings(profile_settings("dev", examples, False), max_examples=examples)
    steered = [space.steered(c, pathway=focus) for c in _changed_rules(original, mutant, focus)]
    strategy = st.one_of(space.cases(pathway=focus), *steered) if steered else space.cases(pathway=focus)

    @given(case=strategy)
    def search(case: dict[str, Any]) -> None:
        if not found and _differs(original, mutant, case):
            found.append(case)

    wrapped = cfg(search)
    if seed is not None:
        import hypothesis

        wrapped = hypothesis.seed(seed)(wrapped)
    wrapped()
    if found:
        return "a generated case: " + json.dumps(found[0], sort_keys=True)
    return None


def run_mutation(
    pathways: Path | str | None = None,
    *,
    examples: int = 300,
    seed: int = DEFAULT_SEED,
    scenarios: Path | str | None = None,
    mutants: Sequence[Mutant] | None = None,
    backend: str = "durable",
    equivalence_examples: int | None = None,
    progress: Callable[[MutantResult], None] | None = None,
    invariants_too: bool = False,
) -> MutationReport:
    """Run every mutant; a mutant is killed by validation, a golden scenario or an invariant.

    ``scenarios`` defaults to ``tests/scenarios`` beside the pathway directory (none if absent).
    ``backend`` evaluates scenarios and invariant searches with durable-rules or the reference
    evaluator (differential-tested against durable-rules by ``carepath check``). Survivors are
    searched for an observable difference (``equivalence_examples`` generated cases, default
    ``examples``) to tell a test gap from a likely equivalent mutant. ``invariants_too`` also runs
    the invariant search on mutants a scenario already killed, to show what the invariants catch
    on their own (slower; the killer is still the first check that failed).
    """
    t_start = time.perf_counter()
    root, sources = _load_sources(pathways)
    originals = {f.name: yaml.safe_load(t) for f, t in sources}
    scen_dir = Path(scenarios) if scenarios is not None else default_scenarios(root)
    scens = iter_scenarios(scen_dir) if scen_dir is not None and scen_dir.exists() else []
    check_set_with = _SetChecker(sources, root)

    def killer(replace: dict[str, Data], focus: str | Collection[str] | None, keep: bool = False) -> tuple[MutantResult, Engine | None]:
        def res(kind: str | None, name: str, detail: str, names: list[str] | None = None) -> MutantResult:
            return MutantResult(placeholder, kind, name, detail, 0.0, names or [])

        checked, diags = check_set_with(replace, keep)
        if diags:
            return res("validation", "validate", diags[0]), None
        engine = Engine(checked, backend=backend)
        fails = scenario_failures(engine, scens)
        if fails and not invariants_too:
            return res("scenario", fails[0][0], fails[0][1], [n for n, _ in fails]), engine
        report = check_engine(
            engine,
            profile="dev",
            examples=examples,
            seed=seed,
            database=False,
            focus=focus,
            top_up=False,
            yaml_examples=max(20, examples // 3),
            backend=backend,
        )
        violation = next((s.violation for s in report.searches if s.violation is not None), None)
        if fails:
            r = res("scenario", fails[0][0], fails[0][1], [n for n, _ in fails])
            r.invariant = violation.invariant if violation is not None else ""
            return r, engine
        if violation is not None:
            r = res("invariant", violation.invariant, violation.message)
            r.invariant = violation.invariant
            return r, engine
        return res(None, "", "no check failed"), engine

    placeholder = Mutant("baseline", "", "baseline", "the unmutated pathways", "", lambda d: None)
    # the baseline: the unmutated pathways pass every check the mutants will meet (their pathways' searches)
    base, base_engine = killer(dict(originals), None if mutants is None else {m.pathway for m in mutants}, keep=True)
    results: list[MutantResult] = []
    if base.kind is None and base_engine is not None:
        for m in mutants if mutants is not None else make_mutants(root):
            t0 = time.perf_counter()
            data = copy.deepcopy(originals[m.file])
            m.apply(data)
            r, engine = killer({m.file: data}, str(data.get("id")))  # the other files: as the baseline loaded them
            r.mutant = m
            if r.kind is None and engine is not None:
                diff = observable_difference(
                    base_engine,
                    engine,
                    m.pathway,
                    scens,
                    examples=equivalence_examples if equivalence_examples is not None else examples,
                    seed=seed,
                )
                if diff is None:
                    r.detail = (
                        "LIKELY EQUIVALENT: no decision differs from the unmutated pathways "
                        f"(every scenario case, generated cases steered into the changed rule). {m.if_survives}"
                    )
                else:
                    r.detail = f"TEST GAP: decisions differ on {diff}, yet no scenario or invariant fails. {m.if_survives}"
            r.seconds = time.perf_counter() - t0
            results.append(r)
            if progress is not None:
                progress(r)
    detail = "" if base.kind is None else f"{base.kind} {base.killer}: {base.detail}"
    return MutationReport(base.kind is None, detail, results, len(scens), backend, time.perf_counter() - t_start, invariants_too)
