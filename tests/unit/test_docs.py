"""The committed committee review pages match the pathways (they carry each pathway's sha256)."""

from __future__ import annotations

from pathlib import Path

from carepath.docs import write_docs
from carepath.evaluate import Engine

ROOT = Path(__file__).resolve().parents[2]


def test_review_pages_are_current(tmp_path: Path) -> None:
    engine = Engine.from_directory(ROOT / "pathways")
    for page in write_docs(engine.pathways, tmp_path):
        committed = ROOT / "docs" / "pathways" / page.name
        assert committed.exists(), f"missing {committed}: run carepath docs"
        assert page.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), "stale review page: run carepath docs"


def test_review_page_has_rules_flowchart_and_changelog(tmp_path: Path) -> None:
    engine = Engine.from_directory(ROOT / "pathways")
    write_docs(engine.pathways, tmp_path)
    text = (tmp_path / "hypertension.md").read_text(encoding="utf-8")
    for heading in ("## Rules", "```mermaid", "## Changelog", "## Needs committee sign-off"):
        assert heading in text
    assert engine.pathway("hypertension").sha256 in text
