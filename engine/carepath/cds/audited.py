"""CDS Hooks calls and card feedback in the audit trail (`carepath serve --cds-hooks --audit PATH`).

A hook call that returns cards appends one audit record (action ``CdsHooks``, the request id, the
patient, the rules of the cards, the response's sha256) with a decision id and, as its
recommendations, ``["card", rule]`` per card in order. Card feedback goes where RecordFeedback's goes:
one row per feedback item in the audit file's ``feedback`` table (the card's decision and index, its
rule, accepted or overridden, the override reason's code, the user's comment, when), in the
transaction of its own audit record (action ``CdsFeedback``, whose response_sha256 is the rows' content
hash, so `carepath audit verify` checks them). The cards of each hook call are kept in the trail's
``cards`` table with its record, so feedback finds its decision after a restart too (``OK_UNLINKED``
and no row only for a card the trail has no record of: issued without ``--audit``, or pruned). A
resent item is recorded once (its feedback id is a hash of the item).
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from carepath.service.audit import AuditLog, FeedbackTaken, Rows, feedback_content, feedback_rows, new_decision_id, utc_text
from carepath.service.auth import Caller
from carepath.service.feedback import Store


class CdsAudit:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self.store = Store(audit.target)

    async def hook(self, service_id: str, request_id: str, patient: str, body: bytes, caller: Caller) -> None:
        """Record a hook call's cards (AuditError when the record cannot be written: fail closed)."""
        cards = orjson.loads(body).get("cards", [])
        # ["card", rule, uuid] per card: the uuid under the record's hash, so the cards table is only an index
        recs = [["card", str(((c.get("source") or {}).get("topic") or {}).get("code", "")), str(c.get("uuid", ""))] for c in cards]
        did = new_decision_id()
        rules = sorted({r[1] for r in recs if r[1]})
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
        await self.audit.append(rec, cards=[(service_id, str(c.get("uuid", "")), did, i) for i, c in enumerate(cards)])

    async def feedback(self, service_id: str, item: dict[str, Any], caller: Caller) -> None:
        """Record one card feedback item, once (AuditError when it cannot be written)."""
        text = orjson.dumps([service_id, item], option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(text).hexdigest()
        fid = "cds-" + digest[:40]
        if await asyncio.to_thread(self.store.stored, fid):
            return
        linked = await asyncio.to_thread(self.store.card, service_id, str(item["card"]))
        override = item.get("overrideReason") or {}
        reason = (override.get("reason") or {}).get("code")
        at = _utc(item.get("outcomeTimestamp"))
        rows: Rows = []
        content = None
        if linked is not None:
            did, index, rule, _ = linked
            rows = feedback_rows(fid, did, [(index, "card", rule, item["outcome"], reason, override.get("userComment") or "")], None, at)
            content = feedback_content(rows)
        rec = self.audit.record(
            caller,
            "CdsFeedback",
            "OK" if linked else "OK_UNLINKED",
            patient=linked[3] if linked else None,
            pseudonymise=False,
            request_id=fid,
            rules=[linked[2]] if linked and linked[2] else [],
            decision_id=linked[0] if linked else None,
            response=content,
        )
        try:
            await self.audit.append(rec, feedback=rows)
        except FeedbackTaken:
            pass  # a copy of this item, racing it, was recorded first

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
