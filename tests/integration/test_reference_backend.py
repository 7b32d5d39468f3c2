"""The reference backend runs without durable-rules (issue 24): in a child process where importing
``durable`` or ``durable_rules_engine`` fails, ``Engine(..., backend="reference")`` passes every golden
scenario, ``carepath evaluate --backend reference`` works, and the decisions are the durable
backend's (this process, durable-rules installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import BUNDLED, EXAMPLE_CASE, ROOT, SCENARIO_DIR

from carepath.evaluate import Engine
from carepath.scenarios import check, iter_scenarios

# Installed first thing in the child (as a sitecustomize would): durable-rules cannot be imported.
BLOCK = """
import importlib.abc, sys

class NoDurable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("durable", "durable_rules_engine"):
            raise ImportError(f"durable-rules is blocked in this test ({name})")
        return None

sys.meta_path.insert(0, NoDurable())
"""

CHILD = """
import json, sys
from carepath.evaluate import Engine
from carepath.scenarios import iter_scenarios
try:
    import durable  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("durable-rules was importable")
engine = Engine.from_directory(sys.argv[1], backend="reference")
decisions = {f"{s.pathway}/{s.name}": engine.evaluate(s.case) for s in iter_scenarios(sys.argv[2])}
assert not [m for m in sys.modules if m.split(".")[0] in ("durable", "durable_rules_engine")], "a durable module was loaded"
assert "carepath.backends.durable" not in sys.modules
print(json.dumps(decisions))
"""


def _child(code: str, *args: str, sitecustomize: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sitecustomize), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_reference_backend_passes_the_golden_scenarios_without_durable_rules(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCK)
    proc = _child(CHILD, str(BUNDLED), str(SCENARIO_DIR), sitecustomize=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got: dict[str, Any] = json.loads(proc.stdout)
    scenarios = iter_scenarios(SCENARIO_DIR)
    assert len(got) == len(scenarios) > 100
    durable = Engine.from_directory(BUNDLED)
    for s in scenarios:
        decision = got[f"{s.pathway}/{s.name}"]
        failures = check(s, decision)
        assert not failures, f"{s.path.name} (reference backend): " + "; ".join(failures)
        assert decision == json.loads(json.dumps(durable.evaluate(s.case))), f"{s.path.name}: the backends disagree"


def test_cli_evaluates_with_the_reference_backend_without_durable_rules(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCK)
    run = "import sys; from carepath.cli import main; sys.argv[0] = 'carepath'; raise SystemExit(main())"
    proc = _child(run, "evaluate", "--backend", "reference", str(EXAMPLE_CASE), sitecustomize=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    durable = Engine.from_directory(BUNDLED)
    assert json.loads(proc.stdout) == json.loads(json.dumps(durable.evaluate(json.loads(EXAMPLE_CASE.read_text()))))
    blocked = _child(run, "evaluate", str(EXAMPLE_CASE), sitecustomize=tmp_path)  # the durable backend needs durable-rules
    assert blocked.returncode != 0 and "durable" in blocked.stderr
