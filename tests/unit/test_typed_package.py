"""carepath and its client ship their types (PEP 561 py.typed): an integrator's type checker sees
the client's signatures instead of skipping the package as untyped."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is a development dependency (pip install -e '.[dev]')")

USER_CODE = """
from carepath_client import CarepathClient, CaseError

def run(case: dict[str, object]) -> None:
    with CarepathClient("127.0.0.1:50051") as client:
        try:
            decision = client.evaluate(case)
        except CaseError as exc:
            print(exc.violations)
            return
        reveal_type(decision)
        for result in client.evaluate_many([case]):
            reveal_type(result.error)
        client.evaluate(case, timeout="soon")
"""


def test_the_client_is_typed_for_its_users(tmp_path: Path) -> None:
    (tmp_path / "user.py").write_text(USER_CODE, encoding="utf-8")
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n", encoding="utf-8")  # not the repo's config
    out, err, status = mypy_api.run(
        ["--config-file", str(tmp_path / "mypy.ini"), "--cache-dir", str(tmp_path / "cache"), str(tmp_path / "user.py")]
    )
    assert status == 1, out + err  # exactly the one misuse below
    lines = [line.split(": ", 1)[1].replace("builtins.", "") for line in out.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == 3, out
    assert lines[0] == 'note: Revealed type is "dict[str, Any]"', out
    assert lines[1] in (
        'note: Revealed type is "carepath.errors.CarepathError | None"',
        'note: Revealed type is "Union[carepath.errors.CarepathError, None]"',
    ), out
    assert lines[2].startswith('error: Argument "timeout" to "evaluate" of "CarepathClient" has incompatible type "str"'), out
    assert "import-untyped" not in out and "missing library stubs" not in out
