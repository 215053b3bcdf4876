"""The box's enrolment gallery: people, their aligned face crops, and embeddings.

Stored in one SQLite file (WAL, so the kiosk can read while the CLI enrols) in the box's
data directory (``edge.gallery.files``: the schema, the private directory and file, the
crops' encoding). Crops are kept as lossless PNG so a new model can re-embed them
(:meth:`Gallery.reembed`, used by the hot swap). Every embedding is tagged with the model
version that produced it, and :meth:`Gallery.identify` only ever compares a probe with
embeddings of the probe's own version: vectors of two model versions live in different
spaces and their cosine means nothing.

The rule that names a face and its threshold are in ``edge.gallery.match``. Face data is
personal data: the data directory is created 0700 and the database 0600.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from edge.gallery.files import (
    DB_FILENAME,
    GalleryError,
    data_dir_hint,
    decode_crop,
    encode_crop,
    erase_deleted,
    open_database,
)
from edge.gallery.holdout import is_calibration_person
from edge.gallery.match import EMBEDDING_DIM, Match, match, normalised
from edge.gallery.names import capitals_twin, check_name, stored_form

log = logging.getLogger(__name__)

# DB_FILENAME and GalleryError are named here too: the box assembly, the kiosk and the
# tests take them from the store.
__all__ = ["DB_FILENAME", "CropEmbedder", "Gallery", "GalleryError",
           "ModelVersionMismatchError", "Person", "StoredCrop", "UnknownPersonError"]


class UnknownPersonError(GalleryError):
    pass


class ModelVersionMismatchError(GalleryError):
    """The gallery holds no embeddings of the probe's model version."""


class CropEmbedder(Protocol):
    """What :meth:`Gallery.reembed` needs: edge.vision.embed.Embedder fits."""

    @property
    def version(self) -> str: ...

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    created: float
    crops: int
    embeddings: dict[str, int]  # model version -> count


@dataclass(frozen=True)
class StoredCrop:
    id: int
    person_id: int
    image: np.ndarray


class EnrolledCrops(NamedTuple):
    person_id: int
    crop_ids: list[int]  # one per crop given: the new row's, or the stored same crop's
    new: list[bool]  # False: the person had this crop already, nothing was stored


@dataclass
class _Matrix:
    vectors: np.ndarray  # (n, 128) float32
    person_ids: np.ndarray  # (n,) int64
    names: dict[int, str]
    other_versions: dict[str, int]  # embeddings of other model versions (never compared)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    try:
        return normalised(vectors)
    except ValueError as exc:
        raise GalleryError(str(exc)) from None


