"""carepath and its client ship their types (PEP 561 py.typed): an integrator's type checker sees
the client's signatures and the decision's shape (carepath.contract) instead of skipping the
package as untyped."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is a development dependency (pip install -e '.[dev]')")

USER_CODE = """
from carepath_client import CarepathClient, CaseError

def starts(case: dict[str, object]) -> list[str]:
    with CarepathClient("127.0.0.1:50051") as client:
        try:
            decision = client.evaluate(case)
        except CaseError as exc:
            print(exc.violations)
            return []
        out = []
        for rec in decision["recommendations"]:
            if rec["kind"] == "medication" and rec["action"] == "start":
                out.append(rec["atc"])  # fine: a medication has an atc
        for result in client.evaluate_many([case]):
            if result.decision is not None:
                print(result.decision["patient_id"])
        print(decision["recomendations"])  # 1: a misspelt key
        print(decision["recommendations"][0]["atc"])  # 2: not every kind has an atc
        client.evaluate(case, timeout="soon")  # 3: a deadline is a number
        return out
"""


def test_the_client_is_typed_for_its_users(tmp_path: Path) -> None:
    (tmp_path / "user.py").write_text(USER_CODE, encoding="utf-8")
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n", encoding="utf-8")  # not the repo's config
    out, err, status = mypy_api.run(
        ["--config-file", str(tmp_path / "mypy.ini"), "--cache-dir", str(tmp_path / "cache"), str(tmp_path / "user.py")]
    )
    assert status == 1, out + err
    errors = [line.split(": error: ", 1)[1] for line in out.splitlines() if ": error: " in line]
    lines = sorted({int(line.split(":")[1]) for line in out.splitlines() if ": error: " in line})
    misuses = [n for n, line in enumerate(USER_CODE.splitlines(), 1) if "  # 1:" in line or "  # 2:" in line or "  # 3:" in line]
    assert lines == misuses, out  # the three misuses, and nothing else
    assert any('"Decision" has no key "recomendations"' in e for e in errors), out
    assert any('has no key "atc"' in e for e in errors), out
    assert any('Argument "timeout" to "evaluate" of "CarepathClient" has incompatible type "str"' in e for e in errors), out
    assert "import-untyped" not in out and "missing library stubs" not in out
