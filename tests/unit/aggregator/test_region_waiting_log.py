"""A regional aggregator waiting for the root's result is a normal state, said once per
round at info level; a broker that does not confirm a result is an error every retry.
A walkthrough's region logged `ERROR ... result not confirmed by the broker
(publish_timeout: region round 5: waiting for the root's result ...)` every 5 s (about
180 lines a round at the documented 900 s deadline)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from aggregator.rounds.events import RoundEventHandler
from aggregator.rounds.records import ResultReady
from aggregator.state.store import Store
from federation.errors import AWAITING_ROOT, PUBLISH_TIMEOUT, TransportError


class Waiting:
    """The forwarder while the root's round is open: every exchange says 'not yet'."""

    def __init__(self, reason: str) -> None:
        self.reason, self.asked = reason, 0

    def exchange(self, event: ResultReady, partial_blob: bytes) -> bytes:
        self.asked += 1
        raise TransportError(self.reason, f"region round {event.round}: waiting for the "
                                          "root's result of its round 9")


@pytest.mark.parametrize(("reason", "level", "lines"),
                         [(AWAITING_ROOT, logging.INFO, 1), (PUBLISH_TIMEOUT, logging.ERROR, 4)])
def test_waiting_for_the_root_is_said_once_a_broker_fault_every_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, reason: str, level: int,
        lines: int) -> None:
    store = Store(tmp_path)
    try:
        store.write_blob("round-5-result.bin", b"partial sum")
        handler = RoundEventHandler(store, None, None,  # type: ignore[arg-type]
                                    max_rounds=None, finished=threading.Event())
        handler.forwarder = forwarder = Waiting(reason)
        caplog.set_level(logging.INFO, logger="aggregator.rounds.events")
        handler.handle([ResultReady(5, "round-5", "round-4", "round-5-result.bin")])
        for _ in range(3):  # the worker's pumps
            handler.retry_unpublished()
        assert forwarder.asked == 4  # still asked every pump: nothing lost
        said = [r for r in caplog.records if r.name == "aggregator.rounds.events"]
        assert len(said) == lines and {r.levelno for r in said} == {level}
        assert "region round 5: waiting for the root's result of its round 9" in said[0].message
    finally:
        store.close()
