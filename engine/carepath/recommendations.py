"""What the engine knows about recommendations, defined once: their kinds, the medication actions,
which actions change a drug and which hold one back, urgencies, and when two ATC codes overlap.
The conflict policy (decide), validation (contradictory rules), the invariants and the mutation
suite all read these."""

from __future__ import annotations

__all__ = ["ACTIONS", "BLOCKS", "KINDS", "STARTS", "URGENCIES", "atc_overlap"]

KINDS = ("referral", "alert", "medication", "test", "follow_up")  # the recommendation kinds, in the decision's order
ACTIONS = ("stop", "avoid", "start", "add", "switch", "titrate")  # a medication's actions, in the decision's order
STARTS = frozenset({"start", "add", "titrate", "switch"})  # the actions that change a drug (the regimen is not yet stable)
BLOCKS = frozenset({"avoid", "stop"})  # the actions that hold a drug back: they beat a start of an overlapping class
URGENCIES = ("emergency", "priority", "routine")  # an up-referral's urgency, most urgent first


def atc_overlap(a: str, b: str) -> bool:
    """Two ATC codes or class prefixes overlap when one is a prefix of the other (C09 and C09AA02)."""
    return a.startswith(b) or b.startswith(a)
