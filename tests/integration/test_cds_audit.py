"""CDS Hooks calls and card feedback in the audit trail: a real `carepath serve --cds-hooks --audit`
on loopback, a patient-view call and feedback on its cards over HTTP, the SQLite file read back,
its chain verified and `carepath report --feedback` over it."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT
from grpc_helpers import CARE, Server, wait_for
from test_cds_hooks import hook_request, patient_id, resources_of, split, synthea_bundle

from carepath.service.audit import COLUMNS, verify
from carepath.service.feedback import Store

pytestmark = pytest.mark.timeout(180)


class AuditedCds(Server):
    def __init__(self, tmp: Path) -> None:
        self.audit = tmp / "audit.db"
        args = ["--cds-hooks", "--http-port", "0", "--cds-feedback-dir", str(tmp / "fb"), "--audit", str(self.audit)]
        super().__init__(tmp, ROOT / "pathways", 1, *args)
        assert self.proc.stdout is not None
        self.base = ""
        end = time.monotonic() + 90
        while time.monotonic() < end and not self.base:
            line = self.proc.stdout.readline().decode()
            m = re.search(r"CDS Hooks on (http://[\d.:]+)/cds-services", line)
            if m:
                self.base = m.group(1)
            if not line:
                break
        assert self.base, self.log()


def records(path: Path, where: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        return [
            dict(zip(COLUMNS, r, strict=True)) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {where} ORDER BY seq")
        ]


def test_cds_calls_and_card_feedback_are_audited_and_reported(tmp_path: Path) -> None:
    """Feedback on a card finds its decision after a restart too: a review found the card-to-decision
    map kept in memory (feedback after a restart was recorded unlinked)."""
    s = AuditedCds(tmp_path)
    try:
        bundle = synthea_bundle("Elsy_Bechtelar")
        pid = patient_id(bundle)
        with httpx.Client(base_url=s.base, timeout=60) as http:
            r = http.post("/cds-services/carepath-patient-view", json=hook_request("patient-view", pid, split(resources_of(bundle))))
            assert r.status_code == 200, r.text
            cards = r.json()["cards"]
            assert len(cards) >= 2
            rule1 = cards[1]["source"]["topic"]["code"]
            reason = cards[1]["overrideReasons"][0]
            items = [
                {"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2021-04-01T10:00:00Z"},
                {
                    "card": cards[1]["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": reason, "userComment": "discussed with the patient"},
                    "outcomeTimestamp": "2021-04-01T10:01:00Z",
                },
            ]
            url = "/cds-services/carepath-patient-view/feedback"
            assert http.post(url, json={"feedback": items[:1]}).json() == {"received": 1, "new": 1}
    finally:
        assert s.stop() == 0, s.log()
    s = AuditedCds(tmp_path)  # the same audit file and feedback directory, a new process
    try:
        with httpx.Client(base_url=s.base, timeout=60) as http:
            assert http.post(url, json={"feedback": items}).json() == {"received": 2, "new": 1}
            assert http.post(url, json={"feedback": items[1:]}).json() == {"received": 1, "new": 0}  # a resend
        call = records(s.audit, "action = 'CdsHooks'")
        assert len(call) == 1 and call[0]["patient"] == pid and call[0]["decision_id"].startswith("d-")
        assert [r[1] for r in json.loads(call[0]["recommendations"])] == [c["source"]["topic"]["code"] for c in cards]
        fb = records(s.audit, "action = 'CdsFeedback'")
        assert [(r["outcome"], r["decision_id"]) for r in fb] == [("OK", call[0]["decision_id"])] * 2  # the resend: not again
        with sqlite3.connect(s.audit) as db:
            rows = db.execute("SELECT recommendation, rule, outcome, reason, reason_text FROM feedback ORDER BY recommendation").fetchall()
        assert rows[1] == (1, rule1, "overridden", reason["code"], "discussed with the patient") and rows[0][2] == "accepted"
        assert "discussed" not in json.dumps(records(s.audit, "1"))
    finally:
        assert s.stop() == 0, s.log()
    wait_for(lambda: verify(s.audit).problem == "", 5, "an intact chain")
    out = subprocess.run([*CARE, "report", "--feedback", str(s.audit)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and reason["code"] in out.stdout, out.stdout + out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith(f"| {rule1} |"))
    assert row.split("|")[2].strip() == "100.0%", row  # fired in the one decision (the CDS Hooks call)
    # the cards table is an index of what the hook call's record holds (its uuids are under the hash)
    assert [r[2] for r in json.loads(call[0]["recommendations"])] == [c["uuid"] for c in cards]
    tampered = tmp_path / "tampered.db"
    shutil.copy(s.audit, tampered)
    with sqlite3.connect(tampered) as db:  # a review found feedback could be relinked here unnoticed
        db.execute("UPDATE cards SET recommendation = 0 WHERE card = ?", (cards[1]["uuid"],))
    assert "the cards table changed" in verify(tampered).problem
    assert Store(tampered).card("carepath-patient-view", cards[1]["uuid"]) is None  # and feedback is not linked by it
    assert Store(s.audit).card("carepath-patient-view", cards[1]["uuid"]) == (call[0]["decision_id"], 1, rule1, pid)
