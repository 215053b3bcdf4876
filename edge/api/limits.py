"""Request rates: a token bucket per API key, and one per address for bad keys.

A client over its rate gets 429 at once (never queued: a queue would hold uploads in
memory); a caller guessing keys is slowed to a few tries a minute per address.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class TokenBuckets:
    """``allow(who)``: True while ``who`` has tokens (``rate`` a second, up to ``burst``)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens, last time)

    def allow(self, who: str) -> bool:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(who, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if len(self._buckets) >= self.max_clients and who not in self._buckets:
                self._buckets.clear()  # many addresses: forget them rather than grow
            if tokens < 1.0:
                self._buckets[who] = (tokens, now)
                return False
            self._buckets[who] = (tokens - 1.0, now)
            return True

    def retry_after(self, who: str) -> int:
        """Whole seconds until ``who`` has a token again (a 429's Retry-After)."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        return max(1, math.ceil((1.0 - tokens) / self.rate)) if tokens < 1.0 else 0
