"""Packets of an MQTT connection still waiting for the broker's acknowledgement, by mid.

One bookkeeping for PUBLISH (PUBACK: ``flush`` and ``close`` wait until nothing is
pending) and SUBSCRIBE (SUBACK: connected is not subscribed; until the SUBACK, a message
another client publishes without retain may reach the broker first and never come, as a
loaded test run once lost one). paho may handle an acknowledgement on its thread before
the call that sent the packet returns its mid, so an early acknowledgement is kept until
its mid is noted (a bounded number: one that is never noted was not ours).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_EARLY_KEPT = 1000


class PendingMids:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._early: set[int] = set()

    def sent(self, mid: int) -> None:
        with self._cond:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._pending.add(mid)

    def acked(self, mid: int) -> None:
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._early.add(mid)
                while len(self._early) > _EARLY_KEPT:
                    self._early.pop()
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget everything (the connection is gone and what it sent is sent again)."""
        with self._cond:
            self._pending.clear()
            self._early.clear()

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait_none(self, timeout: float, also: Callable[[], bool] = lambda: True) -> bool:
        """Until nothing is pending and ``also()`` holds (polled: it is not notified here);
        False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or not also():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True
