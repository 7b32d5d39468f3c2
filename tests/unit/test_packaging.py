"""How the two distributions fit: carepath-client depends on nothing of carepath, carepath depends on
it; the pytest plugin is the user's choice, not a side effect of installing carepath. (The client
installed alone in a fresh venv: tests/integration/test_client_alone.py.)"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from conftest import ROOT

CLIENT = ROOT / "clients" / "python"


def _deps(pyproject: Path) -> list[str]:
    deps: list[str] = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    return deps


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()


def test_the_client_depends_only_on_grpc_protobuf_and_typing_extensions() -> None:
    assert sorted(_name(d) for d in _deps(CLIENT / "pyproject.toml")) == ["grpcio", "grpcio-status", "protobuf", "typing-extensions"]


def test_carepath_depends_on_the_client_at_its_version_and_the_lock_pins_neither() -> None:
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert f"carepath-client=={client['version']}" in _deps(ROOT / "pyproject.toml")
    pinned = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert not pinned & {"carepath", "carepath-client", "carepath_client"}


def test_importing_every_client_module_loads_no_carepath_module() -> None:
    """Here carepath is installed too, so an optional or guarded import of it would show up."""
    probe = textwrap.dedent(
        """
        import importlib, json, pkgutil, sys
        import carepath_client
        names = [m.name for m in pkgutil.walk_packages(carepath_client.__path__, "carepath_client.")]
        for name in names:
            importlib.import_module(name)
        for name in carepath_client.__all__:
            getattr(carepath_client, name)
        print(json.dumps({"modules": names, "carepath": sorted(m for m in sys.modules if m.split(".")[0] == "carepath")}))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert {"carepath_client.client", "carepath_client.codec", "carepath_client.contract", "carepath_client.errors"} <= set(seen["modules"])
    assert seen["carepath"] == []


def test_engine_and_client_share_the_error_and_decision_types() -> None:
    import carepath_client
    from carepath import client, contract, errors

    assert errors.CaseError is carepath_client.CaseError and errors.CarepathError is carepath_client.CarepathError
    assert issubclass(errors.PathwayError, carepath_client.CarepathError)
    assert contract.Decision is carepath_client.Decision and client.CarepathClient is carepath_client.CarepathClient


def test_installing_carepath_does_not_activate_its_pytest_plugin() -> None:
    plugins = [ep.value for ep in importlib.metadata.entry_points(group="pytest11")]
    assert not [v for v in plugins if v.split(".")[0] == "carepath"], plugins


USER_TEST = """
def test_committee(pathways):
    case = {"patient_id": "p-1", "as_of": "2026-12-01", "setting": "community", "conditions": ["I10"]}
    assert pathways.evaluate(case)["patient_id"] == "p-1"
"""


def test_a_user_opts_into_the_plugin(tmp_path: Path) -> None:
    """Without opting in, a user's suite has no `pathways` fixture; with -p or a conftest line it has."""
    (tmp_path / "test_user.py").write_text(USER_TEST, encoding="utf-8")
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--rootdir", str(tmp_path), str(tmp_path)]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*pytest, *extra], capture_output=True, text=True, timeout=120, cwd=tmp_path)

    plain = run()
    assert plain.returncode == 1 and "fixture 'pathways' not found" in plain.stdout, plain.stdout + plain.stderr
    with_p = run("-p", "carepath.testing.plugin")
    assert with_p.returncode == 0, with_p.stdout + with_p.stderr
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["carepath.testing.plugin"]\n', encoding="utf-8")
    with_conftest = run()
    assert with_conftest.returncode == 0, with_conftest.stdout + with_conftest.stderr
