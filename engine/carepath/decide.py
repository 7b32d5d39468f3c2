"""Assemble fired rules into one decision by the documented conflict policy.

Policy, in order (README "Conflict policy"):
1. Up-referrals only from ``community``, down-referrals only from ``hospital``, and no
   down-referral when any rule finds the patient unstable: an emergency or priority up-referral
   criterion met (in hospital too), a drug to stop, or a critical alert; nor while any pathway
   recommends a drug change (start, add, titrate, switch: the regimen is not yet stable). An
   emergency up-referral that is not made (hospital) stands as a critical alert from the same
   rule, so that the emergency is never shown as routine care (brief A8.3, B8.3, C8.1).
2. An emergency up-referral criterion beats everything, in hospital too (where the referral
   itself is not made): it suppresses starting/titrating drugs, tests and every other referral
   (stop/avoid, alerts, the follow-up and tests marked ``essential`` stay).
3. At most one referral: the most urgent (emergency > priority > routine > down), then the
   higher rule priority, then pathway and rule order. Never up and down together.
4. ``avoid``/``stop`` beats ``start``/``add``/``titrate``/``switch`` of an overlapping ATC
   class, and no drug is started that matches an allergy. A rule whose drug changes were all
   overruled (here or by rule 2) loses its alerts and non-essential tests too (a K+ recheck
   after a RAS-blocker start that is not made); an alert marked ``stable`` goes when any rule
   finds the patient unstable (as in rule 1).
5. The shortest follow-up wins.
6. Duplicates (same kind and key fields) merge into one recommendation listing every rule.

The policy reads the rules that fired, the setting and the allergies, never the values the rules
read: ``make_plan`` applies it once per such shape (the engine keeps the plans), ``render`` fills
in each case's values and reasons.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, NamedTuple, NoReturn

from . import lang
from .case import Case
from .recommendations import ACTIONS, BLOCKS, KINDS, STARTS, URGENCIES, atc_overlap
from .validate import CheckedPathway, CheckedRule

_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}
_SEVERITY = {"critical": 0, "warning": 1, "info": 2}
_ACTION = {a: i for i, a in enumerate(ACTIONS)}
_URGENCY = {u: i for i, u in enumerate(URGENCIES)}


def _plain(v: object) -> object:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


class Values(dict[str, object]):
    """The values a fired rule read, as a decision carries them: one object per combination of
    values (the memo's own, see read_rule), shared by every decision and recommendation that read
    the same, so it is read-only (copy it with dict() to change it). Copies and pickles are plain
    dicts. (The service keeps its encodings of them by the object's identity: carepath.service.encode.)"""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a decision's values are shared and read-only: copy them with dict(values) to change them")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __reduce__(self) -> tuple[type[dict[str, object]], tuple[dict[str, object]]]:
        return dict, (dict(self),)

    def __copy__(self) -> dict[str, object]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, object]) -> dict[str, object]:
        return copy.deepcopy(dict(self), memo)


def values_read(cr: CheckedRule, facts: lang.Facts) -> Values:
    """Every value a rule's condition reads, by its name in the condition language; null = unknown."""
    out: dict[str, object] = {}
    for name, key, kind in cr.reads:
        v = facts.get(key)
        if kind == "number":
            out[name] = _plain(v)
        elif kind == "flag":
            out[name] = None if v is None else bool(v)
        elif kind == "present":
            out[name] = bool(v)
        else:
            out[name] = v
    return Values(out)


class _Body:
    """One recommendation a rule makes, with what the policy reads of it worked out once per rule:
    its kind, priority, rule, its words for suppression notes, its duplicate key, its place in
    the decision's order and its template there (the body, rule and citation in the decision's
    key order; the rest is filled in per case)."""

    __slots__ = (
        "body",
        "essential",
        "in_hospital",
        "key",
        "kind",
        "label",
        "order",
        "priority",
        "rule",
        "sort",
        "stable",
        "template",
    )

    def __init__(
        self,
        body: dict[str, Any],
        order: tuple[int, int],
        priority: int,
        rule: str,
        citation: str,
        essential: bool = False,
        stable: bool = False,
    ) -> None:
        self.body, self.kind, self.order, self.priority = body, str(body["kind"]), order, priority
        self.essential = essential  # a test the policy never suppresses (TestRec.essential)
        self.stable = stable  # an alert that says the patient is stable (AlertRec.stable)
        self.rule = rule
        self.label = describe_recommendation(body)  # the body in a few words, for suppression notes
        self.key = lang_key(body)  # what makes two recommendations duplicates
        self.sort = _sort_key(self.kind, body)
        self.template = {**body, "rule": rule, "rules": None, "reason": None, "citation": citation, "values": None}
        # an emergency up-referral stands in hospital as a critical alert (policy 1; brief A8.3, B8.3, C8.1)
        self.in_hospital: _Body | None = None
        if self.kind == "referral" and body["direction"] == "up" and body.get("urgency") == "emergency":
            self.in_hospital = _Body(emergency_alert(body), order, priority, rule, citation)


