"""What several test modules share: where things are, the engine and client fixtures, and the carepath
pytest plugin.

The plugin (the ``pathways`` fixture, YAML invariants as items) is opted into here, as a user's
conftest would: installing carepath does not activate it. Test modules import the paths with
``from conftest import ROOT, FIXTURES`` (pytest puts this directory on sys.path).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from carepath.client import CarepathClient
from carepath.evaluate import Engine

if TYPE_CHECKING:
    from grpc_helpers import Server

pytest_plugins = ["carepath.testing.plugin"]

ROOT = Path(__file__).resolve().parents[1]  # the repository
BUNDLED = ROOT / "pathways"  # the bundled pathways (hypertension, diabetes, SMI)
FIXTURES = ROOT / "tests" / "fixtures" / "pathways"  # the small test pathway set (mini_htn)
SCENARIO_DIR = ROOT / "tests" / "scenarios"  # the golden scenarios
EXAMPLE_CASE = ROOT / "examples" / "case.json"


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Engine:
    """An engine compiled once per module, on the module's ``PATHWAYS`` directory (default: FIXTURES)."""
    return Engine.from_directory(getattr(request.module, "PATHWAYS", FIXTURES))


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[CarepathClient]:
    """A client of the module's ``server`` fixture (a real `carepath serve`, tests/integration/grpc_helpers.py)."""
    with CarepathClient(server.target) as c:
        yield c
