"""The aggregator's SQLite tables (``state.db``, WAL): rounds, contributions, counters,
rejections, meta (and the devices table that aggregator.state.registry reads, and the
presence table of aggregator.state.presence). Opening a StateDB opens the whole state
directory; the files beside the database are handled by aggregator.state.files, the
group commit of accepted updates by aggregator.state.store."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.files import PRIVATE_DIR, make_dirs

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
    status TEXT NOT NULL,            -- open | closed | published | failed | poisoned
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
    updates INTEGER NOT NULL DEFAULT 1,  -- box updates it sums (a region's partial: many)
    PRIMARY KEY (round, device_id)
);
-- each box's X25519 exchange key, signed by its device key: the key holder seals key
-- epochs to it (federation.crypto.epochs)
CREATE TABLE IF NOT EXISTS exchange_keys (
    device_id TEXT PRIMARY KEY,
    exchange_key TEXT NOT NULL,
    signature TEXT NOT NULL
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
-- each box's verdict on a published round, from its signed status (aggregator.state.verdicts)
CREATE TABLE IF NOT EXISTS round_verdicts (
    round INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,           -- applied | refused | rejected
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (round, device_id)
);
-- rounds found poisoned by the boxes' refusals (aggregator.rounds.poison)
CREATE TABLE IF NOT EXISTS poisoned_rounds (
    round INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    why TEXT NOT NULL,               -- the rule that held, or the poisoned round it built on
    recovered_to TEXT NOT NULL       -- the good model the next round builds on
);
-- each box's last online status as serve heard it, and when its stale will came
-- (aggregator.state.presence); written by serve's presence thread on its own connection
CREATE TABLE IF NOT EXISTS device_presence (
    device_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    reported_at REAL NOT NULL,       -- the online status's own time (the box's clock)
    heard_at REAL NOT NULL,          -- when serve heard it (the aggregator's clock)
    status TEXT NOT NULL,            -- JSON: its last_swap, verdicts; stopped_at (clean stop)
    offline_since REAL,              -- when serve heard a will older than it (NULL: none)
    will_at REAL                     -- that will's own time (the box's clock)
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


class StateDB:
    """The state directory opened: ``state.db`` (its tables below), ``blobs/``, ``accepted/``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.blob_dir = self.state_dir / "blobs"
        self.accepted_dir = self.state_dir / "accepted"
        if not self.state_dir.is_dir():
            raise StoreError(
                f"state directory {self.state_dir} does not exist: "
                "run `fedface-aggregator init` first"
            )
        make_dirs(self.blob_dir, PRIVATE_DIR)
        make_dirs(self.accepted_dir, PRIVATE_DIR)
        # SQLite creates the database 0666 less the umask (its -wal and -shm files take
        # the database's mode): created 0600 first, whatever the umask.
        os.close(os.open(self.state_dir / "state.db", os.O_WRONLY | os.O_CREAT, 0o600))
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
        if "updates" not in columns:  # before regions' partials were counted as updates
            self.db.execute("ALTER TABLE contributions ADD COLUMN updates INTEGER NOT NULL "
                            "DEFAULT 1")

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
    def contribution(self, round_no: int, device_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM contributions WHERE round=? AND device_id=?", (round_no, device_id)
        ).fetchone()
        return row

    def updates_of(self, round_no: int) -> int:
        """Box updates in the round's accepted contributions (a region's partial counts
        as the updates it sums, as the quorum counts it)."""
        row = self.db.execute("SELECT COALESCE(SUM(updates), 0) FROM contributions "
                              "WHERE round=?", (round_no,)).fetchone()
        return int(row[0])

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


def storage_failure(exc: OSError | sqlite3.Error) -> str:
    """What a failed write means, for the operator's log: the disk is full, or what else."""
    if isinstance(exc, OSError):
        return "disk full" if exc.errno == errno.ENOSPC else f"I/O error: {exc.strerror or exc}"
    text = str(exc)
    return "disk full" if "full" in text else f"database error: {text}"
