"""Every golden scenario gives the same decision over gRPC as in-process, on the bundled pathways."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import BUNDLED, SCENARIO_DIR
from grpc_helpers import Server, serving

from carepath.cli import dumps
from carepath.client import CarepathClient
from carepath.evaluate import Engine
from carepath.scenarios import Scenario, check, iter_scenarios

pytestmark = pytest.mark.timeout(120)
PATHWAYS = BUNDLED  # the `engine` fixture's (conftest.py)
SCENARIOS = iter_scenarios(SCENARIO_DIR)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("srv"), BUNDLED, 2)


def test_there_are_golden_scenarios() -> None:
    assert len(SCENARIOS) >= 90


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_golden_scenario_over_grpc(client: CarepathClient, engine: Engine, scenario: Scenario) -> None:
    remote = client.evaluate(scenario.case)
    assert dumps(remote) == dumps(engine.evaluate(scenario.case))
    assert check(scenario, remote) == []


def test_golden_scenarios_over_one_stream(client: CarepathClient, engine: Engine) -> None:
    results = list(client.evaluate_many([s.case for s in SCENARIOS]))
    assert [r.error for r in results] == [None] * len(SCENARIOS)
    assert [dumps(r.decision) for r in results] == [dumps(engine.evaluate(s.case)) for s in SCENARIOS]
