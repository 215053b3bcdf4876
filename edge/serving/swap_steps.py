"""The steps of a hot swap, their timings, and the crash-test hook between them.

``edge.serving.hot_swap`` names each step of a swap or rollback as it completes
(``STEPS``, in order; its docstring says what each does and which is the commit point).
``SwapSteps`` times them from the swap's start and, when ``$FEDFACE_SWAP_CRASH_AFTER``
names the step just done, SIGKILLs the process there: the crash-safety tests use it to
show that a box killed at any step restarts on one consistent model. ``SwapReport`` is
what a finished swap returns (its canary result and step timings: the benchmarks and
the federation client's verdicts read it). ``SwapLock`` makes it one swap at a time across
threads and processes, and ``in_background`` runs one in a thread of lower CPU priority.
Kept apart from the swap's logic so this machinery is seen in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge.priority import lower_thread_priority
from edge.serving.canary import CanaryResult

T = TypeVar("T")

log = logging.getLogger(__name__)

STEPS = ("patched", "model_written", "session_built", "reembedded", "validated",
         "rows_written", "committed", "swapped", "old_dropped")
CRASH_ENV = "FEDFACE_SWAP_CRASH_AFTER"


@dataclass(frozen=True)
class SwapReport:
    version: str
    canary: CanaryResult | None
    seconds: dict[str, float]  # time from the swap's start at the end of each step

    @property
    def total(self) -> float:
        return max(self.seconds.values(), default=0.0)

    @property
    def serving_after(self) -> float:
        """Weights received -> the new state serving frames (cleanup comes after)."""
        return self.seconds.get("swapped", self.total)


class SwapSteps:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: dict[str, float] = {}

    def done(self, step: str) -> None:
        self.marks[step] = time.perf_counter() - self.t0
        if os.environ.get(CRASH_ENV) == step:
            log.warning("%s=%s: killing this process now (crash test)", CRASH_ENV, step)
            os.kill(os.getpid(), signal.SIGKILL)


class SwapLock:
    """One swap at a time, across threads (re-entrant) and processes (the CLI's rollback,
    a second `train --apply`): an exclusive lock on ``<swap dir>/swap.lock``."""

    def __init__(self, directory: Path) -> None:
        self._lock = threading.RLock()
        self.path = directory / "swap.lock"

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock, open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if we are killed
            yield


def in_background(job: Callable[[], T], niceness: int) -> T:
    """``job()`` in a thread at ``niceness`` (the frame thread keeps its core on a 2-core
    box), its result or exception returned or raised in the caller's thread."""
    box: dict[str, Any] = {}

    def run() -> None:
        if niceness:
            lower_thread_priority(niceness)
        try:
            box["value"] = job()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="hot-swap", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
