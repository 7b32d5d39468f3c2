"""Knowledge in one place (issue 24): the recommendation kinds, medication actions and urgencies are
defined in carepath.recommendations; the types that must spell them out (the pathway model for
pydantic and the schema, the client's contract for type checkers) say exactly the same, and the
pathway-info shape is built by one function each way."""

from __future__ import annotations

from typing import Any, get_args, get_type_hints

from carepath import model
from carepath.recommendations import ACTIONS, BLOCKS, KINDS, STARTS, URGENCIES, atc_overlap
from carepath_client import contract
from carepath_client.codec import PATHWAY_INFO_KEYS, pathway_from_message, pathway_to_message

RECS = (model.TestRec, model.MedicationRec, model.ReferralRec, model.FollowUpRec, model.AlertRec)
CONTRACT = (
    contract.TestRecommendation,
    contract.MedicationRecommendation,
    contract.ReferralRecommendation,
    contract.FollowUpRecommendation,
    contract.AlertRecommendation,
)


def _strings(annotation: Any) -> set[str]:
    """The strings of a Literal, or of the Literal in an Optional."""
    return {x for a in (annotation, *get_args(annotation)) for x in get_args(a) if isinstance(x, str)}


def test_the_models_spell_the_same_kinds_actions_and_urgencies() -> None:
    assert {get_args(c.model_fields["kind"].annotation)[0] for c in RECS} == set(KINDS)
    assert set(get_args(model.MedicationRec.model_fields["action"].annotation)) == set(ACTIONS)
    assert _strings(model.ReferralRec.model_fields["urgency"].annotation) == set(URGENCIES)
    assert {get_args(get_type_hints(c)["kind"])[0] for c in CONTRACT} == set(KINDS)
    assert set(get_args(get_type_hints(contract.MedicationRecommendation)["action"])) == set(ACTIONS)
    assert STARTS | BLOCKS == set(ACTIONS) and not STARTS & BLOCKS


def test_atc_overlap_is_a_prefix_either_way() -> None:
    assert atc_overlap("C09", "C09AA02") and atc_overlap("C09AA02", "C09") and atc_overlap("C09", "C09")
    assert not atc_overlap("C09A", "C09C")


def test_pathway_info_round_trips_through_the_message() -> None:
    info = {"id": "x", "version": "1.0.0", "sha256": "ab", "title": "T", "file": "x.yaml", "source": "id: x"}
    assert pathway_from_message(pathway_to_message(info, source=True), source=True) == info
    assert list(pathway_from_message(pathway_to_message(info))) == [k for k in PATHWAY_INFO_KEYS if k != "source"]
