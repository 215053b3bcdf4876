"""A revoked device heard from: serve tells it, signed, on its own ``ack/<device>`` topic.

``devices revoke`` publishes the signed revocation notice once, after the broker reloaded
the CRL; a box that was offline then, or one the broker still lets in because the reload
never happened (a second ``mosquitto -d`` that failed deleted the pid file: helper-57),
never heard it, joined and applied the next results. Its updates are refused
(``unknown_device``), but an honest box only stops for the notice. So ``serve``, which
holds the aggregator's signing key, sends the notice whenever it hears from a revoked
device: an update (refused as before) or a status that says it is online. At most once
per ``NOTICE_EVERY`` seconds per device, so a chatty box costs little. Its log says at
WARNING that the broker still lets the device in (its status says online), and how to
apply the CRL; serve does not cut the session itself: without the CRL applied, the box
would reconnect at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from federation import topics
from federation.chunking import one_envelope
from federation.envelope import encode
from federation.errors import FederationError
from federation.messages import RevocationNotice

if TYPE_CHECKING:
    from aggregator.rounds.publisher import Publisher
    from aggregator.state.registry import DeviceRegistry

log = logging.getLogger(__name__)

NOTICE_EVERY = 30.0  # seconds between two notices to the same revoked device


@dataclass(frozen=True)
class RevokedHeard:
    """The status intake heard a revoked device say it is online (queued for the worker)."""

    device: str


class RevokedNotices:
    def __init__(self, registry: DeviceRegistry, publisher: Publisher, *,
                 every: float = NOTICE_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.publisher = publisher
        self.every = every
        self.clock = clock
        self._told: dict[str, float] = {}

    def heard(self, device: str, what: str) -> bool:
        """``device`` spoke (``what``: "status", "update"): if it is revoked, tell it
        (throttled). Returns whether a notice went out."""
        now = self.clock()
        last = self._told.get(device)
        if last is not None and now - last < self.every:
            return False
        known = self.registry.get(device)
        if known is None or known.active:
            return False
        if len(self._told) > 10_000:  # revoked devices only; bounded anyway
            self._told.clear()
        self._told[device] = now
        notice = RevocationNotice(device, revoked_at=float(known.revoked_at or 0.0))
        try:
            p = self.publisher
            env = one_envelope(notice.to_json(), p.signing_key, kind="ack", fed=p.fed_id,
                               sender=p.aggregator_id, round=0, model="")
            p.transport.publish(topics.ack(p.fed_id, device), encode(env, validated=True))
        except FederationError as exc:
            log.warning("cannot tell %s it was revoked: %s", device, exc.message)
            return False
        if what == "status":
            log.warning("revoked device %s is connected to the broker (its status says "
                        "online): sent it the signed revocation notice. The broker still "
                        "lets it in, so its CRL is not applied: reload the broker (pkill -HUP "
                        "-x mosquitto, or systemctl reload mosquitto), then run "
                        "`fedface-aggregator devices revoke %s` again", device, device)
        else:
            log.info("revoked device %s sent an %s: refused, and sent it the signed "
                     "revocation notice", device, what)
        return True