MEMO_LIMIT = 1024  # per rule: bounded memory whatever the cohort (about 0.4 KB an entry)


class _Prepared:
    """What decide() needs of one rule beyond its CheckedRule, made on its first firing: its
    recommendations (tests with their LOINC code) and the compiled writer of its reason."""

    __slots__ = ("bodies", "words")

    def __init__(self, p_index: int, cp: CheckedPathway, cr: CheckedRule) -> None:
        out = []
        citation = cp.citation_texts[cr.rule.citation]
        for body, essential, stable in zip(cr.bodies, cr.essential, cr.stable, strict=True):
            if body["kind"] == "test":
                od = cp.vocab.observations[body["code"]]
                if od.loinc:
                    body = {**body, "loinc": od.loinc[0]}
            out.append(_Body(body, (p_index, cr.index), cr.rule.priority, cr.rule.id, citation, essential, stable))
        self.bodies: tuple[_Body, ...] = tuple(out)
        self.words = lang.reasoner(cr.when_nnf, cp.vocab)


def _prepared_rules(p_index: int, cp: CheckedPathway) -> list[_Prepared | None]:
    """The pathway's rules' preparations, by rule index, each made on the rule's first firing.
    ``p_index`` is the pathway's place in the engine, which orders recommendations (an engine
    makes its own pathway objects; the cache is keyed by it all the same)."""
    made: dict[int, list[_Prepared | None]] = cp.decide_cache
    got = made.get(p_index)
    if got is None:
        got = made[p_index] = [None] * len(cp.rules)
    return got


def read_rule(cr: CheckedRule, prep: _Prepared, facts: lang.Facts, key: tuple[object, ...]) -> tuple[Values, str]:
    """The values a fired rule read and its reason in words, for the memo (render looks there first).

    Both are pure functions of the facts under ``cr.read_keys`` (``key``: values that compare
    equal, such as 1 and 1.0, are written the same way); on a city-sized cohort 80-85% of fired
    rules repeat a combination already seen, so the values and the words are made once per
    combination. The values are the memo's own (read-only, see Values), shared by the decisions
    that read them.
    """
    why = "; ".join(prep.words(facts))
    hit = (values_read(cr, facts), f"{cr.rule.title}: {why}" if cr.rule.title else why)
    if len(cr.memo) >= MEMO_LIMIT:
        cr.memo.clear()
    cr.memo[key] = hit
    return hit


Fired = list[tuple[int, CheckedPathway, list[CheckedRule]]]  # (pathway index, pathway, the rules that fired)
PLAN_LIMIT = 1024  # plans kept per engine: bounded memory (about 6 KB each: 6 MiB) whatever the cohort


class Plan:
    """The conflict policy's outcome for one shape of decision: which rules fired (in which
    pathways), the setting and the allergies decide it all, never the values the rules read. Made
    once per shape and kept by the engine (a patient seen again, as CDS Hooks calls repeat, and
    37% of a synthetic cohort's cases, with 1,024 kept); ``render`` fills in each case's values
    and reasons."""

    __slots__ = ("recs", "rules", "trace")

    def __init__(
        self,
        rules: list[tuple[CheckedRule, _Prepared]],
        trace: list[tuple[str, str, tuple[str, ...] | None]],
        recs: list[tuple[_Body, tuple[str, ...], tuple[int, ...]]],
    ) -> None:
        self.rules = rules  # each fired rule, in order, with its preparations
        self.trace = trace  # (pathway id, rule id, suppression notes) for each fired rule
        self.recs = recs  # (the _Body standing for the recommendation; its rules; the fired rules it draws
        # values and reasons from, in order)


class Planned(NamedTuple):
    """A decision before it is rendered: the case, its plan, what each fired rule read (values and
    reason) and the enrolment. ``render`` makes the decision of it."""

    case: Case
    plan: Plan
    reads: list[tuple[Values, str]]
    fired: Fired
    enrolled: dict[str, bool]
    site: dict[str, str]  # the site profile's identity (carepath.site.Site.identity)


