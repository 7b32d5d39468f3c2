"""Load YAML keeping every node's line and column, so later stages can point at the source."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from .errors import Diagnostic, PathwayError

YamlPath = tuple[str | int, ...]


def format_path(path: YamlPath) -> str:
    """``('rules', 3, 'when')`` -> ``rules[3].when``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Located:
    """Parsed YAML data plus the (line, col) of every node, 1-based."""

    file: str
    text: str
    data: Any
    marks: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    styles: dict[YamlPath, str | None] = field(default_factory=dict)

    def where(self, path: YamlPath) -> tuple[int, int]:
        """Position of the deepest existing node on ``path``."""
        p = tuple(path)
        while p and p not in self.marks:
            p = p[:-1]
        return self.marks.get(p, (1, 1))

    def diag(self, path: YamlPath, message: str, offset: int | None = None) -> Diagnostic:
        line, col = self.where(path)
        if offset is not None and tuple(path) in self.marks:
            style = self.styles.get(tuple(path))
            if style in (None, "'", '"'):
                col += offset + (1 if style else 0)
        return Diagnostic(self.file, line, col, format_path(path), message)

    @property
    def sha256(self) -> str:
        """Hash of the canonical content: comments and key order do not change it."""
        return hashlib.sha256(canonical_json(self.data).encode()).hexdigest()


def _default(o: object) -> str:
    if isinstance(o, date):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_default)


def _walk(node: yaml.Node, path: YamlPath, loc: Located, errors: list[Diagnostic]) -> None:
    loc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.ScalarNode):
        loc.styles[path] = node.style
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _walk(child, (*path, i), loc, errors)
    elif isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                errors.append(Diagnostic(loc.file, line, col, format_path((*path, key)), f"duplicate key {key!r}"))
            seen.add(key)
            _walk(value_node, (*path, key), loc, errors)


def load_text(text: str, file: str) -> Located:
    """Parse YAML text; raise PathwayError with the position of a syntax error or duplicate key."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise PathwayError([Diagnostic(file, 1, 1, "", "the file is empty")])
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise PathwayError([Diagnostic(file, line, col, "", f"YAML syntax error: {msg}")]) from None
    except yaml.YAMLError as exc:
        raise PathwayError([Diagnostic(file, 1, 1, "", f"YAML error: {exc}")]) from None
    loc = Located(file=file, text=text, data=data)
    errors: list[Diagnostic] = []
    _walk(node, (), loc, errors)
    if errors:
        raise PathwayError(errors)
    return loc


def load_file(path: Path | str, display: str | None = None) -> Located:
    p = Path(path)
    name = display or str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PathwayError([Diagnostic(name, 1, 1, "", f"not valid UTF-8: {exc.reason}")]) from None
    except OSError as exc:
        raise PathwayError([Diagnostic(name, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    return load_text(text, name)
