"""A round announced on a result this box has not applied yet: the box waits for that
result (normal for a moment at every round: fetching, decrypting and the canary). The
wait was said at INFO on every announce (a redelivery, an extension) and every job's
end, and never louder, so a box stuck waiting (the federation then waits on it) went
unnoticed at the default log level. It is said once per wait at INFO, and once at
WARNING when it lasts."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import edge.federated.round_gate as round_gate
from edge.federated.api import ClientConfig, ClientEvents
from edge.federated.joining import RoundJoiner
from edge.federated.verdicts import RoundVerdicts
from federation.messages import OPEN, RoundAnnounce
from tests.support.federation_rig import PART

WAITING = "waiting for that result"
STUCK = "cannot join the round until that result reaches it"


def _joiner(tmp_path: Path, served: dict[str, Any]) -> RoundJoiner:
    model: Any = SimpleNamespace(  # the box has only what ``served`` holds
        back_to_initial=lambda ann: None, holding_none=set(), version="round-3",
        base_vector=served.get, refusal_of=lambda base: None)
    sealer: Any = SimpleNamespace(context=None, seal=lambda *a: ({}, {}))
    sender: Any = SimpleNamespace(drop_closed_rounds=lambda _: None)
    return RoundJoiner(ClientConfig("fed", "a"), PART, sealer, sender, model, None,
                       RoundVerdicts(tmp_path), ClientEvents(lambda e: None),
                       tmp_path / "client-state.json", publish_status=lambda: None,
                       job_done=lambda *_: None)


def _announce(round_no: int, base: str) -> RoundAnnounce:
    return RoundAnnounce(round_no, base, OPEN, time.time() + 600, 2, 64.0, 262144,
                         part_key=PART.key)


def _said(caplog: pytest.LogCaptureFixture, text: str) -> list[int]:
    return [r.levelno for r in caplog.records if text in r.getMessage()]


def test_a_wait_for_the_base_result_is_said_once_and_warned_once_when_it_lasts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    joiner = _joiner(tmp_path, served)
    caplog.set_level(logging.INFO, logger="edge.federated.round_gate")
    for _ in range(3):  # the announce, its redelivery after a reconnect, an extension
        joiner.announced(_announce(4, "round-4"))
    joiner.maybe_join()  # a job's end, a result of another round applied
    for _ in range(5):  # worker ticks, well within the time a result takes
        joiner.recount()
    assert _said(caplog, WAITING) == [logging.INFO], caplog.text
    assert _said(caplog, STUCK) == [], caplog.text

    monkeypatch.setattr(round_gate, "BASE_WAIT_WARN_SECONDS", 0.0)  # the wait has lasted
    for _ in range(5):
        joiner.recount()
        joiner.announced(_announce(4, "round-4"))
    assert _said(caplog, STUCK) == [logging.WARNING], caplog.text
    assert _said(caplog, WAITING) == [logging.INFO], caplog.text
    stuck = next(r.getMessage() for r in caplog.records if STUCK in r.getMessage())
    assert stuck.startswith("round 4 is based on round-4 and this box still has round-3 "
                            "after "), stuck

    # the next round's wait is a new one: said again, and warned again if it lasts
    caplog.clear()
    joiner.announced(_announce(5, "round-5"))
    joiner.recount()
    assert _said(caplog, WAITING) == [logging.INFO] and _said(caplog, STUCK) == \
        [logging.WARNING], caplog.text


def test_no_warning_once_the_result_came(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    joiner = _joiner(tmp_path, served)
    caplog.set_level(logging.INFO, logger="edge.federated.round_gate")
    joiner.announced(_announce(4, "round-4"))
    served["round-4"] = np.zeros(PART.size, dtype=np.float32)  # applied (no callback yet)
    monkeypatch.setattr(round_gate, "BASE_WAIT_WARN_SECONDS", 0.0)
    joiner.recount()
    joiner.recount()
    assert _said(caplog, WAITING) == [logging.INFO], caplog.text
    assert _said(caplog, STUCK) == [], caplog.text
