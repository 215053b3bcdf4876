"""The round's CKKS sum in worker processes, so that summing runs beside the MQTT thread.

Why processes: TenSEAL holds the GIL while it deserialises, adds and serialises
(measured: a Python thread next to a deserialising one never ran with a 2 s switch
interval), and at 1M values an update costs ~0.11 CPU-s there while the MQTT thread
needs about as much to receive, verify and spool its chunks. In one process the two take
turns on one core; with the sum in worker processes they use every core.

Each worker holds a ``CkksAccumulator``: its share of the round's sum. The service
process sends it the PATH of a spooled update (never the bytes: no 25 MB copies through
a pipe); the worker reads, validates and stages it, and answers with a few bytes. The
accumulator interface is the same as in one process (``stage_many`` / ``commit_staged`` /
``discard_staged`` / ``to_bytes``): staging of a batch is spread over the workers and runs
in parallel; commit and discard go to every worker that staged something. At round close
the other workers' shares are serialised (in parallel) and added into the first
worker's, which serialises the total.

Crash safety is not the workers' business: they hold in-memory sums only, rebuilt from
the stored accepted blobs on restart exactly like the single-process sum. A worker that
dies (killed, out of memory) raises ``AccumulatorBroken``; the coordinator then rebuilds
the sum from disk on fresh workers (``new`` restarts dead ones). When the service
process dies (even kill -9) its workers read EOF on their pipe and exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from aggregator.rounds.accumulator import (
    Accumulator,
    AccumulatorBroken,
    CkksAccumulator,
    CkksAccumulatorFactory,
    UpdateRejected,
    UpdateSource,
)
from federation.crypto.ckks import FederationContext, load_context, public_context_bytes

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # spawn + importing TenSEAL on a loaded 2-core box takes seconds


def default_workers() -> int:
    """One worker per core (the service's own threads mostly wait on the network, the
    disk and these workers), at most 4: a worker holds up to three models in memory."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


