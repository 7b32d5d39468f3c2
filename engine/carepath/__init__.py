"""carepath: clinical-pathway decision support compiled into durable-rules.

The public Python API is the names in ``__all__`` (documented in docs/python-api.md)::

    from carepath import Engine, validate_pathways

    engine = Engine.from_directory()                 # the bundled pathways, the durable-rules backend
    decision = engine.evaluate(case)                 # a case as contract JSON (a dict) in, a Decision out

Everything else in the package is internal and may change. The names are imported on first use
(``import carepath`` loads no engine module), so the command line and the client stay quick to start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it (the one place each public name lives)
_EXPORTS = {
    "Backend": "carepath.backends",
    "CarepathError": "carepath.errors",
    "Case": "carepath.case",
    "CaseError": "carepath.errors",
    "CheckedPathway": "carepath.validate",
    "Decision": "carepath.contract",
    "Diagnostic": "carepath.errors",
    "Engine": "carepath.evaluate",
    "FieldViolation": "carepath.errors",
    "PathwayError": "carepath.errors",
    "Recommendation": "carepath.contract",
    "Settings": "carepath.settings",
    "Site": "carepath.site",
    "UnknownPathwayError": "carepath.errors",
    "bundled_pathways": "carepath.settings",
    "load_site": "carepath.site",
    "validate_pathways": "carepath.validate",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .backends import Backend as Backend
    from .case import Case as Case
    from .contract import Decision as Decision
    from .contract import Recommendation as Recommendation
    from .errors import CarepathError as CarepathError
    from .errors import CaseError as CaseError
    from .errors import Diagnostic as Diagnostic
    from .errors import FieldViolation as FieldViolation
    from .errors import PathwayError as PathwayError
    from .errors import UnknownPathwayError as UnknownPathwayError
    from .evaluate import Engine as Engine
    from .settings import Settings as Settings
    from .settings import bundled_pathways as bundled_pathways
    from .site import Site as Site
    from .site import load_site as load_site
    from .validate import CheckedPathway as CheckedPathway
    from .validate import validate_pathways as validate_pathways


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'carepath' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup finds it directly
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
