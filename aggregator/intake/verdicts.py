"""The boxes' verdicts on published rounds, heard on their retained status topics.

A box that refuses a round's result (it cannot decrypt it, the sum is out of range,
its checks or its canary fail) records the verdict and publishes its signed status at
once (edge.federated.result_apply); the verdict says round, model, outcome and a
machine reason (``code``, federation.verdicts). The aggregator cannot decrypt, so
these refusals are its only evidence that a round is poisoned
(aggregator.rounds.poison).

Delivery-thread work only, like aggregator.intake.delivery: parse the topic, check the
envelope against the key snapshot of active devices (an unknown or revoked sender is
dropped before any signature work), parse the status and queue its judged verdicts for
the worker, only when they changed since that device's last status (a box republishes
its status on every reconnect). The status topic is retained, so a restarted service
hears every box's latest verdicts again. Statuses are not put through the updates'
rate limiter: a refusal dropped there would be lost until the box's next status, and
the broker's ACL lets only the box itself write its status topic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from federation import topics
from federation.crypto.signing import KeyRing
from federation.envelope import decode, verify_envelope
from federation.errors import FederationError
from federation.messages import DeviceStatus
from federation.verdicts import Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerdictReport:
    """A device's verdicts on results (applied / refused / rejected), signature-checked."""

    device: str
    verdicts: tuple[Verdict, ...]


class StatusIntake:
    """``on_status`` is the transport's handler for ``status/+`` (delivery thread)."""

    def __init__(self, fed_id: str, keys: Callable[[], Mapping[str, Ed25519PublicKey]],
                 sink: Callable[[VerdictReport], None]) -> None:
        self.fed_id = fed_id
        self._keys = keys  # the active devices' keys (aggregator.intake.delivery's snapshot)
        self._sink = sink
        self._last: dict[str, tuple[tuple[int, str, str, float], ...]] = {}

    def on_status(self, topic: str, payload: bytes) -> None:
        if not payload:  # a retained status being cleared
            return
        try:
            device = topics.parse(topic).device
            key = None if device is None else self._keys().get(device)
            if device is None or key is None:  # unknown or revoked: its word does not count
                return
            env = decode(payload)
            if env.sender != device or env.kind != "status":
                raise FederationError("malformed", f"a {env.kind} from {env.sender!r} on "
                                      f"the status topic of {device!r}")
            # signature, federation and the payload's hash
            verify_envelope(env, KeyRing({device: key}), fed=self.fed_id)
            status = DeviceStatus.from_json(env.payload)
        except FederationError as exc:
            log.debug("status on %s ignored (%s): %s", topic, exc.reason, exc.message)
            return
        judged = tuple(v for v in status.verdicts if v.judged and v.model)
        seen = tuple((v.round, v.outcome, v.code, v.at) for v in judged)
        if not judged or self._last.get(device) == seen:
            return
        self._last[device] = seen
        self._sink(VerdictReport(device, judged))
