"""Aggregator state on disk: SQLite (WAL) for rounds, contributions, counters and devices;
the accepted update blobs of the open round under ``accepted/round-<r>/``; the result
(summed) blob of each closed round under ``blobs/``.

Crash safety of accepted updates (the order is the point). Updates are stored in
batches, one group commit per batch (``accept_updates``):

1. every reassembled update blob of the batch (already on disk in the spool) is fsync'ed
   (concurrently: the file system merges the journal commits of concurrent fsyncs, measured
   16 files in 4 ms instead of 40 ms one after the other) and renamed into
   ``accepted/round-<r>/<seq>-<device>.bin``, then the directory is fsync'ed once;
2. ONE SQLite transaction inserts the batch's contribution rows naming those files;
3. only then are the updates added to the in-memory sum and acked.

A crash before (2) leaves orphan files (removed on open) and the devices un-acked (they
resend, nothing is double-counted); a crash after (2) leaves the whole batch counted: on
restart the open round's sum is rebuilt by re-adding its accepted blobs (a resend is
answered ``duplicate``, nothing is lost). An ack is never sent before the commit of its
batch returned, so nothing acked can be lost. So a batch of accepted updates costs a
few concurrent fsyncs and ONE commit, not a re-serialisation of the whole running sum;
the sum is serialised once, when the round closes (``write_blob`` of the result, then
the round row points at it). Accepted blobs of a round are deleted once its result is
published (or the round failed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    added_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    base_model TEXT NOT NULL,
    result_model TEXT,
    status TEXT NOT NULL,            -- open | closed | published | failed
    opened_at REAL NOT NULL,
    deadline REAL NOT NULL,
    quorum INTEGER NOT NULL,
    extensions INTEGER NOT NULL DEFAULT 0,
    announce TEXT NOT NULL,          -- the announce payload (JSON), republished on restart
    contributions INTEGER NOT NULL DEFAULT 0,
    sum_blob TEXT,                   -- file name under blobs/ of the result (the final sum)
    closed_at REAL,
    close_reason TEXT,
    result_sha256 TEXT,
    result_size INTEGER,
    result_chunks INTEGER,
    result_msg TEXT
);
CREATE TABLE IF NOT EXISTS contributions (
    round INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    blob_sha256 TEXT NOT NULL,
    seq INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    blob TEXT,                       -- file under accepted/ (NULL: added to a legacy sum_blob)
    PRIMARY KEY (round, device_id)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    round INTEGER,
    device_id TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

# fsyncs of one group commit run side by side (they release the GIL and wait on the disk).
_FSYNC_THREADS = 8
# Rejection log rows kept (counters are kept forever); bounds the db under a flood.
MAX_REJECTION_ROWS = 10_000
_ROUND_DIR = re.compile(r"^round-(\d+)$")


class StoreError(Exception):
    """The state directory is missing, not initialised, or cannot be written."""


@dataclass(frozen=True)
class AcceptedUpdate:
    """One update of a group commit: its spooled file (moved into place) or its bytes."""

    device_id: str
    msg_id: str
    blob_sha256: str
    spooled: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class RoundRow:
    round: int
    base_model: str
    result_model: str | None
    status: str
    opened_at: float
    deadline: float
    quorum: int
    extensions: int
    announce: dict[str, Any]
    contributions: int
    sum_blob: str | None
    closed_at: float | None
    close_reason: str | None
    result_sha256: str | None
    result_size: int | None
    result_chunks: int | None
    result_msg: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """tmp + fsync + rename + fsync(dir): after return the file is whole on disk, and a
    crash at any point leaves either the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sync_all(paths: list[Path]) -> None:
    """fsync every file, side by side; the first error is raised after all finished."""
    if len(paths) <= 1:
        for path in paths:
            fsync_file(path)
        return
    with ThreadPoolExecutor(min(_FSYNC_THREADS, len(paths)), thread_name_prefix="fsync") as ex:
        for future in [ex.submit(fsync_file, p) for p in paths]:
            future.result()


