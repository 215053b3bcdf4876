"""What the box says of its sealed update, in its verdicts, events and ``join``'s lines:
sent, or queued while the broker is unreachable, then sent once it is back.

A box whose broker was down said "submitted" for an update that was only queued (in the
outbox, and in the MQTT client's memory): a technician read it as "the aggregator has
it". Now a round's verdict and event say ``queued`` until the update goes out on a live
connection (``edge.federated.sender`` tells), then ``sent`` (the verdict goes back to
``submitted``, which the aggregator's tools know); the aggregator's ack says ``acked``
(``edge.federated.acks``). Owned by the round joiner, on the client's worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge.federated.api import ClientEvents
from edge.federated.outbox import PendingUpdate
from edge.federated.verdicts import RoundVerdicts

log = logging.getLogger(__name__)

# what a queued update's verdict adds to its sent wording; cut off again once it is sent
UNREACHABLE = ("; not sent yet, the broker is unreachable: it waits in the outbox and "
               "goes out when the broker is back")
AFTER_WAITING = ", after waiting in the outbox while the broker was unreachable"


def submitted_reason(stats: dict[str, Any]) -> str:
    """The verdict on a round the box sent to, which its signed status carries to the
    aggregator: under differential privacy not the sample count (it is data-dependent,
    and the update weighs every box equally so that it is not sent)."""
    if "dp" in stats:
        return "update sent (differential privacy: equal weight, sample count not reported)"
    n, weighed = stats["n_samples"], stats.get("weighed_as", stats["n_samples"])
    capped = f", weighed as the federation's cap of {weighed}" if weighed < n else ""
    return f"update of {n} samples sent{capped}"


def queued_reason(stats: dict[str, Any]) -> str:
    return submitted_reason(stats).replace(" sent", " queued", 1) + UNREACHABLE


def sent_after_queued(queued: str) -> str:
    """A queued verdict's reason once its update went out (also after a restart, when
    only the verdict is left of the round's figures)."""
    return queued.split(UNREACHABLE)[0].replace(" queued", " sent", 1) + AFTER_WAITING


class DeliveryReport:
    def __init__(self, verdicts: RoundVerdicts, events: ClientEvents,
                 publish_status: Callable[[], None]) -> None:
        self.verdicts = verdicts
        self.events = events
        self._publish_status = publish_status

    def sealed(self, round_no: int, stats: dict[str, Any], live: bool) -> None:
        """The round's update is sealed and handed to the sender: ``live``, it went out
        on a live connection; else it is queued. The verdict is recorded before the
        event, so whoever hears it finds the verdict (a loaded CI's test read None)."""
        if live:
            reason = submitted_reason(stats)
            self.verdicts.record(round_no, None, "submitted", reason)
            self.events.emit("submitted", round_no, {**stats, "detail": reason})
        else:
            reason = queued_reason(stats)
            log.info("round %d: %s", round_no, reason)  # join prints the event
            self.verdicts.record(round_no, None, "queued", reason)
            self.events.emit("queued", round_no, {**stats, "detail": reason})
        self._publish_status()

    def sent(self, pending: PendingUpdate) -> None:
        """An update that was queued went out on a live connection (sender's on_sent).
        Said only when the round's verdict still says queued (an update loaded from the
        outbox at a start was said before)."""
        verdict = self.verdicts.of_round(pending.round_no)
        if verdict is None or verdict.outcome != "queued":
            return
        reason = sent_after_queued(verdict.reason)
        log.info("round %d: %s", pending.round_no, reason)
        self.verdicts.record(pending.round_no, None, "submitted", reason)
        self.events.emit("sent", pending.round_no, {"msg": pending.msg_id, "detail": reason})
        self._publish_status()
