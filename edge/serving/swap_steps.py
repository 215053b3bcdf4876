"""The steps of a hot swap, their timings, and the crash-test hook between them.

``edge.serving.hot_swap`` names each step of a swap or rollback as it completes
(``STEPS``, in order; its docstring says what each does and which is the commit point).
``SwapSteps`` times them from the swap's start and, when ``$FEDFACE_SWAP_CRASH_AFTER``
names the step just done, SIGKILLs the process there: the crash-safety tests use it to
show that a box killed at any step restarts on one consistent model. ``SwapReport`` is
what a finished swap returns (its canary result and step timings: the benchmarks and
the federation client's verdicts read it). Kept apart from the swap's logic so the
hook and the timings are seen in one place.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

from edge.serving.canary import CanaryResult

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
