"""Run every invariant over every pathway with Hypothesis: the engine behind ``carepath check``.

Per pathway, one Hypothesis search generates cases enrolled in (and half the time steered into a
rule of) that pathway, evaluates them against *all* pathways (multimorbidity is where the
conflict policy matters) and checks every built-in and YAML invariant. Each YAML invariant then
gets a short search of its own with cases steered so that its ``given`` holds. The first
violation stops that search; Hypothesis shrinks it to a small case, which is written as a case
file that ``carepath evaluate`` replays. Failures are saved in Hypothesis's example database
(``.hypothesis/``), so the next run tries them first.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.reporting import with_reporter

from .. import lang
from ..errors import CaseError
from ..evaluate import Engine
from ..output import dumps
from .invariants import Checker, Violation, YamlInvariant
from .strategies import CaseSpace

PROFILES: dict[str, int] = {"dev": 200, "ci": 1000, "thorough": 10_000, "pytest": 150}
"""Examples per pathway for each profile (each YAML invariant gets a fifth of it, at least 50)."""
DEFAULT_SEED = 20261124
TOP_UP = 300
"""Examples of the steered search into a rule that the main search never fired, at most (and at most
the main search's own budget: a 30-example smoke check does not spend 300 on each rule it missed)."""
SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture]


def register_profiles(database: ExampleDatabase | None = None) -> None:
    """Hypothesis settings profiles ``carepath-dev``, ``carepath-ci``, ``carepath-thorough``, ``carepath-pytest``."""
    db = database if database is not None else DirectoryBasedExampleDatabase(".hypothesis/examples")
    for name, n in PROFILES.items():
        settings.register_profile(
            f"carepath-{name}",
            max_examples=n,
            deadline=None,
            suppress_health_check=SUPPRESS,
            database=db,
            report_multiple_bugs=False,
            print_blob=False,
        )


def profile_settings(profile: str, examples: int | None = None, database: ExampleDatabase | bool | None = True) -> settings:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    register_profiles()
    base = settings.get_profile(f"carepath-{profile}")
    kw: dict[str, Any] = {}
    if examples is not None:
        kw["max_examples"] = examples
    if database is False:
        kw["database"] = None
    elif isinstance(database, ExampleDatabase):
        kw["database"] = database
    return settings(base, **kw)


