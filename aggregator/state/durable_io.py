"""Crash-safe file writes of the aggregator's state directory: fsync of files and
directories, the atomic replace of a whole file, and the side-by-side fsyncs of a group
commit. Kept apart from the SQLite tables so that the service (flushing spooled blobs),
the config files and the regional forwarder can use them without the store."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from federation.files import fsync_dir
from federation.files import write_atomic as federation_write_atomic

__all__ = ["fsync_dir", "fsync_file", "sync_all", "write_atomic", "write_synced"]

# fsyncs of one group commit run side by side (they release the GIL and wait on the disk).
_FSYNC_THREADS = 8


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """tmp + fsync + rename + fsync(dir) (``federation.files``, shared with the box):
    after return the file is whole on disk, and a crash at any point leaves either the
    old file or the new one, never a torn one. State files are 0644 unless told."""
    federation_write_atomic(path, data, mode=mode)


def sync_all(paths: list[Path]) -> None:
    """fsync every file, side by side; the first error is raised after all finished."""
    if len(paths) <= 1:
        for path in paths:
            fsync_file(path)
        return
    with ThreadPoolExecutor(min(_FSYNC_THREADS, len(paths)), thread_name_prefix="fsync") as ex:
        for future in [ex.submit(fsync_file, p) for p in paths]:
            future.result()


def write_synced(path: Path, data: bytes) -> None:
    """Write + fsync a new file (its directory is fsync'ed once for the whole batch)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
