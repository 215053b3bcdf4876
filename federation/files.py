"""Durable, atomic file writes: the one helper of the box, the aggregator and its PKI.

A crash or power cut at any point leaves either the old file or the new one, never a
torn one: write a temporary file in the same directory (created with its final mode, so
a key is never readable by others even for an instant), fsync it, rename it over the
target, then fsync the directory so the rename itself is on disk.

The mode has no default: every caller says whether the file is private (0o600: keys,
secret contexts, state holding device data) or must be read by other users (0o644: the
public context, certificates, CRLs and broker config that Mosquitto reads).

Modes are set explicitly, whatever the umask (issue 15: under ``umask 000`` keys/, the
aggregator's state dir, accepted/ and blobs/ came out 0777, the public context 0666):
``mkdir(mode=...)`` and ``open`` are masked by the umask, so ``make_dirs`` and
``open_new`` chmod what they create. Directories holding secrets are 0700, others 0755;
secret files 0600, public ones 0644.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


PRIVATE_DIR = 0o700  # keys, state holding device data, the CA
PUBLIC_DIR = 0o755


def make_dirs(path: Path, mode: int) -> Path:
    """``mkdir -p`` with every directory it creates exactly ``mode``, whatever the umask.

    A directory that already exists is left as it is: it may be an operator's choice or
    shared (``/srv``, a home directory), not ours to tighten or to open up."""
    if mode & ~0o777 or mode & 0o022:
        raise ValueError(f"mode {mode:#o}: a directory is at most 0o755")
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue  # created meanwhile by another process: not ours to chmod
        os.chmod(d, mode)  # mkdir's mode was masked by the umask
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return path


def parent_mode(file_mode: int) -> int:
    """The mode for a missing parent of a file of ``file_mode``: a private file's
    directory is private too."""
    return PRIVATE_DIR if not file_mode & 0o077 else PUBLIC_DIR


def open_new(path: Path, mode: int, how: str = "wb", **kw: object) -> IO[Any]:
    """``open(path, how)`` (``w``/``a``, binary or text) for a file that is exactly
    ``mode`` whatever the umask (an existing file is chmodded too: it is ours)."""
    if mode & ~0o666 or how[0] not in "wa":
        raise ValueError(f"open_new({how!r}, {mode:#o}): write or append, at most 0o666")
    path = Path(path)  # its directory is the caller's (make_dirs): a typo'd one is an error
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if how[0] == "a" else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        return os.fdopen(fd, how, **kw)  # type: ignore[call-overload]
    except BaseException:
        os.close(fd)
        raise


def write_atomic(path: Path, data: bytes, *, mode: int) -> Path:
    """Write ``data`` to ``path`` atomically and durably (file and directory fsynced)
    with permissions exactly ``mode``, whatever the umask. Returns ``path``."""
    if mode & ~0o777:
        raise ValueError(f"mode {mode:#o}: only permission bits (at most 0o777)")
    path = Path(path)
    make_dirs(path.parent, parent_mode(mode))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            # mkstemp creates 0600; fchmod sets the wanted mode exactly, whatever the umask.
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path
