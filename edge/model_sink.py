"""A simple ``ModelSink``: patch federated weights into SFace, swap the embedder, re-embed.

The full hot swap (canary validation, atomic (session, gallery) swap under live
traffic, rollback) is a later issue. This sink does the essential steps in order:
patch the part's initializers into the inference graph by name (no torch, no
re-export), write the model file by atomic rename (keeping the previous version's file
for rollback), build a new ``Embedder`` from it, and re-embed the gallery's stored crops
so no embedding of the old model is ever compared with a probe of the new one.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import onnx

from edge.embed import Embedder
from edge.gallery import Gallery
from models.federated_parts import FederatedPart
from models.onnx_graph import patch_initializers, read_initializers, save_model_atomic

log = logging.getLogger(__name__)

MODEL_PREFIX = "sface-fed-"


def base_weights(model: onnx.ModelProto, part: FederatedPart) -> dict[str, np.ndarray]:
    """The pretrained initializers a part needs (its own, plus low-rank targets)."""
    names = [n for n in part.names if not n.endswith((".lora_a", ".lora_b"))]
    return read_initializers(model, [*names, *part.low_rank])


def base_vector(model: onnx.ModelProto, part: FederatedPart) -> np.ndarray:
    """The part's round-0 vector (pretrained values) from the inference graph."""
    return part.initial_vector(base_weights(model, part))


def embedder_version(model_version: str) -> str:
    return f"{MODEL_PREFIX}{model_version}"


class OnnxModelSink:
    """Applies federated vectors to the box's SFace graph and gallery."""

    def __init__(
        self,
        base_model_path: Path,
        part: FederatedPart,
        model_dir: Path,
        gallery: Gallery | None,
        threads: int = 1,
    ) -> None:
        self.part = part
        self.model_dir = Path(model_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.gallery = gallery
        self.threads = threads
        self._base = onnx.load(str(base_model_path))
        self._base_weights = base_weights(self._base, part)
        self._lock = threading.Lock()
        self.version: str | None = None
        self.embedder: Embedder | None = None
        self.last_swap_seconds = 0.0

    def base_vector(self) -> np.ndarray:
        return self.part.initial_vector(self._base_weights)

    def path_for(self, version: str) -> Path:
        return self.model_dir / f"{MODEL_PREFIX}{version}.onnx"

    def apply(self, version: str, vector: np.ndarray) -> None:
        t0 = time.perf_counter()
        weights = self.part.onnx_weights(np.asarray(vector, dtype=np.float32),
                                         self._base_weights)
        patched = patch_initializers(self._base, weights)
        path = self.path_for(version)
        data = save_model_atomic(patched, path)
        del patched
        embedder = Embedder(data, threads=self.threads, version=embedder_version(version))
        if self.gallery is not None:
            # new embeddings first, old ones dropped after: the gallery is never empty
            self.gallery.reembed(embedder, drop_old=False)
        with self._lock:
            previous = self.version
            self.embedder, self.version = embedder, version
        if self.gallery is not None:
            self.gallery.drop_other_versions(embedder.version)
        self._prune(keep={path.name} | ({self.path_for(previous).name} if previous else set()))
        self.last_swap_seconds = time.perf_counter() - t0
        log.info("model %s live (%s), previous %s kept, swap %.2f s", version, path.name,
                 previous, self.last_swap_seconds)

    def _prune(self, keep: set[str]) -> None:
        for old in self.model_dir.glob(f"{MODEL_PREFIX}*.onnx"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
