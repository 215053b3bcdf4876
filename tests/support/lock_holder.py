"""Another process holding a ``federation.process_lock`` lock, as a running ``serve`` or
``join`` does: the kernel's flock between two processes, not a mock of it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def lock_held_elsewhere(lock: Path) -> Iterator[int]:
    """Yields the holder's pid once it holds ``lock``; it lets go on leaving."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from federation.process_lock import hold_lock; "
         f"held = hold_lock(Path({str(lock)!r})); print('held', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
