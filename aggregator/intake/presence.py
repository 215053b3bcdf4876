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

A broker that shuts down publishes every connected box's will before it drops serve's
own connection (Mosquitto does: measured, the wills came 50 ms before): a broker
restart looked like every box vanishing, a warning per box. So a will is said (a
warning per box, as before) only once ``will_hold_seconds`` passed with serve's link to
the broker up all along (``link``: connected, and its count of connects) and the box not
back on its own status; as soon as the link dropped the marks are taken back and one
line says the broker went away. Serve's session then gets those wills again (QoS 1: the
broker redelivers what serve had not acknowledged), which are not taken as new. The
boxes come back on their own status, as after any restart. The status
(``fedface-aggregator status``) shows a box offline at once.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aggregator.rounds.deadline import device_names
from aggregator.state.presence import Heard, PresenceRecord, load_presence, observe, save_presence

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 10_000  # statuses waiting: a whole fleet reconnecting at once
DEFAULT_IDLE_SECONDS = 60.0
# a broker's shutdown drops serve's link well within it, and a box whose link dropped is
# back within it (federation.transport.mqtt: reconnect_max_delay 30 s)
DEFAULT_WILL_HOLD_SECONDS = 45.0
_POLL_SECONDS = 0.5  # how soon the thread sees close() or its idle time


class PresenceRecorder:
    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time,
                 max_pending: int = DEFAULT_MAX_PENDING,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS,
                 link: Callable[[], tuple[bool, int]] | None = None,
                 will_hold_seconds: float = DEFAULT_WILL_HOLD_SECONDS) -> None:
        self.db_path = Path(state_dir) / "state.db"
        self.clock = clock
        self.idle_seconds = idle_seconds
        self.link = link  # (connected, connects) of serve's broker link; None: say at once
        self.will_hold_seconds = will_hold_seconds
        # wills recorded but not yet said: (device, offline_since, link then, heard when)
        self._wills: list[tuple[str, float, tuple[bool, int], float]] = []
        self.dropped = 0  # statuses dropped on a full queue
        self._queue: queue.Queue[Heard] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._pending = 0  # queued or being handled
        self._thread: threading.Thread | None = None
        self._closed = False
        self._storage_said = -1e9  # when a storage failure was last logged (monotonic)

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
                if self._wills:
                    try:
                        if db is None:
                            db = self._connect()
                            records = load_presence(db)
                        self._say_wills(db, records, at_once=self._closed)
                    except Exception:  # the records stand; only the saying is lost
                        log.exception("device presence: last wills not said")
                        self._wills = []
                try:
                    heard = self._queue.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty() and not self._wills and (
                                self._closed
                                or time.monotonic() - idle_since >= self.idle_seconds):
                            self._thread = None  # the next status starts a new one
                            return
                    continue
                try:
                    if db is None:
                        db = self._connect()
                        records = load_presence(db)
                    after = self._record(db, records, heard)
                    if after is not None and after.offline_since == heard.at:
                        self._will_heard(db, records, heard)
                except (OSError, sqlite3.Error) as exc:  # a full disk: a line a minute
                    if time.monotonic() - self._storage_said > 60:
                        self._storage_said = time.monotonic()
                        log.error("device presence of %s not recorded (%s); its next "
                                  "status records it", heard.device, exc)
                    if db is not None:  # opened again for the next status
                        db.close()
                        db = None
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
    def _record(db: sqlite3.Connection, records: dict[str, PresenceRecord],
                heard: Heard) -> PresenceRecord | None:
        """Apply ``heard``; the record it changed to, or None."""
        before = records.get(heard.device)
        after = observe(before, heard)
        if after is None:
            return None
        save_presence(db, after)
        records[heard.device] = after
        became_offline = after.offline_since is not None and (
            before is None or before.offline_since is None)
        return after if became_offline else None

    def _will_heard(self, db: sqlite3.Connection, records: dict[str, PresenceRecord],
                    heard: Heard) -> None:
        if self.link is None:
            self._wills.append((heard.device, heard.at, (True, 0), time.monotonic()))
            self._say_wills(db, records, at_once=True)
        else:
            self._wills.append((heard.device, heard.at, self.link(), time.monotonic()))

    def _say_wills(self, db: sqlite3.Connection, records: dict[str, PresenceRecord],
                   at_once: bool = False) -> None:
        """Say the wills held long enough, or take them back if serve's link dropped."""
        now = time.monotonic()
        link_now = (True, 0) if self.link is None else self.link()
        due: list[tuple[str, float, tuple[bool, int], float]] = []
        held: list[tuple[str, float, tuple[bool, int], float]] = []
        for w in self._wills:
            # serve's link dropped since the will: decided now, not after the hold (a
            # broker restart was said 45 s late, and the status meanwhile said offline)
            settled = at_once or now - w[3] >= self.will_hold_seconds or w[2] != link_now
            (due if settled else held).append(w)
        if not due:
            return
        self._wills = held
        # the link up all along: the same connect count then and now, and up now
        kept = [w for w in due if w[2] == link_now and link_now[0]]
        back = [w for w in due if not (w[2] == link_now and link_now[0])]
        for device, since, _, _ in back:
            record = records.get(device)
            if record is not None and record.offline_since == since:  # nothing newer came
                # will_at stays: the same will again, before the box's next status, is
                # the broker's redelivery of it (observe)
                records[device] = replace(record, offline_since=None)
                save_presence(db, records[device])
        if back:
            log.info("the broker went away: the last will(s) of %s it published as it went "
                     "are not taken as those boxes going offline",
                     device_names(w[0] for w in back))
        # back on its own status meanwhile: after a broker restart, the wills Mosquitto
        # queued for serve's session reached it after its reconnect, and every box was
        # said gone 3 s later while they reconnected (helper-38)
        returned = [w[0] for w in kept if (records.get(w[0]) is None
                                           or records[w[0]].offline_since != w[1])]
        if returned:
            log.info("%s came back within %.0f s of its last will: not taken as going "
                     "offline", device_names(returned), self.will_hold_seconds)
        for device, _, _, _ in kept:
            if device in returned:
                continue
            log.warning("%s went offline without a clean stop (its last will, from its "
                        "connect, came %.0f s ago); the last model it reported: %s", device,
                        self.will_hold_seconds,
                        records[device].model if device in records else "unknown")


