"""The box's model versions: which model it serves, N-1, refusals, history.

The one store of the box's model versions: the hot swap writes it, the federation
client reads what is served (and its part vector) from it, every recognising process
follows its pointer, and ``model status``, ``status`` and the kiosk show it.

``current.json`` is the single commit point of a swap, written by atomic rename::

    {"version": "r3-ab12", "tag": "sface-fed-r3-ab12",
     "model_file": "sface-fed-r3-ab12.weights.npz", "sha256": "...",
     "since": 1700000000.0, "reason": "federated round result", "part": "embed_bn",
     "threshold": 0.373, "calibrated_for": 0.4,
     "previous": {... the same fields for version N-1, or null}}

A version's model file holds only what differs from the pinned base model: its
initializers by name, plus the base model's SHA-256 (a file never applies to another
base) and the federated part's flat vector it was made from (what the federation client
trains on next; a low-rank part cannot be read back from the patched initializers).
For the default part that is 22 kB instead of a 38 MB ONNX copy per swap: an SD
card writes it in milliseconds, not seconds, and a swap moves no model-sized buffers
next to the frame thread. Full ``.onnx`` files (older boxes) are still read.
``model_file`` null means the pretrained model from the registry (version "base"). The
gallery rows of ``tag`` always exist before the pointer names it (``edge.serving.hot_swap``).
``history.json`` keeps the last events (swapped, refused, rolled back) for
``fedface-edge model status``; ``refused/`` keeps refused weights (0600) and
``blocked.json`` the versions never to serve again (refused, or rolled back by the
operator), so a re-delivered result is refused at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from federation.files import PRIVATE_DIR, make_dirs, write_atomic

log = logging.getLogger(__name__)

BASE_VERSION = "base"
HISTORY_KEEP = 50
MODEL_PREFIX = "sface-fed-"
WEIGHTS_SUFFIX = ".weights.npz"
_BASE_SHA_KEY = "__base_sha256__"
_VECTOR_KEY = "__part_vector__"
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


class ModelStoreError(RuntimeError):
    """A stored model version is missing, corrupt or does not match its checksum."""


def check_version(version: str) -> str:
    """A version becomes a file name: refuse anything but a plain, short name."""
    if not _SAFE_VERSION.match(version):
        raise ModelStoreError(f"model version {version!r} is not a safe file name")
    return version


@dataclass(frozen=True)
class ServedModel:
    version: str
    tag: str
    model_file: str | None
    sha256: str | None
    since: float
    reason: str
    part: str | None = None  # federated part whose cut the version's weights need
    # the version's own match threshold and the deployed one it stands for
    # (edge.serving.calibration); None: served at the deployed threshold
    threshold: float | None = None
    calibrated_for: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServedModel:
        part = data.get("part")
        threshold, calibrated_for = data.get("threshold"), data.get("calibrated_for")
        return cls(str(data["version"]), str(data["tag"]), data.get("model_file"),
                   data.get("sha256"), float(data.get("since", 0.0)),
                   str(data.get("reason", "")), str(part) if part else None,
                   float(threshold) if threshold is not None else None,
                   float(calibrated_for) if calibrated_for is not None else None)


@dataclass(frozen=True)
class Pointer:
    current: ServedModel
    previous: ServedModel | None

    def to_json(self) -> bytes:
        body = {**asdict(self.current),
                "previous": asdict(self.previous) if self.previous else None}
        return json.dumps(body, sort_keys=True, indent=1).encode()


class SwapStore:
    def __init__(self, directory: Path, create: bool = False) -> None:
        """``create``: make the directory now (the swapper); readers and followers never
        create it, so a box that never federated gets no empty ``models`` folder."""
        self.directory = Path(directory)
        if create:
            make_dirs(self.directory, PRIVATE_DIR)

    @property
    def pointer_path(self) -> Path:
        return self.directory / "current.json"

    def model_path(self, model_file: str) -> Path:
        return self.directory / model_file

    # --- pointer ------------------------------------------------------------------------

    def load(self) -> Pointer | None:
        try:
            data = json.loads(self.pointer_path.read_text())
            previous = data.get("previous")
            return Pointer(ServedModel.from_dict(data),
                           ServedModel.from_dict(previous) if previous else None)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelStoreError(f"{self.pointer_path} is corrupt: {exc}") from exc

    def commit(self, pointer: Pointer) -> None:
        """The durable commit point of a swap: one atomic rename."""
        write_atomic(self.pointer_path, pointer.to_json(), mode=0o600)

    def pointer_stamp(self) -> tuple[int, int] | None:
        """Cheap change detection for followers (mtime_ns, size)."""
        try:
            st = self.pointer_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def model_files(self) -> list[Path]:
        return sorted([*self.directory.glob(f"{MODEL_PREFIX}*.onnx"),
                       *self.directory.glob(f"{MODEL_PREFIX}*{WEIGHTS_SUFFIX}")])

    # --- a version's weights ------------------------------------------------------------

    def read_checked(self, served: ServedModel) -> bytes:
        """The bytes of a served version's file, checked against the pointer's SHA-256."""
        if served.model_file is None:
            raise ModelStoreError(f"model {served.version} is the pretrained one: no file")
        path = self.model_path(served.model_file)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ModelStoreError(f"{path} is missing (the swap pointer names it)") from exc
        if served.sha256 and hashlib.sha256(data).hexdigest() != served.sha256:
            raise ModelStoreError(f"{path} does not match the SHA-256 in {self.pointer_path}")
        return data

    def damaged_files(self) -> dict[str, str]:
        """The served versions (current, previous) whose file is missing or fails its
        SHA-256, each with why: every process on the box falls back past them (doctor's
        box data check, ``model status``). Raises ModelStoreError for a damaged pointer."""
        pointer = self.load()
        found = {}
        for served in () if pointer is None else (pointer.current, pointer.previous):
            if served is not None and served.model_file is not None:
                try:
                    self.read_checked(served)
                except ModelStoreError as exc:
                    found[served.version] = str(exc)
        return found

    def write_weights(self, model_file: str, weights: dict[str, np.ndarray],
                      base_sha256: str, vector: np.ndarray | None = None) -> str:
        """Write a version's initializers and part vector (0600, atomic rename); the
        file's SHA-256."""
        if not model_file.endswith(WEIGHTS_SUFFIX):
            raise ValueError(f"{model_file!r} is not a weights file name")
        buf = io.BytesIO()
        arrays: dict[str, Any] = {name: np.ascontiguousarray(value)
                                  for name, value in weights.items()}
        arrays[_BASE_SHA_KEY] = np.array(base_sha256)
        if vector is not None:
            arrays[_VECTOR_KEY] = np.asarray(vector, dtype=np.float32).ravel()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        write_atomic(self.model_path(model_file), data, mode=0o600)
        return hashlib.sha256(data).hexdigest()

    def read_weights(self, served: ServedModel) -> tuple[dict[str, np.ndarray], str]:
        """(initializers by name, base model SHA-256) of a served weights file, checked
        against the pointer's SHA-256."""
        if served.model_file is None or not served.model_file.endswith(WEIGHTS_SUFFIX):
            raise ModelStoreError(f"model {served.version} has no weights file")
        path = self.model_path(served.model_file)
        data = self.read_checked(served)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            base_sha = str(arrays.pop(_BASE_SHA_KEY))
        except (ValueError, KeyError, OSError) as exc:
            raise ModelStoreError(f"{path} is not a weights file: {exc}") from exc
        arrays.pop(_VECTOR_KEY, None)
        return arrays, base_sha

    def read_vector(self, served: ServedModel) -> np.ndarray | None:
        """The part vector a served version was made from (None: the base model, or a
        file written before vectors were kept)."""
        if served.model_file is None or not served.model_file.endswith(WEIGHTS_SUFFIX):
            return None
        data = self.read_checked(served)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                if _VECTOR_KEY not in npz.files:
                    return None
                return np.asarray(npz[_VECTOR_KEY], dtype=np.float32)
        except (ValueError, OSError) as exc:
            raise ModelStoreError(f"{served.model_file} is not a weights file: {exc}") from exc

    def remove_strays(self, keep: set[str]) -> list[str]:
        """Delete model files the pointer does not name, and temp files of killed writes."""
        removed = []
        for path in [*self.model_files(), *self.directory.glob(".*.tmp")]:
            if path.name not in keep:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    # --- refusals and history -----------------------------------------------------------

    @property
    def _blocked_path(self) -> Path:
        return self.directory / "blocked.json"

    def blocked(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._blocked_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("%s is corrupt; no version is blocked", self._blocked_path)
            return {}
        return data if isinstance(data, dict) else {}

    def block(self, version: str, reason: str, vector: np.ndarray | None = None,
              by: str = "rollback") -> None:
        """Never serve ``version`` again; keep its weights (0600) for the operator.
        ``by``: "canary" (the box's own check declined it) or "rollback" (the box left
        it: the technician's rollback, or the federation going back past it)."""
        check_version(version)
        entry: dict[str, Any] = {"reason": reason, "at": time.time(), "by": by}
        if vector is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
            path = self.directory / "refused" / f"{version}.npy"
            write_atomic(path, buf.getvalue(), mode=0o600)
            entry.update(file=str(path.relative_to(self.directory)),
                         sha256=hashlib.sha256(buf.getvalue()).hexdigest())
        blocked = self.blocked()
        blocked[version] = entry
        write_atomic(self._blocked_path, json.dumps(blocked, sort_keys=True).encode(), mode=0o600)

    @property
    def _history_path(self) -> Path:
        return self.directory / "history.json"

    def history(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self._history_path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            log.warning("%s is corrupt; starting a new history", self._history_path)
            return []
        return data if isinstance(data, list) else []

    def record(self, event: str, version: str, **details: Any) -> dict[str, Any]:
        entry = {"event": event, "version": version, "at": time.time(), **details}
        history = [*self.history(), entry][-HISTORY_KEEP:]
        write_atomic(self._history_path, json.dumps(history, sort_keys=True).encode(), mode=0o600)
        return entry