# --- worker process ---------------------------------------------------------------------
def _worker_main(conn: Connection, context: bytes, length: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the service, which stops us
    factory = CkksAccumulatorFactory(load_context(context), length)
    acc = factory.new()
    conn.send(("ok", None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the service process is gone
            return
        op, args = request[0], request[1:]
        try:
            if op == "quit":
                return
            if op == "new":
                acc = CkksAccumulator(factory.ctx, args[0], factory.checker)
                reply: Any = None
            elif op == "stage":
                (rejected,) = acc.stage_many([_unwire(args[0])])
                if rejected is not None:
                    conn.send(("rejected", rejected.reason, rejected.detail))
                    continue
                reply = (acc.staged_count, acc._expected_length())
            elif op == "commit":
                acc.commit_staged()
                reply = acc.count
            elif op == "discard":
                acc.discard_staged()
                reply = None
            elif op == "share":  # this worker's part of the sum, serialised (None: empty)
                reply = acc.to_bytes() if acc.count else None
            elif op == "absorb":  # another worker's share
                (rejected,) = acc.stage_many([args[0]])
                if rejected is not None:
                    raise ValueError(f"a worker's share does not add: {rejected.detail}")
                acc.commit_staged()
                reply = acc.count
            elif op == "restore":
                restored = factory.restore(args[0], args[1])
                assert isinstance(restored, CkksAccumulator)
                acc, reply = restored, restored.count
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # a bug, not bad input (bad input is 'rejected')
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", reply))


# --- service side -----------------------------------------------------------------------
class _Worker:
    def __init__(self, index: int, context: bytes, length: int | None) -> None:
        mp = multiprocessing.get_context("spawn")  # never fork a process running paho threads
        self.conn, child = mp.Pipe()
        self.proc: BaseProcess = mp.Process(
            target=_worker_main, args=(child, context, length), daemon=True,
            name=f"fedface-sum-{index}")
        self.proc.start()
        child.close()
        self.ready = False
        self.broken = False  # its pipe failed: replace it even if it is not reaped yet

    def send(self, *request: Any) -> None:
        try:
            self.conn.send(request)
        except (OSError, ValueError) as exc:
            self.broken = True
            raise AccumulatorBroken(f"summing worker {self.proc.name} is gone ({exc})") from None

    def reply(self, timeout: float | None = None) -> tuple[Any, ...]:
        try:
            if timeout is not None and not self.conn.poll(timeout):
                raise AccumulatorBroken(f"summing worker {self.proc.name} did not answer "
                                        f"within {timeout:.0f} s")
            answer: tuple[Any, ...] = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.broken = True
            raise AccumulatorBroken(
                f"summing worker {self.proc.name} died (exit code {self.proc.exitcode}): "
                f"{exc or 'connection closed'}") from None
        if answer[0] == "error":
            raise AccumulatorBroken(f"summing worker {self.proc.name} failed: {answer[1]}")
        return answer

    def call(self, *request: Any) -> Any:
        self.send(*request)
        return self.reply()[1]

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("quit",))
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


class ProcessSumFactory:
    """``AccumulatorFactory`` whose sums live in ``workers`` processes (started at once,
    in parallel, so their start-up overlaps the service's)."""

    def __init__(self, ctx: FederationContext, length: int | None = None,
                 workers: int | None = None) -> None:
        CkksAccumulatorFactory(ctx, length)  # refuses a secret context here, before any spawn
        self.length = length
        self.size = workers or default_workers()
        self._context = public_context_bytes(ctx)
        self._workers = [_Worker(i, self._context, length) for i in range(self.size)]
        self._current: PooledAccumulator | None = None

    def workers(self) -> list[_Worker]:
        """The live workers, restarted if any died (their sums are rebuilt by the caller)."""
        for i, w in enumerate(self._workers):
            if w.broken or not w.proc.is_alive():
                log.warning("summing worker %s exited (code %s); starting a new one",
                            w.proc.name, w.proc.exitcode)
                w.stop()
                self._workers[i] = _Worker(i, self._context, self.length)
        for w in self._workers:
            if not w.ready:
                w.reply(START_TIMEOUT)
                w.ready = True
        return self._workers

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    def new(self) -> Accumulator:
        for attempt in range(3):
            workers = self.workers()
            try:
                for w in workers:
                    w.send("new", self.length)
                for w in workers:
                    w.reply()
            except AccumulatorBroken:
                # one was killed after the liveness check (SIGKILL is not reaped at once);
                # the others may hold an unread reply: replace them all (a rare path)
                for w in workers:
                    w.broken = True
                if attempt == 2:
                    raise
                continue
            self._current = PooledAccumulator(self, workers, self.length)
            return self._current
        raise AssertionError("unreachable")

    def restore(self, data: bytes, count: int) -> Accumulator:
        acc = self.new()
        assert isinstance(acc, PooledAccumulator)
        try:
            acc.count = int(acc.workers[0].call("restore", data, count))
        except AccumulatorBroken as exc:
            raise ValueError(f"the running sum blob cannot be restored: {exc}") from None
        return acc

    def is_current(self, acc: PooledAccumulator) -> bool:
        return self._current is acc

    def close(self) -> None:
        for w in self._workers:
            w.stop()
        self._current = None


class PooledAccumulator:
    """One round's sum, spread over the factory's workers (see the module docstring)."""

    def __init__(self, factory: ProcessSumFactory, workers: list[_Worker],
                 length: int | None) -> None:
        self.factory = factory
        self.workers = workers
        self.length = length
        self.count = 0
        self._staged: dict[int, int] = {}  # worker index -> updates staged there
        self._counts = [0] * len(workers)  # worker index -> updates in its share
        self._next = 0  # round-robin start, so that batches of one alternate workers
        self._learned: int | None = None  # vector length reported by the last staging

    def _check_current(self) -> None:
        if not self.factory.is_current(self):
            raise AccumulatorBroken("this sum was replaced by a newer one")

    def stage_many(self, sources: Sequence[UpdateSource]) -> list[UpdateRejected | None]:
        self._check_current()
        results: list[UpdateRejected | None] = [None] * len(sources)
        first = 0
        while self.length is None and first < len(sources):
            # The round's vector length is set by its first valid update: stage one at a
            # time until one passes, then tell the other (still empty) workers.
            results[first] = self._stage_on(0, sources[first])
            first += 1
        todo = list(range(first, len(sources)))
        pending: dict[int, list[int]] = {}  # worker index -> source indices, in send order
        for k, i in enumerate(todo):
            w = (self._next + k) % len(self.workers)
            self.workers[w].send("stage", _wire(sources[i]))
            pending.setdefault(w, []).append(i)
        self._next = (self._next + len(todo)) % len(self.workers)
        for w, indices in pending.items():
            for i in indices:
                results[i] = self._staged_reply(w, self.workers[w].reply())
        return results

    def _stage_on(self, w: int, source: UpdateSource) -> UpdateRejected | None:
        self.workers[w].send("stage", _wire(source))
        rejected = self._staged_reply(w, self.workers[w].reply())
        if rejected is None and self.length is None:
            self.length = self._learned
            for other in self.workers[1:]:
                other.call("new", self.length)
        return rejected

    def _staged_reply(self, w: int, answer: tuple[Any, ...]) -> UpdateRejected | None:
        if answer[0] == "rejected":
            return UpdateRejected(str(answer[1]), str(answer[2]))
        staged, self._learned = answer[1]
        self._staged[w] = int(staged)
        return None

    def commit_staged(self) -> None:
        self._check_current()
        self._broadcast("commit")
        for w, staged in self._staged.items():
            self._counts[w] += staged
            self.count += staged
        self._staged.clear()

    def discard_staged(self) -> None:
        self._check_current()
        self._broadcast("discard")
        self._staged.clear()

    def _broadcast(self, op: str) -> None:
        targets = [self.workers[w] for w in self._staged]
        for w in targets:
            w.send(op)
        for w in targets:
            w.reply()

    def to_bytes(self) -> bytes:
        self._check_current()
        holders = [w for w, n in enumerate(self._counts) if n]
        if not holders:
            raise ValueError("empty sum")
        target, others = self.workers[holders[0]], [self.workers[w] for w in holders[1:]]
        for w in others:  # the other shares serialise in parallel
            w.send("share")
        for w in others:
            target.call("absorb", w.reply()[1])  # one share in this process at a time
        total: bytes = target.call("share")
        return total


def _wire(source: UpdateSource) -> str | bytes:
    """A path travels as text (the worker reads the file), bytes as they are."""
    return str(source) if isinstance(source, Path) else source


def _unwire(source: str | bytes) -> UpdateSource:
    return Path(source) if isinstance(source, str) else source
