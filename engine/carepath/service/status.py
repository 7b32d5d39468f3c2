"""Every mapping from an outcome to a gRPC status lives here (one place, as the issue asks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from carepath._proto.v1 import decision_service_pb2 as ds
from carepath.service import pool
from carepath.service import worker as w


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str
    violations: tuple[tuple[str, str], ...] = ()

    def rich(self) -> grpc.Status:
        """The status with google.rpc.BadRequest field violations in its details."""
        st = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.violations:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=m) for f, m in self.violations]
                )
            )
            st.details.append(detail)
        return rpc_status.to_status(st)

    def stream_error(self) -> ds.EvaluateError:
        return ds.EvaluateError(
            code=self.code.value[0],
            message=self.message,
            field_violations=[ds.FieldViolation(field=f, description=m) for f, m in self.violations],
        )


def case_failure(violations: Sequence[tuple[str, str]]) -> Failure:
    first = violations[0] if violations else ("", "invalid case")
    where = f"{first[0]}: " if first[0] else ""
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return Failure(grpc.StatusCode.INVALID_ARGUMENT, f"invalid case: {where}{first[1]}{more}", tuple(violations))


def from_reply(reply: pool.Reply, request_id: str) -> Failure | None:
    """None for success; else the failure a worker reported."""
    if reply.status == w.OK:
        return None
    if reply.status == w.CASE_ERROR:
        return case_failure([(str(f), str(m)) for f, m in reply.payload])
    if reply.status == w.NOT_FOUND:
        return Failure(grpc.StatusCode.NOT_FOUND, str(reply.payload))
    if reply.status == w.DEADLINE:
        return Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    return internal(request_id)


def from_exception(exc: BaseException, request_id: str) -> Failure:
    if isinstance(exc, pool.DeadlineExceeded):
        return Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    if isinstance(exc, pool.Unavailable):
        return Failure(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry")
    return internal(request_id)


def internal(request_id: str) -> Failure:
    """Never a traceback to the caller: the request id finds it in the server log."""
    return Failure(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")


def not_found(what: str) -> Failure:
    return Failure(grpc.StatusCode.NOT_FOUND, what)


CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
