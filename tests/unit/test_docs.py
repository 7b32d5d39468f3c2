"""The committed committee review pages match the pathways (they carry each pathway's sha256)."""

from __future__ import annotations

from pathlib import Path

from conftest import BUNDLED, ROOT

from carepath.docs import write_docs
from carepath.evaluate import Engine


def test_review_pages_are_current(tmp_path: Path) -> None:
    engine = Engine.from_directory(BUNDLED)
    for page in write_docs(engine.pathways, tmp_path):
        committed = ROOT / "docs" / "pathways" / page.name
        assert committed.exists(), f"missing {committed}: run carepath docs"
        assert page.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), "stale review page: run carepath docs"


def test_review_page_has_rules_flowchart_and_changelog(tmp_path: Path) -> None:
    engine = Engine.from_directory(BUNDLED)
    write_docs(engine.pathways, tmp_path)
    text = (tmp_path / "hypertension.md").read_text(encoding="utf-8")
    for heading in ("## Rules", "```mermaid", "## Changelog", "## Needs committee sign-off"):
        assert heading in text
    assert engine.pathway("hypertension").sha256 in text
