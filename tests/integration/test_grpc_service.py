"""The gRPC service end to end: a real `carepath serve` on 127.0.0.1 with real worker processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from conftest import FIXTURES, ROOT
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import BAD_CASES, CARE, SAMPLE, Server, scenario_cases, serving, varied_case, wait_for
from grpc_status import rpc_status

from carepath.case import parse_json
from carepath.cli import dumps
from carepath.client import CallError, CarepathClient
from carepath.errors import CaseError
from carepath.evaluate import Engine
from carepath.service.convert import case_from_dict
from carepath_client._proto.v1 import decision_service_pb2 as ds

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("srv"))


@pytest.mark.parametrize(("name", "case"), scenario_cases(), ids=[n for n, _ in scenario_cases()])
def test_scenario_same_decision_over_grpc(client: CarepathClient, engine: Engine, name: str, case: Any) -> None:
    assert dumps(client.evaluate(case)) == dumps(engine.evaluate(case))


def test_call_prints_exactly_what_evaluate_prints(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    path.write_text(json.dumps(SAMPLE))
    cli = CARE
    called = subprocess.run([*cli, "call", "--target", server.target, str(path)], capture_output=True, check=True, cwd=ROOT)
    local = subprocess.run([*cli, "evaluate", "--pathways", str(FIXTURES), str(path)], capture_output=True, check=True, cwd=ROOT)
    assert called.stdout == local.stdout


def test_proto_and_json_inputs_agree(client: CarepathClient, engine: Engine) -> None:
    raw = client._evaluate(ds.EvaluateRequest(request_id="j1", case_json=json.dumps(SAMPLE)), timeout=10)
    assert raw.request_id == "j1"
    assert dumps(client.evaluate(SAMPLE)) == dumps(engine.evaluate(SAMPLE))


def test_stream_of_1000_cases(client: CarepathClient, engine: Engine) -> None:
    cases = [varied_case(i) for i in range(1000)]
    assert all(case_from_dict(c) for c in cases)  # all go over the typed Case message
    t0 = time.perf_counter()
    results = list(client.evaluate_many(cases))
    elapsed = time.perf_counter() - t0
    assert [r.request_id for r in results] == [str(i) for i in range(1000)]
    for case, r in zip(cases, results, strict=True):
        assert r.error is None
        assert dumps(r.decision) == dumps(engine.evaluate(case))
    print(f"1000-case stream: {elapsed:.2f}s ({1000 / elapsed:.0f} cases/s)")


def test_stream_bad_case_gets_an_error_and_the_stream_goes_on(client: CarepathClient) -> None:
    bad = dict(SAMPLE, age=True)
    results = list(client.evaluate_many([SAMPLE, bad, SAMPLE]))
    assert [r.error is None for r in results] == [True, False, True]
    err = results[1].error
    assert isinstance(err, CaseError) and err.violations[0].field == "age"


BAD = yaml.safe_load((BAD_CASES / "expected.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(BAD), ids=sorted(BAD))
def test_bad_case_invalid_argument_names_the_field(client: CarepathClient, name: str) -> None:
    expected = BAD[name]
    raw = (BAD_CASES / name).read_bytes()
    try:
        data = parse_json(raw)
        request = ds.EvaluateRequest(request_id=name, case_json=json.dumps(data, ensure_ascii=False))
    except CaseError:  # not even JSON: send the bytes as they are
        request = ds.EvaluateRequest(
            request_id=name, case_json=raw.decode("utf-8", errors="surrogateescape").encode("utf-8", "replace").decode()
        )
    with pytest.raises(grpc.RpcError) as info:
        client._evaluate(request, timeout=10)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    st = rpc_status.from_call(err)
    assert st is not None
    br = error_details_pb2.BadRequest()
    assert st.details[0].Unpack(br)
    fields = [(v.field, v.description) for v in br.field_violations]
    assert any(f == expected["field"] and expected["message"] in m for f, m in fields), fields


def test_client_raises_case_error_with_fields(client: CarepathClient) -> None:
    with pytest.raises(CaseError) as info:
        client.evaluate(dict(SAMPLE, agee=3))
    assert [v.field for v in info.value.violations] == ["agee"]


def test_unknown_pathway_is_not_found(client: CarepathClient) -> None:
    with pytest.raises(CallError) as info:
        client.evaluate(SAMPLE, pathway_ids=["nope"])
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_deadline_exceeded(client: CarepathClient) -> None:
    # gRPC's deadline timers are coarse: with a 0.1 ms deadline about 1 call in 10 is answered
    # before the timer fires (measured: 55 of 500). So ask 20 times: the deadline must win at
    # least once and nothing but DEADLINE_EXCEEDED or a decision may come back.
    codes: set[str] = set()
    for _ in range(20):
        try:
            client.evaluate(SAMPLE, timeout=0.0001)
            codes.add("OK")
        except CallError as exc:
            codes.add(exc.code.name)
    assert "DEADLINE_EXCEEDED" in codes
    assert codes <= {"DEADLINE_EXCEEDED", "OK"}


def test_message_size_limit(client: CarepathClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client._evaluate(ds.EvaluateRequest(case_json="x" * (5 * 1024 * 1024)), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.evaluate(SAMPLE)["patient_id"] == "p-0001"  # still serving


def test_garbage_bytes_do_not_crash_a_worker(server: Server, client: CarepathClient) -> None:
    channel = grpc.insecure_channel(server.target)
    raw = channel.unary_unary("/carepath.v1.DecisionService/Evaluate", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\x07garbage", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    assert client.evaluate(SAMPLE)["patient_id"] == "p-0001"
    assert not server.events("worker_died")


def test_pathway_service(client: CarepathClient, engine: Engine) -> None:
    listed = client.list_pathways()
    assert [(p["id"], p["version"], p["sha256"]) for p in listed] == [(p.id, p.version, p.sha256) for p in engine.pathways]
    got = client.get_pathway("mini_htn")
    assert got["source"] == engine.pathways[0].source
    assert [p["file"] for p in listed] == [got["file"]] == ["mini_htn.yaml"]  # the name in the pathway directory, not a path
    with pytest.raises(CallError):
        client.get_pathway("nope")
    broken = (FIXTURES / "mini_htn.yaml").read_text().replace("when: due(egfr, 365)", "when: due(egfrr, 365)")
    diags = client.validate_pathway(broken, "mini_htn.yaml")
    assert diags and all(d.file == "mini_htn.yaml" and d.line > 0 for d in diags)
    assert client.validate_pathway((FIXTURES / "mini_htn.yaml").read_text()) == []


def test_one_log_line_per_request_without_patient_data(server: Server, client: CarepathClient) -> None:
    client.evaluate(SAMPLE, request_id="log-probe-1")
    wait_for(lambda: server.events("rpc") and any(e["request_id"] == "log-probe-1" for e in server.events("rpc")), 5, "log line")
    lines = [e for e in server.events("rpc") if e["request_id"] == "log-probe-1"]
    assert len(lines) == 1
    assert set(lines[0]) <= {"ts", "event", "method", "request_id", "status", "patient_id", "pathway_set", "latency_ms"}
    assert "metformin" not in server.log() and "A10BA02" not in server.log()


# ------------------------------------------------------------- lifecycle tests (own servers)
def _health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return -1
        return int(resp.status)


def test_health_not_serving_then_serving(tmp_path: Path) -> None:
    s = Server(tmp_path)
    try:
        seen = [_health(s.target)]

        def serving() -> bool:
            seen.append(_health(s.target))
            return bool(seen[-1] == health_pb2.HealthCheckResponse.SERVING)

        wait_for(serving, 60, "SERVING")
        answered = [h for h in seen if h != -1]  # a check can time out while the pool starts its forkserver on a loaded machine
        assert answered[0] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert seen[-1] == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert s.stop() == 0


class Load:
    """Callers hammering Evaluate from threads; counts successes and failures."""

    def __init__(self, target: str, threads: int = 4, timeout: float = 20.0) -> None:
        self.target, self.timeout = target, timeout
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, n: int) -> None:
        with CarepathClient(self.target, timeout=self.timeout, retries=0) as c:
            i = n
            while not self._stop.is_set():  # until stop(); each call bounded by its deadline
                try:
                    d = c.evaluate(varied_case(i))
                    with self._lock:
                        self.ok += 1
                        self.versions.add(d["pathways"][0]["version"])
                except Exception as exc:
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                i += 4

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
            assert not t.is_alive(), "a caller hung"


def _copy_fixtures(tmp: Path) -> Path:
    d = tmp / "pathways"
    shutil.copytree(FIXTURES, d)
    return d


def test_reload_under_load_and_broken_set_refused(tmp_path: Path) -> None:
    pathways = _copy_fixtures(tmp_path)
    s = Server(tmp_path, pathways, 2)
    s.wait_serving()
    try:
        with Load(s.target) as load:
            wait_for(lambda: load.ok > 50, 20, "load")
            f = pathways / "mini_htn.yaml"
            f.write_text(f.read_text().replace("version: 0.1.0", "version: 0.2.0"))
            s.signal(signal.SIGHUP)
            wait_for(lambda: "0.2.0" in load.versions, 60, "the reloaded set to serve")
            ok_at_swap = load.ok
            wait_for(lambda: load.ok > ok_at_swap + 50, 20, "more load after the swap")
            # a broken set is refused; the last good one keeps serving
            f.write_text(f.read_text().replace("when: due(egfr, 365)", "when: due(egfrr, 365)"))
            s.signal(signal.SIGHUP)
            wait_for(lambda: bool(s.events("reload_refused")), 60, "the broken set to be refused")
            ok_at_refusal = load.ok
            wait_for(lambda: load.ok > ok_at_refusal + 50, 20, "load after the refusal")
        assert load.failures == []
        assert load.versions == {"0.1.0", "0.2.0"}
        refused = s.events("reload_refused")[0]
        assert any("egfrr" in e for e in refused["errors"])
        with CarepathClient(s.target) as c:
            assert c.list_pathways()[0]["version"] == "0.2.0"
    finally:
        assert s.stop() == 0


def test_watch_reloads_on_file_change(tmp_path: Path) -> None:
    pathways = _copy_fixtures(tmp_path)
    s = Server(tmp_path, pathways, 1, "--watch")
    s.wait_serving()
    try:
        f = pathways / "mini_htn.yaml"
        f.write_text(f.read_text().replace("version: 0.1.0", "version: 0.3.0"))
        with CarepathClient(s.target) as c:
            wait_for(lambda: c.list_pathways()[0]["version"] == "0.3.0", 60, "the watched change to load")
            assert c.evaluate(SAMPLE)["pathways"][0]["version"] == "0.3.0"
    finally:
        assert s.stop() == 0


def test_kill_9_worker_under_load_recovers(tmp_path: Path) -> None:
    s = Server(tmp_path, FIXTURES, 2)
    s.wait_serving()
    try:
        with Load(s.target, threads=4, timeout=15) as load:
            wait_for(lambda: load.ok > 50, 20, "load")
            pids = [e["pid"] for e in s.events("worker_started")]
            os.kill(pids[0], signal.SIGKILL)
            wait_for(lambda: bool(s.events("worker_replaced")), 60, "a replacement worker")
            ok_after = load.ok
            wait_for(lambda: load.ok > ok_after + 50, 20, "load after the replacement")
            os.kill(pids[1], signal.SIGKILL)
            wait_for(lambda: len(s.events("worker_replaced")) >= 2, 60, "a second replacement worker")
        # requests held by the dead worker were retried on another, or failed fast with UNAVAILABLE
        assert all("UNAVAILABLE" in f for f in load.failures), load.failures
        assert len(load.failures) <= 8, load.failures
        with CarepathClient(s.target) as c:
            assert c.evaluate(SAMPLE)["patient_id"] == "p-0001"
    finally:
        assert s.stop() == 0


def test_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    s = Server(tmp_path, FIXTURES, 2, "--grace", "20")
    s.wait_serving()
    done: list[str] = []
    errors: list[str] = []
    established = threading.Barrier(9)  # 8 streams answered once each, then SIGTERM
    go = threading.Event()

    def cases(i: int) -> Iterator[dict[str, Any]]:
        yield varied_case(i * 300)
        go.wait(30)  # the rest of the stream is sent after SIGTERM: it must still be served
        yield from (varied_case(j) for j in range(i * 300 + 1, i * 300 + 300))

    with CarepathClient(s.target, retries=0) as c:

        def call(i: int) -> None:
            try:
                results = c.evaluate_many(cases(i))
                got = [next(results)]
                established.wait(30)
                got += list(results)
                assert len(got) == 300 and all(r.error is None for r in got)
                done.append(str(i))
            except Exception as exc:
                errors.append(repr(exc))
                established.abort()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        established.wait(30)
        s.signal(signal.SIGTERM)
        go.set()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
    code = s.proc.wait(60)
    s.stop()
    assert code == 0
    assert errors == [] and len(done) == 8
    assert s.events("stopped")


def test_client_fails_fast_and_clearly_when_no_server_listens() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"
        with CarepathClient(target, timeout=60) as c:
            t0 = time.monotonic()
            with pytest.raises(CallError) as err:
                c.evaluate(SAMPLE)
            took = time.monotonic() - t0
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert target in str(err.value) and "5 attempt(s)" in str(err.value)
    assert took < 30, "retried until the deadline instead of giving up after its retries"


def test_serve_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run([*CARE, "serve", "--port", str(port), "--workers", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"carepath: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "internal error" not in done.stderr


def test_the_example_request_json_is_the_example_case(server: Server, engine: Engine) -> None:
    """examples/request.json, which `serve` tells grpcurl users to send, is an EvaluateRequest in
    protobuf's JSON form holding examples/case.json: sent as is, it gets that case's decision."""
    from google.protobuf import json_format

    from carepath.service.convert import decision_to_dict

    req = json_format.Parse((ROOT / "examples" / "request.json").read_text(encoding="utf-8"), ds.EvaluateRequest())
    with grpc.insecure_channel(server.target) as ch:
        call = ch.unary_unary("/carepath.v1.DecisionService/Evaluate", request_serializer=None, response_deserializer=None)
        raw = call(req.SerializeToString(), timeout=30)
    resp = ds.EvaluateResponse.FromString(raw)
    assert resp.request_id == req.request_id
    assert dumps(decision_to_dict(resp.decision)) == dumps(engine.evaluate(json.loads((ROOT / "examples" / "case.json").read_text())))


class HealthWatch:
    """grpc.health.v1 Watch on the whole server, in a thread: every status the server sends, in order."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.call: Any = health_pb2_grpc.HealthStub(self.channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
        self.seen: list[int] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.seen.append(int(resp.status))
        except grpc.RpcError:
            pass  # cancelled by close()

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)
        self.channel.close()


SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_follows_the_workers_restored_from_the_set_in_memory(tmp_path: Path) -> None:
    """A broken pathway file on disk does not stop dead workers from being replaced: they compile the
    set the generation loaded, kept in memory. With no worker alive health is NOT_SERVING, then
    SERVING again once one is back; killed twice over, the pool still restores them."""
    pathways = _copy_fixtures(tmp_path)
    s = Server(tmp_path, pathways, 2)
    s.wait_serving()
    watch = HealthWatch(s.target)
    try:
        wait_for(lambda: watch.seen[-1:] == [SERVING], 10, "health SERVING")
        (pathways / "mini_htn.yaml").write_text("id: mini_htn\nrules: [unclosed\n")  # broken on disk; no reload asked
        (pathways / "dictionary.yaml").unlink()
        with CarepathClient(s.target, timeout=30) as c:
            for round_ in (1, 2):
                pids = [e["pid"] for e in s.events("worker_started")[-2:]]
                seen_before = len(watch.seen)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                wait_for(lambda: len(s.events("worker_replaced")) >= 2 * round_, 60, "both workers replaced")  # noqa: B023 (called here)
                wait_for(lambda: watch.seen[-1:] == [SERVING], 10, "health SERVING again")
                assert NOT_SERVING in watch.seen[seen_before:], watch.seen
                decision = c.evaluate(SAMPLE)
                assert decision["patient_id"] == "p-0001" and decision["pathways"][0]["version"] == "0.1.0"
        restored = [e for e in s.events("worker_started") if e["from"] == "memory"]
        assert len(restored) == 4
        assert not s.events("worker_replace_failed")
        died = s.events("worker_died")
        ended = [(d["worker"], d["exitcode"], d.get("signal")) for d in died]
        assert len(ended) == 4 and all(e[1:] == (-9, "SIGKILL") for e in ended), ended
        health = [(e["status"], e["workers"]) for e in s.events("health")]
        assert health.count(("NOT_SERVING", 0)) >= 2, health
        assert s.unstamped() == []
    finally:
        watch.close()
        assert s.stop() == 0


