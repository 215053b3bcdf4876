"""One ``serve`` per state directory: an exclusive lock on ``<state>/serve.lock``, held
for the life of the process (``federation.process_lock``).

Two serves on one state (a restart started while the old process was still stopping:
helper-41) shared one database and one MQTT client id, and took the broker session from
each other in turn ("connection lost"), with no word of why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from aggregator.state.db import StoreError
from federation.process_lock import LockHeld, hold_lock, holder_of

log = logging.getLogger(__name__)

LOCK_NAME = "serve.lock"


def lock_state(state_dir: Path, wait_seconds: float = 15.0,
               clock: Callable[[], float] = time.monotonic, doing: str | None = None
               ) -> IO[str]:
    """The held lock of ``state_dir`` (keep the returned file open while serving). Waits
    up to ``wait_seconds`` for a serve that is stopping, then StoreError naming its pid.
    ``doing``: a command that must not run beside serve (``keys install``), said in the
    refusal."""
    try:
        return hold_lock(Path(state_dir) / LOCK_NAME, wait_seconds, lambda holder: log.warning(
            "waiting for the serve that holds %s (pid %s) to stop", state_dir, holder), clock)
    except LockHeld as held:
        if doing is not None:
            raise StoreError(f"`fedface-aggregator serve` (pid {held.holder}) runs on "
                             f"{state_dir}: stop it before {doing} (sudo systemctl "
                             "stop fedface-aggregator); nothing was changed") from None
        raise StoreError(f"another `fedface-aggregator serve` (pid {held.holder}) runs on "
                         f"{state_dir}: one serve per state directory; stop it "
                         "first") from None


def serve_pid(state_dir: Path) -> str | None:
    """The pid of the serve running on ``state_dir``; None when none does (``status``
    showed an open round's deadline ticking with serve stopped: helper-57)."""
    return holder_of(Path(state_dir) / LOCK_NAME)
