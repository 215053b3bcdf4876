"""The group commit's fsyncs: a new file written and fsynced without its directory (the
directory is fsynced once for the whole batch), and many files fsynced side by side.
Kept apart from the SQLite tables so that the service (flushing spooled blobs) can use
them without the store. A whole file replaced atomically is ``federation.files``'s
``write_atomic``, the one helper of the box and the aggregator."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["fsync_file", "sync_all", "write_synced"]

# fsyncs of one group commit run side by side (they release the GIL and wait on the disk).
_FSYNC_THREADS = 8


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
