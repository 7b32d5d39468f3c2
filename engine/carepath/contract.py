"""The decision's shape as types: defined in the client package (carepath_client.contract), which
the engine depends on; re-exported here so ``carepath.contract`` keeps working."""

from carepath_client.contract import (
    AlertRecommendation,
    Decision,
    FollowUpRecommendation,
    MedicationRecommendation,
    PathwayUsed,
    Recommendation,
    ReferralRecommendation,
    SiteUsed,
    TestRecommendation,
    TraceEntry,
    Value,
)

__all__ = [
    "AlertRecommendation",
    "Decision",
    "FollowUpRecommendation",
    "MedicationRecommendation",
    "PathwayUsed",
    "Recommendation",
    "ReferralRecommendation",
    "SiteUsed",
    "TestRecommendation",
    "TraceEntry",
    "Value",
]
