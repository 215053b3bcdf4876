"""``serve``'s record of each box's last online status and of its stale last will
(the rules and the table: aggregator.state.presence), kept off the round's path.

The delivery thread hands each signature-checked status to ``observe``: a put on a
bounded queue, never a wait (a full queue drops the status, with a warning). A thread
of this recorder's own applies the rules and writes a changed record through its own
SQLite connection: one short write per change of a box's status (not per message: the
same status heard again writes nothing), which a commit of the worker waits for at
most. The thread starts with the first status and ends after ``idle_seconds`` without
one, holding nothing while idle. Whatever fails in it (a locked database, a full disk)
is logged and that status dropped (the box's next status writes again); nothing of it
reaches the worker or the delivery thread.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregator.state.presence import Heard, PresenceRecord, load_presence, observe, save_presence

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 10_000  # statuses waiting: a whole fleet reconnecting at once
DEFAULT_IDLE_SECONDS = 60.0
_POLL_SECONDS = 0.5  # how soon the thread sees close() or its idle time


class PresenceRecorder:
    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time,
                 max_pending: int = DEFAULT_MAX_PENDING,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS) -> None:
        self.db_path = Path(state_dir) / "state.db"
        self.clock = clock
        self.idle_seconds = idle_seconds
        self.dropped = 0  # statuses dropped on a full queue
        self._queue: queue.Queue[Heard] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._pending = 0  # queued or being handled
        self._thread: threading.Thread | None = None
        self._closed = False

    def observe(self, device: str, entry: dict[str, Any], retained: bool) -> None:
        """A box's status (``status_entry``), from the delivery thread: queued, never
        waited for."""
        heard = Heard(device, entry, retained, self.clock())
        with self._lock:
            if self._closed:
                return
            try:
                self._queue.put_nowait(heard)
            except queue.Full:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("device presence: %d status(es) dropped, the recorder is "
                                "behind (%d waiting)", self.dropped, self._queue.maxsize)
                return
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="device-presence",
                                                daemon=True)
                self._thread.start()

    def wait_settled(self, timeout: float) -> bool:
        """Block until every status observed so far is handled (tests, shutdown)."""
        with self._settled:
            return self._settled.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Take no more statuses; let the thread write what it has (bounded) and end."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # --- the recorder's thread -----------------------------------------------------------
    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        records: dict[str, PresenceRecord] = {}
        idle_since = time.monotonic()
        try:
            while True:
                try:
                    heard = self._queue.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty() and (
                                self._closed
                                or time.monotonic() - idle_since >= self.idle_seconds):
                            self._thread = None  # the next status starts a new one
                            return
                    continue
                try:
                    if db is None:
                        db = self._connect()
                        records = load_presence(db)
                    self._record(db, records, heard)
                except Exception:  # a status not recorded must not stop the others
                    log.exception("device presence of %s not recorded", heard.device)
                    if db is not None:  # opened again for the next status
                        db.close()
                        db = None
                finally:
                    idle_since = time.monotonic()
                    with self._lock:
                        self._pending -= 1
                        self._settled.notify_all()
        finally:
            if db is not None:
                db.close()

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: never create a database where the state directory has none
        db = sqlite3.connect(f"{self.db_path.resolve().as_uri()}?mode=rw", uri=True,
                             isolation_level=None, timeout=10.0, check_same_thread=False)
        # a presence lost to a power cut costs nothing: no fsync per write, the
        # round's commits (synchronous FULL, their own connection) are not slowed
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @staticmethod
    def _record(db: sqlite3.Connection, records: dict[str, PresenceRecord], heard: Heard) -> None:
        before = records.get(heard.device)
        after = observe(before, heard)
        if after is None:
            return
        save_presence(db, after)
        records[heard.device] = after
        if after.offline_since is not None and (before is None or before.offline_since is None):
            log.warning("%s went offline without a clean stop (its last will, from its "
                        "connect, came now); the last model it reported: %s",
                        heard.device, after.model)
