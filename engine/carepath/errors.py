"""One root exception, two families: pathway errors (authoring time) and case errors (call time).

The root, the case family and the records they carry are defined in the client package
(carepath_client.errors), so the client and the engine raise the same classes; they are
re-exported here.
"""

from __future__ import annotations

from carepath_client.errors import CarepathError, CaseError, Diagnostic, FieldViolation

__all__ = [
    "CarepathError",
    "CaseError",
    "Diagnostic",
    "FieldViolation",
    "PathwayError",
    "Terminated",
    "UnknownPathwayError",
    "raise_terminated",
]


class PathwayError(CarepathError):
    """A pathway (or set of pathways) failed to load, validate or compile."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


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
