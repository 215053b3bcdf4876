"""Updates from senders the registry does not know: counted, sampled, never answered.

On a broker without per-device ACLs anyone can publish on ``update/<any id>``. Answered
and recorded one by one, 10,000 chunk starts on 10,000 made-up device topics cost
10,000 signed acks, 10,000 database rows and 2.1 MB of logs, and queued ahead of the
honest boxes' updates in the worker delayed their acks from ~0.1 s to 15.6 s (issue 15).

So a chunk on the topic of a device id that is neither registered nor revoked (or on a
topic that does not even parse) is settled on the delivery thread, before it is decoded
or a signature check is thought of (there is no key to check against): a dictionary
lookup and a counter increment. It gets

- no ack: nothing is signed or published for it (an unregistered box learns it is not
  registered from the operator, who sees it in the sampled log and the counter);
- no row per message: the worker adds the count to the ``rejected.unknown_device``
  counter once per pump, and writes one summary row per report period;
- sampled logs: the first ``samples`` messages of each report period one line each, then
  one summary line per period with the count, bytes and distinct ids;
- one shared budget: a token bucket for all unknown senders together. Only a message
  that gets a token is looked at more closely (its envelope decoded, unverified, for what
  it claims: round, kind, message id) and can become a log sample; the rest are counted
  and dropped. However many ids a flood uses, the work it can cost is this one budget,
  so it cannot starve the registered boxes' updates.

Revoked devices are not "unknown": they are few (the registry's size), rate-limited per
device (aggregator.intake.ratelimit) and still answered ``unknown_device`` so that a
revoked box stops sending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aggregator.state.store import Store
from federation.envelope import decode
from federation.errors import UNKNOWN_DEVICE, FederationError

log = logging.getLogger(__name__)

COUNTER = f"rejected.{UNKNOWN_DEVICE}"
_MAX_IDS = 1000  # distinct ids remembered per report period (the summary says "at least")
_EXAMPLES = 5  # ids named in a summary


@dataclass(frozen=True)
class UnknownLimits:
    """The shared budget of all unknown senders together, and the log sampling."""

    messages_per_second: float = 20.0
    message_burst: float = 100.0
    bytes_per_second: float = 1024 * 1024
    byte_burst: float = 8 * 1024 * 1024
    samples: int = 5  # log lines of single messages per report period
    report_seconds: float = 10.0

    def __post_init__(self) -> None:
        if min(self.messages_per_second, self.message_burst, self.bytes_per_second,
               self.byte_burst, self.report_seconds) <= 0 or self.samples < 0:
            raise ValueError("unknown-sender limits must be > 0 (samples >= 0)")


@dataclass(frozen=True)
class UnknownReport:
    """What the unknown senders did since the last drain (an intake shard sends it to the
    service through its pipe; in one process the service drains its own)."""

    messages: int  # since the last drain: added to the counter
    nbytes: int
    samples: tuple[str, ...] = ()  # one log line each
    # Once per report period (None otherwise): messages, bytes, over budget, distinct ids
    # (at most _MAX_IDS counted) and a few example ids, for one log line and one row.
    summary: PeriodSummary | None = None


@dataclass(frozen=True)
class PeriodSummary:
    messages: int
    nbytes: int
    over_budget: int
    ids: int
    examples: tuple[str, ...]

    def text(self, seconds: float) -> str:
        more = "+" if self.ids >= _MAX_IDS else ""
        return (f"{self.messages} update message(s), {self.nbytes} bytes, from {self.ids}{more} "
                f"unregistered device id(s) in the last {seconds:.0f} s (e.g. "
                f"{', '.join(self.examples)}): dropped unanswered, {self.over_budget} over "
                "the shared budget without a look")


@dataclass
class _Period:
    messages: int = 0
    nbytes: int = 0
    over_budget: int = 0
    ids: set[str] = field(default_factory=set)


def describe(device: str | None, payload: bytes) -> str:
    """One sample's log line: what the message claims (decoded, NOT verified)."""
    where = f"on the topic of {device!r}" if device is not None else "on a malformed topic"
    try:
        env = decode(payload)
    except FederationError as exc:
        return f"unregistered sender {where}: undecodable ({exc.reason}), {len(payload)} bytes"
    return (f"unregistered sender {where}: claims {env.kind} from {env.sender!r} for "
            f"federation {env.fed!r} round {env.round} (msg {env.msg[:16]}, chunk "
            f"{env.index + 1}/{env.count}), {len(payload)} bytes; not answered")


