"""The errors the client raises, and the records they carry.

``CarepathError`` is the root of every error carepath raises on purpose, in the client and in the
engine (``carepath.errors`` re-exports these classes and adds the engine's own: a pathway that
fails to load, an unknown pathway id). So a case the server rejects raises the same ``CaseError``,
with the same field violations, as the in-process engine would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # grpc is imported by the client itself; the engine imports these errors without it
    import grpc

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


class CaseError(CarepathError):
    """A case broke the contract; nothing was evaluated."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(str(v) for v in violations))


class CallError(CarepathError):
    """A call failed with a gRPC status other than INVALID_ARGUMENT."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message if code.name == "NOT_FOUND" else f"{code.name}: {message}")
