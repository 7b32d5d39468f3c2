"""A real carepath server in a subprocess on 127.0.0.1 (no mocks), and the cases the tests send."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Also bench/bench_grpc.py imports this module, outside pytest: so it names these paths itself rather than
# importing them from tests/conftest.py (the test modules take them from there).
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "pathways"
BAD_CASES = ROOT / "tests" / "unit" / "bad_cases"
CARE = [sys.executable, "-c", "from carepath.cli import main; raise SystemExit(main())"]

SAMPLE: dict[str, Any] = json.loads((ROOT / "examples" / "case.json").read_text(encoding="utf-8"))


def varied_case(i: int) -> dict[str, Any]:
    """A deterministic spread of cases over the fixture pathway's branches."""
    c: dict[str, Any] = json.loads(json.dumps(SAMPLE))
    c["patient_id"] = f"p-{i:05d}"
    c["setting"] = "hospital" if i % 3 == 0 else "community"
    c["pregnant"] = [False, True, None][i % 3]
    c["age"] = 20 + i % 70
    c["findings"] = [[], ["severe_headache"], ["chest_pain"], []][i % 4]
    c["allergies"] = [] if i % 2 else ["C09AA"]
    c["observations"][0]["value"] = 110 + (i * 7) % 100
    c["observations"][1]["value"] = 70 + (i * 5) % 50
    if i % 5 == 0:
        c["observations"].append({"code": "potassium", "value": 4.0 + (i % 30) / 10, "unit": "mmol/L", "date": "2026-10-01"})
    if i % 7 == 0:
        c["medications"].append({"atc": "C09AA02", "name": "enalapril", "since": "2026-01-01"})
    if i % 11 == 0:
        del c["observations"][3]
    return c


def scenario_cases() -> list[tuple[str, Any]]:
    """Varied cases on the fixture pathway, compared over gRPC and in-process (the golden scenarios
    on the bundled pathways are compared in test_grpc_scenarios.py)."""
    return [("sample", SAMPLE)] + [(f"varied-{i}", varied_case(i)) for i in range(40)]


class Server:
    """`carepath serve` in a subprocess; stderr (the JSON log) goes to a file."""

    def __init__(self, tmp: Path, pathways: Path = FIXTURES, workers: int = 2, *extra: str, setup: str = "") -> None:
        """``setup``: Python run in the server process before `carepath serve` (e.g. to lower a module constant)."""
        self.log_path = tmp / f"serve-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        care = [sys.executable, "-c", f"{setup}\n{CARE[2]}"] if setup else CARE
        cmd = [*care, "serve", "--port", "0", "--pathways", str(pathways), "--workers", str(workers), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on ([\d.]+:\d+)", line)
        assert m, f"server did not start: {line!r}\n{self.log()}"
        self.target = m.group(1)

    def wait_serving(self, timeout: float = 60.0) -> None:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stdout.readline().decode()
            if "SERVING" in line:
                return
            if not line:
                break
        raise AssertionError(f"server never served:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == name:
                    out.append(ev)
        return out

    def unstamped(self) -> list[str]:
        """Log lines that are not a JSON object starting with a UTC "ts" (ISO 8601, milliseconds, Z)."""
        stamp = re.compile(r'^\{"ts": ?"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",')
        out = []
        for line in self.log().splitlines():
            try:
                json.loads(line)
            except ValueError:
                out.append(line)
                continue
            if not stamp.match(line):
                out.append(line)
        return out

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


def serving(tmp: Path, *args: Any, **kwargs: Any) -> Iterator[Server]:
    """A module fixture's body: a server in tmp, yielded once SERVING; it must then stop cleanly (exit 0)."""
    s = Server(tmp, *args, **kwargs)
    s.wait_serving()
    yield s
    assert s.stop() == 0


def wait_for(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def received_before_kill_9(srv: Server, callers: int = 4, seconds: float = 3.0) -> list[str]:
    """The request ids of the Evaluate responses ``callers`` callers received from ``srv`` under load
    before it was killed with SIGKILL after ``seconds`` (the audit trail's durability tests)."""
    from carepath.client import CallError, CarepathClient

    got: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller(n: int) -> None:
        with CarepathClient(srv.target, retries=0, timeout=5) as c:
            i = 0
            while not stop.is_set():
                rid = f"c{n}-{i}"
                try:
                    c.evaluate(varied_case(i), request_id=rid)
                except CallError:
                    if srv.proc.poll() is not None:
                        return
                    continue
                with lock:
                    got.append(rid)
                i += 1

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    srv.stop()
    return got


def token_keys(d: Path) -> dict[str, Any]:
    """An RS256 signing key ``k1`` and its JWKS file in ``d``: what a module's server trusts (``--jwks``)
    and its tokens are signed with."""
    from carepath.service import devpki

    rsa = devpki.signing_key("RS256")
    devpki.write(d / "jwks.json", devpki.jwks(devpki.jwk(rsa, "k1", "RS256")))
    return {"dir": d, "rsa": rsa, "jwks": d / "jwks.json"}


def local_postgres(directory: str) -> Any:
    """A PostgreSQL 16 server of the tests' own in ``directory`` (empty; short: its Unix socket lives
    there), from the pgserver wheel; ``.get_uri()`` names it, ``.cleanup()`` stops it."""
    import warnings

    with warnings.catch_warnings():  # platformdirs warns, on import, when XDG_RUNTIME_DIR is unset (as on CI)
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    return get_server(directory, cleanup_mode="stop")