class UnknownSenders:
    """Thread-safe: ``observe`` runs on the delivery thread, ``drain`` on the worker (or
    an intake shard's main loop)."""

    def __init__(self, limits: UnknownLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or UnknownLimits()
        self.clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._tokens = self.limits.message_burst
        self._bytes = self.limits.byte_burst
        self._at = now
        self._period_start = now
        self._period = _Period()
        self._pending = [0, 0]  # messages, bytes since the last drain
        self._samples: list[str] = []  # sample lines not yet drained
        self._sampled = 0  # samples taken this report period
        self._closed: PeriodSummary | None = None  # the last period's, not yet drained
        self.total = 0  # every unknown message seen by this intake

    def observe(self, device: str | None, payload: bytes) -> None:
        """Count one message from an unknown sender; look at it only within the budget."""
        lim = self.limits
        n = len(payload)
        with self._lock:
            self.total += 1
            self._pending[0] += 1
            self._pending[1] += n
            now = self.clock()
            self._roll(now)
            period = self._period
            period.messages += 1
            period.nbytes += n
            if device is not None and len(period.ids) < _MAX_IDS:
                period.ids.add(device)
            elapsed = max(0.0, now - self._at)
            self._at = now
            self._tokens = min(lim.message_burst, self._tokens + elapsed * lim.messages_per_second)
            self._bytes = min(lim.byte_burst, self._bytes + elapsed * lim.bytes_per_second)
            if self._tokens < 1 or self._bytes < n:
                period.over_budget += 1
                return
            self._tokens -= 1
            self._bytes -= n
            if self._sampled >= lim.samples:
                return
            self._sampled += 1
        line = describe(device, payload)  # outside the lock: the budget paid for it
        with self._lock:
            self._samples.append(line)

    def drain(self) -> UnknownReport | None:
        """The counts since the last drain, the samples not yet handed out, and once per
        report period the period's summary (None: nothing to report)."""
        with self._lock:
            self._roll(self.clock())
            summary, self._closed = self._closed, None
            samples, self._samples = tuple(self._samples), []
            messages, nbytes = self._pending
            self._pending = [0, 0]
        if not messages and summary is None and not samples:
            return None
        return UnknownReport(messages, nbytes, samples, summary)

    def _roll(self, now: float) -> None:
        """Close the report period if it is over (with the lock held); its summary waits
        for the next drain (every pump: a fraction of a second)."""
        if now - self._period_start < self.limits.report_seconds or self._closed is not None:
            return
        p = self._period
        if p.messages:
            self._closed = PeriodSummary(p.messages, p.nbytes, p.over_budget, len(p.ids),
                                         tuple(sorted(p.ids)[:_EXAMPLES]))
        self._period = _Period()
        self._period_start = now
        self._sampled = 0


def record_report(store: Store, report: UnknownReport, seconds: float) -> None:
    """One transaction: the counter, and the period's summary row (if any)."""
    with store.transaction() as db:
        if report.messages:
            db.execute("INSERT INTO counters(name, value) VALUES (?, ?)"
                       " ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
                       (COUNTER, report.messages))
        if report.summary is not None:
            db.execute("INSERT INTO rejections(at, round, device_id, reason, detail)"
                       " VALUES (?, NULL, NULL, ?, ?)",
                       (time.time(), UNKNOWN_DEVICE, report.summary.text(seconds)[:500]))


def report_unknown(store: Store, report: UnknownReport, seconds: float) -> None:
    """The period's few sample lines, one summary line, then the counter and summary row;
    counting must never stop the service."""
    for line in report.samples:
        log.warning("%s", line)
    if report.summary is not None:
        log.warning("%s", report.summary.text(seconds))
    try:
        record_report(store, report, seconds)
    except Exception as exc:
        log.error("cannot count updates from unregistered devices: %s", exc)
