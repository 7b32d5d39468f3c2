"""What an edit to the pathways changes on a population: ``carepath diff OLD NEW --cohort FILE``.

A committee signs a change after seeing what it does. Both pathway sets (directories, or git
revisions of the repository's ``pathways/``) evaluate the same cohort in one process; per patient
the two decisions are compared, and only counters and a few example patient ids are kept:

* per rule: patients it fires for, old and new, and how many gained or lost it;
* per recommendation (kind and what it is: ``referral up priority cardiology``, ``medication
  start C08CA``): patients who gain it or lose it, with example ids;
* referrals by urgency: the old referral against the new one (none, down, routine, priority,
  emergency), with example ids for each change;
* the share of patients referred, old and new.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson

from ..errors import CarepathError, CaseError
from ..evaluate import Engine
from .report import render_tables_html, render_tables_markdown

EXAMPLES = 3  # example patient ids kept per change


@dataclass
class Change:
    """Patients who gained and lost something, with a few of their ids."""

    gained: int = 0
    lost: int = 0
    gained_ids: list[str] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)

    def add(self, gained: bool, patient: str) -> None:
        if gained:
            self.gained += 1
            if len(self.gained_ids) < EXAMPLES:
                self.gained_ids.append(patient)
        else:
            self.lost += 1
            if len(self.lost_ids) < EXAMPLES:
                self.lost_ids.append(patient)


@dataclass
class Diff:
    old_name: str
    new_name: str
    old_pathways: dict[str, str] = field(default_factory=dict)  # id -> version (sha256 prefix)
    new_pathways: dict[str, str] = field(default_factory=dict)
    patients: int = 0
    invalid: Counter[str] = field(default_factory=Counter)  # cases one set (or both) refused: "old", "new", "both"
    unchanged: int = 0
    old_rules: Counter[str] = field(default_factory=Counter)
    new_rules: Counter[str] = field(default_factory=Counter)
    rules: dict[str, Change] = field(default_factory=dict)
    recs: dict[str, Change] = field(default_factory=dict)
    referrals: Counter[tuple[str, str]] = field(default_factory=Counter)  # (old, new) urgency class
    referral_ids: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    referred_old: int = 0
    referred_new: int = 0


def rec_key(r: dict[str, Any]) -> str:
    """A recommendation as a change is counted: its kind and what it is, without reasons or values."""
    kind = r["kind"]
    if kind == "referral":
        return f"referral {r['direction']} {r.get('urgency', '')} {r['specialty']}".replace("  ", " ")
    if kind == "medication":
        return f"medication {r['action']} {r['atc']} ({r['name']})"
    if kind == "test":
        return f"test {r['code']}"
    if kind == "follow_up":
        return f"follow-up {r['days']} days"
    return f"alert {r['severity']}: {r['text']}"


def referral_class(d: dict[str, Any]) -> str:
    for r in d["recommendations"]:
        if r["kind"] == "referral":
            return "down" if r["direction"] == "down" else str(r.get("urgency"))
    return "none"


REFERRAL_ORDER = ("emergency", "priority", "routine", "down", "none")


def compare(diff: Diff, old: dict[str, Any] | None, new: dict[str, Any] | None, patient: str) -> None:
    """Count one patient's two decisions (None: the set refused the case)."""
    diff.patients += 1
    if old is None or new is None:
        diff.invalid["both" if old is None and new is None else "old" if old is None else "new"] += 1
        return
    old_fired = {t["rule"] for t in old["trace"]}
    new_fired = {t["rule"] for t in new["trace"]}
    diff.old_rules.update(old_fired)
    diff.new_rules.update(new_fired)
    for rule in old_fired ^ new_fired:
        diff.rules.setdefault(rule, Change()).add(rule in new_fired, patient)
    old_recs = {rec_key(r) for r in old["recommendations"]}
    new_recs = {rec_key(r) for r in new["recommendations"]}
    for key in old_recs ^ new_recs:
        diff.recs.setdefault(key, Change()).add(key in new_recs, patient)
    a, b = referral_class(old), referral_class(new)
    diff.referred_old += a not in ("none", "down")
    diff.referred_new += b not in ("none", "down")
    diff.referrals[(a, b)] += 1
    if a != b:
        ids = diff.referral_ids.setdefault((a, b), [])
        if len(ids) < EXAMPLES:
            ids.append(patient)
    if old_fired == new_fired and old_recs == new_recs:
        diff.unchanged += 1


