"""The engine: compiled pathways in one durable-rules host, evaluating cases into decisions."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import durable_rules_engine as _dre
import orjson
from durable.engine import Host

from . import compile as comp
from . import lang
from .case import Case, validate_case
from .decide import Plan, Planned, describe_recommendation, planned, render
from .derive import Features, derive
from .errors import PathwayError, UnknownPathwayError
from .site import DEFAULT_SITE, Site
from .validate import CheckedPathway, CheckedRule, SourceSet, load_vocabulary, validate_paths, validate_set

Backend = Literal["durable", "reference"]
_SID = "case"  # the one durable-rules session of each ruleset (see Engine._post)
_RETRACT = orjson.dumps({"sid": _SID, "id": "case"}).decode()


NEAR = 5  # --explain lists this many of the rules that came close by default


def bundled_pathways() -> Path:
    """The pathways shipped with carepath: $CAREPATH_PATHWAYS, the repo's pathways/, or the wheel's copy."""
    env = os.environ.get("CAREPATH_PATHWAYS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here.parent.parent / "pathways", here / "bundled_pathways"):
        if (cand / "dictionary.yaml").exists():
            return cand
    return here.parent.parent / "pathways"


class _SyncHost(Host):  # type: ignore[misc]
    """A durable-rules host without its background dispatch threads: all work is synchronous here."""

    def _run(self) -> None:
        return None


Selection = list[tuple[int, "_Compiled"]]  # (pathway index, compiled pathway)
Fired = list[tuple[int, "_Compiled", list[int]]]  # ... and the indices of the rules that fired


@dataclass
class _Compiled:
    pathway: CheckedPathway
    ruleset: str
    handle: int  # the ruleset in durable-rules' C engine
    build: Callable[[lang.Facts], dict[str, object]]  # the fact posted for a case (comp.fact_builder)
    valued: tuple[tuple[str, frozenset[object]], ...]  # keys posted only with a value some pattern tests
    names: dict[str, str]  # each fact key's name in the ruleset and the posted fact (comp.short_names)
    enrols: Callable[[lang.Facts], bool]  # applies_to is TRUE (generated code)
    applies: comp.Program  # ... the reference evaluation of it
    programs: list[comp.Program]
    everyone: bool  # some rule has scope everyone: the ruleset is asked whatever the enrolment


class Engine:
    """Validated, compiled pathways. Not thread-safe (durable-rules is not): one per process."""

    def __init__(self, pathways: Sequence[CheckedPathway], site: Site | None = None) -> None:
        active = [p for p in pathways if p.model.status != "retired"]
        self.pathways: list[CheckedPathway] = sorted(active, key=lambda p: p.id)
        self.vocab = _merged_vocab(self.pathways)
        self.site = site or DEFAULT_SITE  # what the site can do: site_has() reads it (one site per engine)
        self.site.check(self.vocab)
        self.features = Features(
            current={c: od.current for c, od in self.vocab.observations.items() if od.current is not None},
            site=self.site.capabilities,
            visit_reading=self.vocab.visit_reading,
        )
        self._host = _SyncHost()
        self._compiled: list[_Compiled] = []
        self._plans: dict[Any, Plan] = {}  # decide(): conflict-policy outcomes by decision shape
        for cp in self.pathways:
            conds = [r.condition for r in cp.rules]
            for c in [cp.applies, *conds, *(g for _, g in cp.invariants)]:  # invariants read facts too
                self.features.add(c)
            subs: list[tuple[str, lang.Expr]] = []
            name, definition = comp.durable_ruleset(conds, subs)
            tests = comp.fact_tests(conds)  # sub-conditions are only ever tested for TRUE: 1 or absent
            names = comp.short_names([*tests, *(k for k, _ in subs)])
            self._host.set_rulesets(comp.renamed_ruleset(definition, names))
            handle = self._host.get_ruleset(name)._handle
            valued = tuple(sorted((k, v) for k, v in tests.items() if v is not None))
            numbers = tuple(sorted(k for k, v in tests.items() if v is None))
            build = comp.fact_builder(numbers, valued, subs, {"sid": _SID, "id": "case", "cp": 1}, names)
            self._compiled.append(
                _Compiled(
                    cp,
                    name,
                    handle,
                    build,
                    valued,
                    names,
                    comp.holds(cp.applies),
                    comp.reference(cp.applies),
                    [comp.reference(c) for c in conds],
                    any(r.rule.scope == "everyone" for r in cp.rules),
                )
            )
        for compiled in self._compiled:  # rulesets register lazily on the first post: warm them up now
            self._post(compiled, {})
        # durable-rules' ruleset handles are a fixed per-process table: give them back with the engine
        weakref.finalize(self, _delete_rulesets, [c.handle for c in self._compiled])

    @classmethod
    def from_directory(cls, path: Path | str | None = None, site: Site | None = None) -> Engine:
        return cls.from_paths([path or bundled_pathways()], site)

    @classmethod
    def from_paths(cls, paths: Iterable[Path | str], site: Site | None = None) -> Engine:
        checked, diags = validate_paths(list(paths), bundled_pathways())
        if diags:
            raise PathwayError(diags)
        return cls(checked, site)

    @classmethod
    def from_sources(cls, sources: SourceSet, site: Site | None = None) -> Engine:
        """The engine of a set already read into memory (validate.read_set): no file is read."""
        checked, diags = validate_set(sources)
        if diags:
            raise PathwayError(diags)
        return cls(checked, site)

    def pathway(self, pathway_id: str) -> CheckedPathway:
        for p in self.pathways:
            if p.id == pathway_id:
                return p
        raise UnknownPathwayError(pathway_id, [p.id for p in self.pathways])

    # ------------------------------------------------------------ evaluation
    def prepare(self, data: Any) -> tuple[Case, dict[str, object]]:
        """Validate a case (raises CaseError) and derive its facts."""
        case, obs = validate_case(data, self.vocab)
        return case, derive(case, obs, self.features)

    def _post(self, c: _Compiled, facts: dict[str, object]) -> list[int]:
        """Assert the case as one fact, run every fired action, retract the fact.

        Every post goes to the same session (_SID) of the ruleset, left empty after each case:
        durable-rules makes a state fact for a session the first time it sees it and runs it
        through the whole network, so a fresh session per case (deleted after) made each post about
        1.5 times as dear. If anything goes wrong the session is deleted, so the next case starts
        from a new one.
        The loop is durable-rules' own action loop (Ruleset.do_actions) without its Python
        closure objects and JSON round trips: an action only needs the rule's name.
        """
        fact = c.build(facts)  # a value no pattern tests for would only cost (comp.fact_tests)
        fired: set[int] = set()
        done = False
        try:
            code, state = _dre.assert_fact(c.handle, orjson.dumps(fact).decode())
            if code != 0:
                raise RuntimeError(f"durable-rules did not handle the case (code {code})")
            started = _dre.start_action_for_state(c.handle, state)
            message = started[1] if started else None
            while message:
                name = message[2 : message.index('"', 2)]  # {"r12": {...}}: the rule that fired
                if name[0] == "r":
                    fired.add(int(name[1:]))
                message = _dre.complete_and_start_action(c.handle, state)
            done = _dre.retract_fact(c.handle, _RETRACT)[0] == 0
        finally:
            if not done:  # an error, or the fact still there: the next case gets a new session
                _dre.delete_state(c.handle, _SID)
        return sorted(fired)

    def fire(
        self, facts: dict[str, object], pathway_ids: Sequence[str] | None = None, backend: Backend = "durable", every_ruleset: bool = False
    ) -> Fired:
        """The indices of the rules that fire in each selected pathway.

        ``every_ruleset`` posts into every selected ruleset, enrolled or not (the plain durable-rules
        baseline the benchmarks compare against); the rules that fire are the same.
        """
        selected = self._select(pathway_ids)
        return self._fire(facts, selected, backend, None if every_ruleset else self._enrolled(facts, selected, backend))

    @staticmethod
    def _enrolled(facts: dict[str, object], selected: Selection, backend: Backend = "durable") -> dict[str, bool]:
        """Each selected pathway: is its applies_to TRUE for these facts? (The reference backend
        asks the reference evaluator, so the differential tests check the generated code.)"""
        if backend == "reference":
            return {c.pathway.id: c.applies(facts) is True for _, c in selected}
        return {c.pathway.id: c.enrols(facts) for _, c in selected}

    def _fire(self, facts: dict[str, object], selected: Selection, backend: Backend, enrolled: dict[str, bool] | None) -> Fired:
        """Every rule's condition is ``applies_to AND when``, so a pathway the patient is not
        enrolled in (applies_to false or unknown) can fire nothing: durable-rules is not asked
        (``enrolled`` None: it is asked anyway). The reference backend evaluates every rule
        regardless, so the differential tests check this.
        """
        out = []
        for i, c in selected:
            if backend == "durable":
                fired = self._post(c, facts) if enrolled is None or enrolled[c.pathway.id] or c.everyone else []
            else:
                fired = [k for k, prog in enumerate(c.programs) if prog(facts) is True]
            out.append((i, c, fired))
        return out

    def _select(self, pathway_ids: Sequence[str] | None) -> Selection:
        if not pathway_ids:
            return list(enumerate(self._compiled))
        known = {c.pathway.id: (i, c) for i, c in enumerate(self._compiled)}
        out = []
        for pid in sorted(set(pathway_ids)):
            if pid not in known:
                raise UnknownPathwayError(pid, sorted(known))
            out.append(known[pid])
        return out

    def evaluate(self, data: Any, pathway_ids: Sequence[str] | None = None, backend: Backend = "durable") -> dict[str, Any]:
        """Case (contract JSON as a dict) in, decision out. Raises CaseError or UnknownPathwayError.

        The decision is plain JSON data, except that a rule's ``values`` are shared between the
        decisions that read the same values (decide.Values: read-only; dict() copies them).
        """
        selected = self._select(pathway_ids)  # fail fast on an unknown pathway
        case, facts = self.prepare(data)
        return self._decide(case, facts, selected, backend)

    def evaluate_planned(self, data: Any, pathway_ids: Sequence[str] | None = None) -> Planned:
        """``evaluate`` up to the decision's parts (decide.render makes the decision of them): the
        service writes these straight to protobuf, without the decision's dicts."""
        selected = self._select(pathway_ids)
        case, facts = self.prepare(data)
        return self._planned(case, facts, selected, "durable")

    def _decide(self, case: Case, facts: dict[str, object], selected: Selection, backend: Backend) -> dict[str, Any]:
        return render(self._planned(case, facts, selected, backend))

    def _planned(self, case: Case, facts: dict[str, object], selected: Selection, backend: Backend) -> Planned:
        enrolled = self._enrolled(facts, selected, backend)
        fired = self._fire(facts, selected, backend, enrolled)
        groups: list[tuple[int, CheckedPathway, list[CheckedRule]]] = [
            (i, c.pathway, [c.pathway.rules[k] for k in ks]) for i, c, ks in fired
        ]
        return planned(case, facts, groups, enrolled, self._plans, self.site.identity)

    def explain(self, data: Any, pathway_ids: Sequence[str] | None = None, near: int = NEAR) -> str:
        """For a person: why each recommendation was made, and which rules came close and why not
        (the ``near`` closest: fewest false or unknown terms, then pathway and rule order)."""
        selected = self._select(pathway_ids)
        case, facts = self.prepare(data)
        decision = self._decide(case, facts, selected, "durable")
        lines = [f"Decision for {case.patient_id} as of {case.as_of.isoformat()} ({case.setting})", ""]
        if not decision["recommendations"]:
            lines.append("No recommendations.")
        for r in decision["recommendations"]:
            lines.append(f"* {describe_recommendation(r)}")
            lines.append(f"    because {r['reason']}")
            lines.append(f"    rule {', '.join(r['rules'])}; {r['citation']}")
        suppressed = [(t["rule"], s) for t in decision["trace"] for s in t.get("suppressed", [])]
        if suppressed:
            lines += ["", "Overruled by the conflict policy:"]
            lines += [f"* {rule}: {s}" for rule, s in suppressed]
        lines += ["", "Rules that came close but did not fire:"]
        close: list[tuple[int, str]] = []  # (false or unknown terms, line)
        fired = {t["rule"] for t in decision["trace"]}
        for _, c in selected:
            enrolled = c.enrols(facts)
            if not enrolled:
                lines.append(f"* pathway {c.pathway.id}: patient not enrolled ({c.pathway.model.applies_to})")
                if not c.everyone:
                    continue
            for cr in c.pathway.rules:
                if cr.rule.id in fired or not (enrolled or cr.rule.scope == "everyone"):
                    continue
                blocks = lang.blocking(cr.when, facts)
                if 0 < len(blocks) <= 2:
                    why = "; ".join(
                        lang.staleness(lit, facts, c.pathway.vocab)
                        or f"{lang.describe(lit, facts, c.pathway.vocab)} is {'unknown' if t is None else 'not met'}"
                        for lit, t in blocks
                    )
                    close.append((len(blocks), f"* {cr.rule.id}: {why}"))
        close.sort(key=lambda x: x[0])  # stable: ties stay in pathway and rule order
        lines += [line for _, line in close[:near]]
        if len(close) > near:
            lines.append(f"* and {len(close) - near} more (--near {len(close)} lists them all)")
        if not close:
            lines.append("* none")
        return "\n".join(lines) + "\n"


def _merged_vocab(pathways: Sequence[CheckedPathway]) -> lang.Vocabulary:
    obs: dict[str, lang.ObsDef] = {}
    findings: frozenset[str] = frozenset()
    capabilities: dict[str, str] = {}
    for p in pathways:
        obs.update(p.vocab.observations)
        findings |= p.vocab.findings
        capabilities.update(p.vocab.capabilities)
    if not pathways:
        return load_vocabulary(bundled_pathways() / "dictionary.yaml")
    return lang.Vocabulary(obs, findings, capabilities=capabilities, visit_reading=pathways[0].vocab.visit_reading)


def _delete_rulesets(handles: list[int]) -> None:
    for handle in handles:
        _dre.delete_ruleset(handle)
