"""Peak resident memory of a subprocess (and its children), for the edge's memory figure.

    from bench.common.peak_rss import peak_rss
    result = peak_rss([sys.executable, "-m", "edge.cli", "run", ...], timeout=60)
    print(result.peak_mib)

Two measurements, the larger wins:
- polling the process tree every ``interval`` seconds (psutil) for each process's
  high-water mark (``VmHWM`` in /proc, which is monotonic, so a peak between two polls
  is still seen at the next one; plain RSS where VmHWM is unavailable);
- the kernel's ``ru_maxrss`` of the direct child from ``wait4``, which also covers the
  last moments before exit. Linux carries the parent's high-water mark into a forked
  child at exec, so this figure is only used when it exceeds the parent's own VmHWM at
  spawn time (then it can only be the child's); otherwise the polled figure stands.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class PeakRss:
    returncode: int
    peak_bytes: int
    polled_bytes: int  # max over polls of the tree's summed high-water marks
    kernel_bytes: int  # ru_maxrss of the direct child, 0 when not attributable to it
    seconds: float

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / (1024 * 1024)


def _high_water(pid: int) -> int | None:
    """VmHWM of a live process in bytes (None if /proc does not say)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tree_peak(process: psutil.Process) -> int:
    total = 0
    try:
        procs = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            hwm = _high_water(proc.pid)
            total += hwm if hwm is not None else proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A shell starts background
    jobs with SIGINT ignored, the child inherits that, and Python then installs no
    KeyboardInterrupt handler: ``stop_after`` would not stop it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
    parent_hwm = _high_water(os.getpid()) or psutil.Process().memory_info().rss
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd,
        preexec_fn=_default_sigint,
    )
    watched = psutil.Process(proc.pid)
    polled = 0
    interrupted = False
    try:
        while True:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break  # exited: still a zombie, so wait4 below can read its rusage
            polled = max(polled, _tree_peak(watched))
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
    if kernel <= parent_hwm:
        kernel = 0  # may be the parent's mark inherited at fork: not the child's
    return PeakRss(
        returncode=proc.returncode,
        peak_bytes=max(polled, kernel),
        polled_bytes=polled,
        kernel_bytes=kernel,
        seconds=time.monotonic() - start,
    )


class ChildrenPeak:
    """Polls this process's children (``interval`` s) for their high-water marks, per pid:
    for children this process starts itself (a process pool's worker), where ``peak_rss``
    cannot wrap the command. VmHWM belongs to the exec'd image, so unlike ``ru_maxrss`` it
    does not carry the parent's size into a forked child. A child that lives less than
    one interval may be missed."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._reported: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="children-peak")

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval):
            for child in me.children(recursive=True):
                hwm = _high_water(child.pid)
                if hwm is not None:
                    self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), hwm)

    def newest_peak(self) -> int:
        """The largest peak among the children seen since the last call."""
        new = {pid: peak for pid, peak in self.peaks.items() if pid not in self._reported}
        self._reported.update(new)
        return max(new.values(), default=0)

    def __enter__(self) -> ChildrenPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
