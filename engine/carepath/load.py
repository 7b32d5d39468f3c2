"""Load YAML keeping every node's line and column, so later stages can point at the source."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from .errors import Diagnostic, PathwayError

_cyaml: Any
try:
    from yaml import cyaml as _cyaml
except ImportError:  # a PyYAML built without libyaml: the pure-Python parser only
    _cyaml = None
CParser: Any = getattr(_cyaml, "CParser", None)

YamlPath = tuple[str | int, ...]

# Bounds on the work one file may ask for (a pathway is ~1,700 nodes, 6 levels deep):
MAX_DEPTH = 64  # nesting levels, counted through aliases
MAX_NODES = 50_000  # nodes, each alias counted as the nodes it repeats (an "alias bomb" is refused)


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


class _TooMuch(yaml.MarkedYAMLError):
    """The file asks for more work than a pathway ever needs (or is not data Python can hold): where and why."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(problem=message, problem_mark=mark)
        self.mark = mark
        self.message = message


class _Bounded(Composer):
    """A composer that bounds nesting depth and alias expansion while composing, before anything
    recursive or expanding (the constructor, _walk, pydantic, canonical_json) sees the nodes, and
    refuses recursive aliases and unconvertible scalars (a 5,000-digit integer) with their position."""

    def _init_bounds(self) -> None:
        self._depth = 0  # of the node being composed, aliases expanded
        self._peak = 0  # deepest level reached in the current subtree
        self._nodes = 0  # nodes so far, aliases expanded
        self._anchored: dict[int, tuple[int, int]] = {}  # id(anchored node) -> (nodes, height)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[attr-defined]
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # raises on an undefined alias
            size = self._anchored.get(id(node))
            if size is None:
                raise _TooMuch(event.start_mark, f"alias *{event.anchor} is inside the node it names (a recursive structure)")
            self._count(size[0], event.start_mark, f"alias *{event.anchor}")
            if self._depth + size[1] > MAX_DEPTH:
                raise _TooMuch(event.start_mark, f"alias *{event.anchor} nests the file more than {MAX_DEPTH} levels deep (the limit)")
            self._peak = max(self._peak, self._depth + size[1])
            return node
        depth = self._depth + 1
        if depth > MAX_DEPTH:
            raise _TooMuch(event.start_mark, f"nested more than {MAX_DEPTH} levels deep (the limit)")
        start, outer_peak = self._nodes, self._peak
        self._count(1, event.start_mark, "this node")
        self._depth = self._peak = depth
        node = super().compose_node(parent, index)
        if event.anchor is not None:
            self._anchored[id(node)] = (self._nodes - start, self._peak - depth + 1)
        self._depth, self._peak = depth - 1, max(outer_peak, self._peak)
        return node

    def _count(self, n: int, mark: Any, what: str) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise _TooMuch(mark, f"{what} takes the file past {MAX_NODES:,} YAML nodes (the limit; aliases count as the nodes they repeat)")


class _Constructor(SafeConstructor):
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node.tag in ("tag:yaml.org,2002:binary", "tag:yaml.org,2002:set"):  # bytes and sets are not JSON data
            raise _TooMuch(node.start_mark, f"!!{node.tag.rsplit(':', 1)[-1]} values are not allowed (the format is JSON data)")
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # int('9' * 5000), date(2026, 2, 30): say where
            value = str(node.value)
            shown = value if len(value) <= 40 else f"{value[:20]}...({len(value)} characters)"
            raise _TooMuch(node.start_mark, f"cannot read {shown!r} as {node.tag.rsplit(':', 1)[-1]}: {_reason(exc)}") from None


class _Loader(_Bounded, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _Constructor, Resolver):
    """PyYAML's pure-Python SafeLoader with the bounds: the reference, and the source of every
    error message (a position and a snippet of the text)."""

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        Composer.__init__(self)
        _Constructor.__init__(self)
        Resolver.__init__(self)
        self._init_bounds()


if CParser is not None:

    class _FastLoader(_Bounded, CParser, _Constructor, Resolver):  # type: ignore[misc]
        """The same loader over libyaml's parser (C): the same nodes, marks and data (checked on
        every YAML file of the repository), 7 times as fast; composing stays in Python, bounds
        included. Used only for files it reads without complaint (see _parse)."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            Composer.__init__(self)
            _Constructor.__init__(self)
            Resolver.__init__(self)
            self._init_bounds()


def _reason(exc: Exception) -> str:
    msg = str(exc)
    if "integer string conversion" in msg:
        return f"more than {sys.get_int_max_str_digits() or 4300} digits"
    return msg


def _walk(node: yaml.Node, path: YamlPath, loc: Located, errors: list[Diagnostic]) -> None:
    loc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.ScalarNode):
        loc.styles[path] = node.style or None  # libyaml says '' for plain, PyYAML None
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


class _JsonTypedLoader(_Loader):
    """For case files: plain scalars are typed as JSON types them (YAML 1.2's JSON schema), not by
    YAML 1.1's rules: ``yes``/``no``/``on``/``off`` stay strings (and fail validation as non-booleans),
    ``0x3A``, ``072``, ``1_000`` and ``1:30`` are not numbers, ``.nan``/``.inf`` are not floats and
    dates stay strings; a key given twice is refused (never last-wins)."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 (PyYAML's own class attribute, filled below)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise _TooMuch(key_node.start_mark, f"duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep)


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", r"^(?:null|~|)$", ["n", "~", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|false)$", ["t", "f"]),
    ("tag:yaml.org,2002:int", r"^-?(?:0|[1-9][0-9]*)$", list("-0123456789")),
    ("tag:yaml.org,2002:float", r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)$", list("-0123456789")),
):
    _JsonTypedLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def safe_load(text: str) -> Any:
    """A case file's YAML with JSON typing (see _JsonTypedLoader), within the same bounds as a
    pathway; yaml.YAMLError when refused."""
    loader = _JsonTypedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _compose(loader: Any) -> tuple[yaml.Node | None, Any]:
    try:
        node = loader.get_single_node()
        return node, (None if node is None else loader.construct_document(node))
    finally:
        loader.dispose()


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """Root node and data: by libyaml when it reads the file without complaint, else by the
    pure-Python parser, whose errors (and their positions) are the ones reported."""
    if CParser is not None:
        try:
            return _compose(_FastLoader(text))
        except Exception:  # the reference parser below reports the error (or disagrees: then it decides)
            pass
    return _compose(_Loader(text))


def load_text(text: str, file: str) -> Located:
    """Parse YAML text; raise PathwayError with the position of a syntax error or duplicate key."""
    try:
        node, data = _parse(text)
        if node is None:
            raise PathwayError([Diagnostic(file, 1, 1, "", "the file is empty")])
    except _TooMuch as exc:
        line, col = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark else (1, 1)
        raise PathwayError([Diagnostic(file, line, col, "", exc.message)]) from None
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
