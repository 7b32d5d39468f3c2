"""The carepath gRPC client, installable alone (the carepath-client distribution: grpcio, protobuf
and grpcio-status; no engine, no durable-rules).

    from carepath_client import CarepathClient

    with CarepathClient("127.0.0.1:50051") as client:
        decision = client.evaluate(case)

The names below load on first use (PEP 562), so that the engine, which shares the error classes
(carepath_client.errors) and the decision types (carepath_client.contract), does not import grpc and
the generated messages just to name an error.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carepath_client.client import CallError, CarepathClient, CaseInput, Evaluated, FeedbackItem, FeedbackReceipt, Result
    from carepath_client.contract import Decision, PathwayUsed, Recommendation, SiteUsed, TraceEntry
    from carepath_client.errors import CarepathError, CaseError, Diagnostic, FieldViolation

__all__ = [
    "CallError",
    "CarepathClient",
    "CarepathError",
    "CaseError",
    "CaseInput",
    "Decision",
    "Diagnostic",
    "Evaluated",
    "FeedbackItem",
    "FeedbackReceipt",
    "FieldViolation",
    "PathwayUsed",
    "Recommendation",
    "Result",
    "SiteUsed",
    "TraceEntry",
]

_WHERE = {
    "CallError": "client",
    "CarepathClient": "client",
    "CaseInput": "client",
    "Result": "client",
    "Evaluated": "client",
    "FeedbackItem": "client",
    "FeedbackReceipt": "client",
    "Decision": "contract",
    "PathwayUsed": "contract",
    "Recommendation": "contract",
    "TraceEntry": "contract",
    "SiteUsed": "contract",
    "CarepathError": "errors",
    "CaseError": "errors",
    "Diagnostic": "errors",
    "FieldViolation": "errors",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'carepath_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"carepath_client.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