@dataclass
class SearchResult:
    name: str  # pathway id or "pathway:invariant-id"
    examples: int
    seconds: float
    applied: int = 0  # for a YAML invariant: cases where ``given`` held
    violation: Violation | None = None
    files: list[Path] = field(default_factory=list)
    replay: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    profile: str
    seed: int | None
    searches: list[SearchResult]
    coverage: dict[str, dict[str, int]]  # pathway -> rule id -> cases that fired it

    @property
    def ok(self) -> bool:
        return all(s.violation is None for s in self.searches)

    @property
    def examples(self) -> int:
        return sum(s.examples for s in self.searches)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.searches)

    def never_fired(self) -> list[tuple[str, str]]:
        return [(p, r) for p, rules in self.coverage.items() for r, n in rules.items() if n == 0]

    def format(self, coverage: bool = True) -> str:
        lines = [f"carepath check: profile {self.profile}, seed {self.seed}"]
        for s in self.searches:
            rate = s.examples / s.seconds if s.seconds else 0.0
            status = "FAIL" if s.violation else "ok  "
            extra = f", given held in {s.applied}" if ":" in s.name else ""
            lines.append(f"{status} {s.name:<40} {s.examples:>6} examples  {s.seconds:6.1f}s  {rate:7.0f}/s{extra}")
        if coverage:
            lines.append("")
            lines.append("Rule coverage (generated cases that fired each rule):")
            for pid, rules in self.coverage.items():
                fired = sum(1 for n in rules.values() if n)
                lines.append(f"  {pid}: {fired}/{len(rules)} rules fired")
                for rid, n in rules.items():
                    lines.append(f"    {n:>7}  {rid}{'   <-- NEVER FIRED (generator gap or dead rule)' if n == 0 else ''}")
        nf = self.never_fired()
        if nf:
            lines.append(f"Never fired: {', '.join(r for _, r in nf)}")
        rate = self.examples / self.seconds if self.seconds else 0.0
        lines.append("")
        verdict = "all invariants hold" if self.ok else "VIOLATIONS FOUND"
        lines.append(f"{self.examples} examples in {self.seconds:.1f}s ({rate:.0f} examples/s); {verdict}")
        for s in self.searches:
            if s.violation is not None:
                lines += ["", s.violation.report(s.replay)]
        return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _write(v: Violation, name: str, out_dir: Path, pathways_arg: str | None) -> tuple[list[Path], list[str]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _slug(f"{name}-{v.invariant}")
    files = [out_dir / f"{base}.json"]
    files[0].write_text(dumps(v.case), encoding="utf-8")
    for i, c in enumerate(v.related.values(), 1):
        f = out_dir / f"{base}.related{i}.json"
        f.write_text(dumps(c), encoding="utf-8")
        files.append(f)
    pw = f" --pathways {pathways_arg}" if pathways_arg else ""
    replay = [f"carepath evaluate{pw} {f}" for f in files]
    if v.invariant == "differential":
        replay.append(f"carepath evaluate{pw} --backend reference {files[0]}")
    return files, replay


def _search(
    name: str,
    strategy: st.SearchStrategy[dict[str, Any]],
    body: Callable[[dict[str, Any], Callable[[st.SearchStrategy[Any]], Any]], None],
    cfg: settings,
    seed: int | None,
    digest: str,
) -> SearchResult:
    count = [0]

    def test(case: dict[str, Any], data: st.DataObject) -> None:
        count[0] += 1
        try:
            body(case, data.draw)
        except CaseError as exc:  # a generator bug: the case should have been valid
            raise Violation("valid_case", f"the generator produced an invalid case: {exc}", case, {}) from None

    test._hypothesis_internal_add_digest = digest.encode()  # type: ignore[attr-defined]
    wrapped = cfg(given(case=strategy, data=st.data())(test))
    if seed is not None:
        wrapped = hypothesis.seed(seed)(wrapped)
    t0 = time.perf_counter()
    result = SearchResult(name, 0, 0.0)
    messages: list[object] = []
    try:
        with with_reporter(messages.append):
            wrapped()
    except Violation as v:
        result.violation = v
    result.examples = count[0]
    result.seconds = time.perf_counter() - t0
    return result


def check_engine(
    engine: Engine,
    *,
    profile: str = "ci",
    examples: int | None = None,
    seed: int | None = DEFAULT_SEED,
    out_dir: Path | None = None,
    pathways_arg: str | None = None,
    database: ExampleDatabase | bool | None = True,
    only: Sequence[str] | None = None,
    yaml_searches: bool = True,
    space: CaseSpace | None = None,
    focus: str | Collection[str] | None = None,
    top_up: bool = True,
    yaml_examples: int | None = None,
    backend: str | None = None,
) -> CheckReport:
    """Search for counterexamples to every invariant in every pathway of ``engine``.

    ``backend`` (default: the engine's own) names the backend that decides: ``"reference"``
    evaluates with the reference evaluator (faster; the differential invariant is then off, since
    it compares durable-rules against that evaluator).
    ``focus`` limits the searches to one pathway id, or to several (an unknown id raises
    UnknownPathwayError, which names the known ones, rather than searching nothing).
    """
    ids = None if focus is None else {focus} if isinstance(focus, str) else set(focus)
    for pid in sorted(ids or ()):
        engine.pathway(pid)
    cfg = profile_settings(profile, examples, database)
    n = cfg.max_examples
    checker = Checker(engine, only=only, backend=backend)
    space = space or CaseSpace(engine.pathways)
    fired: Counter[str] = Counter()
    searches: list[SearchResult] = []

    for p in engine.pathways:
        if ids is not None and p.id not in ids:
            continue

        def body(case: dict[str, Any], draw: Callable[[st.SearchStrategy[Any]], Any], pid: str = p.id) -> None:
            decision = checker.check(case, draw, pid)
            fired.update({t["rule"] for t in decision["trace"]})

        res = _search(p.id, space.cases(pathway=p.id), body, cfg, seed, f"carepath-check:{p.id}:{p.sha256}")
        # coverage top-up: a short search steered into each rule that has not fired yet
        for r in p.rules:
            if not top_up or res.violation is not None or fired.get(r.rule.id, 0):
                continue
            top = _search(
                r.rule.id,
                space.steered(r.condition, pathway=p.id),
                body,
                settings(cfg, max_examples=min(TOP_UP, n)),
                seed,
                f"carepath-topup:{r.rule.id}:{p.sha256}",
            )
            res.examples += top.examples
            res.seconds += top.seconds
            res.violation = top.violation
        searches.append(res)

    if yaml_searches:
        yn = yaml_examples if yaml_examples is not None else max(50, n // 5)
        for inv in checker.yaml:
            if ids is not None and inv.pathway.id not in ids:
                continue
            searches.append(_yaml_search(checker, space, inv, settings(cfg, max_examples=yn), seed))

    if out_dir is not None:
        for s in searches:
            if s.violation is not None:
                s.files, s.replay = _write(s.violation, s.name, out_dir, pathways_arg)
    coverage = {p.id: {r.rule.id: fired.get(r.rule.id, 0) for r in p.rules} for p in engine.pathways if ids is None or p.id in ids}
    return CheckReport(profile, seed, searches, coverage)


def _yaml_search(checker: Checker, space: CaseSpace, inv: YamlInvariant, cfg: settings, seed: int | None) -> SearchResult:
    applied = [0]

    def body(case: dict[str, Any], draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        if checker.check_yaml(inv, case):
            applied[0] += 1

    strategy = space.steered(lang.conj(inv.pathway.applies, inv.given), pathway=inv.pathway.id)
    res = _search(inv.name, strategy, body, cfg, seed, f"carepath-yaml:{inv.name}:{inv.pathway.sha256}")
    res.applied = applied[0]
    return res


def check_yaml_invariant(
    engine: Engine, inv: YamlInvariant, *, profile: str = "pytest", examples: int | None = None, seed: int | None = DEFAULT_SEED
) -> SearchResult:
    """One YAML invariant on its own (a pytest item)."""
    cfg = profile_settings(profile, examples)
    return _yaml_search(Checker(engine), CaseSpace(engine.pathways), inv, cfg, seed)
