"""Hostile and oversized requests against a real `carepath serve` on 127.0.0.1: each gets the status
and message it should (never INTERNAL, UNKNOWN, or a client-side RESOURCE_EXHAUSTED), and the
service keeps serving."""

from __future__ import annotations

import base64
import json
import random
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import FIXTURES
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_helpers import SAMPLE, Server, serving, varied_case, wait_for
from grpc_status import rpc_status

from carepath.client import CarepathClient
from carepath.service.convert import case_from_dict
from carepath_client._proto.v1 import decision_service_pb2 as ds
from carepath_client._proto.v1 import pathway_service_pb2 as ps

pytestmark = pytest.mark.timeout(120)

DECISION = "/carepath.v1.DecisionService/"
PATHWAY = "/carepath.v1.PathwayService/"
DEEP_JSON = "[" * 2000 + "]" * 2000
BIG_INT = '{"age":' + "9" * 5000 + "}"
TOO_DEEP = "case is not valid JSON: nested too deeply (a case is 3 levels deep)"
DIGITS = "case is not valid JSON: a number has more than 4300 digits"


def alias_bomb(levels: int) -> str:
    return 'a0: &a0 ["lol"]\n' + "".join(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, levels + 1))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory.mktemp("srv"))


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


def call(channel: grpc.Channel, method: str, request: Any, response: Any) -> Any:
    fn = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response.FromString)
    return fn(request, timeout=30)


def failed(channel: grpc.Channel, method: str, request: Any) -> Any:
    """The error of a call that must fail: raw bytes or a message."""
    fn = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        fn(request if isinstance(request, bytes) else request.SerializeToString(), timeout=30)
    return info.value


def violations(err: Any) -> list[tuple[str, str]]:
    st = rpc_status.from_call(err)
    assert st is not None, "no grpc-status-details-bin"
    br = error_details_pb2.BadRequest()
    assert st.details[0].Unpack(br)
    return [(v.field, v.description) for v in br.field_violations]