def run(old: Engine, new: Engine, lines: Iterable[bytes], old_name: str, new_name: str) -> Diff:
    diff = Diff(old_name, new_name)
    diff.old_pathways = {p.id: f"{p.version} ({p.sha256[:12]})" for p in old.pathways}
    diff.new_pathways = {p.id: f"{p.version} ({p.sha256[:12]})" for p in new.pathways}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = orjson.loads(line)
        except orjson.JSONDecodeError:
            diff.patients += 1
            diff.invalid["both"] += 1
            continue
        patient = str(case.get("patient_id", f"line {n}")) if isinstance(case, dict) else f"line {n}"
        compare(diff, _decide(old, case), _decide(new, case), patient)
    return diff


def _decide(engine: Engine, case: Any) -> dict[str, Any] | None:
    try:
        return engine.evaluate(case)
    except CaseError:
        return None


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else "-"


def tables(d: Diff) -> list[tuple[str, list[str], list[list[str]]]]:
    n = d.patients - sum(d.invalid.values())
    ver = [[pid, d.old_pathways.get(pid, "-"), d.new_pathways.get(pid, "-")] for pid in sorted({*d.old_pathways, *d.new_pathways})]
    overview = [
        ["patients compared", f"{n:,}"],
        ["patients whose decision changed (rules fired or recommendations)", f"{n - d.unchanged:,} ({_pct(n - d.unchanged, n)})"],
        ["referred up, old", f"{d.referred_old:,} ({_pct(d.referred_old, n)})"],
        ["referred up, new", f"{d.referred_new:,} ({_pct(d.referred_new, n)})"],
    ]
    overview += [[f"cases refused by {who}", f"{c:,}"] for who, c in sorted(d.invalid.items())]
    moves = [
        [a, b, f"{c:,}", _pct(c, n), ", ".join(d.referral_ids.get((a, b), []))]
        for (a, b), c in sorted(d.referrals.items(), key=lambda kv: (REFERRAL_ORDER.index(kv[0][0]), REFERRAL_ORDER.index(kv[0][1])))
        if a != b
    ]
    recs = [
        [key, f"{c.gained:,}", f"{c.lost:,}", ", ".join(c.gained_ids), ", ".join(c.lost_ids)]
        for key, c in sorted(d.recs.items(), key=lambda kv: (-(kv[1].gained + kv[1].lost), kv[0]))
    ]
    rules = [
        [rule, f"{d.old_rules[rule]:,}", f"{d.new_rules[rule]:,}", f"{c.gained:,}", f"{c.lost:,}", ", ".join(c.gained_ids or c.lost_ids)]
        for rule, c in sorted(d.rules.items(), key=lambda kv: (-(kv[1].gained + kv[1].lost), kv[0]))
    ]
    return [
        ("Overview", ["", ""], overview),
        ("Pathway versions", ["pathway", d.old_name, d.new_name], ver),
        ("Referral changes (old -> new)", ["old", "new", "patients", "share", "e.g."], moves),
        ("Recommendations gained and lost", ["recommendation", "patients gaining", "patients losing", "e.g. gaining", "e.g. losing"], recs),
        ("Rules", ["rule", "fired (old)", "fired (new)", "patients gaining", "patients losing", "e.g."], rules),
    ]


def render(d: Diff, title: str, html: bool = False) -> str:
    if html:
        intro = f"{d.old_name} against {d.new_name}, {d.patients:,} patients."
        return render_tables_html(title, intro, [], tables(d))
    return render_tables_markdown(title, tables(d))


@contextmanager
def pathway_source(spec: str, repo: Path | None = None) -> Iterator[Path]:
    """A directory of pathways: ``spec`` as a directory, or a git revision (``REV`` for the
    repository's ``pathways/``, ``REV:DIR`` for another directory) exported into a temporary one."""
    if Path(spec).is_dir():
        yield Path(spec)
        return
    rev, _, sub = spec.partition(":")
    sub = (sub or "pathways").strip("/")
    where = str(repo or Path.cwd())
    try:
        out = subprocess.run(["git", "-C", where, "archive", "--format=tar", rev, sub], capture_output=True, check=False)
    except OSError as exc:
        raise CarepathError(f"{spec}: not a directory, and git could not be run ({exc.strerror})") from None
    if out.returncode != 0:
        why = out.stderr.decode(errors="replace").strip().splitlines()
        raise CarepathError(f"{spec}: not a directory nor a git revision with {sub}/ ({why[-1] if why else 'git archive failed'})")
    with tempfile.TemporaryDirectory(prefix="carepath-diff-") as tmp:
        with tarfile.open(fileobj=BytesIO(out.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / sub
