"""The box's sealed updates in flight: the on-disk outbox, and when each was last sent.

An update is in the outbox before its first publish (``edge.federated.sealing``). It stays
there, and is sent again after every reconnect and every ``retry_seconds``, until the
aggregator acks it (accepted, or rejected for a reason that resending cannot fix) or its
round is over. Resending is always safe: the aggregator's reassembler and round logic
drop duplicate chunks and duplicate updates.

Owned by the federation client's worker thread (``edge.federated.client``); what an
ack means is ``edge.federated.acks``'s, which tells this class to forget an update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge.federated.outbox import Outbox, PendingUpdate
from federation.errors import FederationError

log = logging.getLogger(__name__)

# Rejections after which resending the same update is pointless (the aggregator has it,
# or will never take it). Anything else (e.g. "unavailable": its disk was full) is retried.
TERMINAL_REJECTIONS = frozenset(
    {"duplicate", "replay", "late", "stale_version", "not_open", "unknown_device",
     "wrong_federation", "bad_signature", "malformed", "oversized", "integrity",
     "out_of_range", "wrong_key"}
)


class UpdateSender:
    def __init__(self, outbox: Outbox, publish: Callable[[bytes], None],
                 retry_seconds: float, count: Callable[[str], int],
                 clock: Callable[[], float] = time.monotonic, *,
                 connected: Callable[[], bool] = lambda: True,
                 on_sent: Callable[[PendingUpdate], None] = lambda _: None) -> None:
        self.outbox = outbox
        self._publish = publish  # one chunk to the box's update topic
        # the transport takes a publish while the broker is away (it queues it in memory):
        # only a connection up before and after the chunks says the update went out
        self._connected = connected
        self._on_sent = on_sent  # a queued update went out (edge.federated.delivery)
        self._queued: set[str] = set()  # msg ids not yet published on a live connection
        self.retry_seconds = retry_seconds
        self._count = count  # the client's counters
        self._clock = clock  # monotonic: its zero is the boot, so never compare against 0
        self._pending: dict[str, PendingUpdate] = {}  # in-memory view of the outbox
        # msg id -> when it last went out; None: the last attempt failed, so it is due
        # at the next one. Absent: never attempted. (A failed send once stored 0.0, and
        # "now - 0.0 >= retry" stayed false while the box's uptime was below the retry
        # period: a box whose first send failed within an hour of boot did not resend.)
        self._last_sent: dict[str, float | None] = {}

    def load(self) -> None:
        """Take over what a previous run left in the outbox (sent at the next tick)."""
        for pending in self.outbox.pending():
            self._pending[pending.msg_id] = pending
            self._queued.add(pending.msg_id)
            log.info("outbox: round %d update %s waiting to be sent", pending.round_no,
                     pending.msg_id[:12])

    def send_new(self, pending: PendingUpdate) -> bool:
        """A freshly sealed update (already in the outbox): send it now. True when it
        went out on a live connection; False: it is queued (the broker is away), and
        ``on_sent`` is called when it goes out."""
        self._pending[pending.msg_id] = pending
        live = self._send(pending)
        if not live:
            self._queued.add(pending.msg_id)
        return live

    def resend_due(self, reconnected: bool) -> None:
        """Send what was never sent, everything after a reconnect, the rest every
        ``retry_seconds`` (call only while connected)."""
        now = self._clock()
        for pending in list(self._pending.values()):
            tried = pending.msg_id in self._last_sent
            last = self._last_sent.get(pending.msg_id)
            if last is None or reconnected or now - last >= self.retry_seconds:
                if tried:
                    self._count("resent")
                    log.info("round %d: re-sending update %s from the outbox",
                             pending.round_no, pending.msg_id[:12])
                self._send(pending)

    def _send(self, pending: PendingUpdate) -> bool:
        """True when the update went out on a live connection."""
        live = self._connected()
        try:
            for chunk in pending.chunks:
                self._publish(chunk)
        except FederationError as exc:
            log.warning("round %d: sending update %s failed (%s); it stays in the outbox",
                        pending.round_no, pending.msg_id[:12], exc.message)
            self._last_sent[pending.msg_id] = None  # due at the next attempt
            return False
        self._last_sent[pending.msg_id] = self._clock()
        # (a connection lost between the chunks is a reconnect: everything goes again)
        live = live and self._connected()
        if live and pending.msg_id in self._queued:
            self._queued.discard(pending.msg_id)
            self._on_sent(pending)
        return live

    def forget(self, round_no: int, msg: str) -> bool:
        """The update is done with (acked); True if it was still in the outbox."""
        self._pending.pop(msg, None)
        self._last_sent.pop(msg, None)
        self._queued.discard(msg)
        return self.outbox.remove(round_no, msg)

    def drop_closed_rounds(self, before: int) -> None:
        """Rounds before ``before`` are over: their updates can no longer count."""
        dropped = self.outbox.remove_rounds_before(before)
        for msg in dropped:
            self._pending.pop(msg, None)
            self._last_sent.pop(msg, None)
            self._queued.discard(msg)
        if dropped:
            log.info("outbox: dropped %d update(s) of rounds before %d (closed)",
                     len(dropped), before)
