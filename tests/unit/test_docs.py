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


def test_review_pages_name_code_sets_and_target_profiles_and_list_their_members(tmp_path: Path) -> None:
    engine = Engine.from_directory(ROOT / "tests" / "fixtures" / "lang_v2")
    write_docs(engine.pathways, tmp_path)
    page = (tmp_path / "v2_htn.md").read_text(encoding="utf-8")
    assert "not taking [antihypertensive](dictionary.md#set-antihypertensive)" in page
    assert "above the [bp](dictionary.md#target-bp) target" in page
    assert "stop RAS blocker (ras_blocker)" in page, "a recommendation naming a set is shown as written"
    assert "(every patient, whatever the diagnosis)" in page, "a scope: everyone rule says so"
    shared = (tmp_path / "dictionary.md").read_text(encoding="utf-8")
    assert '<a id="set-ras_blocker"></a>`ras_blocker` | RAS blockers | ATC | `C09A`, `C09B`, `C09C`, `C09D`, `C09XA` |' in shared
    assert "| [diabetic_or_ckd](#def-diabetic_or_ckd) | sbp < 130 and dbp < 80 |" in shared
    assert "| `sbp` (systolic BP) | the day it was taken |" in shared and "| `potassium` (potassium) | 90 days |" in shared
    assert "| `fundus_photography` | retinal photography on site |" in shared
    assert "every patient, whatever the diagnosis" in (tmp_path / "v2_safety.md").read_text(encoding="utf-8")
