"""The gallery on disk: its private data directory, the SQLite file and the crops in it.

Face data is personal data, so everything here is private from the first byte: the
data directory is created 0700 (an existing one open to others is warned about, not
changed: it may be a shared folder), and the database (with its -wal/-shm files) is
created 0600 under a tight umask. The schema is here too, with the PNG encoding of the
aligned crops it stores (lossless, so a new model can re-embed them). ``GalleryError``
lives here because every one of these raises it; ``edge.gallery.store`` (the rows) and
``edge.gallery.snapshot`` (the swap's own connection) build on this module, and the
kiosk keeps its own files in a private directory made the same way.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import sqlite3
import stat
import unicodedata
from pathlib import Path

import numpy as np

from edge.errors import FedFaceError
from federation.files import PRIVATE_DIR, make_dirs

log = logging.getLogger(__name__)

# Data directories already warned about in this process: the gallery is opened more
# than once per command (issue 17: 400 identical warnings in one run)
_warned_open: set[Path] = set()

CROP_SIZE = 112
DB_FILENAME = "gallery.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS crops (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    image BLOB NOT NULL,          -- aligned 112x112 BGR crop, PNG (lossless)
    source TEXT,                  -- where it came from (file name), for the operator
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    crop_id INTEGER NOT NULL REFERENCES crops(id) ON DELETE CASCADE,
    model_version TEXT NOT NULL,
    vector BLOB NOT NULL,         -- float32 x 128, L2-normalised
    PRIMARY KEY (crop_id, model_version)
);
CREATE INDEX IF NOT EXISTS crops_person ON crops(person_id);
CREATE INDEX IF NOT EXISTS embeddings_version ON embeddings(model_version);
"""


class GalleryError(FedFaceError):
    """The gallery cannot be opened or written, or a request does not fit its content."""

    exit_code = 5


DAMAGED_GALLERY = (f"the gallery database is damaged: move {DB_FILENAME} (and its -wal and "
                   "-shm files) aside and enrol the people again; the box's keys, "
                   "certificate and models are not in it")


def disk_full(path: Path) -> bool:
    """Less than a MiB free where ``path`` is (or would be): SQLite reports a full disk
    as 'disk I/O error' when it cannot create its journal files."""
    for where in (Path(path), *Path(path).parents):
        if where.exists():
            try:
                return shutil.disk_usage(where).free < 2**20
            except OSError:
                return False
    return False


def no_space(exc: BaseException | None) -> bool:
    """``exc`` says the disk is full (an OSError's errno, or SQLite's words)."""
    return (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) \
        or "disk is full" in str(exc or "").lower()


def damaged(exc: BaseException | None) -> bool:
    """``exc`` is SQLite saying the database file itself is damaged."""
    text = str(exc or "").lower()
    return "malformed" in text or "not a database" in text


def data_dir_hint(path: Path, exc: BaseException | None = None) -> str:
    """What to do about ``exc`` in the data dir ``path``: a full disk and a damaged
    database are not fixed by another directory (the hint a walkthrough got for both)."""
    if no_space(exc) or (exc is not None and disk_full(path)):
        return f"the disk of {path} is full: free space there (df -h {path}); nothing was changed"
    if damaged(exc):
        return DAMAGED_GALLERY
    return (f"choose a writable data directory with --data-dir or $FEDFACE_DATA_DIR "
            f"(the box user must be able to create and write {path})")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (0700) or check it is a writable directory; GalleryError if not."""
    try:
        existed = path.is_dir()
        make_dirs(path, PRIVATE_DIR)  # parents too: 0700 whatever the umask
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            if existed and path.resolve() not in _warned_open:
                # not ours to tighten (it may be a shared folder): say so, once, with the fix
                _warned_open.add(path.resolve())
                log.warning("data directory %s is open to other users (mode %o) and holds "
                            "face data; fix: chmod 700 %s", path, mode, path)
            elif not existed:
                os.chmod(path, 0o700)
    except OSError as exc:
        raise GalleryError(f"cannot create data directory {path}: {exc.strerror or exc}",
                           hint=data_dir_hint(path, exc)) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise GalleryError(f"data directory {path} is not writable", hint=data_dir_hint(path))
    return path


def open_database(data_dir: Path) -> tuple[sqlite3.Connection, Path]:
    """The gallery database in ``data_dir`` (made private first), schema in place."""
    ensure_private_dir(data_dir)
    path = data_dir / DB_FILENAME
    try:
        # umask so SQLite creates the db (and its -wal/-shm, which copy the db's mode)
        # 0600 from the first byte, not after a chmod
        old_umask = os.umask(0o077)
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            # a removed person's face crops are overwritten, not left in free pages
            # (Gallery.erase_deleted clears the write-ahead log's copies)
            db.execute("PRAGMA secure_delete=ON")
            db.executescript(SCHEMA)
            _compose_names(db)
        finally:
            os.umask(old_umask)
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
    except (sqlite3.Error, OSError) as exc:
        raise GalleryError(f"cannot open gallery database {path}: {exc}",
                           hint=data_dir_hint(data_dir, exc)) from exc
    return db, path


def _compose_names(db: sqlite3.Connection) -> None:
    """Names stored before they were put in composed form (edge.gallery.names), put in
    it. Two people whose names differ only in that form are left as they are, said."""
    for person_id, name in db.execute("SELECT id, name FROM people").fetchall():
        composed = unicodedata.normalize("NFC", name)
        if composed == name:
            continue
        try:
            db.execute("UPDATE people SET name = ? WHERE id = ?", (composed, person_id))
        except sqlite3.IntegrityError:
            log.warning("two people are enrolled as %r, one with the name in decomposed "
                        "Unicode (from a macOS folder name?): one person under two names? "
                        "If so, remove one (fedface-edge people list --json shows both)",
                        composed)


def erase_deleted(db: sqlite3.Connection) -> None:
    """Copy the deletions into the database file (zeroed there: secure_delete) and empty
    the write-ahead log, which held the removed faces' pages until the last connection
    closed (helper-44 found a removed person's crops in the -wal file). Best effort: a
    reader in another process (the kiosk, the API) may hold the log a moment; its copies
    go at the next removal or when the box stops."""
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        log.warning("the gallery's write-ahead log was not emptied: %s", exc)
        return
    if busy:
        log.info("the gallery's write-ahead log is in use by another process: the removed "
                 "faces' copies in it go at its next checkpoint")


def encode_crop(crop: np.ndarray) -> bytes:
    import cv2

    if crop.shape != (CROP_SIZE, CROP_SIZE, 3) or crop.dtype != np.uint8:
        raise GalleryError(f"a crop must be {CROP_SIZE}x{CROP_SIZE}x3 uint8, "
                           f"got {crop.shape} {crop.dtype}")
    ok, buf = cv2.imencode(".png", crop)
    if not ok:
        raise GalleryError("could not encode a crop as PNG")
    return buf.tobytes()


def crop_digest(crop: np.ndarray) -> str:
    """SHA-256 of the crop as stored (``Gallery.crop_digests`` gives those of a person's
    crops): the same photo enrolled again aligns to the same crop, byte for byte."""
    return hashlib.sha256(encode_crop(crop)).hexdigest()


def decode_crop(blob: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise GalleryError("a stored crop cannot be decoded (database damaged?)")
    return np.asarray(image)