def test_calls_per_caller_address_are_capped(tmp_path: Path) -> None:
    """--max-calls-per-peer 2: with two streams open from this address, a third call is refused with
    RESOURCE_EXHAUSTED; once they end, calls are served again."""
    s = Server(tmp_path, FIXTURES, 1, "--max-calls-per-peer", "2")
    s.wait_serving()
    release = threading.Event()
    try:
        with grpc.insecure_channel(s.target) as ch:
            fn = ch.stream_stream(
                "/carepath.v1.DecisionService/EvaluateStream",
                request_serializer=ds.EvaluateStreamRequest.SerializeToString,
                response_deserializer=ds.EvaluateStreamResponse.FromString,
            )

            def one_case_then_wait(i: int) -> Iterator[ds.EvaluateStreamRequest]:
                yield ds.EvaluateStreamRequest(request_id=f"s{i}", case_json=json.dumps(SAMPLE))
                release.wait(60)

            streams: list[Any] = [fn(one_case_then_wait(i), timeout=60) for i in range(2)]
            assert [next(st).request_id for st in streams] == ["s0", "s1"]  # both open and answered
            with CarepathClient(s.target, retries=0) as c:
                with pytest.raises(CallError) as err:
                    c.evaluate(SAMPLE)
                assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "more than 2 calls in flight from this address" in str(err.value)
                release.set()
                assert [list(st) for st in streams] == [[], []]
                assert c.evaluate(SAMPLE)["patient_id"] == "p-0001"
    finally:
        release.set()
        assert s.stop() == 0


