"""Immutable in-memory views of the gallery for one model version, and the swap's row I/O.

A frame must be scored against the gallery embeddings of its own model version, and
must keep them for the whole frame even if a swap drops that version's rows meanwhile.
``GallerySnapshot`` is that: the vectors of one version, loaded once, never mutated.

``GalleryRows`` talks to the gallery database (``edge.gallery.files``' schema) through its
own SQLite connection: it is used from the engine's watcher and the swap thread, and
``PRAGMA data_version`` on a separate connection tells when anyone else (the kiosk's
enrolment, the CLI in another process) has committed a change.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.gallery.files import GalleryError, decode_crop
from edge.gallery.match import EMBEDDING_DIM, Match, match


@dataclass(frozen=True, eq=False)
class GallerySnapshot:
    model_version: str  # the embedder version tag these vectors were computed with
    crop_ids: np.ndarray = field(repr=False)  # (n,) int64, ascending
    person_ids: np.ndarray = field(repr=False)  # (n,) int64
    vectors: np.ndarray = field(repr=False)  # (n, 128) float32, unit rows
    names: dict[int, str] = field(repr=False)

    def __len__(self) -> int:
        return len(self.crop_ids)

    def identify_many(self, probes: np.ndarray, threshold: float) -> list[Match]:
        """Best match per probe (probes must be unit vectors of ``model_version``)."""
        return match(probes, self.vectors, self.person_ids, self.names, threshold)


def empty_snapshot(model_version: str) -> GallerySnapshot:
    return GallerySnapshot(model_version, np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros((0, EMBEDDING_DIM), np.float32), {})


class GalleryRows:
    """Reads snapshots and writes one version's embedding rows (thread-safe)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot open gallery database {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits to the database."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def snapshot(self, model_version: str) -> GallerySnapshot:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.person_id, e.vector FROM embeddings e "
                "JOIN crops c ON c.id = e.crop_id WHERE e.model_version = ? ORDER BY c.id",
                (model_version,)).fetchall()
            names = dict(self._db.execute("SELECT id, name FROM people").fetchall())
        if not rows:
            return empty_snapshot(model_version)
        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32)
        return GallerySnapshot(model_version, np.array([r[0] for r in rows], np.int64),
                               np.array([r[1] for r in rows], np.int64),
                               vectors.reshape(len(rows), EMBEDDING_DIM).copy(), names)

    def crops(self) -> list[tuple[int, int]]:
        """(crop id, person id) of every stored crop, by id."""
        with self._lock:
            rows = self._db.execute("SELECT id, person_id FROM crops ORDER BY id").fetchall()
        return [(int(a), int(b)) for a, b in rows]

    def crop_images(self, crop_ids: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(crop_ids), 500):  # SQLite's bound-parameter limit
            chunk = crop_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, image FROM crops WHERE id IN ({marks})", chunk).fetchall()
            out.update({int(i): decode_crop(blob) for i, blob in rows})
        return out

    def missing(self, model_version: str) -> list[int]:
        """Crops with no embedding of ``model_version`` (e.g. enrolled with another model)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM crops WHERE id NOT IN "
                "(SELECT crop_id FROM embeddings WHERE model_version = ?) ORDER BY id",
                (model_version,)).fetchall()
        return [int(r[0]) for r in rows]

    def versions(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT model_version, COUNT(*) FROM embeddings "
                                    "GROUP BY model_version").fetchall()
        return {str(v): int(n) for v, n in rows}

    def write(self, model_version: str, crop_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Store one version's rows in one transaction (crops deleted meanwhile are skipped)."""
        rows = [(int(c), model_version, np.asarray(v, np.float32).tobytes())
                for c, v in zip(crop_ids, vectors, strict=True)]
        self._transaction(
            "INSERT OR REPLACE INTO embeddings(crop_id, model_version, vector) "
            "SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM crops WHERE id = ?1)", rows)

    def drop_other_versions(self, keep_version: str) -> None:
        self._transaction("DELETE FROM embeddings WHERE model_version != ?",
                          [(keep_version,)])

    def _transaction(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise GalleryError(f"gallery write failed ({self.path}): {exc}") from exc
