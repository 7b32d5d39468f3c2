"""Mutation suite: do the properties have teeth?

Defined faults ("mutants") are made in the pathway YAML data -- a threshold flipped or moved, a
contraindication rule dropped, a referral swapped up/down, an emergency rule removed or
downgraded, a citation dropped, a unit changed, a guard removed -- and each mutant must be
*killed*: rejected by ``carepath validate``, failing a golden scenario (``tests/scenarios``,
when a loader exists), or failing an invariant in a short seeded Hypothesis search. Survivors
are listed with the reason they can survive (what kind of check would catch them).

The unmutated pathways must pass the same checks first, else the score means nothing.
"""

from __future__ import annotations

import copy
import importlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import PathwayError
from ..evaluate import Engine, bundled_pathways
from ..load import load_text
from ..validate import CheckedPathway, check_set, find_dictionary, load_vocabulary, pathway_files
from .runner import DEFAULT_SEED, check_engine

Data = dict[str, Any]
Apply = Callable[[Data], None]

_CMP = re.compile(r"(?P<lhs>\b[a-z_]+(?:\([a-z_0-9, ]+\))?)\s*(?P<op>>=|<=|>|<)\s*(?P<num>\d+(?:\.\d+)?)")
_NEG = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
_STARTS = {"start", "add", "titrate", "switch"}


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    operator: str
    description: str
    if_survives: str
    apply: Apply = field(repr=False, compare=False)


@dataclass
class MutantResult:
    mutant: Mutant
    killed_by: str | None  # validate | scenario | invariant name | None (survived)
    detail: str
    seconds: float


@dataclass
class MutationReport:
    baseline_ok: bool
    baseline_detail: str
    results: list[MutantResult]
    excluded: list[str] = field(default_factory=list)

    @property
    def killed(self) -> int:
        return sum(1 for r in self.results if r.killed_by)

    @property
    def score(self) -> float:
        return self.killed / len(self.results) if self.results and self.baseline_ok else 0.0

    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if not r.killed_by]

    def format(self) -> str:
        lines = [f"Mutation suite: {len(self.results)} mutants"]
        if not self.baseline_ok:
            lines.append(f"BASELINE FAILS (the unmutated pathways must pass first): {self.baseline_detail}")
        for r in self.results:
            status = f"killed by {r.killed_by}" if r.killed_by else "SURVIVED"
            lines.append(f"  {status:<40} {r.mutant.id}  ({r.seconds:.1f}s)")
            lines.append(f"      {r.mutant.description}")
            if r.killed_by:
                lines.append(f"      -> {r.detail}")
        lines.append("")
        lines.append(f"Mutation score: {self.killed}/{len(self.results)} killed = {self.score:.0%}")
        if self.excluded:
            lines.append("YAML invariants set aside because they FAIL on the unmutated pathways (findings for the committee):")
            lines += [f"  - {e}" for e in self.excluded]
        if self.survivors():
            lines.append("Survivors (and why they can survive):")
            for r in self.survivors():
                lines.append(f"  - {r.mutant.id}: {r.mutant.if_survives}")
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
    return r.get("kind") == "medication" and r.get("action") in ("avoid", "stop")


