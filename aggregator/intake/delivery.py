"""The delivery-thread half of the aggregator service (aggregator.service says why the
work is split in two threads): a chunk arriving on an update topic is parsed, set aside
if its device is not registered (aggregator.intake.unknown), rate-limited,
authenticated against a snapshot of the device keys (the delivery thread never touches
SQLite), checked and spooled to disk; what comes out (a rejection, or a completed
update's spool file) is queued for the worker. It never publishes: a transport handler
must not block on the transport."""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregator.intake.ratelimit import RateLimiter
from aggregator.intake.spool import DiskReassembler
from aggregator.intake.unknown import UnknownReport, UnknownSenders
from aggregator.state.registry import Device
from federation import topics
from federation.crypto.signing import verify
from federation.envelope import Envelope, decode
from federation.errors import (
    MALFORMED,
    UNAVAILABLE,
    UNKNOWN_DEVICE,
    WRONG_FEDERATION,
    FederationError,
)

log = logging.getLogger(__name__)

_FINISHED_MEMORY = 4096  # (device, msg) pairs whose late chunks are dropped silently


@dataclass(frozen=True)
class Rejection:
    """A chunk refused on the delivery thread: recorded (and answered if ``device``)."""

    device: str | None
    round: int | None
    msg: str | None
    reason: str
    detail: str


@dataclass(frozen=True)
class RateLimitedReport:
    """Per device, messages and bytes an intake shard's rate limiter dropped since its
    last report (aggregator.intake.shards; in one process the service drains its own)."""

    counts: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class SpooledUpdate:
    """A completed update, reassembled in its spool file, waiting for a group commit."""

    env: Envelope  # header of the blob's first chunk (payload dropped)
    path: Path


Item = Rejection | SpooledUpdate | RateLimitedReport | UnknownReport


class ItemSink(Protocol):
    """Where the delivery thread puts its results: the service's queue, or in an intake
    shard the pipe to the service."""

    def put(self, item: Item) -> None: ...


