"""Per-device rate limits at the aggregator: a token bucket for messages and one for bytes.

Checked on the delivery thread BEFORE the signature is verified and the chunk spooled,
so a device that floods (broken firmware, stolen credentials) costs a dictionary lookup
per message, not an Ed25519 verification and a disk write. The broker's ACL confines
each device to its own update topic, so the topic's device id is the bucket key and one
device cannot drain another's bucket.

A limited message is dropped with reason ``rate_limited``. It is NOT logged, counted in
the database or acked one by one (that would turn the flood into a log/db/ack flood):
``drain`` hands the worker the counts per device since the last call, and the service
logs and acks at most once per device per ``report_seconds``.

Defaults are far above what an honest box sends: a 1M-value update is ~24 MB in ~100
chunks of 256 KiB, resent at most every retry period.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aggregator.state.store import Store

RATE_LIMITED = "rate_limited"
_MAX_DEVICES = 100_000  # buckets kept (LRU): topic ids of unknown devices cannot grow it


@dataclass(frozen=True)
class RateLimits:
    messages_per_second: float = 200.0
    message_burst: float = 2000.0
    bytes_per_second: float = 16 * 1024 * 1024
    byte_burst: float = 128 * 1024 * 1024
    report_seconds: float = 10.0

    def __post_init__(self) -> None:
        if min(self.messages_per_second, self.message_burst, self.bytes_per_second,
               self.byte_burst) <= 0:
            raise ValueError("rate limits must be > 0 (disable the limiter instead)")


class _Bucket:
    __slots__ = ("at", "bytes", "msgs")

    def __init__(self, limits: RateLimits, now: float) -> None:
        self.msgs = limits.message_burst
        self.bytes = limits.byte_burst
        self.at = now


class RateLimiter:
    """Thread-safe token buckets per device; ``allow`` is called on the delivery thread."""

    def __init__(self, limits: RateLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or RateLimits()
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._dropped: dict[str, list[int]] = {}  # device -> [messages, bytes] since drain
        self._last_report: dict[str, float] = {}
        self._lock = threading.Lock()
        self.total_dropped = 0

    def allow(self, device: str, nbytes: int) -> bool:
        lim = self.limits
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(device)
            if bucket is None:
                bucket = self._buckets[device] = _Bucket(lim, now)
                while len(self._buckets) > _MAX_DEVICES:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(device)
                elapsed = max(0.0, now - bucket.at)
                bucket.msgs = min(lim.message_burst,
                                  bucket.msgs + elapsed * lim.messages_per_second)
                bucket.bytes = min(lim.byte_burst,
                                   bucket.bytes + elapsed * lim.bytes_per_second)
                bucket.at = now
            if bucket.msgs >= 1 and bucket.bytes >= nbytes:
                bucket.msgs -= 1
                bucket.bytes -= nbytes
                return True
            counts = self._dropped.setdefault(device, [0, 0])
            counts[0] += 1
            counts[1] += nbytes
            self.total_dropped += 1
            return False

    def drain(self) -> dict[str, tuple[int, int]]:
        """Per device due for a report (at most once per ``report_seconds``): messages and
        bytes dropped since its last report. Counts of devices not due yet are kept."""
        now = self.clock()
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            for device, (msgs, nbytes) in list(self._dropped.items()):
                due = now - self._last_report.get(device, -1e18) >= self.limits.report_seconds
                if due:
                    self._last_report[device] = now
                    del self._dropped[device]
                    out[device] = (msgs, nbytes)
            while len(self._last_report) > _MAX_DEVICES:
                self._last_report.pop(next(iter(self._last_report)))
        return out


def count_dropped(store: Store, messages: int) -> None:
    """Add ``messages`` to the ``rate_limited.messages`` counter (one transaction)."""
    with store.transaction() as db:
        db.execute("INSERT INTO counters(name, value) VALUES (?, ?)"
                   " ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
                   ("rate_limited.messages", messages))
