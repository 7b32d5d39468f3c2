"""The public facade (issue 24): ``carepath.__all__`` is exactly the documented list in
docs/python-api.md, each name imports, ``import carepath`` loads no engine module, and no library
module imports the command line."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

import carepath

DOC = ROOT / "docs" / "python-api.md"


def documented() -> list[str]:
    """The names in the first column of the doc's Names table (``Site``, ``load_site`` share a row)."""
    table = DOC.read_text(encoding="utf-8").split("## Names", 1)[1]
    names: list[str] = []
    for line in table.splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([A-Za-z_]+)`", line.split("|")[1])
    return names


def test_all_is_the_documented_list() -> None:
    assert sorted(documented()) == sorted(carepath.__all__)
    assert len(set(carepath.__all__)) == len(carepath.__all__)


def test_every_public_name_imports() -> None:
    for name in carepath.__all__:
        assert getattr(carepath, name) is not None, name
    ns: dict[str, object] = {}
    exec("from carepath import *", ns)
    assert set(carepath.__all__) <= set(ns)
    assert issubclass(carepath.PathwayError, carepath.CarepathError) and issubclass(carepath.CaseError, carepath.CarepathError)


def test_importing_carepath_loads_no_engine_module() -> None:
    code = "import sys, carepath; print(sorted(m for m in sys.modules if m.startswith(('carepath', 'durable'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['carepath']"


def test_the_facade_evaluates_a_case() -> None:
    import json

    from carepath import Engine, validate_pathways

    pathways, diagnostics = validate_pathways([ROOT / "tests" / "fixtures" / "pathways"])
    assert pathways and not [d for d in diagnostics if d.severity == "error"]
    engine = Engine(pathways, backend="reference")
    decision = engine.evaluate(json.loads((ROOT / "examples" / "case.json").read_text()))
    assert decision["pathways"] and "recommendations" in decision


def test_no_library_module_imports_the_cli() -> None:
    """Only the command-line modules (cli.py, */cli.py, docs_cli.py, __main__.py) import carepath.cli."""
    package = ROOT / "engine" / "carepath"
    offenders = []
    for f in sorted(package.rglob("*.py")):
        if f.name in ("cli.py", "docs_cli.py", "__main__.py"):
            continue
        text = f.read_text(encoding="utf-8")
        if re.search(r"^\s*from (\.+cli|carepath\.cli) import|^\s*import carepath\.cli", text, re.M):
            offenders.append(str(f.relative_to(ROOT)))
    assert not offenders


def test_environment_variables_are_read_in_one_place() -> None:
    package = ROOT / "engine" / "carepath"
    readers = sorted(
        str(f.relative_to(package)) for f in package.rglob("*.py") if re.search(r"os\.environ|os\.getenv", f.read_text(encoding="utf-8"))
    )
    assert readers == ["settings.py"]
