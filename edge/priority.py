"""How the box's background work yields the CPU to the camera path.

Training, sealing, hot-swap checks and gallery refreshes run niced (per thread on Linux,
or in a niced child process for training), so a 2-core box keeps recognising at frame
rate while it federates. A leaf module: the training child imports it without the rest.

May import: nothing of the project.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


NICENESS_ENV = "FEDFACE_BACKGROUND_NICENESS"
DEFAULT_NICENESS = 10


def background_niceness() -> int:
    """How far the box's background work (training, sealing, hot-swap checks, gallery
    refresh) yields the CPU. Nice 10 by default: the camera path never waits for it.
    ``FEDFACE_BACKGROUND_NICENESS=0`` where nothing needs the CPU more, e.g. a machine
    that only federates, or a test run beside other CPU-bound work, where nice-10 work
    gets a few percent of a core and a round takes many minutes."""
    raw = os.environ.get(NICENESS_ENV, "").strip()
    if not raw:
        return DEFAULT_NICENESS
    try:
        value = int(raw)
    except ValueError:
        log.warning("%s=%r is not a number from 0 to 19: using %d", NICENESS_ENV, raw,
                    DEFAULT_NICENESS)
        return DEFAULT_NICENESS
    return min(19, max(0, value))


def lower_thread_priority(niceness: int) -> None:
    # Linux gives every thread its own nice value (setpriority on the thread id), so the
    # training job yields to the camera/recognition threads of the same process.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError) as exc:
        log.debug("could not lower the training thread's priority: %s", exc)
