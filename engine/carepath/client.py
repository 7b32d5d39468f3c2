"""The typed gRPC client: defined in the client package (carepath_client.client), which the engine
depends on; re-exported here so ``carepath.client`` keeps working."""

from carepath_client.client import CallError, CarepathClient, CaseInput, Result

__all__ = ["CallError", "CarepathClient", "CaseInput", "Result"]
