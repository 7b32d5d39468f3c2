"""The YAML loader: libyaml's parser (fast path) and PyYAML's pure-Python one (reference, and the
source of error messages) must give the same nodes, positions, styles and data, and the same
refusals of hostile input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from carepath import load

YAML_FILES = sorted(p for d in ("pathways", "tests", "examples") for p in (ROOT / d).rglob("*.y*ml"))


def nodes(node: yaml.Node | None, out: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    if node is None:
        return out
    style = getattr(node, "style", None) or None
    value = node.value if isinstance(node, yaml.ScalarNode) else None
    out.append((type(node).__name__, node.tag, node.start_mark.line, node.start_mark.column, style, value))
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            nodes(child, out)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            nodes(k, out)
            nodes(v, out)
    return out


def outcome(make: Any, text: str) -> tuple[Any, ...]:
    try:
        node, data = load._compose(make(text))
    except yaml.YAMLError as exc:
        return ("refused", type(exc).__name__)
    return ("read", nodes(node, []), data)


def test_libyaml_is_there() -> None:
    """PyYAML's wheels ship libyaml: without it every engine build would take ~4x as long."""
    assert load.CParser is not None


def test_both_parsers_agree_on_every_yaml_file_of_the_repository() -> None:
    assert len(YAML_FILES) > 250  # pathways, scenarios, broken pathways, fixtures
    refused = 0
    for path in YAML_FILES:
        text = path.read_text(encoding="utf-8")
        fast = outcome(load._FastLoader, text)
        assert fast == outcome(load._Loader, text), path
        refused += fast[0] == "refused"
    assert refused >= 1  # broken_pathways/27-yaml-syntax.yaml


@pytest.mark.parametrize(
    "text",
    [
        'a: {x: "血压 ≥ 140", y: 1, z: [é, ü, 2]}\nb: "≥"\n',  # columns count characters, not bytes
        "a: 1\r\nb:\r\n  - x\r\n  - 'y'\r\n",  # CRLF line ends
        "\ufeffa: 1\nb: [1, 2]\n",  # a byte-order mark
        "a: |\n  two\n  lines\nb: >-\n  folded\n  text\nc: 'it''s'\n",  # block and quoted styles
        "a: &x {k: 1}\nb: *x\nc: {<<: *x, m: 2}\n",  # anchors, aliases, merge keys
    ],
    ids=["non-ascii", "crlf", "bom", "styles", "aliases"],
)
def test_both_parsers_agree_on_awkward_text(text: str) -> None:
    assert outcome(load._FastLoader, text) == outcome(load._Loader, text)


def test_a_syntax_error_is_reported_by_the_reference_parser() -> None:
    """libyaml's messages differ (and carry no snippet): an error is always PyYAML's."""
    with pytest.raises(Exception) as exc:
        load.load_text("a: [1, 2\n- b\n", "p.yaml")
    assert "expected ',' or ']', but got '<stream end>'" in str(exc.value)
    assert str(exc.value).startswith("p.yaml:3:1: YAML syntax error:")


def test_a_set_read_into_memory_compiles_without_its_files(tmp_path: Path) -> None:
    """validate.read_set + validate_set (what a service worker compiles, and what replaces a dead one)
    check exactly what validate_paths checks, and need no file once read."""
    import shutil

    from carepath.evaluate import Engine, bundled_pathways
    from carepath.validate import read_set, validate_paths, validate_set

    d = tmp_path / "p"
    shutil.copytree(ROOT / "pathways", d)
    sources, diags = read_set([d], bundled_pathways())
    assert sources is not None and diags == []
    from_files, _ = validate_paths([d], bundled_pathways())
    shutil.rmtree(d)
    in_memory, diags = validate_set(sources)
    assert diags == []
    assert [(p.id, p.sha256, p.file) for p in in_memory] == [(p.id, p.sha256, p.file) for p in from_files]
    assert [p.id for p in Engine.from_sources(sources).pathways] == sorted(p.id for p in from_files)
    d.mkdir()
    (d / "a.yaml").write_bytes(b"id: \xff\n")
    partial, diags = read_set([d], bundled_pathways())
    assert partial is not None and partial.pathways == () and [x.message for x in diags] == ["not valid UTF-8: invalid start byte"]
