"""The box's ack topic: the aggregator's answer to each update, and its revocation notice.

An accepted update (or a "duplicate": our resend crossed the aggregator's ack) leaves
the outbox; a rejection either drops it (``sender.TERMINAL_REJECTIONS``) or leaves it
to be resent. The same retained topic carries the signed notice that this device was
revoked: it is recorded (``edge.federated.revocation``) and the client is told to stop
for good. Kept apart from the round loop so what an ack means is read in one place; the
client's worker verifies the envelope and hands the payload here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edge.federated.api import ClientEvents
from edge.federated.revocation import record_revocation
from edge.federated.sender import TERMINAL_REJECTIONS, UpdateSender
from federation.messages import REVOKED_REASON, RevocationNotice, parse_ack_topic

log = logging.getLogger(__name__)


class AckHandler:
    def __init__(self, device_id: str, state_dir: Path, sender: UpdateSender,
                 events: ClientEvents, stop_revoked: Callable[[], None],
                 refused: Callable[[int, str, str], None] = lambda *_: None) -> None:
        self.device_id = device_id
        self.state_dir = state_dir
        self.sender = sender
        self.events = events
        self._stop_revoked = stop_revoked  # the client: say "revoked", stop, close
        self._refused = refused  # the round joiner: its verdict and samples (round, why)

    def handle(self, payload: bytes) -> None:
        """A verified message of the ack topic."""
        ack = parse_ack_topic(payload)
        if isinstance(ack, RevocationNotice):
            self._revoked(ack)
            return
        if ack.reason == REVOKED_REASON:
            return  # says revoked without being a notice: not acted on
        if ack.msg is None or ack.round is None:
            return
        # "duplicate": the aggregator already counted this update (our resend crossed
        # its ack), which is a success for the box
        if ack.accepted or ack.reason == "duplicate":
            self.sender.forget(ack.round, ack.msg)
            # the detail is join's line: the word the technician waits for after "sent"
            self.events.emit("acked", ack.round, {
                "msg": ack.msg, "duplicate": not ack.accepted,
                "detail": "the aggregator has this box's update" + (
                    "" if ack.accepted else " (it had it already)")})
            log.info("round %d: update %s accepted%s", ack.round, ack.msg[:12],
                     "" if ack.accepted else " (already counted)")
            return
        reason = ack.reason or "unknown"
        self.events.count(f"rejected_{reason}")
        if reason in TERMINAL_REJECTIONS:
            if self.sender.forget(ack.round, ack.msg):
                log.warning("round %d: update %s rejected (%s: %s); dropped from the outbox",
                            ack.round, ack.msg[:12], reason, ack.detail)
                self._refused(ack.round, reason, ack.detail or "")
        else:
            log.warning("round %d: update %s not taken (%s: %s); will resend", ack.round,
                        ack.msg[:12], reason, ack.detail)
        self.events.emit("rejected", ack.round, {"msg": ack.msg, "reason": reason,
                                                 "detail": ack.detail})

    def _revoked(self, notice: RevocationNotice) -> None:
        """The aggregator's signed notice that this device was revoked: record it, then the
        client says offline, stops its worker and closes the connection for good (the
        broker is about to cut it and refuses the certificate from now on)."""
        if notice.device != self.device_id:
            return  # a notice for another device id (this box was re-provisioned)
        record_revocation(self.state_dir, self.device_id, source="notice",
                          revoked_at=notice.revoked_at, detail=notice.detail)
        log.error("this box was revoked by the federation (%s); it stops connecting: "
                  "re-provision under a new device id", notice.detail)
        self.events.emit("revoked", 0, {"revoked_at": notice.revoked_at,
                                        "detail": notice.detail})
        self._stop_revoked()
