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
    (r"\bconsecutive_visits\((\d+), ", r"at each of the last \1 visits ("),
    (r", apart (\d+)( days)?", r"; visits \1+ days apart"),
    (r", since (\w+)\)", r"; after the latest start of \1)"),
    (r"\babove_target\((\w+)\)", r"above the \1 target"),
    (r"\bat_target\((\w+)\)", r"at the \1 target"),
    (r"\blatest\((\w+)\)", r"latest \1 whatever its age"),
    (r"\bsite_has\((\w+)\)", r"this site can do \1"),
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
    if out == "everyone":
        return "every patient, whatever the diagnosis (safety rules)"
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


DICTIONARY_PAGE = "dictionary.md"


def shared_links(vocab: lang.Vocabulary) -> dict[str, str]:
    """Each name the shared dictionary gives a condition (code sets, target profiles, definitions),
    with the link to it on the dictionary page."""
    out = {name: f"{DICTIONARY_PAGE}#set-{name}" for name in vocab.code_sets}
    out.update({name: f"{DICTIONARY_PAGE}#target-{name}" for name in vocab.targets})
    out.update({name: f"{DICTIONARY_PAGE}#{definition_anchor(name)}" for name in vocab.shared_texts})
    return out


def _link_shared(worded: str, links: dict[str, str]) -> str:
    """Link each name of the shared dictionary in an already worded condition (not inside a link)."""
    if not links:
        return worded
    pattern = re.compile(r"(?<![\w#\[-])(" + "|".join(re.escape(n) for n in sorted(links, key=len, reverse=True)) + r")(?![\w\]])")
    return pattern.sub(lambda m: f"[{m.group(1)}]({links[m.group(1)]})", worded)


def condition_in_words(text: str, definitions: Collection[str] = (), links: dict[str, str] | None = None) -> str:
    """``when_in_words``, with each use of a definition's name a link to the definition on the page,
    and each name from the shared dictionary (``links``: code sets, target profiles, its
    definitions) a link to the dictionary page."""
    return _link_shared(_condition_in_words(text, definitions), links or {})


def _condition_in_words(text: str, definitions: Collection[str] = ()) -> str:
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
    links = shared_links(cp.vocab)
    out = [
        f"# {m.title}",
        "",
        f"- **id:** `{m.id}`",
        f"- **version:** {m.version} ({m.status})",
        f"- **sha256:** `{cp.sha256}`",
        f"- **owners:** {', '.join(m.owners)}",
        f"- **who is in it:** {condition_in_words(m.applies_to, m.definitions, links)}",
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
            out.append(f'| <a id="{definition_anchor(name)}"></a>`{name}` | {_cell(condition_in_words(text, names[:i], links))} |')
        out.append("")
    out += [
        "## Rules",
        "",
        "| id | when | then | citation |",
        "|---|---|---|---|",
    ]
    for cr in cp.rules:
        r = m.rules[cr.index]  # as written: a recommendation may name a code set
        if r.scope == "everyone":
            r = r.model_copy(update={"title": f"{r.title or ''} (every patient, whatever the diagnosis)".strip()})
        c = m.citations[r.citation]
        when = condition_in_words(r.when, m.definitions, links)
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
    if items:
        page = base / DICTIONARY_PAGE
        page.write_text(render_dictionary(items), encoding="utf-8")
        written.append(page)
        what = "code sets and their members, target profiles, shared definitions, recency windows, site capabilities"
        index += ["", f"The shared dictionary ({what}): [{DICTIONARY_PAGE}]({DICTIONARY_PAGE})."]
    idx = base / "README.md"
    idx.write_text("\n".join(index) + "\n", encoding="utf-8")
    written.append(idx)
    return written


def render_dictionary(pathways: Sequence[CheckedPathway]) -> str:
    """The shared dictionary's review page: each code set with its members, each target profile's
    rows, the shared definitions, the recency windows and the site capabilities."""
    sets = {n: c for cp in pathways for n, c in cp.vocab.code_sets.items()}
    targets = {n: t for cp in pathways for n, t in cp.vocab.targets.items()}
    texts = {n: t for cp in pathways for n, t in cp.vocab.shared_texts.items()}
    capabilities = {n: d for cp in pathways for n, d in cp.vocab.capabilities.items()}
    windows = {c: od for cp in pathways for c, od in cp.vocab.observations.items() if od.current is not None}
    links = {n: f"#set-{n}" for n in sets} | {n: f"#target-{n}" for n in targets} | {n: f"#{definition_anchor(n)}" for n in texts}
    out = ["# The shared dictionary", "", "_Generated by `carepath docs` from the dictionary; do not edit by hand._", ""]
    out += ["## Code sets", "", "Used by name wherever a code list goes; a set's members include those of the sets it includes.", ""]
    out += ["| name | what | system | members | includes | source |", "|---|---|---|---|---|---|"]
    for n, c in sorted(sets.items()):
        inc = ", ".join(f"[{i}](#set-{i})" for i in c.includes)
        members = ", ".join(f"`{x}`" for x in c.codes)
        out.append(f'| <a id="set-{n}"></a>`{n}` | {_cell(c.label)} | {c.system.upper()} | {members} | {inc} | {_cell(c.source)} |')
    if not sets:
        out.append("| (none) | | | | | |")
    out += [
        "",
        "## Target profiles",
        "",
        "Rows are tried in order: the first whose *for* holds gives the target; the last is for everyone else.",
        "",
    ]
    for n, t in sorted(targets.items()):
        cite = f" ({_cell(t.citation)})" if t.citation else ""
        out += [f'### <a id="target-{n}"></a>`{n}`: {_cell(t.label)}{cite}', "", "| for | at target when |", "|---|---|"]
        for who, goal in t.texts:
            whom = _cell(condition_in_words(who, (), links)) if who else "everyone else"
            out.append(f"| {whom} | {_cell(condition_in_words(goal, (), links))} |")
        out.append("")
    if not targets:
        out += ["(none)", ""]
    out += ["## Shared definitions", "", "| name | means |", "|---|---|"]
    for name, text in texts.items():
        out.append(f'| <a id="{definition_anchor(name)}"></a>`{name}` | {_cell(condition_in_words(text, (), links))} |')
    if not texts:
        out.append("| (none) | |")
    out += [
        "",
        "## Recency windows",
        "",
        "A comparison on a value older than this is unknown (`latest(code)` reads it whatever its age).",
        "",
    ]
    out += ["| observation | current for |", "|---|---|"]
    for code, od in sorted(windows.items()):
        out.append(f"| `{code}` ({_cell(od.label)}) | {'the day it was taken' if od.current == 0 else f'{od.current} days'} |")
    if not windows:
        out.append("| (none: every value counts however old) | |")
    out += ["", "## Site capabilities", "", "What a site profile (`--site FILE`) may declare; `site_has(name)` reads it.", ""]
    out += ["| capability | what |", "|---|---|"]
    out += [f"| `{cap}` | {_cell(what)} |" for cap, what in sorted(capabilities.items())] or ["| (none) | |"]
    return "\n".join(out) + "\n"
