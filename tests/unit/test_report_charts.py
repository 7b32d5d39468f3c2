"""carepath report's HTML page: its charts (matplotlib, inline SVG) on real decisions of the bundled pathways."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED

from carepath.evaluate import Engine
from carepath.population.batch import dumps_line
from carepath.population.report import LABEL_CHARS, Summary, aggregate, bar_chart, charts, render_html, render_markdown
from carepath.population.synth import synth_lines

PATHWAYS = BUNDLED
CHART_TITLES = [
    "Referral mix",
    "Blood pressure control (latest reading read by a rule)",
    "HbA1c control (latest value read by a rule)",
    "Tests due",
    "Follow-up interval (days)",
    "Most-fired rules",
]


@pytest.fixture(scope="module")
def decisions(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "decisions.jsonl"
    path.write_bytes(b"\n".join(dumps_line(engine.evaluate(json.loads(x))) for x in synth_lines(300, seed=7)) + b"\n")
    return path


@pytest.fixture(scope="module")
def summary(decisions: Path) -> Summary:
    with decisions.open("rb") as fh:
        return aggregate(fh)


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, re.S)


def texts(svg: str) -> list[str]:
    return re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)


def test_one_svg_per_chart_with_its_title_and_numbers(summary: Summary) -> None:
    page = render_html(summary, "Luohu, week 48")
    found = svgs(page)
    assert len(found) == len(CHART_TITLES) == len(charts(summary))
    n = summary.decisions
    for svg, title in zip(found, CHART_TITLES, strict=True):
        assert f'aria-label="{title}"' in svg and f"<title>{title}</title>" in svg and 'role="img"' in svg
        assert title in texts(svg)  # drawn as text too, not as glyph outlines
        assert "<?xml" not in svg and "<!DOCTYPE" not in svg
    # the referral chart's last bar: no referral, with its count and share of the decisions
    no_ref = n - sum(summary.referrals.values())
    assert f"{no_ref:,} ({100 * no_ref / n:.1f}%)" in texts(found[0]) and "no referral" in texts(found[0])
    bp = texts(found[1])
    for band in ("<140/90", ">=180/110", "not read"):
        assert band.replace("<", "&lt;").replace(">", "&gt;") in bp
        assert f"{summary.bp[band]:,} ({100 * summary.bp[band] / n:.1f}%)" in bp
    rule, fired = summary.rules.most_common(1)[0]
    assert rule in texts(found[5]) and f"{fired:,} ({100 * fired / n:.1f}%)" in texts(found[5])
    ids = re.findall(r'\bid="([^"]*)"', page)
    assert len(ids) == len(set(ids)) > 0  # six charts on one page, no id twice
    for ref in re.findall(r"url\(#([^)]*)\)|href=\"#([^\"]*)\"", page):
        assert (ref[0] or ref[1]) in ids  # every reference resolves within the page


def test_the_same_data_gives_the_same_bytes(decisions: Path, summary: Summary) -> None:
    page = render_html(summary, "t")
    assert render_html(summary, "t") == page
    assert "Date" not in page and "dc:date" not in page
    code = (
        "import sys; from carepath.population.report import aggregate, render_html; "
        "sys.stdout.write(render_html(aggregate(open(sys.argv[1], 'rb')), 't'))"
    )
    other = subprocess.run([sys.executable, "-c", code, str(decisions)], capture_output=True, text=True, check=True).stdout
    assert other == page  # another process: no per-process salt or counter leaks into the SVG


def test_long_labels_are_cut_and_an_empty_chart_is_left_out() -> None:
    long = "up routine ophthalmology (fundus photography, both eyes, annual)"
    svg = bar_chart("Referral mix", [(long, 3), ("no referral", 7)], 10)
    shown = texts(svg)
    assert long[: LABEL_CHARS - 1] + "…" in shown and long not in shown
    assert "3 (30.0%)" in shown and "7 (70.0%)" in shown
    assert "7" in texts(bar_chart("counts only", [("a", 7)]))  # no total: counts without a share
    assert "costs $5 & $6" in "".join(texts(bar_chart("t", [("costs $5 & $6", 1)]))).replace("&amp;", "&")  # no TeX
    assert bar_chart("nothing", []) == ""
    # no decisions: the referral and control charts (all bars at 0), none for tests, follow-up or rules
    assert [re.search(r"<title>(.*)</title>", c)[1] for c in charts(Summary())] == CHART_TITLES[:3]  # type: ignore[index]


def test_markdown_has_no_charts(summary: Summary) -> None:
    md = render_markdown(summary, "t")
    assert "<svg" not in md and "## Referrals, by direction and urgency" in md


def test_importing_the_report_or_the_service_does_not_import_matplotlib_or_tqdm() -> None:
    code = (
        "import sys, carepath, carepath.cli, carepath.population.report, carepath.population.batch, carepath.service.server; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'tqdm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
