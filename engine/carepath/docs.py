"""Committee review pages: one Markdown page per pathway (``carepath docs [--out DIR]``).

Each page shows the version and sha256, the definitions (each with an anchor, and linked from
every condition that uses it by name), a table of rules (id, when in words, then, citation), a
Mermaid flowchart of the referral and treatment steps, the changelog, and the values that still
need committee sign-off (citations whose section says "unconfirmed").
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from . import lang
from .model import AlertRec, FollowUpRec, MedicationRec, Recommendation, ReferralRec, Rule, TestRec
from .validate import CheckedPathway

_WORDS = [
    (r"\bcount_taking\(([^)]*)\)", r"number of classes taken among \1"),
    (r"\brise_pct_since_start\((\w+), ([^)]*)\)", r"rise in \1 since the baseline before starting \2, in % of it"),
    (r"\brise_since_start\((\w+), ([^)]*)\)", r"rise in \1 since the baseline before starting \2"),
    (r"\bdays_after_start\((\w+), (\w+)\)", r"days from starting \2 to the latest \1"),
    (r"\bdays_on\(([^)]*)\)", r"days on \1"),
    (r"\bdays_since\(([^)]*)\)", r"age in days of the latest \1"),
    (r"\bolder_than\((\w+), (\d+)\)", r"latest \1 older than \2 days"),
    (r"\bdue\((\w+), (\d+)\)", r"\1 missing or older than \2 days"),
    (r"\bmissing\((\w+)\)", r"no \1 on record"),
    (r"\bpresent\((\w+)\)", r"\1 on record"),
    (r"\bprevious\((\w+)\)", r"previous \1"),
    (r"\brise\((\w+)\)", r"rise in \1 since the previous reading"),
    (r"\brise_pct\((\w+)\)", r"rise in \1 since the previous reading, in % of it"),
    (r"\bdiagnosed\(([^)]*)\)", r"diagnosed \1"),
    (r"\btaking\(([^)]*)\)", r"taking \1"),
    (r"\ballergic\(([^)]*)\)", r"allergic to \1"),
    (r"\bfinding\((\w+)\)", r"\1"),
    (r">=", "≥"),
    (r"<=", "≤"),
    (r"==", "is"),
    (r"!=", "is not"),
]

UNCONFIRMED = re.compile(r"unconfirmed|needs committee sign-off|\[design", re.IGNORECASE)


def when_in_words(text: str) -> str:
    """The condition with its functions spelled out for readers who do not read the language."""
    out = " ".join(text.split())
    if out == "true":
        return "every patient in the pathway"
    return _words(out)


_TOKENS = re.compile(r"(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<op>==|!=)|(?P<lp>\()|(?P<rp>\))")


def definition_anchor(name: str) -> str:
    """The id of a definition's anchor on its pathway's page."""
    return f"def-{name}"


def _definition_uses(text: str, names: Collection[str]) -> list[tuple[int, int]]:
    """Where ``text`` uses a definition by name: a name that is not a call, a call's argument, a
    value compared with (``setting == community``) or a unit after a number."""
    out: list[tuple[int, int]] = []
    calls = 0  # open parentheses of calls, e.g. taking(...)
    stack: list[bool] = []  # per open parenthesis: is it a call's?
    prev: list[str] = []  # the kinds and texts of the tokens before
    tokens = list(_TOKENS.finditer(text))
    for i, m in enumerate(tokens):
        kind, word = m.lastgroup or "", m.group()
        if kind == "lp":
            is_call = bool(prev) and prev[-1].startswith("name:") and prev[-1][5:] not in lang.KEYWORDS
            stack.append(is_call)
            calls += is_call
        elif kind == "rp" and stack:
            calls -= stack.pop()
        elif kind == "name" and word in names and not calls:
            after = tokens[i + 1] if i + 1 < len(tokens) else None
            called = after is not None and after.lastgroup == "lp" and not text[m.end() : after.start()].strip()
            compared = bool(prev) and (prev[-1].startswith("op:") or (prev[-1] in ("name:is", "name:not") and "name:is" in prev[-2:]))
            unit = bool(prev) and prev[-1].startswith("num:")
            if not (called or compared or unit):
                out.append(m.span())
        prev.append(f"{kind}:{word}")
    return out


def condition_in_words(text: str, definitions: Collection[str] = ()) -> str:
    """``when_in_words``, with each use of a definition's name a link to the definition on the page."""
    flat = " ".join(text.split())
    if flat == "true" or not definitions:
        return when_in_words(flat)
    out: list[str] = []
    at = 0
    for start, end in _definition_uses(flat, definitions):
        out.append(_words(flat[at:start]))
        name = flat[start:end]
        out.append(f"[{name}](#{definition_anchor(name)})")
        at = end
    out.append(_words(flat[at:]))
    return "".join(out)


def _words(text: str) -> str:
    for pat, repl in _WORDS:
        text = re.sub(pat, repl, text)
    return text


def then_in_words(rec: Recommendation) -> str:
    if isinstance(rec, MedicationRec):
        return f"{rec.action} {rec.name} ({rec.atc})"
    if isinstance(rec, ReferralRec):
        urgency = f" {rec.urgency}" if rec.urgency else ""
        return f"refer {rec.direction}{urgency} to {rec.specialty}"
    if isinstance(rec, TestRec):
        return f"test {rec.code}"
    if isinstance(rec, FollowUpRec):
        return f"follow up in {rec.days} days"
    assert isinstance(rec, AlertRec)
    return f"{rec.severity} alert: {rec.text}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _mermaid_label(text: str) -> str:
    clean = re.sub(r'["<>{}\[\]()|#;`]', " ", text)
    return " ".join(clean.split())[:90]


