"""Split blobs into signed envelopes and reassemble them with bounded memory.

Brokers cap message sizes (EMQX 1 MB, AWS IoT 128 KB; Mosquitto with a limit silently
drops an oversized QoS 1 message under MQTT 3.1.1), so no blob travels as one message.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.envelope import Envelope, sign_envelope, validate
from federation.errors import INTEGRITY, OVERSIZED, FederationError

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256 * 1024


def new_msg_id() -> str:
    return uuid.uuid4().hex


def split_blob(
    blob: bytes,
    private_key: Ed25519PrivateKey,
    *,
    kind: str,
    fed: str,
    sender: str,
    round: int,
    model: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    msg: str | None = None,
    ts: float | None = None,
) -> list[Envelope]:
    """Signed envelopes carrying ``blob`` in ``chunk_size`` pieces (one for small blobs),
    validated (``encode(env, validated=True)``)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    blob = bytes(blob)
    count = max(1, math.ceil(len(blob) / chunk_size))
    blob_sha = hashlib.sha256(blob).hexdigest()
    msg = msg or new_msg_id()
    stamp = time.time() if ts is None else float(ts)
    out = []
    for index in range(count):
        piece = blob if count == 1 else blob[index * chunk_size : (index + 1) * chunk_size]
        chunk_sha = blob_sha if count == 1 else hashlib.sha256(piece).hexdigest()
        env = Envelope(
            kind=kind, fed=fed, sender=sender, round=int(round), model=model, msg=msg,
            blob_sha256=blob_sha, blob_size=len(blob), index=index, count=count,
            chunk_sha256=chunk_sha, ts=stamp, payload=piece,
        )
        # hashed here from this very piece: no second (or, one chunk, third) SHA-256
        out.append(sign_envelope(env, private_key, payload_hashed=True))
    return out


def one_envelope(data: bytes, private_key: Ed25519PrivateKey, *, kind: str, fed: str,
                 sender: str, round: int, model: str) -> Envelope:
    """A control message (announce, ack, status) signed as a one-chunk blob."""
    (env,) = split_blob(data, private_key, kind=kind, fed=fed, sender=sender, round=round,
                        model=model, chunk_size=max(len(data), 1))
    return env


@dataclass
class _Partial:
    first: Envelope
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    nbytes: int = 0


@dataclass(frozen=True)
class Blob:
    """A reassembled blob and the header fields common to its chunks."""

    data: bytes
    envelope: Envelope  # the first chunk received (payload included)


class Reassembler:
    """Collect chunks (any order, duplicates ignored) into blobs, with bounded memory.

    Verify each envelope's signature BEFORE ``add`` (``verify_envelope``): the
    reassembler checks hashes and consistency, not who sent it.

    Limits: ``max_blob_bytes`` per blob (larger announced sizes are refused as
    ``oversized``); ``max_inflight_bytes`` over all partial blobs (oldest partials are
    evicted to make room); ``max_partials`` partial blobs; partials older than
    ``ttl_seconds`` are evicted. ``evicted`` counts evictions.
    """

    def __init__(
        self,
        max_blob_bytes: int = 64 * 1024 * 1024,
        max_inflight_bytes: int = 256 * 1024 * 1024,
        ttl_seconds: float = 600.0,
        *,
        max_partials: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_inflight_bytes < max_blob_bytes:
            raise ValueError("max_inflight_bytes must be >= max_blob_bytes")
        self.max_blob_bytes = max_blob_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self.ttl_seconds = ttl_seconds
        self.max_partials = max_partials
        self._clock = clock
        self._partials: OrderedDict[tuple[str, str], _Partial] = OrderedDict()
        self._done: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.inflight_bytes = 0
        self.evicted = 0
        self.completed = 0
        self.duplicates = 0

    @property
    def partial_count(self) -> int:
        return len(self._partials)

    def add(self, env: Envelope) -> bytes | None:
        """Add one chunk; return the whole blob when this chunk completes it."""
        blob = self.add_blob(env)
        return None if blob is None else blob.data

    def add_blob(self, env: Envelope) -> Blob | None:
        """Like ``add`` but also returns the header of the completed blob."""
        validate(env)
        if hashlib.sha256(env.payload).hexdigest() != env.chunk_sha256:
            raise FederationError(INTEGRITY, f"chunk {env.index} of {env.msg} fails its sha256")
        if env.blob_size > self.max_blob_bytes:
            raise FederationError(
                OVERSIZED, f"blob of {env.blob_size} bytes exceeds {self.max_blob_bytes}"
            )
        if env.count > max(1, env.blob_size):
            raise FederationError(INTEGRITY, f"{env.count} chunks for {env.blob_size} bytes")
        key = (env.sender, env.msg)
        now = self._clock()
        self._expire(now)
        if key in self._done:
            self.duplicates += 1
            return None
        part = self._partials.get(key)
        if part is None:
            part = _Partial(first=env, started=now)
            self._partials[key] = part
        elif not _same_blob(part.first, env):
            self._drop(key)
            raise FederationError(INTEGRITY, f"chunk {env.index} of {env.msg} disagrees with "
                                  "earlier chunks (count/size/hash/round/kind)")
        if env.index in part.chunks:
            self.duplicates += 1
            return None
        if part.nbytes + len(env.payload) > env.blob_size:
            self._drop(key)
            raise FederationError(INTEGRITY, f"chunks of {env.msg} exceed the announced size")
        part.chunks[env.index] = env.payload
        part.nbytes += len(env.payload)
        self.inflight_bytes += len(env.payload)
        self._make_room(keep=key)
        if len(part.chunks) < env.count:
            return None
        self._drop(key)
        data = b"".join(part.chunks[i] for i in range(env.count))
        if len(data) != env.blob_size or hashlib.sha256(data).hexdigest() != env.blob_sha256:
            raise FederationError(INTEGRITY, f"reassembled {env.msg} fails its size or sha256")
        self._done[key] = None
        while len(self._done) > 4 * self.max_partials:
            self._done.popitem(last=False)
        self.completed += 1
        return Blob(data=data, envelope=part.first)

    def _drop(self, key: tuple[str, str]) -> None:
        part = self._partials.pop(key, None)
        if part is not None:
            self.inflight_bytes -= part.nbytes

    def _evict(self, key: tuple[str, str], why: str) -> None:
        part = self._partials[key]
        log.warning("evicting partial blob %s from %s (%d/%d chunks): %s",
                    key[1], key[0], len(part.chunks), part.first.count, why)
        self._drop(key)
        self.evicted += 1

    def _expire(self, now: float) -> None:
        for key, part in list(self._partials.items()):
            if now - part.started <= self.ttl_seconds:
                break  # insertion order == start order
            self._evict(key, "expired")

    def _make_room(self, keep: tuple[str, str]) -> None:
        for key in list(self._partials):
            if (self.inflight_bytes <= self.max_inflight_bytes
                    and len(self._partials) <= self.max_partials):
                return
            if key != keep:
                self._evict(key, "in-flight limit")


def _same_blob(a: Envelope, b: Envelope) -> bool:
    return (a.kind, a.fed, a.round, a.model, a.blob_sha256, a.blob_size, a.count) == (
        b.kind, b.fed, b.round, b.model, b.blob_sha256, b.blob_size, b.count)
