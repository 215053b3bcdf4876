"""Hashes of model files. Model files are written with ``federation.files.write_atomic``
(the project's one atomic write): a box that loses power mid-write keeps either the old
file or the new one, never a truncated model that would fail its hash check at the next
boot (or, worse, load).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
