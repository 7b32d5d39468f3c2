"""The engine: a checked pathway set compiled by a backend, evaluating cases into decisions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import lang
from .backends import Backend, CompiledSet, resolve
from .case import Case, validate_case
from .decide import Plan, Planned, describe_recommendation, planned, render
from .derive import Features, derive
from .errors import PathwayError, UnknownPathwayError
from .settings import NEAR, bundled_pathways
from .site import DEFAULT_SITE, Site
from .validate import CheckedPathway, CheckedRule, SourceSet, load_vocabulary, validate_paths, validate_set

__all__ = ["NEAR", "Engine", "bundled_pathways"]  # NEAR and bundled_pathways: from carepath.settings

Selection = list[tuple[int, CheckedPathway]]  # (pathway index, pathway)
Fired = list[tuple[int, CheckedPathway, list[int]]]  # ... and the indices of the rules that fired


class Engine:
    """Validated pathways compiled by a backend: ``"durable"`` (durable-rules, the default),
    ``"reference"`` (the pure-Python reference evaluator: no durable-rules needed) or a
    :class:`~carepath.backends.Backend`. Not thread-safe (durable-rules is not): one per process."""

    def __init__(self, pathways: Sequence[CheckedPathway], site: Site | None = None, backend: str | Backend = "durable") -> None:
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
        self._plans: dict[Any, Plan] = {}  # decide(): conflict-policy outcomes by decision shape
        for cp in self.pathways:
            for c in [cp.applies, *(r.condition for r in cp.rules), *(g for _, g in cp.invariants)]:  # invariants read facts too
                self.features.add(c)
        self.backend: Backend = resolve(backend)
        self.compiled: CompiledSet = self.backend.compile(self.pathways)

    def with_backend(self, backend: str | Backend) -> Engine:
        """The same pathways and site compiled by another backend (the differential tests compare two engines)."""
        return Engine(self.pathways, self.site, backend)

    @classmethod
    def from_directory(cls, path: Path | str | None = None, site: Site | None = None, backend: str | Backend = "durable") -> Engine:
        return cls.from_paths([path or bundled_pathways()], site, backend)

    @classmethod
    def from_paths(cls, paths: Iterable[Path | str], site: Site | None = None, backend: str | Backend = "durable") -> Engine:
        checked, diags = validate_paths(list(paths), bundled_pathways())
        if diags:
            raise PathwayError(diags)
        return cls(checked, site, backend)

    @classmethod
    def from_sources(cls, sources: SourceSet, site: Site | None = None, backend: str | Backend = "durable") -> Engine:
        """The engine of a set already read into memory (validate.read_set): no file is read."""
        checked, diags = validate_set(sources)
        if diags:
            raise PathwayError(diags)
        return cls(checked, site, backend)

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

    def fire(self, facts: dict[str, object], pathway_ids: Sequence[str] | None = None, every_ruleset: bool = False) -> Fired:
        """The indices of the rules that fire in each selected pathway.

        ``every_ruleset`` asks the backend about every selected pathway, enrolled or not (for the
        durable backend: posts into every ruleset, the plain durable-rules baseline the benchmarks
        compare against); the rules that fire are the same.
        """
        selected = self._select(pathway_ids)
        return self._fire(facts, selected, None if every_ruleset else self._enrolled(facts, selected))

    def _enrolled(self, facts: dict[str, object], selected: Selection) -> dict[str, bool]:
        """Each selected pathway: is its applies_to TRUE for these facts? (The backend says.)"""
        enrolled = self.compiled.enrolled
        return {cp.id: enrolled(i, facts) for i, cp in selected}

    def _fire(self, facts: dict[str, object], selected: Selection, enrolled: dict[str, bool] | None) -> Fired:
        """The rules that fire in each selected pathway; ``enrolled`` None: the backend is asked
        about every rule, whatever the enrolment."""
        fire = self.compiled.fire
        return [(i, cp, fire(i, facts, None if enrolled is None else enrolled[cp.id])) for i, cp in selected]

    def _select(self, pathway_ids: Sequence[str] | None) -> Selection:
        if not pathway_ids:
            return list(enumerate(self.pathways))
        known = {cp.id: (i, cp) for i, cp in enumerate(self.pathways)}
        out = []
        for pid in sorted(set(pathway_ids)):
            if pid not in known:
                raise UnknownPathwayError(pid, sorted(known))
            out.append(known[pid])
        return out

    def evaluate(self, data: Any, pathway_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Case (contract JSON as a dict) in, decision out. Raises CaseError or UnknownPathwayError.

        The decision is plain JSON data, except that a rule's ``values`` are shared between the
        decisions that read the same values (decide.Values: read-only; dict() copies them).
        """
        selected = self._select(pathway_ids)  # fail fast on an unknown pathway
        case, facts = self.prepare(data)
        return self._decide(case, facts, selected)

    def _decide(self, case: Case, facts: dict[str, object], selected: Selection) -> dict[str, Any]:
        return render(self._planned(case, facts, selected))

    def _planned(self, case: Case, facts: dict[str, object], selected: Selection) -> Planned:
        enrolled = self._enrolled(facts, selected)
        fired = self._fire(facts, selected, enrolled)
        groups: list[tuple[int, CheckedPathway, list[CheckedRule]]] = [(i, cp, [cp.rules[k] for k in ks]) for i, cp, ks in fired]
        return planned(case, facts, groups, enrolled, self._plans, self.site.identity)

    def explain(self, data: Any, pathway_ids: Sequence[str] | None = None, near: int = NEAR) -> str:
        """For a person: why each recommendation was made, and which rules came close and why not
        (the ``near`` closest: fewest false or unknown terms, then pathway and rule order)."""
        selected = self._select(pathway_ids)
        case, facts = self.prepare(data)
        decision = self._decide(case, facts, selected)
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
        for _, cp in selected:  # the reference evaluator's reading (lang.eval3), whatever the backend
            enrolled = lang.eval3(cp.applies, facts) is True
            everyone = any(cr.rule.scope == "everyone" for cr in cp.rules)
            if not enrolled:
                lines.append(f"* pathway {cp.id}: patient not enrolled ({cp.model.applies_to})")
                if not everyone:
                    continue
            for cr in cp.rules:
                if cr.rule.id in fired or not (enrolled or cr.rule.scope == "everyone"):
                    continue
                blocks = lang.blocking(cr.when, facts)
                if 0 < len(blocks) <= 2:
                    why = "; ".join(
                        lang.staleness(lit, facts, cp.vocab)
                        or f"{lang.describe(lit, facts, cp.vocab)} is {'unknown' if t is None else 'not met'}"
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
