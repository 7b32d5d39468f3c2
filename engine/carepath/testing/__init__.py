"""Property-based testing of pathways: case generators, invariants, a runner, coverage and mutation.

Public entry points::

    from carepath.testing import cases            # Hypothesis strategy of valid cases
    from carepath.testing.invariants import Checker, Violation
    from carepath.testing.runner import run_check
    from carepath.testing.mutation import run_mutation
"""

from __future__ import annotations

from .strategies import ANY, CaseSpace, cases

__all__ = ["ANY", "CaseSpace", "cases"]