def _write_synced(path: Path, data: bytes) -> None:
    """Write + fsync a new file (its directory is fsync'ed once for the whole batch)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """The aggregator's state directory: ``state.db`` + ``blobs/`` + ``accepted/``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.blob_dir = self.state_dir / "blobs"
        self.accepted_dir = self.state_dir / "accepted"
        if not self.state_dir.is_dir():
            raise StoreError(
                f"state directory {self.state_dir} does not exist: "
                "run `fedface-aggregator init` first"
            )
        self.blob_dir.mkdir(exist_ok=True)
        self.accepted_dir.mkdir(exist_ok=True)
        # check_same_thread=False: the service touches the store from the transport
        # thread and the deadline ticker, always under its own lock.
        self.db = sqlite3.connect(
            self.state_dir / "state.db", isolation_level=None, check_same_thread=False
        )
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed contribution must survive power loss, since it is acked next.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        columns = {str(r[1]) for r in self.db.execute("PRAGMA table_info(contributions)")}
        if "blob" not in columns:  # a state dir of a version that kept a running sum blob
            self.db.execute("ALTER TABLE contributions ADD COLUMN blob TEXT")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- meta -------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- blobs ------------------------------------------------------------------------
    def blob_path(self, name: str) -> Path:
        return self.blob_dir / name

    def write_blob(self, name: str, data: bytes) -> None:
        write_atomic(self.blob_dir / name, data)

    def read_blob(self, name: str) -> bytes:
        return (self.blob_dir / name).read_bytes()

    def remove_stale_files(self) -> int:
        """Remove what no committed row points at: result blobs of a write interrupted
        before its commit, accepted blobs renamed into place before a crash prevented
        their commit, and accepted blobs of rounds already published or failed."""
        keep = {
            str(r[0])
            for r in self.db.execute("SELECT sum_blob FROM rounds WHERE sum_blob IS NOT NULL")
        }
        removed = 0
        for path in self.blob_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        live = {
            int(r[0]) for r in self.db.execute(
                "SELECT round FROM rounds WHERE status IN ('open', 'closed')")
        }
        for path in self.accepted_dir.iterdir():
            m = _ROUND_DIR.match(path.name)
            if m is None or int(m.group(1)) not in live:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
                removed += 1
                continue
            wanted = {Path(name).name for _, name in self.accepted_blobs(int(m.group(1)))}
            for f in path.iterdir():
                if f.name not in wanted:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed

    # --- accepted update blobs ----------------------------------------------------------
    def accepted_path(self, name: str) -> Path:
        return self.accepted_dir / name

    def accepted_blobs(self, round_no: int) -> list[tuple[str, str]]:
        """(device, file name) of the round's stored accepted updates, in acceptance order."""
        rows = self.db.execute(
            "SELECT device_id, blob FROM contributions WHERE round=? AND blob IS NOT NULL"
            " ORDER BY seq", (round_no,))
        return [(str(r[0]), str(r[1])) for r in rows]

    def legacy_contributions(self, round_no: int) -> int:
        """Contributions held only in a running sum blob written by an older version."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM contributions WHERE round=? AND blob IS NULL", (round_no,)
        ).fetchone()
        return int(row[0])

    def drop_accepted(self, round_no: int) -> None:
        """The round's accepted blobs are no longer needed (result published, or failed)."""
        shutil.rmtree(self.accepted_dir / f"round-{round_no}", ignore_errors=True)

    # --- rounds -----------------------------------------------------------------------
    def _round(self, row: sqlite3.Row | None) -> RoundRow | None:
        if row is None:
            return None
        data = dict(row)
        data["announce"] = json.loads(data["announce"])
        return RoundRow(**data)

    def get_round(self, round_no: int) -> RoundRow | None:
        return self._round(
            self.db.execute("SELECT * FROM rounds WHERE round=?", (round_no,)).fetchone()
        )

    def latest_round(self) -> RoundRow | None:
        return self._round(
            self.db.execute("SELECT * FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
        )

    def latest_published(self) -> RoundRow | None:
        return self._round(
            self.db.execute(
                "SELECT * FROM rounds WHERE status='published' ORDER BY round DESC LIMIT 1"
            ).fetchone()
        )

    def list_rounds(self) -> list[RoundRow]:
        rows = self.db.execute("SELECT * FROM rounds ORDER BY round").fetchall()
        return [r for r in (self._round(x) for x in rows) if r is not None]

    def insert_round(
        self,
        round_no: int,
        base_model: str,
        opened_at: float,
        deadline: float,
        quorum: int,
        announce: dict[str, Any],
    ) -> None:
        self.db.execute(
            "INSERT INTO rounds(round, base_model, status, opened_at, deadline, quorum, announce)"
            " VALUES (?, ?, 'open', ?, ?, ?, ?)",
            (
                round_no,
                base_model,
                opened_at,
                deadline,
                quorum,
                json.dumps(announce, sort_keys=True),
            ),
        )

    def update_round(self, round_no: int, **fields: Any) -> None:
        if "announce" in fields:
            fields["announce"] = json.dumps(fields["announce"], sort_keys=True)
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE rounds SET {cols} WHERE round=?", (*fields.values(), round_no))

    # --- contributions ----------------------------------------------------------------
    def accept_update(
        self,
        round_no: int,
        device_id: str,
        msg_id: str,
        blob_sha256: str,
        seq: int,
        at: float,
        *,
        spooled: Path | None = None,
        data: bytes | None = None,
    ) -> str:
        """One update's group commit (see ``accept_updates``); returns its file name."""
        item = AcceptedUpdate(device_id, msg_id, blob_sha256, spooled, data)
        return self.accept_updates(round_no, [item], seq, at)[0]

    def accept_updates(
        self, round_no: int, items: Sequence[AcceptedUpdate], first_seq: int, at: float
    ) -> list[str]:
        """Make a batch of accepted updates durable, then count them all in ONE commit
        (see the module docstring). Item i gets sequence number ``first_seq + i``.

        A spooled file (same file system) is moved into place; otherwise the bytes are
        written. Returns the stored files' names. On any error (disk full...) nothing of
        the batch is counted and none of its files is left behind.
        """
        if not items:
            return []
        round_dir = self.accepted_dir / f"round-{round_no}"
        names = [f"round-{round_no}/{first_seq + i:05d}-{it.device_id}.bin"
                 for i, it in enumerate(items)]
        placed: list[Path] = []
        try:
            if not round_dir.is_dir():
                round_dir.mkdir()
                fsync_dir(self.accepted_dir)
            _sync_all([it.spooled for it in items if it.spooled is not None])
            for it, name in zip(items, names, strict=True):
                path = self.accepted_dir / name
                if it.spooled is not None:
                    os.replace(it.spooled, path)
                elif it.data is not None:
                    _write_synced(path, it.data)
                else:
                    raise ValueError("accept_updates needs each update's spooled file or data")
                placed.append(path)
            fsync_dir(round_dir)
            last = first_seq + len(items) - 1
            with self.transaction() as db:
                db.executemany(
                    "INSERT INTO contributions(round, device_id, msg_id, blob_sha256, seq,"
                    " accepted_at, blob) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(round_no, it.device_id, it.msg_id, it.blob_sha256, first_seq + i, at, name)
                     for i, (it, name) in enumerate(zip(items, names, strict=True))],
                )
                db.execute("UPDATE rounds SET contributions=? WHERE round=?", (last, round_no))
                self._bump(db, "accepted", len(items))
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        return names

    def contribution(self, round_no: int, device_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM contributions WHERE round=? AND device_id=?", (round_no, device_id)
        ).fetchone()
        return row

    def contributors(self, round_no: int) -> list[str]:
        rows = self.db.execute(
            "SELECT device_id FROM contributions WHERE round=? ORDER BY seq", (round_no,)
        )
        return [str(r[0]) for r in rows]

    def device_contributed_msg(self, device_id: str, msg_id: str) -> int | None:
        row = self.db.execute(
            "SELECT round FROM contributions WHERE device_id=? AND msg_id=?", (device_id, msg_id)
        ).fetchone()
        return None if row is None else int(row[0])

    # --- counters ---------------------------------------------------------------------
    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
        db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
            (name, by),
        )

    def record_rejection(
        self, round_no: int | None, device_id: str | None, reason: str, detail: str
    ) -> None:
        with self.transaction() as db:
            self._bump(db, f"rejected.{reason}")
            db.execute(
                "INSERT INTO rejections(at, round, device_id, reason, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (time.time(), round_no, device_id, reason, detail[:500]),
            )
            db.execute(
                "DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?",
                (MAX_REJECTION_ROWS,),
            )

    def counters(self) -> dict[str, int]:
        return {
            str(r[0]): int(r[1])
            for r in self.db.execute("SELECT name, value FROM counters ORDER BY name")
        }

    def recent_rejections(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM rejections ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]
