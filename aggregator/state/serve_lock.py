"""One ``serve`` per state directory: an exclusive lock on ``<state>/serve.lock``, held
for the life of the process.

Two serves on one state (a restart started while the old process was still stopping:
helper-41) shared one database and one MQTT client id, and took the broker session from
each other in turn ("connection lost"), with no word of why. The kernel drops the lock
when its process dies, so a killed serve never leaves it behind; the file keeps the
holder's pid for the message.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from aggregator.state.db import StoreError

log = logging.getLogger(__name__)

LOCK_NAME = "serve.lock"


def lock_state(state_dir: Path, wait_seconds: float = 15.0,
               clock: Callable[[], float] = time.monotonic, doing: str | None = None
               ) -> IO[str]:
    """The held lock of ``state_dir`` (keep the returned file open while serving). Waits
    up to ``wait_seconds`` for a serve that is stopping, then StoreError naming its pid.
    ``doing``: a command that must not run beside serve (``keys install``), said in the
    refusal."""
    fd = os.open(Path(state_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
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
                if doing is not None:
                    raise StoreError(f"`fedface-aggregator serve` (pid {holder}) runs on "
                                     f"{state_dir}: stop it before {doing} (sudo systemctl "
                                     "stop fedface-aggregator); nothing was changed") from None
                raise StoreError(f"another `fedface-aggregator serve` (pid {holder}) runs on "
                                 f"{state_dir}: one serve per state directory; stop it "
                                 "first") from None
            if not said:
                log.warning("waiting for the serve that holds %s (pid %s) to stop",
                            state_dir, holder)
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