class Gallery:
    """Enrolment store of one box. Thread-safe; open with :meth:`open`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = threading.RLock()
        self._matrices: dict[str, _Matrix] = {}
        self._warned_versions: set[str] = set()
        self.on_removal: list[Callable[[Gallery], object]] = []  # derived data goes too

    @classmethod
    def open(cls, data_dir: Path) -> Gallery:
        db, path = open_database(data_dir)
        log.debug("gallery opened at %s", path)
        return cls(db, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed whole or rolled back, with a
        GalleryError naming ``what`` failed; cached match matrices dropped after it."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise GalleryError(f"{what} failed ({self.path}): {exc}",
                                   hint=data_dir_hint(self.path.parent, exc)) from exc
            finally:
                self._matrices.clear()

    def _write(self, sql_and_args: Sequence[tuple[str, tuple[object, ...]]]) -> list[int]:
        """Run statements in one transaction; return lastrowid of each."""
        with self._transaction("gallery write") as db:
            return [int(db.execute(sql, args).lastrowid or 0) for sql, args in sql_and_args]

    def read_rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """A read query under the store's lock (for ``edge.gallery.subjects``)."""
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def write_rows(self, sql_and_args: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        """Statements in one transaction (for ``edge.gallery.subjects``)."""
        self._write(sql_and_args)
        if any(sql.startswith(("DELETE FROM people", "DELETE FROM crops"))
               for sql, _ in sql_and_args):
            self.erase_deleted()

    def erase_deleted(self) -> None:
        with self._lock:
            erase_deleted(self._db)
        for hook in self.on_removal:
            hook(self)

    # --- enrolment ---------------------------------------------------------------------

    def enroll(self, name: str, crops: Sequence[np.ndarray], embeddings: np.ndarray,
               model_version: str, sources: Sequence[str | None] | None = None) -> int:
        """Add crops (and their embeddings) to ``name``, creating the person; return id."""
        return self.enroll_crops(name, crops, embeddings, model_version, sources).person_id

    def enroll_crops(self, name: str, crops: Sequence[np.ndarray], embeddings: np.ndarray,
                     model_version: str, sources: Sequence[str | None] | None = None
                     ) -> EnrolledCrops:
        """:meth:`enroll`, with the crops' ids. A crop the person has already (the same
        photo aligns to the same bytes) is not stored again: its stored id is given and
        ``new`` says so. Callers check ``crop_digests`` first to say so early; this check
        is in the write transaction, so two enrolments at once cannot both store a photo
        (they did: helper-47's two parallel `enroll` runs gave every person 80 crops)."""
        name = check_name(name)  # every way in: kiosk, CLI, anything later (empty too)
        vectors = _normalised(embeddings)
        if len(crops) != len(vectors):
            raise GalleryError(f"{len(crops)} crops but {len(vectors)} embeddings")
        sources = list(sources) if sources is not None else [None] * len(crops)
        twin = self.read_rows("SELECT name FROM people WHERE name = ? COLLATE NOCASE AND "
                              "name != ?", (name, name))
        if twin:
            raise capitals_twin(str(twin[0][0]), name)
        blobs = [encode_crop(np.asarray(c)) for c in crops]
        now = time.time()
        crop_ids: list[int] = []
        new: list[bool] = []
        with self._transaction(f"enrolling {name!r}") as db:
            db.execute("INSERT OR IGNORE INTO people(name, created) VALUES (?, ?)", (name, now))
            (person_id,) = db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
            held = {hashlib.sha256(bytes(image)).hexdigest(): int(crop_id) for crop_id, image
                    in db.execute("SELECT id, image FROM crops WHERE person_id = ?",
                                  (person_id,))}
            for blob, vector, source in zip(blobs, vectors, sources, strict=True):
                digest = hashlib.sha256(blob).hexdigest()
                if digest in held:
                    crop_ids.append(held[digest])
                    new.append(False)
                    continue
                cur = db.execute(
                    "INSERT INTO crops(person_id, image, source, created) VALUES (?,?,?,?)",
                    (person_id, blob, source, now))
                held[digest] = int(cur.lastrowid or 0)
                crop_ids.append(held[digest])
                new.append(True)
                db.execute(
                    "INSERT INTO embeddings(crop_id, model_version, vector) VALUES (?,?,?)",
                    (cur.lastrowid, model_version, vector.tobytes()))
        log.info("enrolled %d crop(s) for %s (model %s)", sum(new), name, model_version)
        return EnrolledCrops(int(person_id), crop_ids, new)

    def crop_digests(self, name: str) -> set[str]:
        """SHA-256 of each stored crop of ``name`` (empty: not enrolled): the same photo
        enrolled again aligns to the same crop, byte for byte."""
        with self._lock:
            rows = self._db.execute("SELECT c.image FROM crops c JOIN people p ON "
                                    "p.id = c.person_id WHERE p.name = ?",
                                    (stored_form(name),)).fetchall()
        return {hashlib.sha256(bytes(r[0])).hexdigest() for r in rows}

    def remove_person(self, name: str) -> int:
        """Delete a person with their crops and embeddings; return the crops removed."""
        with self._lock:
            row = self._db.execute("SELECT id FROM people WHERE name = ?",
                                   (stored_form(name),)).fetchone()
            if row is None:
                raise UnknownPersonError(f"no person named {name!r} in the gallery",
                                         hint="see the names with `fedface-edge people list`")
            (count,) = self._db.execute("SELECT COUNT(*) FROM crops WHERE person_id = ?",
                                        row).fetchone()
            # ON DELETE CASCADE removes the crops, and through them the embeddings
            self._write([("DELETE FROM people WHERE id = ?", (row[0],))])
        self.erase_deleted()
        log.info("removed %s (%d crops)", name, count)
        return int(count)

    # --- reading -----------------------------------------------------------------------

    def people(self) -> list[Person]:
        with self._lock:
            rows = self._db.execute(
                "SELECT p.id, p.name, p.created, COUNT(c.id) FROM people p "
                "LEFT JOIN crops c ON c.person_id = p.id GROUP BY p.id ORDER BY p.name"
            ).fetchall()
            versions = self._db.execute(
                "SELECT c.person_id, e.model_version, COUNT(*) FROM embeddings e "
                "JOIN crops c ON c.id = e.crop_id GROUP BY c.person_id, e.model_version"
            ).fetchall()
        per_person: dict[int, dict[str, int]] = {}
        for person_id, version, count in versions:
            per_person.setdefault(person_id, {})[version] = count
        return [Person(pid, name, created, n, per_person.get(pid, {}))
                for pid, name, created, n in rows]

    def model_versions(self) -> dict[str, int]:
        """Model version -> number of stored embeddings."""
        with self._lock:
            rows = self._db.execute(
                "SELECT model_version, COUNT(*) FROM embeddings GROUP BY model_version"
            ).fetchall()
        return {version: int(count) for version, count in rows}

    def count_rows(self) -> dict[str, int]:
        with self._lock:
            return {table: int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                    for table in ("people", "crops", "embeddings")}

    def crops_by_person(self) -> dict[str, list[np.ndarray]]:
        """Every stored enrolment crop, grouped by person name (the trainer's input)."""
        return self._crops_by_person(lambda person_id: True)

    def federated_training_crops(self) -> dict[str, list[np.ndarray]]:
        """The crops a federated round trains on: every person's but the calibration
        people's (edge.gallery.holdout), grouped by person name."""
        return self._crops_by_person(lambda person_id: not is_calibration_person(person_id))

    def _crops_by_person(self, keep: Callable[[int], bool]) -> dict[str, list[np.ndarray]]:
        names = {p.id: p.name for p in self.people()}
        out: dict[str, list[np.ndarray]] = {}
        for crop in self.iter_crops():
            if keep(crop.person_id):
                out.setdefault(names[crop.person_id], []).append(crop.image)
        return out

    def person_crop(self, person_id: int) -> np.ndarray | None:
        """A person's first stored crop (the kiosk's People thumbnail), None if none."""
        with self._lock:
            row = self._db.execute("SELECT image FROM crops WHERE person_id = ? ORDER BY id "
                                   "LIMIT 1", (person_id,)).fetchone()
        return None if row is None else decode_crop(row[0])

    def iter_crops(self) -> Iterator[StoredCrop]:
        with self._lock:
            rows = self._db.execute("SELECT id, person_id, image FROM crops ORDER BY id").fetchall()
        for crop_id, person_id, blob in rows:
            yield StoredCrop(crop_id, person_id, decode_crop(blob))

    # --- identification ----------------------------------------------------------------

    def _matrix(self, model_version: str) -> _Matrix:
        with self._lock:
            cached = self._matrices.get(model_version)
            if cached is not None:
                return cached
            rows = self._db.execute(
                "SELECT c.person_id, e.vector FROM embeddings e JOIN crops c ON c.id = e.crop_id "
                "WHERE e.model_version = ? ORDER BY c.id", (model_version,)
            ).fetchall()
            names = dict(self._db.execute("SELECT id, name FROM people").fetchall())
            if rows:
                vectors = np.stack([np.frombuffer(v, dtype=np.float32) for _, v in rows])
            else:
                vectors = np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            others = {v: n for v, n in self.model_versions().items() if v != model_version}
            matrix = _Matrix(vectors, np.array([p for p, _ in rows], dtype=np.int64), names,
                             others)
            self._matrices[model_version] = matrix
            return matrix

    def _check_version(self, model_version: str, matrix: _Matrix) -> None:
        others = matrix.other_versions
        if not others:
            return
        if len(matrix.vectors) == 0:
            raise ModelVersionMismatchError(
                f"the gallery has no embeddings of model {model_version!r} (it has "
                + ", ".join(f"{n} of {v!r}" for v, n in sorted(others.items()))
                + "); embeddings of different models are never compared",
                hint="re-embed the stored crops with the current model (Gallery.reembed)",
            )
        if model_version not in self._warned_versions:
            self._warned_versions.add(model_version)
            log.warning("gallery: ignoring %d embedding(s) of other model versions %s",
                        sum(others.values()), sorted(others))

    def identify_many(self, embeddings: np.ndarray, model_version: str,
                      threshold: float) -> list[Match]:
        """1:N search of each probe against the gallery embeddings of ``model_version``."""
        probes = _normalised(embeddings)
        matrix = self._matrix(model_version)
        self._check_version(model_version, matrix)
        if len(matrix.vectors) == 0:
            return [Match(None, 0.0, None) for _ in probes]
        return match(probes, matrix.vectors, matrix.person_ids, matrix.names, threshold)

    def person_vectors(self, name: str, model_version: str) -> np.ndarray:
        """The unit embeddings of ``model_version`` of ``name``'s photos (none: empty)."""
        matrix = self._matrix(model_version)
        ids = [person_id for person_id, n in matrix.names.items() if n == name]
        return matrix.vectors[np.isin(matrix.person_ids, ids)]

    def identify(self, embedding: np.ndarray, model_version: str, threshold: float) -> Match:
        return self.identify_many(np.asarray(embedding)[None, :] if np.ndim(embedding) == 1
                                  else embedding, model_version, threshold)[0]

    # --- model change ------------------------------------------------------------------

    def reembed(self, embedder: CropEmbedder, drop_old: bool = True, batch: int = 32) -> int:
        """Embed every stored crop with ``embedder`` and store them under its version.

        The new version's rows are written first, in one transaction; then (if
        ``drop_old``) the rows of every other version are dropped. A hot swap passes
        ``drop_old=False`` and calls :meth:`drop_other_versions` once the new engine is live.
        """
        version = embedder.version
        crops = list(self.iter_crops())
        rows: list[tuple[str, tuple[object, ...]]] = []
        for start in range(0, len(crops), batch):
            chunk = crops[start:start + batch]
            vectors = _normalised(embedder.embed([c.image for c in chunk]))
            rows += [("INSERT OR REPLACE INTO embeddings(crop_id, model_version, vector) "
                      "VALUES (?,?,?)", (c.id, version, v.tobytes()))
                     for c, v in zip(chunk, vectors, strict=True)]
        self._write(rows)
        log.info("re-embedded %d crop(s) with model %s", len(crops), version)
        if drop_old:
            self.drop_other_versions(version)
        return len(crops)

    def drop_other_versions(self, keep_version: str) -> int:
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM embeddings WHERE model_version != ?", (keep_version,)
            ).fetchone()
            self._write([("DELETE FROM embeddings WHERE model_version != ?", (keep_version,))])
        self._warned_versions.clear()
        return int(count)
