"""One process of a kind per directory: an exclusive ``flock`` on a lock file, held for
the life of the process (the kernel drops it when the process dies, so a killed one
never leaves it behind); the file keeps the holder's pid for the refusal's message.

Two ``serve``s on one aggregator state, or two ``join``s on one box (a second terminal:
helper-57), shared one database and one MQTT client id and took the broker session
from each other in turn ("connection lost"), with no word of why.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is its pid as it wrote it."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"held by pid {holder}")
        self.holder = holder


def hold_lock(path: Path, wait_seconds: float = 0.0,
              waiting: Callable[[str], None] | None = None,
              clock: Callable[[], float] = time.monotonic) -> IO[str]:
    """The held lock on ``path`` (keep the returned file open; closing it releases the
    lock). Waits up to ``wait_seconds`` for a holder that is stopping (``waiting`` is
    told its pid, once), then raises LockHeld."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    handle = os.fdopen(fd, "r+")
    deadline, said = clock() + wait_seconds, False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _holder(handle)
            if clock() >= deadline:
                handle.close()
                raise LockHeld(holder) from None
            if not said and waiting is not None:
                waiting(holder)
                said = True
            time.sleep(0.2)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "unknown"


def holder_of(path: Path) -> str | None:
    """The pid holding the lock on ``path`` (as it wrote it), None when no process does.
    Only reads: a shared lock taken and let go at once, nothing written."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115  (closed below, lock and all)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(handle)
        return None
