"""The aggregator of a bench, in its own process, with its CPU time and memory.

Two commands, one wrapper (:class:`AggregatorProcess`):
- :func:`serve_argv`: the real ``fedface-aggregator serve``;
- :func:`service_argv`: this module run as ``python -m bench.rig.aggregator``: the same
  service (``aggregator.runner.build_service``: spooling, persistence, signing,
  chunking), whose ``--mode plain`` swaps the homomorphic sum for a numpy sum of raw
  float32 updates, the plaintext baseline of the encrypted one. It prints
  ``{"peak_rss_mb": ...}`` (its own ru_maxrss) when stopped.

CPU time comes from the kernel at exit (``wait4`` rusage, which includes reaped summing
workers); the peak RSS of the process tree from a psutil poll.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.rig.procs import REPO, last_json


def serve_argv(state: Path, url: str, quorum: int, rounds: int, *, intake: int = 1,
               sum_workers: int | None = None) -> list[str]:
    exe = Path(sys.executable).parent / "fedface-aggregator"
    return [str(exe), "serve", "--state", str(state), "--broker", url, "--quorum", str(quorum),
            "--rounds", str(rounds), "--round-deadline", "3600",
            "--intake-processes", str(intake),
            *([] if sum_workers is None else ["--sum-workers", str(sum_workers)])]


def service_argv(state: Path, url: str, quorum: int, rounds: int, *, mode: str = "ckks",
                 length: int = 1_000_000, chunk: int = 256 * 1024) -> list[str]:
    return [sys.executable, "-m", "bench.rig.aggregator", "--state", str(state), "--broker",
            url, "--quorum", str(quorum), "--rounds", str(rounds), "--mode", mode,
            "--length", str(length), "--chunk-size", str(chunk)]


class AggregatorProcess:
    """An aggregator command with an RSS poll of its process tree; logs in ``log``."""

    def __init__(self, argv: list[str], log: Path) -> None:
        import psutil

        self.log = log.open("w")
        self.out_path = log.with_suffix(".out")
        self._out = self.out_path.open("w")
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=self._out, stderr=self.log,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.ps = psutil.Process(self.proc.pid)
        self.max_rss = 0  # of the process tree: the aggregator and its summing workers
        self.cpu_at_open = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            try:
                procs = [self.ps, *self.ps.children(recursive=True)]
            except Exception:  # exited between two polls
                return
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except Exception:  # a worker exited between two calls
                    continue
            self.max_rss = max(self.max_rss, total)

    def mark_open(self) -> None:
        """CPU spent before round 1 opened (imports, context load): not summing work."""
        cpu = 0.0
        for proc in [self.ps, *self.ps.children(recursive=True)]:
            t = proc.cpu_times()
            cpu += t.user + t.system
        self.cpu_at_open = cpu

    def wait(self, timeout: float) -> dict[str, float]:
        """Usage once the process has ended by itself (after its last round)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self._stop.set()
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.log.close()
                self._out.close()
                return {"cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime,
                        "rounds_cpu_s": usage.ru_utime + usage.ru_stime - self.cpu_at_open,
                        "main_rss_mb": usage.ru_maxrss / 1024,
                        "peak_rss_mb": self.max_rss / 2**20,
                        "exit": float(self.proc.returncode)}
            time.sleep(0.1)
        self.kill()
        raise TimeoutError("the aggregator did not finish its rounds")

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        """SIGTERM, then the report the process printed last (the bench service's)."""
        if self.proc.returncode is None:  # not Popen.send_signal: its poll() would reap
            os.kill(self.proc.pid, signal.SIGTERM)  # the process before wait4 sees it
        self.wait(timeout)
        return last_json(self.out_path.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- the child: the aggregator service with a choice of sum ------------------------------
def service_main(ns: argparse.Namespace) -> None:
    from aggregator.rounds.accumulator import PlainAccumulatorFactory
    from aggregator.rounds.coordinator import RoundSettings
    from aggregator.runner import build_service
    from aggregator.state.config import load_config

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(ns.state)
    settings = RoundSettings(ns.deadline, ns.quorum, cfg.count_scale, "", ns.chunk_size, 0)
    service, transport = build_service(ns.state, cfg, settings, ns.broker, "bench-agg",
                                       ns.rounds)
    if ns.mode == "plain":  # same service, same chunking/signing/persistence; numpy sum
        service.coordinator.accumulators = PlainAccumulatorFactory(ns.length + 1)
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    threading.Thread(target=_log_rss, args=(stop_event,), daemon=True).start()
    service.start()
    service.loop(stop_event)
    transport.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak_kb / 1024}), flush=True)


def _log_rss(stop_event: threading.Event) -> None:
    log = logging.getLogger("bench.rss")
    while not stop_event.wait(1.0):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        log.info("rss %.0f MB", pages * os.sysconf("SC_PAGE_SIZE") / 2**20)


def main() -> None:
    a = argparse.ArgumentParser(description="the aggregator service of a bench")
    a.add_argument("--state", type=Path, required=True)
    a.add_argument("--broker", required=True)
    a.add_argument("--mode", choices=["ckks", "plain"], default="ckks")
    a.add_argument("--rounds", type=int, default=1)
    a.add_argument("--quorum", type=int, default=2)
    a.add_argument("--deadline", type=float, default=600.0)
    a.add_argument("--length", type=int, default=1_000_000)
    a.add_argument("--chunk-size", type=int, default=256 * 1024)
    service_main(a.parse_args())


if __name__ == "__main__":
    main()
