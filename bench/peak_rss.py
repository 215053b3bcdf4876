"""Peak resident memory of a subprocess (and its children), for the edge's memory figure.

    from bench.peak_rss import peak_rss
    result = peak_rss([sys.executable, "-m", "edge.cli", "run", ...], timeout=60)
    print(result.peak_mib)

Two measurements, the larger wins: psutil polls the RSS of the process tree every
``interval`` seconds (sees children that are still running), and the kernel's exact
``ru_maxrss`` of the direct child from ``wait4`` (catches a peak between two polls).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class PeakRss:
    returncode: int
    peak_bytes: int
    polled_bytes: int  # max of the psutil samples of the whole tree
    kernel_bytes: int  # ru_maxrss of the direct child (0 where wait4 is unavailable)
    seconds: float

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / (1024 * 1024)


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    try:
        procs = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def peak_rss(
    cmd: Sequence[str],
    timeout: float | None = None,
    interval: float = 0.02,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stop_after: float | None = None,
) -> PeakRss:
    """Run ``cmd`` and return its peak RSS.

    ``stop_after`` sends SIGINT after that many seconds (for long-running commands such
    as ``fedface-edge run``); ``timeout`` kills the process. Output is discarded.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    watched = psutil.Process(proc.pid)
    polled = 0
    interrupted = False
    try:
        while True:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break  # exited: still a zombie, so wait4 below can read its rusage
            polled = max(polled, _tree_rss(watched))
            elapsed = time.monotonic() - start
            if stop_after is not None and not interrupted and elapsed > stop_after:
                proc.send_signal(signal.SIGINT)
                interrupted = True
            if timeout is not None and elapsed > timeout:
                proc.kill()
            time.sleep(interval)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    kernel = int(usage.ru_maxrss) * 1024  # Linux reports kilobytes
    return PeakRss(
        returncode=proc.returncode,
        peak_bytes=max(polled, kernel),
        polled_bytes=polled,
        kernel_bytes=kernel,
        seconds=time.monotonic() - start,
    )
