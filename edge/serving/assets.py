"""What a swap needs ready before weights arrive: layouts, tail, trunk features.

Everything here is prepared once (start-up, or in the background as people enrol) so a
swap writes one small weights file, builds one small session and runs the tail:

- the base model's SHA-256, its initializer layout (``edge.serving.onnx_layout``) and the part's
  pretrained weights (the bytes themselves are not kept);
- the tail graph after ``part.cut`` and the head (trunk) before it (cut once with onnx,
  then cached on disk keyed by the base model's SHA-256; cutting costs ~0.5-1 s of
  protobuf work on the GIL), and the head's session, shared by every version;
- each enrolment crop's trunk features (``edge.serving.split_model.TrunkFeatures``), keyed by the
  crop's content so a crop removed and re-enrolled reuses its entry.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from edge.gallery.snapshot import GalleryRows
from edge.serving.onnx_layout import InitializerLayout
from edge.serving.split_model import (
    TailEmbedder,
    TrunkFeatures,
    crop_key,
    head_model,
    head_session,
    tail_model,
)
from federation.files import write_atomic
from models.federated_parts import FederatedPart

log = logging.getLogger(__name__)


class SwapAssets:
    def __init__(self, base_model: Path, part: FederatedPart, directory: Path,
                 rows: GalleryRows | None, threads: int = 1) -> None:
        self.part, self.rows = part, rows
        # the base model's bytes are only needed here: not kept (38 MB for the box's life)
        base_bytes = Path(base_model).read_bytes()
        self.base_sha256 = hashlib.sha256(base_bytes).hexdigest()
        digest = self.base_sha256[:16]
        self.layout = InitializerLayout.scan(base_bytes)
        # the initializers a vector of this part turns into (low-rank factors materialised)
        self.patch_names = tuple(
            [n for n in part.names if not n.endswith((".lora_a", ".lora_b"))]
            + list(part.low_rank))
        self.base_weights = self.layout.read(base_bytes, self.patch_names)
        directory = Path(directory)
        self.tail_bytes = self._cached_graph(directory / f"tail-{digest}-{part.cut}.onnx",
                                             base_bytes, tail_model)
        self.tail_layout = InitializerLayout.scan(self.tail_bytes)
        # the frozen trunk's session, shared by every version's frames embedder
        self.head = head_session(self._cached_graph(
            directory / f"head-{digest}-{part.cut}.onnx", base_bytes, head_model), threads)
        self.trunk = TrunkFeatures(Path(base_model), part.cut,
                                   Path(directory) / f"trunk-{digest}-{part.cut}", threads)
        self._keys: dict[int, str] = {}
        self._lock = threading.Lock()
        self._base_tail: TailEmbedder | None = None
        # each crop's pretrained vector: the base model is pinned, so it never changes
        self._base_rows: dict[int, np.ndarray] = {}

    def _cached_graph(self, path: Path, base_bytes: bytes,
                      cut: Callable[[onnx.ModelProto, str], onnx.ModelProto]) -> bytes:
        try:
            data = path.read_bytes()
            InitializerLayout.scan(data)
            return data
        except FileNotFoundError:
            pass
        except ValueError:
            log.warning("cached graph %s is damaged; rebuilding it", path.name)
        data = cut(onnx.load_from_string(base_bytes), self.part.cut).SerializeToString()
        write_atomic(path, data, mode=0o600)
        return data

    # --- weights --------------------------------------------------------------------------

    def tail_embedder(self, weights: Mapping[str, np.ndarray], threads: int = 1
                      ) -> TailEmbedder:
        """A version's tail session: the shared tail graph with ``weights`` by name (the
        part lies entirely after the cut, so every patched name is in the tail)."""
        missing = [name for name in weights if name not in self.tail_layout.slots]
        if missing:
            raise ValueError(f"not initializers of the tail after {self.part.cut}: {missing}")
        return TailEmbedder(self.tail_bytes, threads=threads, overrides=weights)

    def base_vectors(self, crop_ids: np.ndarray, features: np.ndarray) -> np.ndarray | None:
        """The pretrained model's vectors of these crops (calibration's reference,
        ``edge.serving.calibration``), rows as ``features``; only crops not seen at an
        earlier swap go through the tail. None for no crops."""
        if len(features) == 0:
            return None
        ids = crop_ids.tolist()
        new = [row for row, crop in enumerate(ids) if crop not in self._base_rows]
        if new:
            if self._base_tail is None:  # built once: the tail graph with its own weights
                self._base_tail = self.tail_embedder({})
            vectors = self._base_tail.embed_features(features[new])
            self._base_rows.update(zip((ids[r] for r in new), vectors, strict=True))
        self._base_rows = {crop: self._base_rows[crop] for crop in ids}  # removed crops go
        return np.stack([self._base_rows[crop] for crop in ids])

    def read_tail_weights(self, model_bytes: bytes) -> dict[str, np.ndarray]:
        """Every tail initializer as stored in a model file of this base (rollback): all
        of them, not only this part's, so a rollback is right whichever part made it."""
        names = tuple(n for n in self.tail_layout.slots if n in self.layout.slots)
        return self.layout.read(model_bytes, names)

    # --- trunk features of the gallery ------------------------------------------------

    def warm(self) -> int:
        """Compute trunk features of crops enrolled since the last call; returns how many."""
        if self.rows is None:
            return 0
        with self._lock:
            crops = self.rows.crops()
            new = [cid for cid, _ in crops if cid not in self._keys]
            if not new:
                return 0
            images = self.rows.crop_images(new)
            ids = [cid for cid in new if cid in images]
            keys = [crop_key(images[cid]) for cid in ids]
            computed = self.trunk.ensure(keys, [images[cid] for cid in ids])
            self._keys.update(zip(ids, keys, strict=True))
            return computed

    def features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crop ids, person ids, trunk features) of every stored crop, in id order."""
        if self.rows is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0,), np.float16)
        self.warm()  # normally a no-op: the watcher already did it in the background
        with self._lock:
            crops = [(cid, pid) for cid, pid in self.rows.crops() if cid in self._keys]
            ids = np.array([c for c, _ in crops], np.int64)
            people = np.array([p for _, p in crops], np.int64)
            if not crops:
                return ids, people, np.zeros((0,), np.float16)
            return ids, people, self.trunk.stack([self._keys[c] for c in ids.tolist()])
