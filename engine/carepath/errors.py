"""One root exception, two families: pathway errors (authoring time) and case errors (call time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    """A problem in a pathway file, located to the character.

    An error fails validation; a warning (the readability checks, carepath.readability) is printed
    as ``FILE:LINE:COL: path: warning: message`` and fails only ``carepath validate --strict``.
    """

    file: str
    line: int
    col: int
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        kind = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{kind}{self.message}"


@dataclass(frozen=True)
class FieldViolation:
    """A problem in a case, named by its field path (e.g. ``observations[2].unit``)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class CarepathError(Exception):
    """Root of every error carepath raises on purpose."""


class PathwayError(CarepathError):
    """A pathway (or set of pathways) failed to load, validate or compile."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class CaseError(CarepathError):
    """A case broke the contract; nothing was evaluated."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(str(v) for v in violations))


class UnknownPathwayError(CarepathError):
    """A caller asked for a pathway id that is not loaded."""

    def __init__(self, pathway_id: str, known: list[str]) -> None:
        self.pathway_id = pathway_id
        self.known = known
        shown = pathway_id if len(pathway_id) <= 64 else pathway_id[:63] + "…"  # never echo a 10,000-character id
        super().__init__(f"unknown pathway {shown!r} (loaded: {', '.join(known) or 'none'})")


class Terminated(KeyboardInterrupt):
    """SIGTERM, where a command stops on it as on Ctrl-C (batch, synth): exit 143, not 130."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: stop as Ctrl-C does (the same clean-up runs), as Terminated."""
    raise Terminated()
