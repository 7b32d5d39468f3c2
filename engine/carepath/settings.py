"""Every environment variable carepath reads, and its defaults, in one place.

``current()`` reads the environment when it is called (not at import), so a process that sets a
variable before it asks sees it. The variables:

========================  ==========================================================  ================
variable                  what it sets                                                default
========================  ==========================================================  ================
``CAREPATH_PATHWAYS``     the default pathway directory (``bundled_pathways``)        the bundled set
``CAREPATH_SETTING``      FHIR input's setting when the caller gives none             ``community``
``CAREPATH_DEBUG``        any non-empty value: an internal error shows its traceback  off
``CAREPATH_LOOP``         ``asyncio``: the service runs without uvloop                ``uvloop``
``CAREPATH_FHIR_CACHE``   FHIR resources a worker keeps validated (0: none)           ``4096``
========================  ==========================================================  ================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NEAR", "Settings", "bundled_pathways", "current"]

NEAR = 5  # --explain lists this many of the rules that came close by default


@dataclass(frozen=True)
class Settings:
    """carepath's configuration from the environment (``current()``), each field with its default."""

    pathways: Path | None = None  # CAREPATH_PATHWAYS: the default pathway directory (None: the bundled set)
    setting: str | None = None  # CAREPATH_SETTING: FHIR input's default setting (None: community); checked by its user
    debug: bool = False  # CAREPATH_DEBUG: internal errors raise (a traceback) instead of one line and exit 70
    loop: str = "uvloop"  # CAREPATH_LOOP: the service's event loop (asyncio: no uvloop)
    near: int = NEAR  # how many close rules --explain lists (not from the environment)
    fhir_cache: int = 4096  # CAREPATH_FHIR_CACHE: validated FHIR resources a process keeps (0: none)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            pathways=Path(env["CAREPATH_PATHWAYS"]) if env.get("CAREPATH_PATHWAYS") else None,
            setting=env.get("CAREPATH_SETTING") or None,
            debug=bool(env.get("CAREPATH_DEBUG")),
            loop=env.get("CAREPATH_LOOP") or "uvloop",
            fhir_cache=_count(env.get("CAREPATH_FHIR_CACHE"), 4096),
        )


def _count(text: str | None, default: int) -> int:
    """A whole number >= 0 from the environment; the default when unset or not a number."""
    try:
        return max(0, int(text)) if text else default
    except ValueError:
        return default


def current() -> Settings:
    """The settings as the environment gives them now."""
    return Settings.from_env()


def bundled_pathways() -> Path:
    """The default pathway directory: $CAREPATH_PATHWAYS, the repo's pathways/, or the wheel's copy."""
    configured = current().pathways
    if configured is not None:
        return configured
    here = Path(__file__).resolve().parent
    for cand in (here.parent.parent / "pathways", here / "bundled_pathways"):
        if (cand / "dictionary.yaml").exists():
            return cand
    return here.parent.parent / "pathways"