def _is_step(rule: Rule) -> bool:
    return any(isinstance(r, ReferralRec) or (isinstance(r, MedicationRec) and r.action != "avoid") for r in rule.then)


def mermaid(cp: CheckedPathway) -> str:
    """A flowchart: the pathway, then its referral classes and treatment steps, each rule a box."""
    lines = ["flowchart TD", f'  P["{_mermaid_label(cp.model.title)}"]']
    groups: dict[str, list[Rule]] = {}
    for cr in cp.rules:
        rule = cr.rule
        if not _is_step(rule):
            continue
        ref = next((r for r in rule.then if isinstance(r, ReferralRec)), None)
        if ref is not None and ref.direction == "up":
            key = f"Up-referral: {ref.urgency}"
        elif ref is not None:
            key = "Down-referral"
        else:
            meds = [r for r in rule.then if isinstance(r, MedicationRec)]
            key = "Stop" if all(m.action == "stop" for m in meds) else "Treatment steps"
        groups.setdefault(key, []).append(rule)
    order = ["Up-referral: emergency", "Up-referral: priority", "Up-referral: routine", "Down-referral", "Treatment steps", "Stop"]
    for gi, key in enumerate(k for k in order if k in groups):
        gid = f"G{gi}"
        lines.append(f'  P --> {gid}["{key}"]')
        for ri, rule in enumerate(groups[key]):
            rid = f"{gid}R{ri}"
            actions = "; ".join(then_in_words(r) for r in rule.then if not isinstance(r, (FollowUpRec, AlertRec)))
            label = _mermaid_label(rule.title or rule.id)
            lines.append(f'  {gid} --> {rid}["{rule.id}: {label}"]')
            lines.append(f'  {rid} -.-> {rid}A["{_mermaid_label(actions)}"]')
    return "\n".join(lines)


def render(cp: CheckedPathway) -> str:
    m = cp.model
    out = [
        f"# {m.title}",
        "",
        f"- **id:** `{m.id}`",
        f"- **version:** {m.version} ({m.status})",
        f"- **sha256:** `{cp.sha256}`",
        f"- **owners:** {', '.join(m.owners)}",
        f"- **who is in it:** {condition_in_words(m.applies_to, m.definitions)}",
        f"- **emergency findings:** {', '.join(m.emergency_findings) or 'none'}",
        "",
        "_Generated by `carepath docs` from the pathway file; do not edit by hand._",
        "",
    ]
    if m.definitions:
        out += ["## Definitions", "", "Named conditions the rules below use by name (linked where used).", ""]
        out += ["| name | means |", "|---|---|"]
        names = list(m.definitions)
        for i, (name, text) in enumerate(m.definitions.items()):  # each may use the ones above it
            out.append(f'| <a id="{definition_anchor(name)}"></a>`{name}` | {_cell(condition_in_words(text, names[:i]))} |')
        out.append("")
    out += [
        "## Rules",
        "",
        "| id | when | then | citation |",
        "|---|---|---|---|",
    ]
    for cr in cp.rules:
        r = cr.rule
        c = m.citations[r.citation]
        when = condition_in_words(r.when, m.definitions)
        then = "<br>".join(_cell(then_in_words(x)) for x in r.then)
        prio = f" (priority {r.priority})" if r.priority else ""
        title = f"**{_cell(r.title)}**<br>" if r.title else ""
        out.append(f"| `{r.id}`{prio} | {title}{_cell(when)} | {then} | {_cell(c.guideline)} ({c.year}), {_cell(c.section)} |")
    out += ["", "## Referral and treatment steps", "", "```mermaid", mermaid(cp), "```", "", "## Changelog", ""]
    for e in m.changelog:
        out.append(f"- **{e.version}** ({e.date.isoformat()}): {e.change}")
    if not m.changelog:
        out.append("- (none)")
    out += ["", "## Needs committee sign-off", ""]
    pending = [(k, c) for k, c in m.citations.items() if UNCONFIRMED.search(c.section)]
    if not pending:
        out.append("Nothing: every citation is confirmed.")
    for key, c in pending:
        used = [cr.rule.id for cr in cp.rules if cr.rule.citation == key]
        rules = ", ".join(f"`{u}`" for u in used) or "no rule"
        out.append(f"- `{key}`: {c.guideline} ({c.year}): {c.section} (used by {rules})")
    return "\n".join(out) + "\n"


def write_docs(pathways: Iterable[CheckedPathway], out_dir: Path | str) -> list[Path]:
    """Write ``<out_dir>/<pathway id>.md`` for each pathway and an index; return the files written."""
    base = Path(out_dir)
    base.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    items: Sequence[CheckedPathway] = sorted(pathways, key=lambda p: p.id)
    for cp in items:
        path = base / f"{cp.id}.md"
        path.write_text(render(cp), encoding="utf-8")
        written.append(path)
    index = ["# Pathway review pages", "", "| pathway | version | sha256 | rules |", "|---|---|---|---|"]
    for cp in items:
        index.append(f"| [{cp.model.title}]({cp.id}.md) | {cp.version} | `{cp.sha256[:12]}` | {len(cp.rules)} |")
    idx = base / "README.md"
    idx.write_text("\n".join(index) + "\n", encoding="utf-8")
    written.append(idx)
    return written
