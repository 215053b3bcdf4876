"""The federation client's ``ModelSink`` for a real box: the engine's hot swap.

``open_model_sink`` builds the ``edge.serving.hot_swap.HotSwapper`` that ``fedface-edge
join`` and the demo's boxes hand the client (through ``edge.box.Box.model_sink``), from
the box's gallery, and starts its watcher: ``apply(version, vector)`` patches,
validates on the canary, re-embeds and swaps atomically, or raises ``ModelRefused`` (a
``FederationError``: the client logs it, counts it and keeps its model). See
``edge.serving.hot_swap`` for the steps and the crash-safety argument. Also here: the
part's pretrained values read from an ONNX graph (``base_weights``, ``base_vector``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from edge.gallery.store import Gallery
from edge.serving.canary import CanaryPolicy
from edge.serving.hot_swap import HotSwapper, ModelRefused, embedder_version
from models.federated_parts import FederatedPart
from models.onnx_graph import read_initializers

log = logging.getLogger(__name__)

__all__ = ["ModelRefused", "base_vector", "base_weights", "embedder_version",
           "open_model_sink"]


def base_weights(model: onnx.ModelProto, part: FederatedPart) -> dict[str, np.ndarray]:
    """The pretrained initializers a part needs (its own, plus low-rank targets)."""
    names = [n for n in part.names if not n.endswith((".lora_a", ".lora_b"))]
    return read_initializers(model, [*names, *part.low_rank])


def base_vector(model: onnx.ModelProto, part: FederatedPart) -> np.ndarray:
    """The part's round-0 vector (pretrained values) from the inference graph."""
    return part.initial_vector(base_weights(model, part))


def open_model_sink(base_model_path: Path, part: FederatedPart, model_dir: Path,
                    gallery: Gallery | None, threads: int = 1,
                    policy: CanaryPolicy | None = None, threshold: float = 0.40,
                    background: bool = True, calibrate: bool = True) -> HotSwapper:
    """The box's hot swap over its gallery (``None``: no gallery, no canary).
    ``background``: start the engine's watcher (trunk features of enrolled crops, then
    of new ones, warmed in the background)."""
    sink = HotSwapper(base_model_path, part, model_dir,
                      gallery.path if gallery is not None else None, threads=threads,
                      threshold=threshold, policy=policy, calibrate=calibrate)
    if background:
        sink.start()
    return sink