def _start(r: Data) -> bool:
    return r.get("kind") == "medication" and r.get("action") in _STARTS


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
    em = set(data.get("emergency_findings") or [])
    for i, rule in enumerate(_rules(data)):
        names = set(re.findall(r"[a-z_]+", str(rule.get("when", ""))))
        if _is(rule, _emergency) and names & em:
            finding = sorted(names & em)[0]

            def apply(d: Data, i: int = i, finding: str = finding) -> None:
                w = str(d["rules"][i]["when"])
                d["rules"][i]["when"] = re.sub(rf"\b{finding}\b", "false", w)

            return [
                (
                    f"{rule['id']}: the emergency finding {finding} no longer triggers it",
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
    s, b = _find(data, _start), _find(data, _block)
    if s is None or b is None:
        return []
    blocked = next(r["atc"] for r in _rules(data)[b]["then"] if isinstance(r, dict) and _block(r))
    rule = _rules(data)[s]

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


def _extra_invariants(path: Path | None) -> dict[str, list[Data]]:
    if path is None or not path.exists():
        return {}
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(k): list(v) for k, v in raw.items()}


def _with_extras(data: Data, extras: dict[str, list[Data]]) -> Data:
    more = extras.get(str(data.get("id")), [])
    if more:
        have = {i.get("id") for i in data.get("invariants", [])}
        data["invariants"] = [*data.get("invariants", []), *(i for i in more if i.get("id") not in have)]
    return data


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


def _check_set(sources: list[tuple[Path, str]], root: Path, replace: dict[str, Data]) -> tuple[list[CheckedPathway], list[str]]:
    base = load_vocabulary(find_dictionary([f for f, _ in sources], root))
    locs = []
    for f, text in sources:
        if f.name in replace:
            text = yaml.safe_dump(replace[f.name], sort_keys=False, allow_unicode=True)
        try:
            locs.append(load_text(text, str(f)))
        except PathwayError as exc:
            return [], [str(d) for d in exc.diagnostics]
    checked, diags = check_set(locs, base)
    return checked, [str(d) for d in diags]


ScenarioRunner = Callable[[Engine], list[str]]


def scenario_runner(directory: Path | str | None) -> ScenarioRunner | None:
    """Golden scenarios via ``carepath.scenarios`` (when that loader exists): a function engine -> failures."""
    if directory is None or not Path(directory).exists():
        return None
    try:
        mod = importlib.import_module("carepath.scenarios")
    except ModuleNotFoundError:
        return None
    run = getattr(mod, "run_scenarios", None) or getattr(mod, "run_directory", None) or getattr(mod, "check_directory", None)
    if run is None:
        return None

    def go(engine: Engine) -> list[str]:
        result = run(engine, Path(directory))
        fails = [r for r in result if not getattr(r, "ok", getattr(r, "passed", True))] if isinstance(result, list) else []
        return [str(getattr(r, "name", r)) for r in fails]

    return go


def run_mutation(
    pathways: Path | str | None = None,
    *,
    examples: int = 300,
    seed: int = DEFAULT_SEED,
    scenarios: Path | str | None = None,
    extra_invariants: Path | str | None = None,
    mutants: Sequence[Mutant] | None = None,
) -> MutationReport:
    """Run every mutant; a mutant is killed by validation, a golden scenario or an invariant."""
    root, sources = _load_sources(pathways)
    extras = _extra_invariants(Path(extra_invariants) if extra_invariants else None)
    originals = {f.name: _with_extras(yaml.safe_load(t), extras) for f, t in sources}
    if scenarios is None:
        cand = root.parent / "tests" / "scenarios"
        scenarios = cand if cand.exists() else None
    scen = scenario_runner(scenarios)

    def killer(replace: dict[str, Data], focus: str | None) -> tuple[str | None, str]:
        checked, diags = _check_set(sources, root, replace)
        if diags:
            return "validate", diags[0]
        engine = Engine(checked)
        if scen is not None:
            fails = scen(engine)
            if fails:
                return "scenario", f"{len(fails)} golden scenario(s) fail, e.g. {fails[0]}"
        report = check_engine(
            engine,
            profile="dev",
            examples=examples,
            seed=seed,
            database=False,
            focus=focus,
            top_up=False,
            yaml_examples=max(20, examples // 3),
        )
        for s in report.searches:
            if s.violation is not None:
                return s.violation.invariant, s.violation.message
        return None, "no check failed"

    excluded: list[str] = []
    base_kill, base_detail = killer(dict(originals), None)
    while base_kill is not None and ":" in base_kill and len(excluded) < 20:
        # a YAML invariant that fails on the unmutated pathways is a finding, not a killer: set it aside
        pid, inv_id = base_kill.split(":", 1)
        excluded.append(f"{base_kill} ({base_detail})")
        for data in originals.values():
            if data.get("id") == pid:
                data["invariants"] = [i for i in data.get("invariants", []) if i.get("id") != inv_id]
        base_kill, base_detail = killer(dict(originals), None)
    results: list[MutantResult] = []
    if base_kill is None:
        for m in mutants if mutants is not None else make_mutants(root):
            t0 = time.perf_counter()
            data = copy.deepcopy(originals[m.file])
            m.apply(data)
            kill, detail = killer({**originals, m.file: data}, str(data.get("id")))
            results.append(MutantResult(m, kill, detail, time.perf_counter() - t0))
    return MutationReport(base_kill is None, base_detail if base_kill else "", results, excluded)
