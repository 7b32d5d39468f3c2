"""Contract JSON (dicts) <-> carepath.v1 messages: the codec (carepath_client.codec), re-exported for the
service. The worker's response encoder is carepath.service.encode."""

from __future__ import annotations

from carepath_client.codec import (
    SETTINGS,
    SEXES,
    NotRepresentable,
    case_from_dict,
    case_to_dict,
    decision_to_dict,
    decision_to_proto,
)

__all__ = [
    "SETTINGS",
    "SEXES",
    "NotRepresentable",
    "case_from_dict",
    "case_to_dict",
    "decision_to_dict",
    "decision_to_proto",
]
