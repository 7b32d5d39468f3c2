"""CDS Hooks calls and card feedback in the audit trail (`carepath serve --cds-hooks --audit PATH`).

A hook call that returns cards appends one audit record (action ``CdsHooks``, the request id, the
patient, the rules of the cards, the response's sha256) with a decision id and, as its
recommendations, ``["card", rule]`` per card in order. Card feedback goes where RecordFeedback's goes:
one row per feedback item in the audit file's ``feedback`` table (the card's decision and index, its
rule, accepted or overridden, the override reason's code, the user's comment, when), in the
transaction of its own audit record (action ``CdsFeedback``; ``OK_UNLINKED`` and no row when the card
was issued before this server started: the card-to-decision map is kept in memory, for the last
CARDS cards). A resent item is recorded once (its feedback id is a hash of the item).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import orjson

from carepath.service.audit import AuditLog, new_decision_id, utc_text
from carepath.service.auth import Caller
from carepath.service.feedback import Store

CARDS = 200_000  # cards remembered (service, card uuid) -> (decision id, index, rule, patient)


class CdsAudit:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self.store = Store(audit.path)
        self.cards: OrderedDict[tuple[str, str], tuple[str, int, str, str]] = OrderedDict()

    async def hook(self, service_id: str, request_id: str, patient: str, body: bytes, caller: Caller) -> None:
        """Record a hook call's cards (AuditError when the record cannot be written: fail closed)."""
        cards = orjson.loads(body).get("cards", [])
        recs = [["card", str(((c.get("source") or {}).get("topic") or {}).get("code", ""))] for c in cards]
        did = new_decision_id()
        rules = sorted({r for _, r in recs if r})
        rec = self.audit.record(
            caller,
            "CdsHooks",
            "OK",
            patient=patient,
            request_id=request_id,
            rules=rules,
            response=body,
            decision_id=did,
            recommendations=recs,
        )
        await self.audit.append(rec)
        pseudonym = rec.patient or ""
        for i, c in enumerate(cards):
            key = (service_id, str(c.get("uuid", "")))
            self.cards[key] = (did, i, recs[i][1], pseudonym)
            self.cards.move_to_end(key)
        while len(self.cards) > CARDS:
            self.cards.popitem(last=False)

    async def feedback(self, service_id: str, item: dict[str, Any], caller: Caller) -> None:
        """Record one card feedback item, once (AuditError when it cannot be written)."""
        text = orjson.dumps([service_id, item], option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(text).hexdigest()
        fid = "cds-" + digest[:40]
        if await asyncio.to_thread(self.store.stored, fid) is not None:
            return
        linked = self.cards.get((service_id, str(item["card"])))
        override = item.get("overrideReason") or {}
        reason = (override.get("reason") or {}).get("code")
        at = _utc(item.get("outcomeTimestamp"))
        rows = None
        if linked is not None:
            did, index, rule, _ = linked
            rows = [(fid, 0, did, index, "card", rule, item["outcome"], reason, override.get("userComment") or "", None, at, digest)]
        rec = self.audit.record(
            caller,
            "CdsFeedback",
            "OK" if linked else "OK_UNLINKED",
            patient=linked[3] if linked else None,
            pseudonymise=False,
            request_id=fid,
            rules=[linked[2]] if linked and linked[2] else [],
            decision_id=linked[0] if linked else None,
        )
        await self.audit.append(rec, feedback=rows or [])

    def close(self) -> None:
        self.store.close()


def _utc(text: Any) -> str:
    now = datetime.now(UTC)
    t = now
    if isinstance(text, str):
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            t = now
        t = t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    return utc_text(t)
