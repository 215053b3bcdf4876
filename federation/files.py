"""Durable, atomic file writes: the one helper of the box, the aggregator and its PKI.

A crash or power cut at any point leaves either the old file or the new one, never a
torn one: write a temporary file in the same directory (created with its final mode, so
a key is never readable by others even for an instant), fsync it, rename it over the
target, then fsync the directory so the rename itself is on disk.

The mode has no default: every caller says whether the file is private (0o600: keys,
secret contexts, state holding device data) or must be read by other users (0o644: the
public context, certificates, CRLs and broker config that Mosquitto reads).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int) -> Path:
    """Write ``data`` to ``path`` atomically and durably (file and directory fsynced)
    with permissions exactly ``mode``, whatever the umask. Returns ``path``."""
    if mode & ~0o777:
        raise ValueError(f"mode {mode:#o}: only permission bits (at most 0o777)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            # mkstemp creates 0600; fchmod sets the wanted mode exactly, whatever the umask.
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path
