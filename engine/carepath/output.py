"""The one JSON rendering of decisions (the CLI, the test tools and the service's JSON all print this)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps"]


def dumps(obj: Any) -> str:
    """The one JSON rendering of decisions: byte-identical for identical decisions."""
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"
