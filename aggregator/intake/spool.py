"""Reassembly of chunked updates spooled to disk, not memory.

Twenty boxes publishing at once interleave their chunks at the broker, so every update
is "in flight" at the same time; holding them in RAM would make the aggregator's memory
grow with the number of clients (20 x 32 MB for a 1M-parameter CKKS update). Chunks go
to one spool file per message instead, at ``index * chunk_size``; only the completed
blob is read back (one at a time, since the service handles messages sequentially).

Checks: chunk hash, consistent header across chunks (size, hash, count, chunk size),
max blob size, max spooled bytes, expiry of partial blobs; the whole blob's size and
SHA-256 on completion. Duplicate chunks (QoS 1 redelivery) are ignored.

The whole blob's SHA-256 is computed as its chunks arrive when they arrive in order (one
client's QoS 1 messages do), from the chunk already in memory: the completed blob is not
read back from disk to be hashed (a 25 MB read per 1M-value update saved on the MQTT
thread). Chunks out of order fall back to hashing the file on completion.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.envelope import Envelope, validate
from federation.errors import INTEGRITY, MALFORMED, OVERSIZED, FederationError
from federation.files import PRIVATE_DIR, make_dirs

log = logging.getLogger(__name__)


@dataclass
class _Partial:
    path: Path
    blob_size: int
    blob_sha256: str
    count: int
    chunk_size: int
    first_seen: float
    ident: tuple[object, ...] = ()
    have: set[int] = field(default_factory=set)
    digest: Any = field(default_factory=hashlib.sha256)  # of bytes [0, hashed), in order
    hashed: int = 0
    in_order: bool = True


class DiskReassembler:
    def __init__(
        self,
        spool_dir: Path,
        max_blob_bytes: int,
        max_spool_bytes: int,
        ttl_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        max_partials_per_sender: int = 4,
    ) -> None:
        self.dir = Path(spool_dir)
        shutil.rmtree(self.dir, ignore_errors=True)  # partials of a previous run are unacked
        make_dirs(self.dir, PRIVATE_DIR)
        self.max_blob_bytes = max_blob_bytes
        self.max_spool_bytes = max_spool_bytes
        self.ttl = ttl_seconds
        self.clock = clock
        self.partials: dict[tuple[str, str], _Partial] = {}
        # A box has one update (plus perhaps a resend under a new id) in flight: a sender
        # starting more loses its oldest partial, so a flood of chunk starts that never
        # complete holds at most this many partials (and spool files) per device.
        self.max_partials_per_sender = max_partials_per_sender
        self.evicted = 0

    @property
    def spooled_bytes(self) -> int:
        return sum(p.blob_size for p in self.partials.values())

    def discard(self, sender: str, msg: str) -> None:
        part = self.partials.pop((sender, msg), None)
        if part is not None:
            part.path.unlink(missing_ok=True)

    def expire(self) -> list[tuple[str, str]]:
        now = self.clock()
        old = [k for k, p in self.partials.items() if now - p.first_seen > self.ttl]
        for key in old:
            log.warning("dropping partial update %s/%s: incomplete after %.0f s", *key, self.ttl)
            self.discard(*key)
        return old

    def _make_room_for(self, sender: str) -> None:
        mine = [k for k in self.partials if k[0] == sender]  # insertion order = oldest first
        for key in mine[: max(0, len(mine) - self.max_partials_per_sender + 1)]:
            part = self.partials[key]
            self.evicted += 1
            if self.evicted <= 10 or self.evicted % 1000 == 0:  # a flood must not flood the log
                log.warning("evicting partial update %s/%s (%d/%d chunks): the sender started "
                            "more than %d (%d evicted so far)", *key, len(part.have), part.count,
                            self.max_partials_per_sender, self.evicted)
            self.discard(*key)

    def add(self, env: Envelope, *, validated: bool = False) -> Path | None:
        """Spool one (signature-checked) chunk; return the blob's file once complete.
        ``validated``: ``env`` comes from ``decode``, which validated it already."""
        if not validated:
            validate(env)
        key = (env.sender, env.msg)
        msg, index, count, chunk = env.msg, env.index, env.count, env.payload
        blob_size, blob_sha256, chunk_sha256 = env.blob_size, env.blob_sha256, env.chunk_sha256
        if hashlib.sha256(chunk).hexdigest() != chunk_sha256:
            self.discard(*key)
            raise FederationError(INTEGRITY, f"chunk {index} of {msg}: SHA-256 mismatch")
        if not (0 <= index < count) or count < 1 or blob_size < 0:
            raise FederationError(MALFORMED, f"chunk index {index} / count {count} out of range")
        if blob_size > self.max_blob_bytes:
            raise FederationError(
                OVERSIZED, f"blob of {blob_size} bytes exceeds the {self.max_blob_bytes}-byte limit"
            )
        part = self.partials.get(key)
        if part is None and count == 1:
            return self._single(key, env)
        if part is None:
            self.expire()
            self._make_room_for(env.sender)
            if self.spooled_bytes + blob_size > self.max_spool_bytes:
                raise FederationError(
                    "unavailable",
                    f"spool full ({self.spooled_bytes} bytes in flight); resend later",
                )
            # Chunk size is deduced from a non-last chunk; a single chunk is the blob.
            chunk_size = len(chunk) if index < count - 1 or count == 1 else 0
            path = self.dir / hashlib.sha256(f"{env.sender}/{msg}".encode()).hexdigest()
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            part = _Partial(
                path, blob_size, blob_sha256, count, chunk_size, self.clock(), _ident(env)
            )
            self.partials[key] = part
        elif part.ident != _ident(env):
            self.discard(*key)
            raise FederationError(
                INTEGRITY, f"chunk {index} of {msg} disagrees with earlier chunks"
            )
        if index in part.have:
            return None
        if index < count - 1:
            if part.chunk_size == 0:
                part.chunk_size = len(chunk)
            if len(chunk) != part.chunk_size:
                self.discard(*key)
                raise FederationError(MALFORMED, f"chunk {index} of {msg} has an irregular size")
        offset = self._write_at(key, part, index, chunk)
        part.have.add(index)
        if part.in_order and offset == part.hashed:
            part.digest.update(chunk)  # hashlib releases the GIL on buffers this size
            part.hashed += len(chunk)
        else:
            part.in_order = False
        if len(part.have) < part.count:
            return None
        return self._complete(key, part)

    def _single(self, key: tuple[str, str], env: Envelope) -> Path:
        """A blob of one chunk (every update of the default part): its chunk hash,
        already checked, is the blob's hash, and it goes straight into its ``.ready``
        file with one open and one write: no partial record, no second hash, no rename
        (``python -m bench.aggregator.intake``: the delivery handler 0.84 -> 0.65 ms per
        update)."""
        if len(env.payload) != env.blob_size or env.chunk_sha256 != env.blob_sha256:
            raise FederationError(
                INTEGRITY, f"single-chunk blob {env.msg}: its size or SHA-256 is not its chunk's")
        name = hashlib.sha256(f"{key[0]}/{key[1]}".encode()).hexdigest() + ".ready"
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            written = os.write(fd, env.payload)
            if written != env.blob_size:  # a regular file writes short only when full
                raise OSError(errno.ENOSPC, f"short write spooling {env.msg}: {written} of "
                              f"{env.blob_size} bytes")
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path

    def _write_at(self, key: tuple[str, str], part: _Partial, index: int, chunk: bytes) -> int:
        if index == part.count - 1 and part.count > 1 and part.chunk_size == 0:
            # Last chunk arrived before any other: its offset is blob_size - len(chunk).
            offset = part.blob_size - len(chunk)
        else:
            offset = index * part.chunk_size
        if offset < 0 or offset + len(chunk) > part.blob_size:
            self.discard(*key)
            raise FederationError(INTEGRITY, "chunk does not fit inside the declared blob size")
        fd = os.open(part.path, os.O_WRONLY)
        try:
            os.pwrite(fd, chunk, offset)
        finally:
            os.close(fd)
        return offset

    def _complete(self, key: tuple[str, str], part: _Partial) -> Path:
        """Verify the whole blob on disk and hand it over as a file (the caller reads it
        when it is ready to add it, and deletes it), so a backlog costs disk, not RAM."""
        self.partials.pop(key, None)
        ready = part.path.with_name(part.path.name + ".ready")
        try:
            if part.in_order and part.hashed == part.blob_size:
                digest, size = part.digest, os.stat(part.path).st_size
            else:
                digest, size = _hash_file(part.path)
            if size != part.blob_size:
                raise FederationError(
                    INTEGRITY, f"reassembled {size} bytes, header says {part.blob_size}"
                )
            if digest.hexdigest() != part.blob_sha256:
                raise FederationError(INTEGRITY, "reassembled blob SHA-256 mismatch")
            os.replace(part.path, ready)
        except BaseException:
            part.path.unlink(missing_ok=True)
            raise
        return ready


def _hash_file(path: Path) -> tuple[Any, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest, size


def _ident(env: Envelope) -> tuple[object, ...]:
    """Header fields every chunk of one blob must agree on."""
    return (env.kind, env.fed, env.round, env.model, env.blob_sha256, env.blob_size, env.count)
