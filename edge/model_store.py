"""The box's federated weights on disk: current version plus the previous one.

After a result is decrypted and validated, the flat federated vector and its model
version are persisted here (atomic renames) before the engine is touched, so a box that
crashes while swapping restarts on the weights it had accepted, and version N-1 stays
available for rollback.

Layout: ``<dir>/<version>.npy`` per kept version and ``<dir>/current.json`` =
``{"version": ..., "previous": ..., "round": ..., "sha256": ...}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federation.files import write_atomic

log = logging.getLogger(__name__)

_SAFE_VERSION = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


class ModelStoreError(RuntimeError):
    """The stored federated model is missing, corrupt or does not match its checksum."""


@dataclass(frozen=True)
class StoredModel:
    version: str
    round_no: int
    vector: np.ndarray


def _check_version(version: str) -> str:
    if not _SAFE_VERSION.match(version):
        raise ModelStoreError(f"model version {version!r} is not a safe file name")
    return version


class FederatedModelStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def _pointer(self) -> Path:
        return self.directory / "current.json"

    def current_version(self) -> str | None:
        try:
            return str(json.loads(self._pointer.read_text())["version"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as exc:
            raise ModelStoreError(f"{self._pointer} is corrupt: {exc}") from exc

    def save(self, version: str, round_no: int, vector: np.ndarray) -> Path:
        """Persist ``vector`` as ``version`` and make it current; keep only N and N-1."""
        _check_version(version)
        buf = io.BytesIO()
        np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        data = buf.getvalue()
        path = self.directory / f"{version}.npy"
        write_atomic(path, data)
        previous = self.current_version()
        if previous == version:
            previous = self._previous()
        pointer = {
            "version": version,
            "previous": previous,
            "round": int(round_no),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        write_atomic(self._pointer, json.dumps(pointer, sort_keys=True).encode())
        keep = {f"{version}.npy"} | ({f"{previous}.npy"} if previous else set())
        for old in self.directory.glob("*.npy"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        log.info("federated model %s (round %d) stored; previous %s", version, round_no, previous)
        return path

    def discard(self, version: str) -> None:
        """Forget ``version`` (refused by the engine): current goes back to the previous
        version if its file is still here, else to none (the pretrained model)."""
        if self.current_version() != version:
            return
        previous = self._previous()
        path = self.directory / f"{previous}.npy" if previous else None
        if path is not None and path.is_file():
            data = path.read_bytes()
            pointer = {"version": previous, "previous": None, "round": -1,
                       "sha256": hashlib.sha256(data).hexdigest()}
            write_atomic(self._pointer, json.dumps(pointer, sort_keys=True).encode())
        else:
            self._pointer.unlink(missing_ok=True)
        (self.directory / f"{_check_version(version)}.npy").unlink(missing_ok=True)
        log.info("federated model %s discarded; current is now %s", version, previous)

    def _previous(self) -> str | None:
        try:
            prev = json.loads(self._pointer.read_text()).get("previous")
        except (FileNotFoundError, ValueError):
            return None
        return str(prev) if prev else None

    def load_current(self) -> StoredModel | None:
        try:
            pointer = json.loads(self._pointer.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ModelStoreError(f"{self._pointer} is corrupt: {exc}") from exc
        version = _check_version(str(pointer["version"]))
        path = self.directory / f"{version}.npy"
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ModelStoreError(f"{path} is missing (pointer says {version})") from exc
        if hashlib.sha256(data).hexdigest() != pointer.get("sha256"):
            raise ModelStoreError(f"{path} does not match its recorded SHA-256")
        vector = np.load(io.BytesIO(data), allow_pickle=False)
        return StoredModel(version, int(pointer.get("round", -1)), vector)
