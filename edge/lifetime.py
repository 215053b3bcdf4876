"""Child processes that do not outlive the process that started them.

A box's training child (``edge.training.trainer``) and the demo's aggregator and boxes
(``edge.demo.run``) ask the Linux kernel to signal them when their parent dies, however
it dies: a ``kill -9`` of ``join`` left its training child (680 MB) running for good
(helper-38), and a ``kill`` of ``fedface-edge demo`` left its aggregator and boxes
reconnecting for ever to the broker that had died with it. Elsewhere it does nothing.

``python -m edge.lifetime PARENT_PID COMMAND...`` tethers a command that is not ours to
change (``fedface-aggregator serve``) and then executes it: the request survives exec.
A leaf module: the training child imports it without the rest.

May import: nothing of the project.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send ``signum`` to this process when ``parent`` (the pid that
    started it, passed down by it) dies; exit at once if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    # the parent died before the prctl: no signal will come, and init adopted us
    if os.getppid() != parent:
        os._exit(1)


def tethered(command: list[str], signum: int = signal.SIGTERM) -> list[str]:
    """``command`` run so that it gets ``signum`` when this process dies (SIGTERM: the
    services stop cleanly, a box says it goes offline)."""
    return [sys.executable, "-m", "edge.lifetime", str(os.getpid()), str(int(signum)),
            *command]


def _exec_tethered(argv: list[str]) -> None:
    parent, signum, command = int(argv[0]), int(argv[1]), argv[2:]
    die_with_parent(parent, signum)
    os.execvp(command[0], command)


if __name__ == "__main__":
    _exec_tethered(sys.argv[1:])
