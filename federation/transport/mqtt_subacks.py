"""Which SUBSCRIBEs of the current MQTT connection the broker has acknowledged.

Connected is not subscribed: until the SUBACK, a message another client publishes
without retain may reach the broker before the subscription and never come (a loaded
test run lost one that way). ``MqttTransport.wait_subscribed`` waits on this. A SUBACK
can be handled on paho's thread before ``subscribe`` returns its mid to the caller, so
an early acknowledgement is remembered until its mid is noted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("federation.transport.mqtt")

_EARLY_KEPT = 1000  # acknowledgements whose mid was never noted (not ours) are dropped


class SubAcks:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._unacked: set[int] = set()
        self._early: set[int] = set()

    def sent(self, mid: int) -> None:
        with self._cond:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._unacked.add(mid)

    def acked(self, mid: int, reason_codes: Iterable[Any], client_id: str) -> None:
        with self._cond:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._early.add(mid)
                while len(self._early) > _EARLY_KEPT:
                    self._early.pop()
            self._cond.notify_all()
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:  # e.g. the broker's ACL (MQTT 5: 0x87): otherwise nothing says so
            log.warning("broker refused a subscription of %s (mid %s): %s", client_id, mid,
                        ", ".join(refused))

    def reset(self) -> None:
        """The connection is gone: the next connect subscribes everything again."""
        with self._cond:
            self._unacked.clear()
            self._early.clear()

    def wait(self, connected: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (connected() and not self._unacked):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))  # a connect is not notified here
            return True