def _http2_settings(data: bytes) -> dict[int, int]:
    """The server's first HTTP/2 frame, a SETTINGS frame (type 4), as {identifier: value}."""
    length, kind = int.from_bytes(data[:3], "big"), data[3]
    assert kind == 4, data[:9]
    payload = data[9 : 9 + length]
    return {int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big") for i in range(0, length, 6)}


def _closed_by_server(sock: Any) -> bool:
    """Read until the server closes the connection (True) or 20 s of silence pass (False)."""
    sock.settimeout(20)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_connection_limits(tmp_path: Path) -> None:
    """With the limits set low: at most 3 connections (the 4th and 5th are closed before the server
    says anything), each allowed 100 concurrent streams (the server's SETTINGS), a connection that
    never sends its HTTP/2 preface is closed after the handshake timeout, and an idle channel is sent
    GOAWAY after the idle limit (it goes READY -> IDLE), after which calls work again."""
    import socket

    setup = "import carepath.service.server as s; s.MAX_CONNECTIONS = 3; s.HANDSHAKE_MS = 1000; s.IDLE_MS = 1000"
    s = Server(tmp_path, FIXTURES, 1, setup=setup)
    s.wait_serving()
    host, port = s.target.split(":")
    silent = [socket.create_connection((host, int(port))) for _ in range(5)]
    try:
        for sock in silent:
            sock.settimeout(20)
        first = [sock.recv(4096) for sock in silent]
        assert [bool(f) for f in first] == [True, True, True, False, False]  # over the limit: closed at once
        assert all(_http2_settings(f)[3] == 100 for f in first[:3])  # SETTINGS_MAX_CONCURRENT_STREAMS
        assert all(_closed_by_server(sock) for sock in silent[:3])  # no preface: closed at the handshake timeout
        with grpc.insecure_channel(s.target) as ch:
            states: list[grpc.ChannelConnectivity] = []
            ch.subscribe(states.append, try_to_connect=False)
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
            wait_for(lambda: grpc.ChannelConnectivity.READY in states, 10, "READY")
            ready_at = states.index(grpc.ChannelConnectivity.READY)
            wait_for(lambda: grpc.ChannelConnectivity.IDLE in states[ready_at:], 20, "the idle connection to be closed")
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
    finally:
        for sock in silent:
            sock.close()
        assert s.stop() == 0


def _rpc_lines(s: Server, method: str) -> list[dict[str, Any]]:
    return [e for e in s.events("rpc") if e["method"] == method]


def test_sigterm_unary_calls_finish_ok_and_an_idle_stream_does_not_hold_the_drain(tmp_path: Path) -> None:
    """16 callers and one idle stream, then a real SIGTERM with a 120 s grace: the server exits 0
    long before the grace (the idle stream is ended with UNAVAILABLE 'server shutting down'); every
    call the server started finished OK and reached its caller; the others failed UNAVAILABLE (the
    server had stopped taking calls), never CANCELLED."""
    s = Server(tmp_path, FIXTURES, 2, "--grace", "120")
    s.wait_serving()
    idle: list[Any] = []
    release = threading.Event()

    def idle_stream() -> None:
        with grpc.insecure_channel(s.target) as ch:
            fn = ch.stream_stream(
                "/carepath.v1.DecisionService/EvaluateStream",
                request_serializer=ds.EvaluateStreamRequest.SerializeToString,
                response_deserializer=ds.EvaluateStreamResponse.FromString,
            )

            def one_case_then_silence() -> Iterator[ds.EvaluateStreamRequest]:
                yield ds.EvaluateStreamRequest(request_id="idle-0", case_json=json.dumps(SAMPLE))
                release.wait(200)

            try:
                for r in fn(one_case_then_silence(), timeout=200):
                    idle.append(r.request_id)
            except grpc.RpcError as exc:
                call: Any = exc
                idle.append((call.code(), call.details()))

    ok = [0]
    failures: list[str] = []
    lock = threading.Lock()

    def caller(n: int) -> None:
        with CarepathClient(s.target, timeout=30) as c:
            i = n
            while s.proc.poll() is None:
                try:
                    c.evaluate(varied_case(i))
                    with lock:
                        ok[0] += 1
                except CallError as exc:
                    with lock:
                        failures.append(f"{exc.code.name}: {exc}")
                i += 16

    stream = threading.Thread(target=idle_stream)
    stream.start()
    wait_for(lambda: idle == ["idle-0"], 20, "the idle stream's first answer")
    callers = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for t in callers:
        t.start()
    try:
        wait_for(lambda: ok[0] > 200, 30, "load")
        s.signal(signal.SIGTERM)
        code = s.proc.wait(60)  # the grace is 120 s: an idle stream holding the drain would fail here
    finally:
        release.set()
        for t in [stream, *callers]:
            t.join(60)
    s.stop()
    assert code == 0
    assert idle[0] == "idle-0" and idle[1][0] == grpc.StatusCode.UNAVAILABLE and idle[1][1].startswith("server shutting down"), idle
    assert not release.is_set() or idle[1:], "the stream ended before its caller stopped sending"
    assert all(f.startswith("UNAVAILABLE") for f in failures), [f for f in failures if not f.startswith("UNAVAILABLE")]
    served = _rpc_lines(s, "Evaluate")
    assert {e["status"] for e in served} == {"OK"}
    assert len(served) == ok[0]  # every call the server started reached its caller
    assert s.events("signal")[0]["signal"] == "SIGTERM"
    assert s.events("stopped")
    assert s.unstamped() == []


def test_a_stream_cut_by_a_drain_is_resumed_by_the_client_on_the_next_server(tmp_path: Path) -> None:
    """A stream is ended by a SIGTERM (UNAVAILABLE 'server shutting down'); a new server comes up on
    the same port and CarepathClient.evaluate_many resends the cases not answered: every case is
    answered exactly once, in order, with the right decision."""
    a = Server(tmp_path, FIXTURES, 1)
    a.wait_serving()
    port = a.target.rsplit(":", 1)[1]
    first_half = threading.Event()
    cases = [varied_case(i) for i in range(60)]

    def slow_cases() -> Iterator[dict[str, Any]]:
        for i, case in enumerate(cases):
            if i == 30:
                first_half.set()
                wait_for(lambda: a.proc.poll() is not None, 60, "the first server to exit")
            yield case

    got: list[Any] = []
    with CarepathClient(a.target, retries=20, backoff=0.5, timeout=120) as c:
        reader = threading.Thread(target=lambda: got.extend(c.evaluate_many(slow_cases())))
        reader.start()
        assert first_half.wait(60)
        a.signal(signal.SIGTERM)
        assert a.proc.wait(60) == 0
        a.stop()
        b = Server(tmp_path, FIXTURES, 1, "--port", port)
        try:
            reader.join(120)
            assert not reader.is_alive()
        finally:
            assert b.stop() == 0
    assert [r.request_id for r in got] == [str(i) for i in range(60)]
    engine = Engine.from_directory(FIXTURES)
    assert [r.error for r in got] == [None] * 60
    assert [dumps(r.decision) for r in got] == [dumps(engine.evaluate(case)) for case in cases]
    assert any(e["status"] == "UNAVAILABLE" for e in _rpc_lines(a, "EvaluateStream"))


def test_pathway_service_never_sends_the_servers_paths(server: Server) -> None:
    """No response of ListPathways or GetPathway holds the server's pathway directory (nor any '/')
    outside the pathway's own source text."""
    from carepath_client._proto.v1 import pathway_service_pb2 as ps

    with grpc.insecure_channel(server.target) as ch:
        raw_list = ch.unary_unary("/carepath.v1.PathwayService/ListPathways", request_serializer=None, response_deserializer=None)
        raw_get = ch.unary_unary("/carepath.v1.PathwayService/GetPathway", request_serializer=None, response_deserializer=None)
        listed = raw_list(ps.ListPathwaysRequest().SerializeToString(), timeout=10)
        got = ps.GetPathwayResponse.FromString(raw_get(ps.GetPathwayRequest(id="mini_htn").SerializeToString(), timeout=10))
    assert str(FIXTURES).encode() not in listed and b"/" not in listed
    without_source = ps.GetPathwayResponse()
    without_source.CopyFrom(got)
    without_source.pathway.source = ""
    assert b"/" not in without_source.SerializeToString() and str(FIXTURES) not in got.pathway.source


def test_serve_site_profile_reaches_every_worker_and_names_itself(tmp_path: Path) -> None:
    """serve --site FILE: every worker's engine uses the profile; decisions over gRPC name it and
    read site_has() from it (the v2 fixture: fundus photography here or a referral elsewhere)."""
    site = tmp_path / "chc.yaml"
    site.write_text("id: chc-camera\ntitle: a centre with a retinal camera\ncapabilities: [fundus_photography]\n")
    v2 = FIXTURES.parent / "lang_v2"
    case = {"patient_id": "p", "as_of": "2026-11-24", "setting": "community", "age": 60, "conditions": ["I10", "E11.9"]}
    s = Server(tmp_path, v2, 2, "--site", str(site))
    try:
        with CarepathClient(s.target) as c:
            for _ in range(6):  # both workers answer some of them
                d = c.evaluate(case)
                assert d["site"]["id"] == "chc-camera" and len(d["site"]["sha256"]) == 64
                assert "v2.fundus_here" in {t["rule"] for t in d["trace"]}
    finally:
        assert s.stop() == 0
