"""Hostile and oversized requests against a real `carepath serve` on 127.0.0.1: each gets the status
and message it should (never INTERNAL, UNKNOWN, or a client-side RESOURCE_EXHAUSTED), and the
service keeps serving."""

from __future__ import annotations

import base64
import json
import random
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import FIXTURES
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_helpers import SAMPLE, Server, serving, varied_case
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
            "".join("  " * i + f"k{i}:\n" for i in range(2000)) + "  " * 2000 + "v\n",
            (64, 127),
            "nested more than 64 levels deep (the limit)",
        ),
        ("id: " + "9" * 5000 + "\n", (1, 5), "cannot read '99999999999999999999...(5000 characters)' as int: more than 4300 digits"),
    ],
    ids=["bomb-6", "bomb-8", "self-alias", "seq-900", "map-2000", "int-5000"],
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


def test_request_id_over_128_characters_is_invalid_argument(server: Server, channel: grpc.Channel) -> None:
    rid = "r" * 10000
    err = failed(channel, DECISION + "Evaluate", ds.EvaluateRequest(request_id=rid, case_json=json.dumps(SAMPLE)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [("request_id", "must be at most 128 characters (got 10000)")]
    assert err.details() == "invalid case: request_id: must be at most 128 characters (got 10000)"
    results = stream(channel, [ds.EvaluateStreamRequest(request_id=r, case_json=json.dumps(SAMPLE)) for r in (rid, "next")])
    assert [(v.field, v.description) for v in results[0].error.field_violations] == [
        ("request_id", "must be at most 128 characters (got 10000)")
    ]
    assert results[0].request_id == "r" * 128
    assert results[1].request_id == "next" and results[1].decision.patient_id == "p-0001"
    ok = call(channel, DECISION + "Evaluate", ds.EvaluateRequest(request_id="q" * 128, case_json=json.dumps(SAMPLE)), ds.EvaluateResponse)
    assert ok.request_id == "q" * 128
    time.sleep(0.2)  # the log lines are written every 20 ms
    assert all(len(e["request_id"]) <= 128 for e in server.events("rpc"))


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


def test_internal_error_logs_its_request_id_with_the_traceback(tmp_path: Path) -> None:
    """A real fault: the dictionary is broken after the workers started, so ValidatePathway (which
    reads it on first use) fails inside the worker. The caller's request id is on the log line
    that holds the traceback."""
    pathways = tmp_path / "pathways"
    pathways.mkdir()
    for f in FIXTURES.glob("*.yaml"):
        (pathways / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    s = Server(tmp_path, pathways, 1)
    s.wait_serving()
    try:
        (pathways / "dictionary.yaml").write_text("observations: [\n", encoding="utf-8")
        with grpc.insecure_channel(s.target) as ch:
            err = failed(ch, PATHWAY + "ValidatePathway", ps.ValidatePathwayRequest(source="id: x\n"))
        assert err.code() == grpc.StatusCode.INTERNAL
        message = err.details()
        assert message.startswith("internal error (request id ") and message.endswith(")")
        rid = message.removeprefix("internal error (request id ").removesuffix(")")
        assert len(rid) == 16
        time.sleep(0.3)
        errors = s.events("internal_error")
        assert [(e["request_id"], e["method"]) for e in errors] == [(rid, "ValidatePathway")]
        assert errors[0]["error"].startswith("PathwayError: ")
        assert "Traceback (most recent call last)" in errors[0]["traceback"] and "load_vocabulary" in errors[0]["traceback"]
        assert [e["status"] for e in s.events("rpc") if e["request_id"] == rid] == ["INTERNAL"]
        assert "Traceback" not in "".join(ln for ln in s.log().splitlines() if not ln.startswith("{"))  # only inside JSON lines
    finally:
        assert s.stop() == 0
