"""Hostile and oversized requests against a real `carepath serve` on 127.0.0.1: each gets the status
and message it should (never INTERNAL, UNKNOWN, or a client-side RESOURCE_EXHAUSTED), and the
service keeps serving."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_helpers import FIXTURES, SAMPLE, Server
from grpc_status import rpc_status

from carepath._proto.v1 import decision_service_pb2 as ds
from carepath._proto.v1 import pathway_service_pb2 as ps

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
    s = Server(tmp_path_factory.mktemp("srv"))
    s.wait_serving()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


def call(channel: grpc.Channel, method: str, request: Any, response: Any) -> Any:
    fn = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response.FromString)
    return fn(request, timeout=30)


def failed(channel: grpc.Channel, method: str, request: Any) -> Any:
    """The error of a call that must fail: raw bytes or a message."""
    fn = channel.unary_unary(method)
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
