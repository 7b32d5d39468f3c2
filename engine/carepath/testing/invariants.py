"""Invariants: the built-in safety properties every pathway must keep, and the committees' YAML invariants.

Built-in (on for every pathway):

=================  =================================================================================
determinism        the same case twice gives byte-identical decisions
differential       the durable-rules engine and the reference evaluator give the same decision
enrollment         only pathways the patient is enrolled in (``applies_to`` true) fire rules
one_referral       at most one referral, never up and down together
referral_setting   up-referrals only from community, down-referrals only from hospital
stable_down        a down-referral never comes with a drug to stop or a critical alert
drug_safety        no started/added/titrated/switched drug matches an allergy or an avoid/stop
provenance         every recommendation names its rule, a reason and a citation
emergency          in community, an enrolled patient with one of the pathway's ``emergency_findings``
                   gets an emergency up-referral (checked on the case and with one such finding added)
monotonicity       making a ``worse_is_higher`` observation worse never lowers the referral urgency
=================  =================================================================================

YAML invariants (``invariants:`` in a pathway): ``given`` (condition language) holds for a patient
enrolled in that pathway -> the whole decision never / always contains a recommendation matching
the pattern. A pattern matches when every key is equal; ``atc`` matches as a prefix either way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import strategies as st

from .. import lang
from ..case import validate_case
from ..decide import describe_recommendation
from ..derive import Features, derive
from ..evaluate import Engine
from ..output import dumps
from ..recommendations import BLOCKS, STARTS, URGENCIES, atc_overlap
from ..validate import CheckedPathway

T = TypeVar("T")
Case = dict[str, Any]
Decision = dict[str, Any]
Draw = Callable[[st.SearchStrategy[Any]], Any]

BUILTIN: tuple[str, ...] = (
    "determinism",
    "differential",
    "enrollment",
    "one_referral",
    "referral_setting",
    "stable_down",
    "drug_safety",
    "provenance",
    "emergency",
    "monotonicity",
)
URGENCY_LEVEL = {u: len(URGENCIES) - i for i, u in enumerate(URGENCIES)}  # routine 1, priority 2, emergency 3


@dataclass
class Violation(AssertionError):
    """An invariant that does not hold, with the case that shows it (and the decision it got)."""

    invariant: str
    message: str
    case: Case
    decision: Decision
    pathway: str | None = None
    related: dict[str, Case] = field(default_factory=dict)
    backend: str = "durable"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.report()

    def report(self, replay: Sequence[str] = ()) -> str:
        where = f" (pathway {self.pathway})" if self.pathway else ""
        lines = [f"INVARIANT VIOLATED: {self.invariant}{where}", f"  {self.message}", "", "Counterexample (shrunk case):"]
        lines += ["  " + ln for ln in dumps(self.case).rstrip().splitlines()]
        for name, c in self.related.items():
            lines += ["", f"Related case ({name}):"]
            lines += ["  " + ln for ln in dumps(c).rstrip().splitlines()]
        lines += ["", f"Decision ({self.backend}):"]
        recs = self.decision.get("recommendations", [])
        lines += [f"  - {summary(r)}   [{', '.join(r.get('rules', [r.get('rule', '?')]))}]" for r in recs] or ["  (no recommendations)"]
        suppressed = [f"  ~ {t['rule']}: {s}" for t in self.decision.get("trace", []) for s in t.get("suppressed", [])]
        if suppressed:
            lines += ["Overruled by the conflict policy:", *suppressed]
        if replay:
            lines += ["", "Replay:", *[f"  {r}" for r in replay]]
        return "\n".join(lines)


def summary(r: Mapping[str, Any]) -> str:
    return describe_recommendation(r)


def matches(rec: Mapping[str, Any], pattern: Mapping[str, Any]) -> bool:
    """A recommendation matches a pattern when every key is equal (``atc`` by prefix, either way);
    ``days_at_most: N`` matches a follow-up within N days (a shorter one satisfies "within 2 weeks")."""
    for k, v in pattern.items():
        got = rec.get(k)
        if k == "days_at_most":
            if not isinstance(got := rec.get("days"), int) or got > int(v):
                return False
        elif k == "atc":
            if not isinstance(got, str) or not atc_overlap(got, str(v)):
                return False
        elif got != v and str(got) != str(v):
            return False
    return True


def referral_level(decision: Decision) -> int:
    """0 none/down, 1 routine, 2 priority, 3 emergency (the most urgent up-referral)."""
    levels = [
        URGENCY_LEVEL.get(str(r.get("urgency")), 1)
        for r in decision["recommendations"]
        if r["kind"] == "referral" and r.get("direction") == "up"
    ]
    return max(levels, default=0)


@dataclass(frozen=True)
class YamlInvariant:
    pathway: CheckedPathway
    index: int
    given: lang.Expr

    @property
    def id(self) -> str:
        return self.pathway.model.invariants[self.index].id

    @property
    def name(self) -> str:
        return f"{self.pathway.id}:{self.id}"

    @property
    def never(self) -> dict[str, str | int] | None:
        return self.pathway.model.invariants[self.index].never

    @property
    def always(self) -> dict[str, str | int] | None:
        return self.pathway.model.invariants[self.index].always

    def describe(self) -> str:
        inv = self.pathway.model.invariants[self.index]
        pat = inv.never if inv.never is not None else inv.always
        word = "never" if inv.never is not None else "always"
        return f"given {inv.given}: {word} {pat}"


def yaml_invariants(engine: Engine) -> list[YamlInvariant]:
    return [YamlInvariant(p, i, g) for p in engine.pathways for i, g in p.invariants]


class Checker:
    """Checks every invariant on one case. ``draw`` (Hypothesis ``data.draw``) picks metamorphic variants."""

    def __init__(self, engine: Engine, *, only: Sequence[str] | None = None, backend: str | None = None) -> None:
        self.backend = backend or engine.backend.name
        # the engine that decides: ``engine`` itself, or the same pathways compiled by ``backend``
        self.engine = engine if engine.backend.name == self.backend else engine.with_backend(self.backend)
        self.enabled = set(only) if only is not None else set(BUILTIN)
        if self.backend == "reference":  # nothing to compare against: the differential check needs durable-rules
            self.enabled.discard("differential")
        self._reference: Engine | None = None  # the differential check's second engine, made on first use
        # the engine's reading of a case (recency windows, site, visit convention), so a `given`
        # means what the same words mean in a rule: a stale value is unknown here too
        ef = engine.features
        self.features = Features(current=dict(ef.current), site=ef.site, visit_reading=ef.visit_reading)
        for p in engine.pathways:
            self.features.add(p.applies)
            for r in p.rules:
                self.features.add(r.condition)
            for _, g in p.invariants:
                self.features.add(g)
        for f in {f for p in engine.pathways for f in p.model.emergency_findings}:
            self.features.findings.add(f)
        self.yaml = yaml_invariants(engine)
        self._values: dict[str, tuple[float, ...]] = {}

    # ------------------------------------------------------------ helpers
    def facts(self, case: Case) -> dict[str, object]:
        c, obs = validate_case(case, self.engine.vocab)
        return derive(c, obs, self.features)

    def enrolled(self, facts: Mapping[str, object]) -> list[CheckedPathway]:
        return [p for p in self.engine.pathways if lang.eval3(p.applies, facts) is True]

    def evaluate(self, case: Case, backend: str | None = None) -> Decision:
        """Evaluate with ``backend`` (default: the checker's own, durable-rules unless set to ``reference``)."""
        if backend is None or backend == self.backend:
            return self.engine.evaluate(case)
        if backend != "reference":
            raise ValueError(f"the checker compares against the reference backend, not {backend!r}")
        if self._reference is None:
            self._reference = self.engine.with_backend("reference")
        return self._reference.evaluate(case)

    # ------------------------------------------------------------ the check
    def check(self, case: Case, draw: Draw | None = None, pathway: str | None = None) -> Decision:
        """Evaluate ``case`` and check every enabled invariant; raise :class:`Violation` on the first failure."""
        decision = self.evaluate(case)
        facts = self.facts(case)
        enrolled = self.enrolled(facts)
        on = self.enabled

        def fail(name: str, message: str, **kw: Any) -> Violation:
            return Violation(name, message, copy.deepcopy(case), kw.pop("decision", decision), pathway=kw.pop("pathway", pathway), **kw)

        if "determinism" in on:
            again = self.evaluate(copy.deepcopy(case))
            if dumps(again) != dumps(decision):
                raise fail("determinism", "evaluating the same case twice gave different decisions")
        if "differential" in on:
            ref = self.evaluate(case, "reference")
            if dumps(ref) != dumps(decision):
                a = {r["rule"] for r in decision["trace"]}
                b = {r["rule"] for r in ref["trace"]}
                raise fail(
                    "differential",
                    f"durable-rules and the reference evaluator disagree: only durable fired {sorted(a - b)}, "
                    f"only reference fired {sorted(b - a)}",
                    backend="durable (reference differs)",
                )
        if "enrollment" in on:
            ids = {p.id for p in enrolled}
            stray = sorted({t["rule"] for t in decision["trace"] if t["pathway"] not in ids})
            if stray:
                raise fail("enrollment", f"rules fired for a pathway the patient is not enrolled in: {stray}")
        self._check_decision(case, decision, fail)
        if "emergency" in on:
            self._check_emergency(case, decision, facts, enrolled, draw, fail)
        if "monotonicity" in on and draw is not None:
            self._check_monotonic(case, decision, enrolled, draw, fail)
        self._check_yaml(case, decision, facts, fail)
        return decision

    def _check_decision(self, case: Case, decision: Decision, fail: Callable[..., Violation]) -> None:
        on = self.enabled
        recs = decision["recommendations"]
        refs = [r for r in recs if r["kind"] == "referral"]
        if "one_referral" in on:
            dirs = {r["direction"] for r in refs}
            if len(refs) > 1 or dirs == {"up", "down"}:
                raise fail("one_referral", f"{len(refs)} referrals in one decision: {[summary(r) for r in refs]}")
        if "referral_setting" in on:
            for r in refs:
                want = "community" if r["direction"] == "up" else "hospital"
                if case["setting"] != want:
                    raise fail("referral_setting", f"{summary(r)} from setting {case['setting']} ({r['direction']} only from {want})")
        if "stable_down" in on:
            for r in refs:
                if r["direction"] != "down":
                    continue
                for x in recs:
                    if (x["kind"] == "medication" and x["action"] == "stop") or (x["kind"] == "alert" and x.get("severity") == "critical"):
                        raise fail("stable_down", f"{summary(r)} in the same decision as {summary(x)}")
        if "drug_safety" in on:
            blocks = [r for r in recs if r["kind"] == "medication" and r["action"] in BLOCKS]
            for r in recs:
                if r["kind"] != "medication" or r["action"] not in STARTS:
                    continue
                for a in case.get("allergies", []):
                    if atc_overlap(r["atc"], a):
                        raise fail("drug_safety", f"{r['action']} {r['atc']} ({r['rule']}) matches the allergy {a}")
                for b in blocks:
                    if atc_overlap(r["atc"], b["atc"]):
                        raise fail("drug_safety", f"{r['action']} {r['atc']} ({r['rule']}) and {b['action']} {b['atc']} ({b['rule']})")
        if "provenance" in on:
            fired = {t["rule"] for t in decision["trace"]}
            for r in recs:
                missing = [k for k in ("rule", "reason", "citation") if not r.get(k)]
                if missing or r["rule"] not in fired:
                    raise fail("provenance", f"{summary(r)} lacks {missing or ['a fired rule']}")

    def _check_emergency(
        self,
        case: Case,
        decision: Decision,
        facts: Mapping[str, object],
        enrolled: Sequence[CheckedPathway],
        draw: Draw | None,
        fail: Callable[..., Violation],
    ) -> None:
        if case["setting"] != "community":
            return
        present = set(case.get("findings", []))
        for p in enrolled:
            hits = sorted(present & set(p.model.emergency_findings))
            if hits and referral_level(decision) < 3:
                raise fail(
                    "emergency",
                    f"emergency finding {hits[0]} (pathway {p.id}) in community gave no emergency up-referral",
                    pathway=p.id,
                )
        if draw is None:
            return
        cands = sorted({(p.id, f) for p in enrolled for f in p.model.emergency_findings if f not in present})
        if not cands:
            return
        pid, finding = draw(st.sampled_from(cands))
        variant = copy.deepcopy(case)
        variant["findings"] = [*variant.get("findings", []), finding]
        d2 = self.evaluate(variant)
        if referral_level(d2) < 3:
            raise Violation(
                "emergency",
                f"adding the emergency finding {finding} (pathway {pid}) in community gave no emergency up-referral",
                variant,
                d2,
                pathway=pid,
                related={"before adding the finding": copy.deepcopy(case)},
            )

    def _worse_values(self, code: str) -> tuple[float, ...]:
        vals = self._values.get(code)
        if vals is None:
            od = self.engine.vocab.observations[code]
            ts: set[float] = {od.hi}
            for p in self.engine.pathways:
                for e in (p.applies, *(r.when for r in p.rules)):
                    for lit in lang.literals(e):
                        if isinstance(lit, lang.Cmp) and lit.num.kind in ("obs", "prev") and lit.num.arg == code:
                            ts |= {lit.value, lit.value + 1, lit.value + 10}
            vals = tuple(sorted(v for v in ts if od.lo <= v <= od.hi))
            self._values[code] = vals
        return vals

    def _check_monotonic(
        self,
        case: Case,
        decision: Decision,
        enrolled: Sequence[CheckedPathway],
        draw: Draw,
        fail: Callable[..., Violation],
    ) -> None:
        vocab = self.engine.vocab
        obs = case.get("observations", [])
        cands = sorted({(p.id, c) for p in enrolled for c in p.model.worse_is_higher if any(o["code"] == c for o in obs)})
        if not cands:
            return
        pid, code = draw(st.sampled_from(cands))
        od = vocab.observations[code]
        latest = max((i for i, o in enumerate(obs) if o["code"] == code), key=lambda i: (obs[i]["date"], i))
        now = od.to_canonical(float(obs[latest]["value"]), obs[latest]["unit"])
        if now is None:
            return
        higher = [v for v in self._worse_values(code) if v > now]
        if not higher:
            return
        worse_value = draw(st.sampled_from(higher))
        variant = copy.deepcopy(case)
        variant["observations"][latest] = {
            **obs[latest],
            "value": int(worse_value) if worse_value.is_integer() else worse_value,
            "unit": od.unit,
        }
        d2 = self.evaluate(variant)
        before, after = referral_level(decision), referral_level(d2)
        if after < before:
            names = {0: "none", 1: "routine", 2: "priority", 3: "emergency"}
            raise Violation(
                "monotonicity",
                f"{code} {now:g} -> {worse_value:g} {od.unit} (worse) lowered the referral urgency from {names[before]} to {names[after]}",
                copy.deepcopy(case),
                decision,
                pathway=pid,
                related={f"{code} made worse": variant},
            )

    def _check_yaml(self, case: Case, decision: Decision, facts: Mapping[str, object], fail: Callable[..., Violation]) -> None:
        for inv in self.yaml:
            self.check_yaml(inv, case, decision, facts, fail)

    def check_yaml(
        self,
        inv: YamlInvariant,
        case: Case,
        decision: Decision | None = None,
        facts: Mapping[str, object] | None = None,
        fail: Callable[..., Violation] | None = None,
    ) -> bool:
        """Check one YAML invariant; True when its ``given`` applied to the case."""
        facts = self.facts(case) if facts is None else facts
        if lang.eval3(inv.pathway.applies, facts) is not True or lang.eval3(inv.given, facts) is not True:
            return False
        decision = self.evaluate(case) if decision is None else decision
        recs = decision["recommendations"]
        if inv.never is not None:
            bad = [r for r in recs if matches(r, inv.never)]
            if bad:
                raise Violation(
                    inv.name,
                    f"{inv.describe()} -- but got {summary(bad[0])} from {bad[0]['rule']}",
                    copy.deepcopy(case),
                    decision,
                    pathway=inv.pathway.id,
                )
        elif inv.always is not None and not any(matches(r, inv.always) for r in recs):
            raise Violation(inv.name, f"{inv.describe()} -- no match", copy.deepcopy(case), decision, pathway=inv.pathway.id)
        return True
