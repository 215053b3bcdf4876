"""Crash-safe file writes of the aggregator's state directory: fsync of files and
directories, the atomic replace of a whole file, and the side-by-side fsyncs of a group
commit. Kept apart from the SQLite tables so that the service (flushing spooled blobs),
the config files and the regional forwarder can use them without the store."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# fsyncs of one group commit run side by side (they release the GIL and wait on the disk).
_FSYNC_THREADS = 8


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """tmp + fsync + rename + fsync(dir): after return the file is whole on disk, and a
    crash at any point leaves either the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
