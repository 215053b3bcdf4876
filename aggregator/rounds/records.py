"""The records a round's parts hand each other inside the aggregator: an update handed
in (``Submission``) and the decision on it (``Decision``), the coordinator's events
(``Announce``, ``ResultReady``), a published result (``PublishedResult``) and a decided
ack on its way to be signed (``OutgoingAck``).

A leaf of the aggregator: it imports only the federation contract, so the coordinator,
the publisher, the model pins, the intake shards and the regional forwarder can all
speak these types without importing each other (which was a circle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from federation.crypto.bounds import ResultPolicy
from federation.messages import Ack, RoundAnnounce

# Bytes of an update's head read in the service process: enough for the packing header
# (the claimed update count of a regional partial); the rest is read by whoever sums it.
HEAD_BYTES = 64


@dataclass(frozen=True)
class Submission:
    """A reassembled, signature-checked update as the service hands it over: its bytes,
    or (the service's way) the spooled file holding them, moved into the store if it is
    accepted, so the blob is written once and never read whole by this process."""

    device_id: str
    round: int
    model: str
    msg_id: str
    blob_sha256: str
    blob: bytes | None = None
    spooled: Path | None = None
    kind: str = "update"  # or "partial": a regional aggregator's sum (aggregator.state.regions)

    def head(self) -> bytes:
        if self.blob is not None:
            return self.blob[:HEAD_BYTES]
        if self.spooled is None:
            raise ValueError("a submission needs its blob or its spooled file")
        fd = os.open(self.spooled, os.O_RDONLY)
        try:
            return os.pread(fd, HEAD_BYTES, 0)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Announce:
    """Publish this announce (a round opened, extended, resumed, or closed while the
    schedule holds the next one back)."""

    message: RoundAnnounce

    @property
    def round(self) -> int:
        return self.message.round

    @property
    def base_model(self) -> str:
        return self.message.base_model


@dataclass(frozen=True)
class ResultReady:
    """A closed round whose sum (``sum_blob`` in the store) is to be published."""

    round: int
    model: str
    base_model: str
    sum_blob: str
    contributors: list[str] = field(default_factory=list)
    policy: ResultPolicy | None = None  # the round's bounds, for the boxes to check


@dataclass(frozen=True)
class RootResult:
    """What a region publishes for one of its rounds: the root's result, and whether the
    region's sum is in it (not when the root had moved on to another base: the region's
    boxes must then count their samples as new again)."""

    blob: bytes
    included: bool = True
    root_model: str = ""  # the root's name of the result (the region's boxes show it)


Event = Announce | ResultReady


@dataclass(frozen=True)
class PublishedResult:
    sha256: str
    size: int
    chunks: int
    msg: str


@dataclass(frozen=True)
class OutgoingAck:
    """One decided ack, before signing (small and picklable: the service hands it to the
    intake shard that heard the update, which signs and publishes it)."""

    round: int  # the envelope's round (0: the update's round is unknown)
    model: str  # the envelope's model: the open round's base ("" when none)
    ack: Ack

    @property
    def device(self) -> str:
        return self.ack.device
