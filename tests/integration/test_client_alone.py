"""The acceptance test of the client split: carepath-client installs alone, in a fresh venv, from the
lock, and talks to a real `carepath serve`.

In that venv: importing carepath_client loads no carepath module, durable-rules is not there (nor
carepath itself), and the client's decision for examples/case.json is the one `carepath evaluate`
prints. The venv is made without pip and filled by this environment's pip (the lock's version, with
``--python``), so the install uses the lock's pins for the build backend too (``--build-constraint``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BUNDLED, EXAMPLE_CASE, ROOT
from grpc_helpers import CARE, Server, serving

pytestmark = [pytest.mark.install, pytest.mark.timeout(180)]

CLIENT = ROOT / "clients" / "python"
CASE = EXAMPLE_CASE

PROBE = textwrap.dedent(
    """
    import importlib.resources, importlib.util, json, sys

    import carepath_client
    after_import = sorted(m for m in sys.modules if m == "carepath" or m.startswith("carepath."))
    from carepath_client import CarepathClient, CaseError

    with CarepathClient(sys.argv[1]) as client:
        with open(sys.argv[2], encoding="utf-8") as f:
            decision = client.evaluate(json.load(f))
        try:
            client.evaluate({"patient_id": "p-1"})
            bad = None
        except CaseError as exc:
            bad = [v.field for v in exc.violations]
    print(json.dumps({
        "after_import": after_import,
        "after_calls": sorted(m for m in sys.modules if m == "carepath" or m.startswith("carepath.")),
        "absent": [m for m in ("carepath", "durable", "durable_rules", "durable_rules_engine", "pydantic")
                   if importlib.util.find_spec(m) is None],
        "client_file": carepath_client.__file__,
        "typed": [f for f in ("py.typed", "_proto/v1/case_pb2.pyi") if importlib.resources.files("carepath_client").joinpath(f).is_file()],
        "bad_case_fields": bad,
        "decision": decision,
    }))
    """
)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only carepath-client (built from clients/python) and what it depends on."""
    home = tmp_path_factory.mktemp("client-venv")
    venv.create(home / "venv", with_pip=False)
    python = home / "venv" / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check"]
    lock = str(ROOT / "constraints.txt")
    done = subprocess.run(
        [*pip, "-c", lock, "--build-constraint", lock, str(CLIENT)], capture_output=True, text=True, timeout=150, cwd=home
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("srv"), BUNDLED, 1)


def test_the_client_alone_gives_the_engines_decision(client_venv: Path, server: Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    probe = subprocess.run(
        [str(client_venv), "-c", PROBE, server.target, str(CASE)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["after_import"] == [] and seen["after_calls"] == []  # no carepath module, before or after calling
    assert seen["absent"] == ["carepath", "durable", "durable_rules", "durable_rules_engine", "pydantic"]
    assert Path(seen["client_file"]).is_relative_to(client_venv.parent.parent)  # the installed copy, not the clone's
    assert seen["typed"] == ["py.typed", "_proto/v1/case_pb2.pyi"]  # PEP 561 marker and the messages' stubs are installed
    assert seen["bad_case_fields"] and all(isinstance(f, str) for f in seen["bad_case_fields"])  # CaseError with field paths

    evaluated = subprocess.run([*CARE, "evaluate", "--pathways", str(BUNDLED), str(CASE)], capture_output=True, cwd=ROOT)
    assert evaluated.returncode == 0, evaluated.stderr
    expected = json.loads(evaluated.stdout)
    assert json.dumps(seen["decision"]) == json.dumps(expected)  # same keys, same order, same values
    assert expected["recommendations"], "examples/case.json should give a decision with recommendations"


def test_the_installed_client_declares_only_its_runtime(client_venv: Path) -> None:
    """What the fresh venv holds: the client and its four dependencies (with theirs), nothing of the engine."""
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(client_venv), "list", "--format", "json"], capture_output=True)
    assert out.returncode == 0, out.stderr
    names = {p["name"].lower().replace("_", "-") for p in json.loads(out.stdout)}
    assert {"carepath-client", "grpcio", "grpcio-status", "protobuf", "typing-extensions"} <= names
    assert not names & {"carepath", "durable-rules", "pydantic", "pyyaml", "hypothesis", "orjson", "uvloop"}, names
