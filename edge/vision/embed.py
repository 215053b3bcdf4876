"""Face embedding: SFace through ONNX Runtime, 112x112 BGR crops -> unit 128-d vectors.

Use the optimised graph from ``models.registry.optimised_sface_path`` (weights as
initializers, dynamic batch, PRelu rewritten for NCHWc): about 2.2x faster on one core
than the shipped file, same outputs to ~1e-6. The hot swap builds new ``Embedder``s
from patched model bytes; ``version`` names the weights a vector was computed with, and
vectors of different versions must never be compared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.vision.align import CROP_SIZE

log = logging.getLogger(__name__)

EMBEDDING_DIM = 128
DEFAULT_BATCH = 16


def session_options(threads: int) -> ort.SessionOptions:
    """ONNX Runtime options for a small box: fixed thread count, no oversubscription."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One inter-op thread and sequential execution: SFace is a chain, there is nothing
    # to run in parallel, and extra pools only fight the detector for the same cores.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn a core between frames on a 2-core box.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # ORT's warnings go to stderr, not through logging
    return options


class Embedder:
    """An ONNX Runtime session of SFace. ``embed`` is safe to call from several threads."""

    def __init__(
        self,
        model: Path | bytes,
        threads: int = 1,
        version: str = "sface-2021dec",
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        self.version = version
        self.threads = threads
        self.batch_size = max(1, batch_size)
        # The file a path-built session came from: a federated version is that file with
        # patched weights, so whoever serves one needs it (edge.serving.current.read_model).
        self.model_path: Path | None = None if isinstance(model, bytes) else Path(model)
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(
            source, session_options(threads), providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ValueError(
                f"expected an SFace graph with one image input, this one has {names}; use "
                "models.registry.optimised_sface_path() or a patched copy of it"
            )
        self._input_name = inputs[0].name
        batch_dim = inputs[0].shape[0]
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        # Warm-up: ORT allocates its arena and picks kernels on the first run (tens of
        # ms); doing it here keeps that cost out of the first recognised frame and off
        # the hot swap's critical path.
        self._run(np.zeros((1, 3, CROP_SIZE, CROP_SIZE), dtype=np.float32))

    def _run(self, blob: np.ndarray) -> np.ndarray:
        if self._fixed_batch is not None and blob.shape[0] != self._fixed_batch:
            # A graph with a fixed batch of 1 (e.g. the shipped file): one run per crop.
            rows = [
                self._session.run(None, {self._input_name: blob[i : i + 1]})[0]
                for i in range(blob.shape[0])
            ]
            return np.concatenate(rows, axis=0)
        return np.asarray(self._session.run(None, {self._input_name: blob})[0])

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(n, 128) float32 L2-normalised embeddings of 112x112x3 BGR uint8 crops."""
        if len(crops) == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        batch = _to_blob(crops)
        outputs = [
            self._run(batch[start : start + self.batch_size])
            for start in range(0, batch.shape[0], self.batch_size)
        ]
        features = np.concatenate(outputs, axis=0).astype(np.float32, copy=False)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return features / np.maximum(norms, 1e-12)

    def embed_one(self, crop: np.ndarray) -> np.ndarray:
        """(128,) embedding of one crop."""
        return self.embed([crop])[0]


def _to_blob(crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """BGR uint8 NHWC crops -> RGB float32 NCHW in 0-255 (SFace normalises in-graph)."""
    array = np.asarray(crops) if not isinstance(crops, np.ndarray) else crops
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or array.dtype != np.uint8:
        raise ValueError(
            f"embed expects 112x112x3 uint8 BGR crops (from align_face), got "
            f"{array.shape} {array.dtype}"
        )
    # [..., ::-1] swaps BGR -> RGB; the transpose to NCHW copies into a contiguous blob.
    return np.ascontiguousarray(array[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
