"""pytest plugin (entry point ``carepath``): a ``pathways`` fixture and YAML invariants as test items.

A committee's own test is a few lines::

    from hypothesis import given
    from carepath.testing import cases

    @given(case=cases(pregnant=True, conditions=["I10"]))
    def test_no_acei_in_pregnancy(pathways, case):
        decision = pathways.evaluate(case)
        assert not pathways.find(decision, kind="medication", action="start", atc="C09A")

or, with no Hypothesis in sight::

    def test_no_acei_in_pregnancy(pathways):
        pathways.assert_never("pregnant", {"kind": "medication", "action": "start", "atc": "C09A"})

``pytest pathways/hypertension.yaml`` (or any pathway file given on the command line) collects
each of its YAML invariants as one item; ``pathways.yaml_items()`` does the same for a
parametrised test. Options: ``--carepath-pathways DIR``, ``--carepath-profile dev|ci|thorough|pytest``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .strategies import set_default_pathways


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("carepath")
    group.addoption("--carepath-pathways", metavar="DIR", default=None, help="pathway directory for the `pathways` fixture")
    group.addoption("--carepath-profile", default="pytest", help="carepath Hypothesis profile: pytest (150), dev, ci, thorough")


def pytest_configure(config: pytest.Config) -> None:
    from .runner import register_profiles

    register_profiles()
    set_default_pathways(config.getoption("--carepath-pathways", None))
    config.addinivalue_line("markers", "carepath_invariant: a YAML invariant of a pathway")


class Pathways:
    """What a committee test needs: the engine, case strategies, evaluation and the invariant checks."""

    def __init__(self, directory: Path | str | None = None, profile: str = "pytest") -> None:
        from ..evaluate import Engine
        from .invariants import Checker
        from .strategies import CaseSpace

        self.directory = directory
        self.profile = profile
        self.engine = Engine.from_directory(directory)
        self.space = CaseSpace(self.engine.pathways)
        self.checker = Checker(self.engine)

    def cases(self, **kw: Any) -> Any:
        """Hypothesis strategy of cases over these pathways (same keywords as ``carepath.testing.cases``)."""
        return self.space.cases(**kw)

    def evaluate(self, case: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return self.engine.evaluate(case, **kw)

    def check(self, case: dict[str, Any]) -> dict[str, Any]:
        """Every built-in and YAML invariant on one case; raises ``Violation`` (an AssertionError)."""
        return self.checker.check(case)

    @staticmethod
    def find(decision: dict[str, Any], **pattern: Any) -> list[dict[str, Any]]:
        """Recommendations matching a pattern (keys equal; ``atc`` by prefix either way)."""
        from .invariants import matches

        return [r for r in decision["recommendations"] if matches(r, pattern)]

    def _property(self, given: str, pattern: dict[str, Any], word: str, pathway: str | None, examples: int | None) -> None:
        from .. import lang
        from ..model import Invariant
        from .invariants import YamlInvariant
        from .runner import _yaml_search, profile_settings

        cp = self.engine.pathway(pathway) if pathway else self.engine.pathways[0]
        expr, errs = lang.parse(given, cp.vocab)
        if errs:
            raise ValueError("; ".join(e.message for e in errs))
        inv_model = Invariant(id="committee.test", given=given, **{word: pattern})
        model = cp.model.model_copy(update={"invariants": [inv_model]})
        cp2 = type(cp)(model, cp.file, cp.source, cp.sha256, cp.vocab, cp.applies, cp.rules, ((0, expr),))
        inv = YamlInvariant(cp2, 0, expr)
        res = _yaml_search(self.checker, self.space, inv, profile_settings(self.profile, examples), None)
        if res.violation is not None:
            raise res.violation

    def assert_never(self, given: str, pattern: dict[str, Any], *, pathway: str | None = None, examples: int | None = None) -> None:
        """Search cases where ``given`` holds (enrolled in ``pathway``) for one whose decision matches ``pattern``."""
        self._property(given, pattern, "never", pathway, examples)

    def assert_always(self, given: str, pattern: dict[str, Any], *, pathway: str | None = None, examples: int | None = None) -> None:
        """Search cases where ``given`` holds for one whose decision lacks a recommendation matching ``pattern``."""
        self._property(given, pattern, "always", pathway, examples)

    def yaml_items(self) -> list[Any]:
        """``pytest.param`` per YAML invariant, for ``@pytest.mark.parametrize("invariant", ...)``."""
        from .invariants import yaml_invariants

        return [pytest.param(inv, id=inv.name) for inv in yaml_invariants(self.engine)]

    def run_invariant(self, inv: Any, examples: int | None = None) -> None:
        from .runner import check_yaml_invariant

        res = check_yaml_invariant(self.engine, inv, profile=self.profile, examples=examples)
        if res.violation is not None:
            raise res.violation
        if res.applied == 0:
            pytest.skip(f"{inv.name}: the generator never produced a case where `given` holds ({inv.describe()})")


_SESSION: dict[tuple[str | None, str], Pathways] = {}


def get_pathways(directory: Path | str | None = None, profile: str = "pytest") -> Pathways:
    key = (str(directory) if directory else None, profile)
    if key not in _SESSION:
        _SESSION[key] = Pathways(directory, profile)
    return _SESSION[key]


@pytest.fixture(scope="session")
def pathways(request: pytest.FixtureRequest) -> Pathways:
    """The pathways under test (``--carepath-pathways``, default the bundled ones)."""
    return get_pathways(request.config.getoption("--carepath-pathways"), request.config.getoption("--carepath-profile"))


# ---------------------------------------------------------------- YAML invariants as items


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml") or file_path.name == "dictionary.yaml":
        return None
    if not (file_path.parent / "dictionary.yaml").exists():
        return None
    try:
        head = file_path.read_text(encoding="utf-8")
    except OSError:
        return None
    if "\ninvariants:" not in head or "\nrules:" not in head:
        return None
    collected: pytest.Collector = PathwayFile.from_parent(parent, path=file_path)
    return collected


class PathwayFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        from .invariants import yaml_invariants

        suite = get_pathways(self.path.parent, self.config.getoption("--carepath-profile"))
        for inv in yaml_invariants(suite.engine):
            if Path(inv.pathway.file).resolve() == self.path.resolve():
                yield InvariantItem.from_parent(self, name=inv.id, suite=suite, invariant=inv)


class InvariantItem(pytest.Item):
    def __init__(self, *, suite: Pathways, invariant: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.suite = suite
        self.invariant = invariant
        self.add_marker("carepath_invariant")

    def runtest(self) -> None:
        self.suite.run_invariant(self.invariant)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from .invariants import Violation

        if isinstance(excinfo.value, Violation):
            return excinfo.value.report(["carepath evaluate --pathways DIR <the case above, saved as JSON>"])
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"invariant {self.invariant.name}: {self.invariant.describe()}"
