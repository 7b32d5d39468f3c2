"""Where CDS Hooks feedback is kept: a small interface, and a SQLite store in a configurable directory.

The audit issue will store feedback durably elsewhere; until then :class:`SqliteStore` keeps the cards
the service issued (so feedback on a card it never issued is refused) and each feedback item once
(a resend of the same item is accepted and not stored twice).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import orjson


class FeedbackStore(Protocol):
    def issued(self, service_id: str, cards: Iterable[tuple[str, str]]) -> None:
        """Record cards (uuid, patient id) the service sent."""

    def was_issued(self, service_id: str, card: str) -> bool: ...

    def add(self, service_id: str, item: dict[str, Any]) -> bool:
        """Keep one feedback item; False when the same item was already kept."""

    def items(self, service_id: str | None = None) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class SqliteStore:
    """``feedback.sqlite3`` in ``directory`` (created if need be): tables ``issued`` and ``feedback``."""

    def __init__(self, directory: Path | str) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "feedback.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS issued (service TEXT, card TEXT, patient TEXT, first_ts REAL, PRIMARY KEY (service, card))"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS feedback "
            "(service TEXT, key TEXT, card TEXT, outcome TEXT, item TEXT, ts REAL, PRIMARY KEY (service, key))"
        )
        self._known: set[tuple[str, str]] = set()  # issued cards seen by this process: no write for a card issued again

    def issued(self, service_id: str, cards: Iterable[tuple[str, str]]) -> None:
        new = [(service_id, c, p, time.time()) for c, p in cards if (service_id, c) not in self._known]
        if new:
            self.db.executemany("INSERT OR IGNORE INTO issued VALUES (?, ?, ?, ?)", new)
            self._known.update((s, c) for s, c, _, _ in new)

    def was_issued(self, service_id: str, card: str) -> bool:
        if (service_id, card) in self._known:
            return True
        row = self.db.execute("SELECT 1 FROM issued WHERE service = ? AND card = ?", (service_id, card)).fetchone()
        return row is not None

    def add(self, service_id: str, item: dict[str, Any]) -> bool:
        text = orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode()
        key = hashlib.sha256(text.encode()).hexdigest()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO feedback VALUES (?, ?, ?, ?, ?, ?)", (service_id, key, item["card"], item["outcome"], text, time.time())
        )
        return cur.rowcount == 1

    def items(self, service_id: str | None = None) -> list[dict[str, Any]]:
        if service_id is None:
            rows = self.db.execute("SELECT item FROM feedback ORDER BY ts").fetchall()
        else:
            rows = self.db.execute("SELECT item FROM feedback WHERE service = ? ORDER BY ts", (service_id,)).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def close(self) -> None:
        self.db.close()
