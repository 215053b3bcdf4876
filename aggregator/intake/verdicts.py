"""The boxes' verdicts on published rounds, heard on their retained status topics.

A box that refuses a round's result (it cannot decrypt it, the sum is out of range,
its checks or its canary fail) records the verdict and publishes its signed status at
once (edge.federated.result_apply); the verdict says round, model, outcome and a
machine reason (``code``, federation.verdicts). The aggregator cannot decrypt, so
these refusals are its only evidence that a round is poisoned
(aggregator.rounds.poison).

Delivery-thread work only, like aggregator.intake.delivery: parse the topic, check the
envelope against the key snapshot of active devices (an unknown or revoked sender is
dropped before any signature work), parse the status and queue its judged verdicts (and
the round it says it sits out now, from its ``not_joining``) for the worker, only when
they changed since that device's last status (a box republishes its status on every
reconnect). The status topic is retained, so a restarted service hears every box's
latest verdicts again. Statuses are not put through the updates' rate limiter: a refusal
dropped there would be lost until the box's next status, and the broker's ACL lets only
the box itself write its status topic.

Every signature-checked status also goes to the presence recorder
(aggregator.intake.presence), with whether it came from the broker's retained store:
a box's last will published live is how serve learns when a box vanished. A status
that fails its checks is dropped and logged (a warning per device at most every few
minutes: a retained bad status comes again on every reconnect). A revoked device's
status that says it is online is queued as ``RevokedHeard``: serve tells it it was
revoked (aggregator.intake.revoked).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregator.intake.presence import PresenceRecorder
from aggregator.intake.revoked import RevokedHeard
from aggregator.state.presence import status_entry
from federation import topics
from federation.crypto.signing import KeyRing
from federation.envelope import decode, verify_envelope
from federation.errors import FederationError
from federation.messages import BASE_NOT_SERVED, NO_NEW_SAMPLES, DeviceStatus
from federation.transport.base import RetainAware
from federation.verdicts import Verdict

log = logging.getLogger(__name__)

WARN_EVERY_SECONDS = 300.0  # per device: a bad status is logged, not a flood of lines


# why a box sits a round out, as its status's not_joining says: the reasons the round's
# deadline weighs (aggregator.rounds.deadline)
# what a box's status may say it sits a round out for (edge.federated.joining): the
# last four it cannot change this round (another key epoch or federation key, another part)
SITTING_OUT_REASONS = (NO_NEW_SAMPLES, BASE_NOT_SERVED, "old_epoch", "key_epoch_pending",
                       "wrong_key", "wrong_part")


@dataclass(frozen=True)
class VerdictReport:
    """A device's verdicts on results (applied / refused / rejected), signature-checked,
    and the round it says it sits out now, with why (None: it does not; the status says
    so as soon as the box joins, which a "sat out" verdict, kept until the box's update
    is sealed, did not: a walkthrough's round was skipped while both boxes trained)."""

    device: str
    verdicts: tuple[Verdict, ...]
    sitting_out: tuple[int, str] | None = None
    # the latest round the status speaks of, judged or not ("submitted" too): how far
    # the federation got, for a state restored from an older copy (rounds.restored)
    latest_round: int = 0
    applied_round: int = 0  # the newest round whose result it applied


def sitting_out(not_joining: object) -> tuple[int, str] | None:
    """(round, reason) from a status's ``not_joining`` when it is a reason the deadline
    weighs; None otherwise (or malformed)."""
    if not isinstance(not_joining, dict):
        return None
    round_no, reason = not_joining.get("round"), not_joining.get("reason")
    if isinstance(round_no, bool) or not isinstance(round_no, int) \
            or reason not in SITTING_OUT_REASONS:
        return None
    return round_no, str(reason)


class StatusIntake:
    """``on_status`` is the transport's handler for ``status/+`` (delivery thread); it
    is ``RetainAware``: told whether each status came from the retained store."""

    def __init__(self, fed_id: str, keys: Callable[[], Mapping[str, Ed25519PublicKey]],
                 sink: Callable[[VerdictReport | RevokedHeard], None],
                 presence: PresenceRecorder | None = None,
                 revoked: Callable[[], Collection[str]] = frozenset) -> None:
        self.fed_id = fed_id
        self._keys = keys  # the active devices' keys (aggregator.intake.delivery's snapshot)
        self._revoked = revoked  # the revoked devices (the same snapshot's)
        self._sink = sink
        self.presence = presence  # each box's last online status (None: not kept)
        self._last: dict[str, tuple[tuple[int, str, str, float], ...]] = {}
        self._sitting: dict[str, tuple[int, str] | None] = {}
        self._latest: dict[str, int] = {}  # the latest round each device's status spoke of
        self._warned: dict[str, float] = {}
        # called as a plain handler (topic, payload), a status counts as retained
        self.on_status = RetainAware(self._on_status)

    def close(self) -> None:
        """Stop the presence recorder (it writes what it was given first, bounded)."""
        if self.presence is not None:
            self.presence.close()

    def forget(self, device: str) -> None:
        """The device's last verdicts could not be recorded (a full disk): its next
        status, which carries them again, is passed on as new."""
        self._last.pop(device, None)

    def _on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:  # a retained status being cleared
            return
        try:
            device = topics.parse(topic).device
            key = None if device is None else self._keys().get(device)
            if device is None or key is None:  # unknown or revoked: its word does not count
                if device is not None and device in self._revoked():
                    self._revoked_online(device, payload)
                return
            env = decode(payload)
            if env.sender != device or env.kind != "status":
                raise FederationError("malformed", f"a {env.kind} from {env.sender!r} on "
                                      f"the status topic of {device!r}")
            # signature, federation and the payload's hash
            verify_envelope(env, KeyRing({device: key}), fed=self.fed_id)
            status = DeviceStatus.from_json(env.payload)
            entry = status_entry(status, env.ts)
        except FederationError as exc:
            self._dropped(topic, exc)
            return
        if self.presence is not None:
            self.presence.observe(device, entry, retained)
        judged = tuple(v for v in status.verdicts if v.judged and v.model)
        seen = tuple((v.round, v.outcome, v.code, v.at) for v in judged)
        sitting = sitting_out(status.not_joining)
        latest = max([v.round for v in status.verdicts] + [r for r, _ in filter(None, [sitting])],
                     default=0)
        new_verdicts = bool(judged) and self._last.get(device) != seen
        # nothing new: a box republishes its status on every reconnect (and its will, built
        # at connect, carries no verdicts)
        if not new_verdicts and sitting == self._sitting.get(device) and \
                latest <= self._latest.get(device, 0):
            return
        if new_verdicts:
            self._last[device] = seen
        self._sitting[device], self._latest[device] = sitting, latest
        applied = max((v.round for v in judged if v.outcome == "applied"), default=0)
        self._sink(VerdictReport(device, judged, sitting, latest, applied))

    def _revoked_online(self, device: str, payload: bytes) -> None:
        """A revoked device's status: one that says it is online (the broker let it in,
        and it did not hear the notice) gets the notice (aggregator.intake.revoked); the
        signature is not checked (the notice goes to that device's own topic only, at
        most every few seconds)."""
        try:
            state = str(json.loads(decode(payload).payload).get("state", ""))
        except (FederationError, ValueError, AttributeError):
            return
        if state not in ("offline", "revoked"):
            self._sink(RevokedHeard(device))

    def _dropped(self, topic: str, exc: FederationError) -> None:
        now = time.monotonic()
        last = self._warned.get(topic)
        if last is not None and now - last < WARN_EVERY_SECONDS:
            log.debug("status on %s dropped (%s): %s", topic, exc.reason, exc.message)
            return
        if len(self._warned) > 10_000:  # only registered devices get here; bounded anyway
            self._warned.clear()
        self._warned[topic] = now
        log.warning("status on %s dropped (%s): %s", topic, exc.reason, exc.message)
