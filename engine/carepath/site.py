"""Site profiles: what a care site can do (fundus photography, point-of-care HbA1c, ...).

A deployment declares its site once, in a small YAML file given to ``evaluate``, ``serve`` and
``batch`` with ``--site FILE``; conditions ask for a capability with ``site_has(name)``, so one
pathway orders a test where the site can do it and refers where it cannot. Without a file the
engine uses :data:`DEFAULT_SITE`, a site that declares no optional capability (every
``site_has`` is false), and the decision names the profile it used, as it names pathway versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import lang
from .errors import Diagnostic, PathwayError
from .load import Located, load_file


class SiteModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64, description="The site profile's id, shown in decisions.")
    title: str = Field(min_length=1, description="What kind of site this is, in words.")
    capabilities: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]] = Field(
        default_factory=list, description="Names from the dictionary's site_capabilities that this site can do."
    )


@dataclass(frozen=True)
class Site:
    """A site profile as the engine uses it; ``identity`` is how a decision names it."""

    id: str
    title: str
    capabilities: frozenset[str]
    sha256: str = ""
    located: Located | None = field(default=None, compare=False, repr=False)

    @property
    def identity(self) -> dict[str, str]:
        """How a decision names it: id and content hash (empty for the built-in default)."""
        return {"id": self.id, "sha256": self.sha256}

    def check(self, vocab: lang.Vocabulary) -> None:
        """Raise PathwayError naming each capability the dictionary does not declare."""
        diags: list[Diagnostic] = []
        for i, cap in enumerate(sorted(self.capabilities) if self.located is None else self._written()):
            if cap not in vocab.capabilities:
                why = f"unknown site capability {cap!r}" + lang.did_you_mean(cap, vocab.capabilities)
                loc = self.located
                diags.append(loc.diag(("capabilities", i), why) if loc else Diagnostic("<site>", 1, 1, "capabilities", why))
        if diags:
            raise PathwayError(diags)

    def _written(self) -> list[str]:
        assert self.located is not None
        return list(self.located.data.get("capabilities") or [])


DEFAULT_SITE = Site("default", "A site that declares no optional capabilities (every site_has() is false)", frozenset())


def load_site(path: Path | str) -> Site:
    """A site profile file, checked for shape (PathwayError with file:line:col diagnostics)."""
    loc = load_file(Path(path), str(path))
    if not isinstance(loc.data, dict):
        raise PathwayError([loc.diag((), "a site profile is a YAML mapping: id, title, capabilities")])
    try:
        m = SiteModel.model_validate(loc.data)
    except ValidationError as exc:
        from .validate import _structure_errors

        raise PathwayError(_structure_errors(loc, exc)) from None
    return Site(m.id, m.title, frozenset(m.capabilities), loc.sha256, loc)
