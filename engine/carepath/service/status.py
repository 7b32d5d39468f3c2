"""Every mapping from an outcome to a gRPC status lives here (one place, as the issue asks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from carepath.service import pool
from carepath.service import worker as w
from carepath_client._proto.v1 import decision_service_pb2 as ds


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str
    violations: tuple[tuple[str, str], ...] = ()

    def rich(self) -> grpc.Status:
        """The status with google.rpc.BadRequest field violations in its details (the trailer stays
        under TRAILER_BUDGET: the violations were capped by carried(), the message is capped here)."""
        st = status_pb2.Status(code=self.code.value[0], message=clip_bytes(self.message, MAX_MESSAGE_BYTES))
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
            message=clip_bytes(self.message, MAX_MESSAGE_BYTES),
            field_violations=[ds.FieldViolation(field=f, description=m) for f, m in self.violations],
        )


# A client refuses response metadata over 8 KiB (grpc.max_metadata_size; "received metadata size
# exceeds soft limit" -> RESOURCE_EXHAUSTED, and the real status is lost). The trailer carries the
# message percent-encoded (up to 3 bytes per byte) and the details base64-encoded (4 per 3 bytes):
# 512 -> at most 1,536 bytes, 3,072 -> 4,096 bytes; with the rest of the trailer, under 6 KiB.
MAX_MESSAGE_BYTES = 512  # UTF-8 bytes of a status message
MAX_VIOLATIONS = 50  # field violations carried; the rest are counted in one last violation
MAX_FIELD = 128  # characters of a field path carried
MAX_DESCRIPTION = 256  # characters of a violation's description carried
DETAILS_BUDGET = 3072  # bytes of the serialised field violations (the "N more" one included)


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters: a longer text is cut and ends with '…'."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_bytes(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8 (cut on a character boundary, ending with '…')."""
    if len(text) <= limit // 4:  # short enough whatever its characters
        return text
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "…"


def carried(violations: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The violations a status carries: the first MAX_VIOLATIONS that fit DETAILS_BUDGET, each
    clipped, and then one saying how many more there were."""
    out: list[tuple[str, str]] = []
    used = 64  # room for the last one ("and N more ...")
    for field, message in violations[:MAX_VIOLATIONS]:
        f, m = clip(field, MAX_FIELD), clip(message, MAX_DESCRIPTION)
        size = len(f.encode()) + len(m.encode()) + 10  # + tags and lengths
        if used + size > DETAILS_BUDGET:
            break
        out.append((f, m))
        used += size
    if len(out) < len(violations):
        out.append(("", f"and {len(violations) - len(out)} more violation(s), not shown"))
    return tuple(out)


def case_failure(violations: Sequence[tuple[str, str]]) -> Failure:
    shown = carried(violations)
    first = shown[0] if shown else ("", "invalid case")
    where = f"{first[0]}: " if first[0] else ""
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return Failure(grpc.StatusCode.INVALID_ARGUMENT, f"invalid case: {where}{first[1]}{more}", shown)


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
