"""Aggregator state on disk: SQLite (WAL) for rounds, contributions, counters and devices,
plus the running encrypted sum as a blob file written by atomic rename.

Crash safety of an accepted update (the order is the point):

1. the new running sum is written to ``blobs/round-<r>-sum-<k>.bin`` (k = contribution
   count after this update) via tmp file + fsync + ``os.replace`` + fsync of the dir;
2. ONE SQLite transaction inserts the contribution row and points the round at that blob;
3. only then is the update acked; the previous sum blob is deleted afterwards.

A crash before (2) leaves the db pointing at the previous blob and the device un-acked
(it resends, nothing is double-counted); a crash after (2) leaves the update counted
(a resend is answered ``duplicate``, nothing is lost). Blobs no row points at are
garbage and are removed on open.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
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
    sum_blob TEXT,                   -- file name under blobs/ of the running / final sum
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

# Rejection log rows kept (counters are kept forever); bounds the db under a flood.
MAX_REJECTION_ROWS = 10_000


class StoreError(Exception):
    """The state directory is missing, not initialised, or cannot be written."""


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


class Store:
    """The aggregator's state directory: ``state.db`` + ``blobs/``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.blob_dir = self.state_dir / "blobs"
        if not self.state_dir.is_dir():
            raise StoreError(
                f"state directory {self.state_dir} does not exist: "
                "run `fedface-aggregator init` first"
            )
        self.blob_dir.mkdir(exist_ok=True)
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

    def remove_unreferenced_blobs(self) -> int:
        keep = {
            str(r[0])
            for r in self.db.execute("SELECT sum_blob FROM rounds WHERE sum_blob IS NOT NULL")
        }
        removed = 0
        for path in self.blob_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

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
    def record_contribution(
        self,
        round_no: int,
        device_id: str,
        msg_id: str,
        blob_sha256: str,
        seq: int,
        sum_blob: str,
        at: float,
    ) -> None:
        """Contribution row + round pointer in one transaction (see module docstring)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO contributions(round, device_id, msg_id, blob_sha256, seq, accepted_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (round_no, device_id, msg_id, blob_sha256, seq, at),
            )
            db.execute(
                "UPDATE rounds SET contributions=?, sum_blob=? WHERE round=?",
                (seq, sum_blob, round_no),
            )
            self._bump(db, "accepted")

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
    def _bump(db: sqlite3.Connection, name: str) -> None:
        db.execute(
            "INSERT INTO counters(name, value) VALUES (?, 1)"
            " ON CONFLICT(name) DO UPDATE SET value=value+1",
            (name,),
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