class DeliveryIntake:
    """The delivery-thread work of one intake (the service's, or an intake shard's): it
    owns the key snapshot and the memory of finished messages; its results go to
    ``sink``. A completed blob is not fsynced here: the group commit fsyncs a batch's
    files side by side (``aggregator.state.durable_io``), where the file system merges
    their journal commits. An fsync per blob as it completed, on a flusher thread, cost
    0.14-0.17 ms of CPU per update and saved the group commit nothing
    (``bench.aggregator.intake``).

    Its owner's worker calls ``set_keys`` and ``forget``; the transport's delivery thread
    calls ``on_update``."""

    def __init__(self, fed_id: str, spool: DiskReassembler, sink: ItemSink,
                 rate_limiter: RateLimiter | None = None,
                 unknown: UnknownSenders | None = None) -> None:
        self.fed_id = fed_id
        self.spool = spool
        self.sink = sink
        # Per-device token buckets checked before any signature/disk work (None: off);
        # drained by the owner's worker.
        self.rate_limiter = rate_limiter
        # Senders the registry does not know: counted, sampled, never answered, one
        # budget for all of them (aggregator.intake.unknown); drained by the owner.
        self.unknown = unknown or UnknownSenders()
        self.keys: dict[str, Ed25519PublicKey] = {}  # replaced whole: read without a lock
        self._revoked: frozenset[str] = frozenset()
        self._finished_msgs: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._finished_lock = threading.Lock()

    def set_keys(self, devices: list[Device]) -> None:
        """Snapshot the device keys for the delivery thread (swapped atomically). The
        owner re-reads the registry every tick (the service) or second (a shard), so
        ``devices revoke`` (another process, same SQLite db) takes effect quickly."""
        self._revoked = frozenset(d.device_id for d in devices if not d.active)
        self.keys = {
            d.device_id: Ed25519PublicKey.from_public_bytes(d.public_key)
            for d in devices
            if d.active
        }

    @property
    def revoked(self) -> frozenset[str]:
        """The revoked devices of the last snapshot (``set_keys``)."""
        return self._revoked

    def forget(self, device: str, msg: str) -> None:
        """After a transient failure the device may resend the SAME message: let it in."""
        with self._finished_lock:
            self._finished_msgs.pop((device, msg), None)

    # --- delivery thread --------------------------------------------------------------
    def on_update(self, topic: str, payload: bytes) -> None:
        """The transport's handler for an update topic (runs on its delivery thread)."""
        try:
            device = topics.parse(topic).device
        except FederationError:
            self.unknown.observe(None, payload)  # no registered id makes such a topic
            return
        # A sender the registry does not know costs a lookup and a count: no decoding, no
        # signature check (there is no key), no ack, no row (aggregator.intake.unknown).
        if device is None or (device not in self.keys and device not in self._revoked):
            self.unknown.observe(device, payload)
            return
        # Then the device's own bucket: a registered (or revoked) device's flood costs a
        # dictionary lookup per message, also a flood of garbage, which would otherwise
        # be decoded and answered one by one.
        if self.rate_limiter is not None and not (
                self.rate_limiter.allow(device, len(payload))):
            return  # counted by the limiter; logged and acked once per period (pump)
        try:
            env = decode(payload)
        except FederationError as exc:
            self.sink.put(Rejection(device, None, None, exc.reason, exc.message))
            return
        key = (env.sender, env.msg)
        with self._finished_lock:
            if key in self._finished_msgs:
                return  # a redelivered chunk of an update already decided
        try:
            self._authenticate(device, env)
        except FederationError as exc:
            # Not proven to come from `device`: it must not discard, block or answer for
            # that device's genuine upload with the same message id (a forged chunk
            # could otherwise make the box drop its update as rejected). Counted and
            # logged only; a registered box with a wrong key shows in the counters.
            answer = device if exc.reason == UNKNOWN_DEVICE else None
            if answer is not None:
                self._remember(key)  # one answer per upload, not per chunk
            self.sink.put(Rejection(answer, env.round, env.msg, exc.reason,
                                    f"{exc.message} (claimed sender {env.sender!r} on the "
                                    f"topic of {device!r})"))
            return
        try:
            self._check_envelope(env)
            path = self.spool.add(env, validated=True)  # decode() validated it
        except FederationError as exc:
            self.spool.discard(*key)
            self._remember(key)
            self.sink.put(Rejection(device, env.round, env.msg, exc.reason, exc.message))
            return
        except OSError as exc:
            self.spool.discard(*key)
            self._remember(key)
            log.error("cannot spool a chunk of %s from %s: %s", env.msg, device, exc)
            why = "disk full" if exc.errno == errno.ENOSPC else "I/O error"
            self.sink.put(
                Rejection(device, env.round, env.msg, UNAVAILABLE, f"spool write failed ({why})")
            )
            return
        if path is not None:
            self._remember(key)
            self.sink.put(SpooledUpdate(Envelope(**{**env.header(), "payload": b""}), path))

    def _authenticate(self, device: str | None, env: Envelope) -> None:
        """The chunk is signed by the registered, active device whose topic it came on."""
        if env.sender != device:
            raise FederationError(MALFORMED, f"sender {env.sender!r} on the topic of {device!r}")
        key = self.keys.get(env.sender)
        if key is None:  # answered: only that id's own (unregistered) box can be misled
            why = "was revoked" if env.sender in self._revoked else "is not registered"
            raise FederationError(UNKNOWN_DEVICE, f"device {env.sender!r} {why}")
        verify(key, env.signing_bytes(), env.sig)

    def _check_envelope(self, env: Envelope) -> None:
        """What an authenticated chunk must be (answered: the device did send it)."""
        if env.fed != self.fed_id:
            raise FederationError(WRONG_FEDERATION, f"update for federation {env.fed!r}")
        if env.kind not in ("update", "partial"):  # partial: a regional aggregator's sum
            raise FederationError(MALFORMED, f"a {env.kind!r} message on an update topic")

    def _remember(self, key: tuple[str, str]) -> None:
        with self._finished_lock:
            self._finished_msgs[key] = None
            while len(self._finished_msgs) > _FINISHED_MEMORY:
                self._finished_msgs.popitem(last=False)
