"""The carepath gRPC client (the implementation lives in carepath.client, installed with carepath)."""

from carepath.client import CallError, CarepathClient, Result
from carepath.contract import Decision, Recommendation, TraceEntry
from carepath.errors import CaseError, Diagnostic, FieldViolation

__all__ = ["CallError", "CarepathClient", "CaseError", "Decision", "Diagnostic", "FieldViolation", "Recommendation", "Result", "TraceEntry"]