def decide(
    case: Case,
    facts: lang.Facts,
    fired: Fired,
    enrolled: dict[str, bool],
    plans: dict[Any, Plan] | None = None,
    site: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build the decision: deterministic for the same case, pathways and site. ``plans`` is the engine's
    store of plans by shape (None: make the plan afresh)."""
    return render(planned(case, facts, fired, enrolled, plans, site))


DEFAULT_SITE_ID = {"id": "default", "sha256": ""}  # carepath.site.DEFAULT_SITE's identity


def planned(
    case: Case,
    facts: lang.Facts,
    fired: Fired,
    enrolled: dict[str, bool],
    plans: dict[Any, Plan] | None = None,
    site: dict[str, str] | None = None,
) -> Planned:
    """The decision's plan (from the store when its shape was seen) and what each fired rule read."""
    allergies = tuple(case.allergies)
    key = (case.setting, allergies, tuple([(i, tuple([cr.index for cr in rules])) for i, _, rules in fired]))
    plan = plans.get(key) if plans is not None else None
    if plan is None:
        plan = make_plan(case.setting, allergies, fired)
        if plans is not None:
            if len(plans) >= PLAN_LIMIT:
                plans.clear()
            plans[key] = plan
    get = facts.get
    reads: list[tuple[Values, str]] = []
    for cr, prep in plan.rules:  # read_rule's memo, looked up here: most fired rules are found in it
        k = tuple(map(get, cr.read_keys))
        hit = cr.memo.get(k)
        reads.append(read_rule(cr, prep, facts, k) if hit is None else hit)
    return Planned(case, plan, reads, fired, enrolled, site or DEFAULT_SITE_ID)


def merged_read(reads: list[tuple[Values, str]], srcs: tuple[int, ...]) -> tuple[Values | dict[str, object], str]:
    """A recommendation's values and reason: its fired rule's, or for duplicates merged, every
    reason once and every value any of them read (first one wins)."""
    values, reason = reads[srcs[0]]
    if len(srcs) == 1:
        return values, reason
    merged: Values | dict[str, object] = values
    reasons = [reason]
    for k in srcs[1:]:
        more, why = reads[k]
        if why not in reasons:
            reasons.append(why)
        for name, v in more.items():
            if name not in merged:
                if type(merged) is Values:  # shared: the merged recommendation gets values of its own
                    merged = dict(merged)
                merged[name] = v
    return merged, "; ".join(reasons)


def render(p: Planned) -> dict[str, Any]:
    """The decision for this case from its plan: the values each fired rule read and its reason."""
    plan, reads, case = p.plan, p.reads, p.case
    trace: list[dict[str, Any]] = []
    for (pathway, rule, notes), (values, _) in zip(plan.trace, reads, strict=True):
        entry: dict[str, Any] = {"pathway": pathway, "rule": rule, "values": values}
        if notes:
            entry["suppressed"] = list(notes)
        trace.append(entry)
    out = []
    for body, rules, srcs in plan.recs:
        merged, reason = reads[srcs[0]] if len(srcs) == 1 else merged_read(reads, srcs)
        rec = dict(body.template)  # the body, rule and citation, in the decision's key order
        rec["rules"] = list(rules)
        rec["reason"] = reason
        rec["values"] = merged
        out.append(rec)
    enrolled = p.enrolled
    pathways = [{**cp.identity, "enrolled": enrolled[cp.id]} for _, cp, _ in p.fired]
    return {
        "patient_id": case.patient_id,
        "as_of": case.as_of.isoformat(),
        "pathways": sorted(pathways, key=lambda p: str(p["id"])),
        "recommendations": out,
        "trace": trace,
        "site": p.site,
    }


def make_plan(setting: str, allergies: tuple[str, ...], fired: Fired) -> Plan:
    """Apply the conflict policy to the rules that fired.

    Each policy step runs only when what it arbitrates is present; the order of the steps (and so
    of the suppression notes) is the documented one. A recommendation on its way through the
    policy is its rule's _Body and the rule's place among the fired rules (plain tuples: ~20 are
    made per plan).
    """
    recs: list[tuple[_Body, int]] = []
    rules: list[tuple[CheckedRule, _Prepared]] = []
    trace: list[tuple[str, str]] = []
    notes: dict[str, list[str]] = {}
    kinds: set[str] = set()
    for p_index, cp, fired_rules in fired:
        made = _prepared_rules(p_index, cp)
        for cr in fired_rules:
            prep = made[cr.index]
            if prep is None:
                prep = made[cr.index] = _Prepared(p_index, cp, cr)
            src = len(rules)
            rules.append((cr, prep))
            trace.append((cp.id, cr.rule.id))
            for b in prep.bodies:
                kinds.add(b.kind)
                recs.append((b, src))

    initial, made_recs = list(recs), len(recs)

    def suppress(b: _Body, why: str) -> None:
        notes.setdefault(b.rule, []).append(f"{b.label}: {why}")

    if "referral" in kinds:
        # 1. referral direction by setting; a down-referral only for a patient no rule finds unstable
        kept: list[tuple[_Body, int]] = []
        emergency = [b for b, _ in recs if b.kind == "referral" and b.body.get("urgency") == "emergency" and b.body["direction"] == "up"]
        for r in recs:
            b = r[0]
            if b.kind == "referral":
                d = b.body["direction"]
                if d == "up" and setting != "community":
                    suppress(b, "up-referral is only made from community")
                    if b.in_hospital is not None:  # the emergency stays visible: a critical alert instead
                        kept.append((b.in_hospital, r[1]))
                    continue
                if d == "down" and setting != "hospital":
                    suppress(b, "down-referral is only made from hospital")
                    continue
                if d == "down":
                    unstable = next((u for u, _ in recs if _unstable(u)), None)
                    if unstable is not None:
                        suppress(b, f"not stable: {unstable.label} ({unstable.rule})")
                        continue
                    change = next((u for u, _ in recs if u.kind == "medication" and u.body["action"] in STARTS), None)
                    if change is not None:  # brief A6, B6: a stable regimen, no near-term change, before handover
                        suppress(b, f"regimen change pending: {change.label} ({change.rule})")
                        continue
            kept.append(r)
        recs = kept
        # 2. an emergency criterion beats everything, whether or not its referral was made (brief B8.4)
        if emergency:
            kept = []
            for r in recs:
                b = r[0]
                if (b.kind == "medication" and b.body["action"] in STARTS) or (b.kind == "test" and not b.essential):
                    suppress(b, f"emergency up-referral ({emergency[0].rule}) takes precedence")
                else:
                    kept.append(r)
            recs = kept
        # 3. at most one referral
        refs = sorted(
            (b for b, _ in recs if b.kind == "referral"),
            key=lambda b: (_URGENCY.get(b.body.get("urgency", ""), 3) if b.body["direction"] == "up" else 3, -b.priority, b.order),
        )
        if refs:
            best = refs[0]
            for b in refs[1:]:
                if b.body != best.body:
                    suppress(b, f"one referral per decision: {best.label} ({best.rule}) is more urgent")
            recs = [r for r in recs if r[0].kind != "referral" or r[0].body == best.body]
    # 4. avoid/stop and allergies beat starts
    if "medication" in kinds:
        blocks = [b for b, _ in recs if b.kind == "medication" and b.body["action"] in BLOCKS]
        if blocks or allergies:
            kept = []
            for r in recs:
                b = r[0]
                if b.kind == "medication" and b.body["action"] in STARTS:
                    atc = str(b.body["atc"])
                    hit = next((k for k in blocks if atc_overlap(atc, k.body["atc"])), None)
                    if hit is not None:
                        suppress(b, f"{hit.body['action']} {hit.body['atc']} ({hit.rule}) takes precedence")
                        continue
                    allergy = next((a for a in allergies if atc_overlap(atc, a)), None)
                    if allergy is not None:
                        suppress(b, f"patient is allergic to {allergy}")
                        continue
                kept.append(r)
            recs = kept
    # 4b. what a rule says because it changes a drug (a recheck alert or test) goes when the change is overruled
    if "medication" in kinds and len(recs) < made_recs:
        kept_change = {b.rule for b, _ in recs if b.kind == "medication" and b.body["action"] in STARTS}
        overruled = {b.rule for b, _ in initial if b.kind == "medication" and b.body["action"] in STARTS} - kept_change
        stand_ins = {b.in_hospital for b, _ in initial if b.in_hospital is not None}  # an emergency stays visible
        if overruled:
            kept = []
            for r in recs:
                b = r[0]
                if b.rule in overruled and ((b.kind == "alert" and b not in stand_ins) or (b.kind == "test" and not b.essential)):
                    suppress(b, "the drug change it goes with was overruled")
                    continue
                kept.append(r)
            recs = kept
    # 4c. a stable status is not given to a patient any rule finds unstable (brief C8.1, A8.3, D1)
    if any(b.stable for b, _ in recs):
        unstable = next((u for u, _ in recs if _unstable(u)), None)
        if unstable is not None:
            for b, _ in recs:
                if b.stable:
                    suppress(b, f"not stable: {unstable.label} ({unstable.rule})")
            recs = [r for r in recs if not r[0].stable]
    # 5. shortest follow-up
    if "follow_up" in kinds:
        fus = [b for b, _ in recs if b.kind == "follow_up"]
        if len(fus) > 1:
            fus.sort(key=lambda b: (b.body["days"], b.order))
            first = fus[0]
            for b in fus[1:]:
                if b.body != first.body:
                    suppress(b, f"a shorter follow-up ({first.body['days']} days, {first.rule}) wins")
            recs = [r for r in recs if r[0].kind != "follow_up" or r[0].body == first.body]
    # 6. merge duplicates: the first of a kind stands for them, listing every rule and fired rule
    merged: dict[str, tuple[_Body, list[str], list[int]]] = {}
    for b, src in sorted(recs, key=lambda r: r[0].order):
        m = merged.get(b.key)
        if m is None:
            merged[b.key] = (b, [b.rule], [src])
            continue
        if b.rule not in m[1]:
            m[1].append(b.rule)
        m[2].append(src)
    out = [(b, tuple(names), tuple(srcs)) for b, names, srcs in sorted(merged.values(), key=lambda m: m[0].sort)]
    return Plan(rules, [(pathway, rule, tuple(notes[rule]) if rule in notes else None) for pathway, rule in trace], out)


def emergency_alert(referral: Mapping[str, Any]) -> dict[str, Any]:
    """The critical alert an emergency up-referral becomes where no up-referral is made (hospital):
    the criterion is never handled as routine (brief A8.3, B8.3, B8.4, C8.1)."""
    text = (
        "EMERGENCY criterion met: manage it as an emergency now; routine follow-up is not enough "
        f"(from community: an emergency referral, {referral['specialty']})"
    )
    return {"kind": "alert", "severity": "critical", "text": text}


def lang_key(body: dict[str, Any]) -> str:
    kind = body["kind"]
    if kind == "test":
        return f"test:{body['code']}"
    if kind == "medication":
        return f"medication:{body['action']}:{body['atc']}"
    if kind == "alert":
        return f"alert:{body['severity']}:{body['text']}"
    if kind == "referral":
        return "referral"
    return "follow_up"


def _unstable(r: _Body) -> bool:
    """Does this recommendation say the patient is not stable enough to go down to community care?

    An emergency or priority up-referral criterion (in hospital too, where the referral itself is
    not made), a drug to stop, or a critical alert, from any pathway: brief A8.3, B8.4, C8.10 and
    D1 (emergency > priority-up > routine-up > down). A routine up-referral (e.g. screening the
    community cannot do) does not.
    """
    if r.kind == "referral":
        return r.body["direction"] == "up" and r.body.get("urgency") in ("emergency", "priority")
    if r.kind == "medication":
        return bool(r.body["action"] == "stop")
    return r.kind == "alert" and r.body.get("severity") == "critical"


def describe_recommendation(r: Mapping[str, Any]) -> str:
    """A recommendation in a few words (suppression notes, --explain, counterexamples)."""
    k = r.get("kind")
    if k == "referral":
        return f"refer {r.get('direction')} ({r.get('urgency', 'routine')}) to {r.get('specialty')}"
    if k == "medication":
        return f"{r.get('action')} {r.get('name')} ({r.get('atc')})"
    if k == "test":
        return f"test {r.get('code')}"
    if k == "follow_up":
        return f"follow up in {r.get('days')} days"
    return f"alert [{r.get('severity')}] {r.get('text')}"


def _sort_key(kind: str, b: dict[str, Any]) -> tuple[object, ...]:
    """A recommendation's place in the decision: by kind, then severity or action, then its code."""
    k = _KIND_ORDER[kind]
    if kind == "alert":
        return (k, _SEVERITY[b["severity"]], b["text"])
    if kind == "medication":
        return (k, _ACTION[b["action"]], b["atc"])
    if kind == "test":
        return (k, 0, b["code"])
    return (k, 0, "")