def trailer_bytes(err: Any) -> int:
    """What the status took in the trailer on the wire: grpc-message is percent-encoded, -bin values base64."""
    size = len(urllib.parse.quote(err.details() or "", safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"))
    for key, value in err.trailing_metadata() or ():
        size += len(key) + (len(base64.b64encode(value)) if key.endswith("-bin") else len(value))
    return size


def stream(channel: grpc.Channel, requests: Any, timeout: float = 60) -> list[ds.EvaluateStreamResponse]:
    fn = channel.stream_stream(
        DECISION + "EvaluateStream",
        request_serializer=ds.EvaluateStreamRequest.SerializeToString,
        response_deserializer=ds.EvaluateStreamResponse.FromString,
    )
    return list(fn(iter(requests), timeout=timeout))


def still_serving(channel: grpc.Channel) -> None:
    resp = call(channel, DECISION + "Evaluate", ds.EvaluateRequest(request_id="ok", case_json=json.dumps(SAMPLE)), ds.EvaluateResponse)
    assert resp.decision.patient_id == "p-0001"


# ---------------------------------------------------------------- 1: hostile pathway YAML


@pytest.mark.parametrize(
    ("source", "where", "message"),
    [
        (alias_bomb(6), (6, 18), "alias *a4 takes the file past 50,000 YAML nodes (the limit; aliases count as the nodes they repeat)"),
        (alias_bomb(8), (6, 18), "alias *a4 takes the file past 50,000 YAML nodes (the limit; aliases count as the nodes they repeat)"),
        ("a: &x [*x]\n", (1, 8), "alias *x is inside the node it names (a recursive structure)"),
        ("[" * 900 + "]" * 900, (1, 65), "nested more than 64 levels deep (the limit)"),
        (
            "".join("  " * i + f"k{i}:\n" for i in range(700)) + "  " * 700 + "v\n",  # 0.5 MB (the limit is 1 MiB)
            (64, 127),
            "nested more than 64 levels deep (the limit)",
        ),
        ("id: " + "9" * 5000 + "\n", (1, 5), "cannot read '99999999999999999999...(5000 characters)' as int: more than 4300 digits"),
    ],
    ids=["bomb-6", "bomb-8", "self-alias", "seq-900", "map-700", "int-5000"],
)
def test_validate_pathway_hostile_yaml_is_a_diagnostic(channel: grpc.Channel, source: str, where: tuple[int, int], message: str) -> None:
    t0 = time.perf_counter()
    resp = call(
        channel, PATHWAY + "ValidatePathway", ps.ValidatePathwayRequest(source=source, file="hostile.yaml"), ps.ValidatePathwayResponse
    )
    assert time.perf_counter() - t0 < 5
    assert not resp.valid
    assert [(d.file, d.line, d.col, d.path, d.message) for d in resp.diagnostics] == [("hostile.yaml", *where, "", message)]
    still_serving(channel)


def test_validate_pathway_source_over_1_mib_is_refused_before_parsing(channel: grpc.Channel) -> None:
    source = "".join("  " * i + f"k{i}:\n" for i in range(2000)) + "  " * 2000 + "v\n"  # 4 MB
    err = failed(channel, PATHWAY + "ValidatePathway", ps.ValidatePathwayRequest(source=source, file="big.yaml"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [("source", f"must be at most 1048576 bytes (got {len(source)})")]
    still_serving(channel)


@pytest.mark.parametrize("condition", ["(" * 2000 + "sbp > 140" + ")" * 2000, "not " * 5000 + "sbp > 140"], ids=["parens", "nots"])
def test_validate_pathway_deep_condition_is_a_diagnostic(channel: grpc.Channel, condition: str) -> None:
    source = (FIXTURES / "mini_htn.yaml").read_text(encoding="utf-8").replace("when: due(egfr, 365)", f"when: {condition}")
    resp = call(
        channel, PATHWAY + "ValidatePathway", ps.ValidatePathwayRequest(source=source, file="deep.yaml"), ps.ValidatePathwayResponse
    )
    found = [d for d in resp.diagnostics if d.path == "rules[6].when"]
    assert [d.message for d in found] == ["nested more than 32 levels deep (parentheses and 'not'; the limit)"]


# ---------------------------------------------------------------- 2: hostile case JSON


@pytest.mark.parametrize(("case_json", "message"), [(DEEP_JSON, TOO_DEEP), (BIG_INT, DIGITS)], ids=["deep", "digits"])
def test_hostile_case_json_is_invalid_argument_unary_and_stream(channel: grpc.Channel, case_json: str, message: str) -> None:
    err = failed(channel, DECISION + "Evaluate", ds.EvaluateRequest(request_id="h1", case_json=case_json))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"invalid case: {message}"
    assert violations(err) == [("", message)]
    results = stream(
        channel, [ds.EvaluateStreamRequest(request_id=str(i), case_json=c) for i, c in enumerate([case_json, json.dumps(SAMPLE)])]
    )
    assert [r.request_id for r in results] == ["0", "1"]
    assert results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [(v.field, v.description) for v in results[0].error.field_violations] == [("", message)]
    assert results[1].decision.patient_id == "p-0001"


# ---------------------------------------------------------------- 3: oversized error details


def test_300_violations_are_capped_and_still_invalid_argument(channel: grpc.Channel) -> None:
    case = dict(SAMPLE, conditions=["X"] * 300)
    err = failed(channel, DECISION + "Evaluate", ds.EvaluateRequest(request_id="v300", case_json=json.dumps(case)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # not the client's RESOURCE_EXHAUSTED (metadata over 8 KiB)
    assert err.details() == "invalid case: conditions[0]: 'X' is not an ICD-10 code (e.g. E11.9) (and 299 more)"
    got = violations(err)
    assert 40 <= len(got) <= 51
    assert got[0] == ("conditions[0]", "'X' is not an ICD-10 code (e.g. E11.9)")
    assert got[-1] == ("", f"and {300 - (len(got) - 1)} more violation(s), not shown")
    assert trailer_bytes(err) < 6 * 1024
    results = stream(channel, [ds.EvaluateStreamRequest(request_id="s300", case_json=json.dumps(case))])
    assert [(v.field, v.description) for v in results[0].error.field_violations] == got


def test_long_field_names_and_values_are_clipped(channel: grpc.Channel) -> None:
    case = dict(SAMPLE, **{f"{'k' * 5000}{i}": 1 for i in range(60)})  # 60 unknown fields, each named by 5,000 characters
    err = failed(channel, DECISION + "Evaluate", ds.EvaluateRequest(case_json=json.dumps(case)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = violations(err)
    assert got[0] == ("k" * 127 + "…", "unknown field")
    assert got[-1][0] == "" and got[-1][1].endswith("more violation(s), not shown")
    assert len(err.details()) <= 512 and trailer_bytes(err) < 6 * 1024


def test_unknown_pathway_id_of_10000_characters_is_not_found(channel: grpc.Channel) -> None:
    err = failed(channel, DECISION + "Evaluate", ds.EvaluateRequest(case_json=json.dumps(SAMPLE), pathway_ids=["y" * 10000]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"unknown pathway '{'y' * 63}…' (loaded: mini_htn)"


def test_get_pathway_with_a_100000_character_id_is_not_found(channel: grpc.Channel) -> None:
    err = failed(channel, PATHWAY + "GetPathway", ps.GetPathwayRequest(id="x" * 100000))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"unknown pathway '{'x' * 63}…' (loaded: mini_htn)"


def huge_case(n: int) -> ds.EvaluateRequest:
    """The sample as a typed Case with n more observations (120,000: 4 MB, just under the message limit)."""
    req = ds.EvaluateRequest(request_id="huge", case=case_from_dict(SAMPLE))
    obs = req.case.observations
    for _ in range(n):
        obs.add(code="sbp", value=120.0, unit="mmHg", date="2026-01-01")
    return req


def test_a_typed_case_with_120000_observations_is_refused_naming_the_field(server: Server, channel: grpc.Channel) -> None:
    """The list lengths are checked on the decoded message before any item is converted or
    validated (a 120,000-item case cost a worker ~0.2 s before; now the decode, ~13 ms)."""
    req = huge_case(120_000)
    n = len(req.case.observations)
    err = failed(channel, DECISION + "Evaluate", req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [("observations", f"must have at most 10000 items (got {n})")]
    assert err.details() == f"invalid case: observations: must have at most 10000 items (got {n})"
    stream_req = ds.EvaluateStreamRequest.FromString(req.SerializeToString())
    results = stream(channel, [stream_req, ds.EvaluateStreamRequest(request_id="next", case_json=json.dumps(SAMPLE))])
    assert [(v.field, v.description) for v in results[0].error.field_violations] == [
        ("observations", f"must have at most 10000 items (got {n})")
    ]
    assert results[1].decision.patient_id == "p-0001"
    as_json = dict(SAMPLE, conditions=["I10"] * 10_001, findings=["chest_pain"] * 20_000)
    err = failed(channel, DECISION + "Evaluate", ds.EvaluateRequest(case_json=json.dumps(as_json)))
    assert violations(err) == [
        ("conditions", "must have at most 10000 items (got 10001)"),
        ("findings", "must have at most 10000 items (got 20000)"),
    ]
    still_serving(channel)
    assert not server.events("worker_died")


@pytest.mark.parametrize(
    "rid",
    ["r" * 10000, "Jane Doe 1970-01-01", "x" * 65, "id\nwith newline", "ünïcode"],
    ids=["10000", "name-dob", "65", "newline", "unicode"],
)
def test_a_request_id_that_is_not_an_id_is_replaced_and_never_logged(server: Server, channel: grpc.Channel, rid: str) -> None:
    """request_id must match [A-Za-z0-9._:-]{1,64}; anything else is replaced by a made-up id (the
    response carries it), and the log line says it was replaced without the caller's value."""
    ok = call(channel, DECISION + "Evaluate", ds.EvaluateRequest(request_id=rid, case_json=json.dumps(SAMPLE)), ds.EvaluateResponse)
    assert ok.request_id != rid and re.fullmatch(r"[0-9a-f]{16}", ok.request_id)
    assert ok.decision.patient_id == "p-0001"
    results = stream(channel, [ds.EvaluateStreamRequest(request_id=r, case_json=json.dumps(SAMPLE)) for r in (rid, "next")])
    assert re.fullmatch(r"[0-9a-f]{16}", results[0].request_id) and results[0].decision.patient_id == "p-0001"
    assert results[1].request_id == "next"
    bad = failed(channel, DECISION + "Evaluate", ds.EvaluateRequest(request_id=rid, case_json="{}"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and rid[:8] not in bad.details()
    wait_for(lambda: any(e["request_id"] == results[0].request_id for e in server.events("rpc")), 5, "the log lines")
    replaced = [e for e in server.events("rpc") if e.get("request_id_replaced")]
    assert {ok.request_id, results[0].request_id} <= {e["request_id"] for e in replaced}
    assert rid not in server.log() and json.dumps(rid)[1:-1] not in server.log()


def test_a_request_id_that_is_an_id_is_kept(channel: grpc.Channel) -> None:
    for rid in ("order-17:a.b_c", "q" * 64, "A"):
        ok = call(channel, DECISION + "Evaluate", ds.EvaluateRequest(request_id=rid, case_json=json.dumps(SAMPLE)), ds.EvaluateResponse)
        assert ok.request_id == rid


def test_validate_pathway_file_name_over_256_characters_is_invalid_argument(channel: grpc.Channel) -> None:
    err = failed(channel, PATHWAY + "ValidatePathway", ps.ValidatePathwayRequest(source="id: x\n", file="f" * 100000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [("file", "must be at most 256 characters (got 100000)")]


# ---------------------------------------------------------------- 5: undecodable PathwayService requests


@pytest.mark.parametrize(
    ("method", "raw", "message"),
    [
        ("GetPathway", b"\xff\xff\xff", "the request is not a valid carepath.v1.GetPathwayRequest"),
        ("ListPathways", b"\xff\xff\xff", "the request is not a valid carepath.v1.ListPathwaysRequest"),
        ("ValidatePathway", b"\xff\xff\xff", "the request is not a valid carepath.v1.ValidatePathwayRequest"),
        ("ValidatePathway", b"\x0a\x03\xff\xfe\xfd", "the request is not a valid carepath.v1.ValidatePathwayRequest"),  # source: bad UTF-8
        ("GetPathway", b"\x0a\x02\xc3\x28", "the request is not a valid carepath.v1.GetPathwayRequest"),  # id: bad UTF-8
    ],
    ids=["get", "list", "validate", "validate-utf8", "get-utf8"],
)
def test_undecodable_pathway_request_is_invalid_argument(channel: grpc.Channel, method: str, raw: bytes, message: str) -> None:
    err = failed(channel, PATHWAY + method, raw)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == message
    assert violations(err) == [("", message)]
    assert [p.id for p in call(channel, PATHWAY + "ListPathways", ps.ListPathwaysRequest(), ps.ListPathwaysResponse).pathways] == [
        "mini_htn"
    ]


# ---------------------------------------------------------------- 7: mutated EvaluateRequests


def mutated(seed: int, count: int) -> Iterator[bytes]:
    """Real EvaluateRequests (Case messages and case JSON) with bytes flipped, cut, inserted, dropped
    or spliced from another request: what a broken client or a corrupting proxy sends."""
    rng = random.Random(seed)
    base = [ds.EvaluateRequest(request_id=f"r{i}", case=case_from_dict(varied_case(i))).SerializeToString() for i in range(12)]
    for i in range(4):
        as_json = ds.EvaluateRequest(request_id=f"j{i}", case_json=json.dumps(varied_case(i)), pathway_ids=["mini_htn"])
        base.append(as_json.SerializeToString())
    for _ in range(count):
        b = bytearray(rng.choice(base))
        op = rng.randrange(5)
        i = rng.randrange(len(b))
        if op == 0:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 20))
        elif op == 3:
            del b[i : i + rng.randint(1, 50)]
        else:
            other = rng.choice(base)
            b = b[:i] + other[rng.randrange(len(other)) :]
        yield bytes(b)


def test_mutated_requests_get_a_verdict_and_no_worker_dies(server: Server, channel: grpc.Channel) -> None:
    """Every mutated request gets OK, INVALID_ARGUMENT or NOT_FOUND (an unknown pathway): never
    INTERNAL, UNKNOWN, UNAVAILABLE or a hang, and no worker dies."""
    fn = channel.unary_unary(DECISION + "Evaluate", request_serializer=None, response_deserializer=None)
    codes: dict[str, int] = {}
    for raw in mutated(seed=7, count=600):
        try:
            fn(raw, timeout=30)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        codes[code] = codes.get(code, 0) + 1
    assert set(codes) <= {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}, codes
    assert codes.get("INVALID_ARGUMENT", 0) > 300 and codes.get("OK", 0) > 0, codes  # the mutations reach both
    assert not server.events("worker_died")
    still_serving(channel)


# ---------------------------------------------------------------- 4: a stream outlives the per-batch cap


def test_stream_outlives_the_per_batch_deadline_cap(tmp_path: Path) -> None:
    """MAX_DEADLINE lowered to 1 s in the server: a stream lasting 3 s, with a 60 s deadline of its
    own, gets every case answered (before the fix, every case after the first second failed)."""
    s = Server(tmp_path, FIXTURES, 1, setup="import carepath.service.server as server; server.MAX_DEADLINE = 1.0")
    s.wait_serving()
    try:

        def slow() -> Iterator[ds.EvaluateStreamRequest]:
            for i in range(4):
                yield ds.EvaluateStreamRequest(request_id=str(i), case_json=json.dumps(SAMPLE))
                time.sleep(1.0)

        with grpc.insecure_channel(s.target) as ch:
            t0 = time.monotonic()
            results = stream(ch, slow(), timeout=60)
            assert time.monotonic() - t0 > 3
            assert [(r.request_id, r.WhichOneof("result")) for r in results] == [(str(i), "decision") for i in range(4)]
            with CarepathClient(s.target) as c:  # no deadline from the caller: the stream still lasts
                fn = ch.stream_stream(
                    DECISION + "EvaluateStream",
                    request_serializer=ds.EvaluateStreamRequest.SerializeToString,
                    response_deserializer=ds.EvaluateStreamResponse.FromString,
                )
                assert [r.WhichOneof("result") for r in fn(slow())] == ["decision"] * 4
                assert c.evaluate(SAMPLE)["patient_id"] == "p-0001"
    finally:
        assert s.stop() == 0


# ---------------------------------------------------------------- 6: internal errors are traceable


def slow_pathway(copies: int) -> str:
    """A valid pathway whose validation takes a while: the fixture's rules, ``copies`` times over
    (the pairwise checks grow with the square of the rules: 120 copies, 240 KB, ~2 s on one core)."""
    import copy

    import yaml

    data = yaml.safe_load((FIXTURES / "mini_htn.yaml").read_text(encoding="utf-8"))
    data["rules"] = [dict(copy.deepcopy(r), id=f"{r['id']}.c{i}") for i in range(copies) for r in data["rules"]]
    return str(yaml.safe_dump(data))


def validation_process(s: Server) -> int | None:
    """The pid of a running ValidatePathway process: a child of the forkserver that is not a worker."""
    import psutil

    workers = {e["pid"] for e in s.events("worker_started")}
    for w in workers:
        try:
            forkserver = psutil.Process(w).parent()
        except psutil.NoSuchProcess:
            continue
        if forkserver is not None:
            others = [c.pid for c in forkserver.children() if c.pid not in workers]
            return others[0] if others else None
    return None


def test_validate_pathway_runs_beside_the_workers_and_is_bounded(tmp_path: Path) -> None:
    """With one evaluation worker, a slow ValidatePathway does not hold up evaluations (it runs in a
    process of its own): 20 evaluations are answered while it runs; meanwhile 4 more may wait and the
    rest are refused with RESOURCE_EXHAUSTED."""
    import threading

    s = Server(tmp_path, FIXTURES, 1)
    s.wait_serving()
    try:
        results: list[Any] = []

        def validate(source: str) -> None:
            with grpc.insecure_channel(s.target) as ch:
                try:
                    results.append(
                        call(ch, PATHWAY + "ValidatePathway", ps.ValidatePathwayRequest(source=source), ps.ValidatePathwayResponse)
                    )
                except grpc.RpcError as exc:
                    results.append(exc.code())

        first = threading.Thread(target=validate, args=(slow_pathway(150),))
        first.start()
        with CarepathClient(s.target, timeout=30) as c:
            while validation_process(s) is None and first.is_alive():
                time.sleep(0.01)
            evaluated_meanwhile = 0
            while not results and evaluated_meanwhile < 20:
                assert c.evaluate(SAMPLE)["patient_id"] == "p-0001"
                evaluated_meanwhile += 1
            assert not results, "the validation finished before 20 evaluations did: make it slower"
            small = (FIXTURES / "mini_htn.yaml").read_text(encoding="utf-8")
            more = [threading.Thread(target=validate, args=(small,)) for _ in range(7)]
            for t in more:
                t.start()
            for t in [first, *more]:
                t.join(120)
        # At nice +10, a validation gets little CPU while the machine is busy, and is stopped at 20 s
        # (DEADLINE_EXCEEDED, for the ones waiting behind it too): that is the bound working.
        codes = [r for r in results if not isinstance(r, ps.ValidatePathwayResponse)]
        assert len(results) == 8 and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, results
        assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}, results
        assert all(r.valid for r in results if isinstance(r, ps.ValidatePathwayResponse))
        with CarepathClient(s.target, timeout=60) as c:
            assert c.validate_pathway(small) == []  # and the next one is served
    finally:
        assert s.stop() == 0


def test_internal_error_logs_its_request_id_with_the_traceback(tmp_path: Path) -> None:
    """A real fault: the process validating a pathway is killed (SIGKILL) while it works. The caller
    gets INTERNAL with a request id, and that id is on the log line that says what happened."""
    import os
    import signal
    import threading

    s = Server(tmp_path, FIXTURES, 1)
    s.wait_serving()
    try:
        errors: list[Any] = []

        def validate() -> None:
            with grpc.insecure_channel(s.target) as ch:
                errors.append(failed(ch, PATHWAY + "ValidatePathway", ps.ValidatePathwayRequest(source=slow_pathway(150))))

        t = threading.Thread(target=validate)
        t.start()
        pid = None
        while pid is None and t.is_alive():
            pid = validation_process(s)
            time.sleep(0.01)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t.join(60)
        err = errors[0]
        assert err.code() == grpc.StatusCode.INTERNAL
        message = err.details()
        assert message.startswith("internal error (request id ") and message.endswith(")")
        rid = message.removeprefix("internal error (request id ").removesuffix(")")
        assert len(rid) == 16
        time.sleep(0.3)
        logged = s.events("internal_error")
        assert [(e["request_id"], e["method"], e["error"]) for e in logged] == [
            (rid, "ValidatePathway", "the validation process ended without a result (exit code -9)")
        ]
        assert [e["status"] for e in s.events("rpc") if e["request_id"] == rid] == ["INTERNAL"]
        assert "Traceback" not in "".join(ln for ln in s.log().splitlines() if not ln.startswith("{"))  # only inside JSON lines
        with CarepathClient(s.target) as c:
            assert c.validate_pathway((FIXTURES / "mini_htn.yaml").read_text(encoding="utf-8")) == []  # the next one works
    finally:
        assert s.stop() == 0
