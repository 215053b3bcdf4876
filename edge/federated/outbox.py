"""On-disk outbox for encrypted updates: nothing is lost while the broker is away.

An update is minutes of training plus seconds of encryption; publishing into a
disconnected MQTT client would silently drop it (the weak spot style.md warns about).
So the signed chunks are written here *before* the first publish, and an entry leaves
the outbox only when the aggregator acked it or its round is over. A box that reboots
mid-round finds its pending update on disk and sends it again.

Layout: ``<dir>/r<round>-<msg>.upd``, one file per update, written by atomic rename,
mode 0600 (the chunks are ciphertexts, but the sample-count side channel and the
device's signatures are still nobody else's business). File format: ``b"FFOB"``, a
4-byte big-endian JSON header length, a JSON header (round, model, msg, chunk sizes),
then the chunk payloads back to back.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from federation.files import PRIVATE_DIR, make_dirs, write_atomic

log = logging.getLogger(__name__)

_MAGIC = b"FFOB"


class OutboxError(RuntimeError):
    """An outbox file is unreadable or corrupt."""


@dataclass(frozen=True)
class PendingUpdate:
    round_no: int
    model_version: str
    msg_id: str
    chunks: tuple[bytes, ...]
    path: Path

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        make_dirs(self.directory, PRIVATE_DIR)
        os.chmod(self.directory, 0o700)

    def _path(self, round_no: int, msg_id: str) -> Path:
        if not msg_id.isalnum():
            raise OutboxError(f"message id {msg_id!r} is not alphanumeric")
        return self.directory / f"r{round_no:08d}-{msg_id}.upd"

    def put(
        self, round_no: int, model_version: str, msg_id: str, chunks: list[bytes]
    ) -> PendingUpdate:
        header = json.dumps(
            {
                "round": round_no,
                "model": model_version,
                "msg": msg_id,
                "sizes": [len(c) for c in chunks],
            },
            sort_keys=True,
        ).encode()
        data = b"".join([_MAGIC, struct.pack(">I", len(header)), header, *chunks])
        path = self._path(round_no, msg_id)
        write_atomic(path, data, mode=0o600)
        log.info("outbox: stored round %d update %s (%d chunks, %d bytes)",
                 round_no, msg_id[:12], len(chunks), len(data))
        return PendingUpdate(round_no, model_version, msg_id, tuple(chunks), path)

    def _read(self, path: Path) -> PendingUpdate:
        data = path.read_bytes()
        if data[:4] != _MAGIC or len(data) < 8:
            raise OutboxError(f"{path}: not an outbox file")
        (hlen,) = struct.unpack(">I", data[4:8])
        try:
            header = json.loads(data[8 : 8 + hlen])
        except ValueError as exc:
            raise OutboxError(f"{path}: corrupt header: {exc}") from exc
        chunks: list[bytes] = []
        offset = 8 + hlen
        for size in header["sizes"]:
            chunks.append(data[offset : offset + size])
            offset += size
        if offset != len(data):
            raise OutboxError(f"{path}: truncated or padded ({len(data)} bytes, expected {offset})")
        return PendingUpdate(int(header["round"]), str(header["model"]), str(header["msg"]),
                             tuple(chunks), path)

    def pending(self) -> list[PendingUpdate]:
        """All stored updates, oldest round first. Corrupt files are moved aside, not lost."""
        out: list[PendingUpdate] = []
        for path in sorted(self.directory.glob("r*.upd")):
            try:
                out.append(self._read(path))
            except (OutboxError, OSError, KeyError, ValueError) as exc:
                log.error("outbox: %s is unreadable (%s); moved to %s.bad", path, exc, path.name)
                path.replace(path.with_suffix(".bad"))
        return out

    def remove(self, round_no: int, msg_id: str) -> bool:
        try:
            self._path(round_no, msg_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def stored(self) -> list[tuple[int, str]]:
        """(round, msg id) of every stored update, from the file names (reads no data)."""
        out = []
        for path in sorted(self.directory.glob("r*.upd")):
            round_part, _, msg = path.stem.partition("-")
            if round_part[1:].isdigit() and msg:
                out.append((int(round_part[1:]), msg))
        return out

    def remove_rounds_before(self, round_no: int) -> list[str]:
        """Drop updates of rounds that are over (the aggregator would reject them as late);
        returns their message ids."""
        removed = []
        for stored_round, msg in self.stored():
            if stored_round < round_no and self.remove(stored_round, msg):
                removed.append(msg)
        return removed
