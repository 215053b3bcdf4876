"""The federation client's ``ModelSink`` for a real box: the engine's hot swap.

``OnnxModelSink`` keeps the constructor the client's callers use (``fedface-edge join``,
the demo's boxes) and is an ``edge.serving.hot_swap.HotSwapper``: ``apply(version, vector)``
patches, validates on the canary, re-embeds and swaps atomically, or raises
``ModelRefused`` (a ``FederationError``: the client logs it, counts it and keeps its
model). See ``edge.serving.hot_swap`` for the steps and the crash-safety argument.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from edge.gallery.store import Gallery
from edge.serving.canary import CanaryPolicy
from edge.serving.current import read_model
from edge.serving.hot_swap import HotSwapper, ModelRefused, embedder_version
from edge.serving.versions import BASE_VERSION
from edge.vision.pipeline import FaceEmbedder
from models.federated_parts import FederatedPart
from models.onnx_graph import read_initializers

log = logging.getLogger(__name__)

__all__ = ["ModelRefused", "OnnxModelSink", "base_vector", "base_weights",
           "embedder_version"]


def base_weights(model: onnx.ModelProto, part: FederatedPart) -> dict[str, np.ndarray]:
    """The pretrained initializers a part needs (its own, plus low-rank targets)."""
    names = [n for n in part.names if not n.endswith((".lora_a", ".lora_b"))]
    return read_initializers(model, [*names, *part.low_rank])


def base_vector(model: onnx.ModelProto, part: FederatedPart) -> np.ndarray:
    """The part's round-0 vector (pretrained values) from the inference graph."""
    return part.initial_vector(base_weights(model, part))


class OnnxModelSink(HotSwapper):
    """A HotSwapper built from the box's gallery (``None``: no gallery, no canary)."""

    def __init__(self, base_model_path: Path, part: FederatedPart, model_dir: Path,
                 gallery: Gallery | None, threads: int = 1,
                 policy: CanaryPolicy | None = None, threshold: float = 0.40,
                 background: bool = True) -> None:
        super().__init__(base_model_path, part, model_dir,
                         gallery.path if gallery is not None else None, threads=threads,
                         threshold=threshold, policy=policy)
        self.model_dir = Path(model_dir)
        if background:
            self.start()  # trunk features of enrolled crops, then new ones, in the background

    @property
    def version(self) -> str | None:
        """The served federated version (None while the pretrained model serves)."""
        served = self.engine.state.model_version
        return None if served == BASE_VERSION else served

    @property
    def embedder(self) -> FaceEmbedder:
        return self.engine.state.embedder

    @property
    def last_swap_seconds(self) -> float:
        return self.last_report.total if self.last_report is not None else 0.0

    def base_vector(self) -> np.ndarray:
        return self.part.initial_vector(self.assets.base_weights)

    def served_model_bytes(self) -> bytes:
        """The whole ONNX graph this box serves now (base + the version's weights)."""
        return read_model(self.store, self.served, self.base_model)
