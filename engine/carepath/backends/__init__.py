"""Interchangeable evaluators of a pathway set behind one protocol (see base.py): ``"durable"``
(durable-rules, production) and ``"reference"`` (pure Python). Importing this package imports
neither backend's module; ``resolve`` imports the one asked for."""

from .base import BACKENDS, Backend, CompiledSet, resolve

__all__ = ["BACKENDS", "Backend", "CompiledSet", "resolve"]
