"""A manager's summary of batch decisions: counts and rates, and a few charts (matplotlib, inline SVG).

Streaming: the decisions file is read once, line by line; only counters are kept.
BP and HbA1c control come from the values the fired rules read (the decision's trace), so they
cover the patients some rule looked at; "not read" counts the rest.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

BP_BANDS = ("<140/90", "140-159/90-99", "160-179/100-109", ">=180/110", "not read")
A1C_BANDS = ("<7.0%", "7.0-7.9%", "8.0-8.9%", "9.0-9.9%", ">=10%", "not read")


@dataclass
class Summary:
    decisions: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_lines: list[int] = field(default_factory=list)  # input (cohort) lines of batch's error records
    foreign: int = 0  # lines of the report's own input that are neither decisions nor error records
    foreign_lines: list[int] = field(default_factory=list)
    pathways: dict[str, str] = field(default_factory=dict)  # id -> "version (sha256 prefix)"
    enrolled: Counter[str] = field(default_factory=Counter)
    kind_patients: Counter[str] = field(default_factory=Counter)
    kind_total: Counter[str] = field(default_factory=Counter)
    pathway_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    tests: Counter[str] = field(default_factory=Counter)
    meds: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, atc)
    med_names: dict[str, str] = field(default_factory=dict)
    referrals: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (direction, urgency, specialty)
    follow_up: Counter[int] = field(default_factory=Counter)
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    rule_pathway: dict[str, str] = field(default_factory=dict)
    bp: Counter[str] = field(default_factory=Counter)
    a1c: Counter[str] = field(default_factory=Counter)
    no_recommendation: int = 0


def _bp_band(sbp: Any, dbp: Any) -> str:
    if not isinstance(sbp, (int, float)) or not isinstance(dbp, (int, float)):
        return "not read"
    if sbp >= 180 or dbp >= 110:
        return ">=180/110"
    if sbp >= 160 or dbp >= 100:
        return "160-179/100-109"
    if sbp >= 140 or dbp >= 90:
        return "140-159/90-99"
    return "<140/90"


def _a1c_band(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "not read"
    for hi, band in ((7.0, "<7.0%"), (8.0, "7.0-7.9%"), (9.0, "8.0-8.9%"), (10.0, "9.0-9.9%")):
        if v < hi:
            return band
    return ">=10%"


def add(s: Summary, d: dict[str, Any]) -> None:
    if "error" in d:
        s.errors[str(d["error"])] += 1
        if len(s.error_lines) < 20 and isinstance(d.get("line"), int):
            s.error_lines.append(d["line"])
        return
    s.decisions += 1
    for p in d.get("pathways", []):
        s.pathways.setdefault(p["id"], f"{p.get('version', '?')} ({str(p.get('sha256', ''))[:12]})")
        if p.get("enrolled"):
            s.enrolled[p["id"]] += 1
    values: dict[str, Any] = {}
    for t in d.get("trace", []):
        rule = str(t.get("rule"))
        s.rules[rule] += 1
        s.rule_pathway.setdefault(rule, str(t.get("pathway", "")))
        for k, v in (t.get("values") or {}).items():
            values.setdefault(k, v)
    recs = d.get("recommendations", [])
    if not recs:
        s.no_recommendation += 1
    kinds: set[str] = set()
    for r in recs:
        kind = str(r["kind"])
        kinds.add(kind)
        s.kind_total[kind] += 1
        for rule in r.get("rules") or [r.get("rule")]:
            s.pathway_kind[(s.rule_pathway.get(str(rule), "?"), kind)] += 1
        if kind == "test":
            s.tests[str(r.get("code"))] += 1
        elif kind == "medication":
            atc = str(r.get("atc"))
            s.meds[(str(r.get("action")), atc)] += 1
            s.med_names.setdefault(atc, str(r.get("name", "")))
        elif kind == "referral":
            s.referrals[(str(r.get("direction")), str(r.get("urgency", "routine")), str(r.get("specialty", "")))] += 1
        elif kind == "follow_up":
            s.follow_up[int(r.get("days", 0))] += 1
        elif kind == "alert":
            s.alerts[(str(r.get("severity")), str(r.get("text")))] += 1
    for k in kinds:
        s.kind_patients[k] += 1
    s.bp[_bp_band(values.get("sbp"), values.get("dbp"))] += 1
    s.a1c[_a1c_band(values.get("hba1c"))] += 1


def is_decision(d: Any) -> bool:
    """The shape `carepath batch` writes: pathways, recommendations (each with a kind) and trace."""
    return (
        isinstance(d, dict)
        and isinstance(d.get("pathways"), list)
        and isinstance(d.get("trace"), list)
        and isinstance(d.get("recommendations"), list)
        and all(isinstance(r, dict) and isinstance(r.get("kind"), str) and _fields_typed(r) for r in d["recommendations"])
        and all(isinstance(p, dict) and isinstance(p.get("id"), str) for p in d["pathways"])
        and all(isinstance(t, dict) and isinstance(t.get("values") or {}, dict) for t in d["trace"])
    )


def _fields_typed(r: dict[str, Any]) -> bool:
    """The fields add() computes with have their contract types (a line that only looks like a
    decision, e.g. "days": "abc" or 1e400, is not counted as one)."""
    days = r.get("days", 0)
    rules = r.get("rules", [])
    return isinstance(days, int) and not isinstance(days, bool) and isinstance(rules, list) and all(isinstance(x, str) for x in rules)


def aggregate(lines: Iterable[bytes | str]) -> Summary:
    """Count decisions and error records; anything else is counted, with its line number, as
    not a decision (a cohort file given by mistake is told apart from a report of no findings)."""
    s = Summary()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
            d = None
        if (isinstance(d, dict) and "error" in d) or is_decision(d):
            add(s, d)
            continue
        s.foreign += 1
        if len(s.foreign_lines) < 20:
            s.foreign_lines.append(n)
    return s


# ---------------------------------------------------------------- tables
def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else "-"


def tables(s: Summary) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every section; shared by the Markdown and HTML renderings."""
    n = s.decisions
    out: list[tuple[str, list[str], list[list[str]]]] = []
    total_err = sum(s.errors.values())
    err_lines = f" (first cohort lines: {', '.join(map(str, s.error_lines[:10]))})" if total_err else ""
    out.append(
        (
            "Run",
            ["measure", "value"],
            [
                ["decisions", f"{n:,}"],
                ["error records", f"{total_err:,}{err_lines}"],
                ["no recommendation", f"{s.no_recommendation:,} ({_pct(s.no_recommendation, n)})"],
            ]
            + (
                [["lines that are not decisions", f"{s.foreign:,} (first lines of this file: {', '.join(map(str, s.foreign_lines[:10]))})"]]
                if s.foreign
                else []
            )
            + [[f"pathway {pid}", ver] for pid, ver in sorted(s.pathways.items())],
        )
    )
    out.append(
        ("Enrolment by pathway", ["pathway", "patients", "rate"], [[p, f"{c:,}", _pct(c, n)] for p, c in sorted(s.enrolled.items())])
    )
    kinds = ["referral", "alert", "medication", "test", "follow_up"]
    out.append(
        (
            "Recommendations by kind",
            ["kind", "patients with one", "rate", "recommendations"],
            [[k, f"{s.kind_patients[k]:,}", _pct(s.kind_patients[k], n), f"{s.kind_total[k]:,}"] for k in kinds],
        )
    )
    pk = sorted(s.pathway_kind.items())
    out.append(
        (
            "Recommendations by pathway and kind (by the rules that made them)",
            ["pathway", "kind", "count"],
            [[p, k, f"{c:,}"] for (p, k), c in pk],
        )
    )
    out.append(("Tests due, by test", ["test", "patients", "rate"], [[t, f"{c:,}", _pct(c, n)] for t, c in s.tests.most_common()]))
    out.append(
        (
            "Medication actions, by class",
            ["action", "ATC", "name", "patients", "rate"],
            [
                [a, atc, s.med_names.get(atc, ""), f"{c:,}", _pct(c, n)]
                for (a, atc), c in sorted(s.meds.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        )
    )
    out.append(
        (
            "Referrals, by direction and urgency",
            ["direction", "urgency", "specialty", "patients", "rate"],
            [[d, u, sp, f"{c:,}", _pct(c, n)] for (d, u, sp), c in sorted(s.referrals.items(), key=lambda kv: (-kv[1], kv[0]))],
        )
    )
    out.append(
        ("Follow-up intervals", ["days", "patients", "rate"], [[str(d), f"{c:,}", _pct(c, n)] for d, c in sorted(s.follow_up.items())])
    )
    out.append(
        (
            "Alerts",
            ["severity", "text", "patients"],
            [[sv, t, f"{c:,}"] for (sv, t), c in sorted(s.alerts.items(), key=lambda kv: (-kv[1], kv[0]))],
        )
    )
    out.append(
        (
            "Most-fired rules",
            ["rule", "pathway", "fired", "rate"],
            [[r, s.rule_pathway.get(r, ""), f"{c:,}", _pct(c, n)] for r, c in s.rules.most_common(25)],
        )
    )
    out.append(
        (
            "Blood pressure (latest, as read by the rules)",
            ["band", "patients", "rate"],
            [[b, f"{s.bp[b]:,}", _pct(s.bp[b], n)] for b in BP_BANDS],
        )
    )
    out.append(
        ("HbA1c (latest, as read by the rules)", ["band", "patients", "rate"], [[b, f"{s.a1c[b]:,}", _pct(s.a1c[b], n)] for b in A1C_BANDS])
    )
    return out


def render_markdown(s: Summary, title: str) -> str:
    return render_tables_markdown(title, tables(s))


Table = tuple[str, list[str], list[list[str]]]  # (heading, header, rows)


def render_tables_markdown(title: str, tables: list[Table]) -> str:
    """A Markdown page of titled tables (the report's look; carepath diff uses it too)."""
    lines = [f"# {title}", ""]
    for name, header, rows in tables:
        lines += [f"## {name}", ""]
        if not rows:
            lines += ["(none)", ""]
            continue
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- charts
_PALETTE = ("#3b6ea5", "#e07b39", "#5a9e5a", "#c0504d", "#8064a2", "#4bacc6", "#9b9b9b")
LABEL_CHARS = 40  # a longer bar label is cut with an ellipsis (the tables below the charts give it whole)


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def bar_chart(title: str, items: list[tuple[str, int]], total: int | None = None) -> str:
    """A horizontal bar chart drawn by matplotlib, as inline SVG for an HTML page ("" for no items).

    Each bar is labelled with its count and, given ``total``, its share. The SVG keeps its text as
    text (searchable, selectable, drawn in the reader's sans-serif) and carries the title as
    ``<title>`` and ``aria-label``. The same data gives the same bytes: no date in the metadata,
    ids hashed with a fixed salt, and every id prefixed by a digest of the title, so that the
    charts of one page share no id.

    matplotlib is imported here, not at the top: ``import carepath`` and the gRPC service never draw.
    """
    if not items:
        return ""
    import io

    import matplotlib
    from matplotlib.figure import Figure

    labels = [_short(label) for label, _ in items]
    values = [v for _, v in items]
    with matplotlib.rc_context(
        {
            "svg.hashsalt": "carepath",
            "svg.fonttype": "none",  # <text>, not glyph outlines: half the size, and the numbers stay text
            "font.family": "sans-serif",
            "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],  # DejaVu (shipped with matplotlib) measures the layout
            "font.size": 10,
            "text.parse_math": False,  # a label is shown as written: "$" is not TeX
        }
    ):
        fig = Figure(figsize=(8.5, 0.75 + 0.3 * len(items)), layout="constrained")  # inches at 72 pt
        ax = fig.add_subplot()
        bars = ax.barh(range(len(items)), values, height=0.75, color=[_PALETTE[i % len(_PALETTE)] for i in range(len(items))])
        ax.set_yticks(range(len(items)), labels)
        ax.invert_yaxis()  # the first item on top
        ax.set_xlim(0, (max(values) or 1) * 1.3)  # room for the count right of the longest bar
        ax.bar_label(bars, [f"{v:,} ({100 * v / total:.1f}%)" if total else f"{v:,}" for v in values], padding=4, fontsize=9)
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=12)
        ax.xaxis.set_visible(False)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # inline: no XML declaration, no DOCTYPE
    prefix = "c" + hashlib.sha256(title.encode()).hexdigest()[:8] + "-"
    svg = re.sub(r'(\bid="|url\(#|href="#)', lambda m: m.group(1) + prefix, svg)
    head = svg.index(">")
    label = html.escape(title)
    return svg[:head] + f' role="img" aria-label="{label}">\n<title>{label}</title>' + svg[head + 1 :]


def charts(s: Summary) -> list[str]:
    n = s.decisions
    ref = [(f"{d} {u} {sp}".strip(), c) for (d, u, sp), c in sorted(s.referrals.items(), key=lambda kv: (-kv[1], kv[0]))]
    ref.append(("no referral", n - sum(s.referrals.values())))
    return [
        c
        for c in (
            bar_chart("Referral mix", ref, n),
            bar_chart("Blood pressure control (latest reading read by a rule)", [(b, s.bp[b]) for b in BP_BANDS], n),
            bar_chart("HbA1c control (latest value read by a rule)", [(b, s.a1c[b]) for b in A1C_BANDS], n),
            bar_chart("Tests due", s.tests.most_common(12), n),
            bar_chart("Follow-up interval (days)", [(f"{d} days", c) for d, c in sorted(s.follow_up.items())], n),
            bar_chart("Most-fired rules", s.rules.most_common(12), n),
        )
        if c
    ]


def render_html(s: Summary, title: str) -> str:
    return render_tables_html(title, f"{s.decisions:,} decisions; {sum(s.errors.values()):,} error records.", charts(s), tables(s))


def render_tables_html(title: str, intro: str, svgs: list[str], tables: list[Table]) -> str:
    """An HTML page of charts and titled tables (the report's look; carepath diff uses it too)."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>"]
    body += [f'<div class="chart">{c}</div>' for c in svgs]
    for name, header, rows in tables:
        body.append(f"<h2>{esc(name)}</h2>")
        if not rows:
            body.append("<p>(none)</p>")
            continue
        body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        body.append("</tbody></table>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "th{background:#f0f0f0}td:nth-child(n+2){font-variant-numeric:tabular-nums}"
        ".chart{margin:1em 0}.chart svg{max-width:100%;height:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{style}</style></head>\n'
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
