"""Re-embed the gallery fast: cached frozen-trunk features + the small federated tail.

A federated round changes only the part after ``part.cut`` (``models.federated_parts``);
the trunk below it is identical for every version. So each enrolment crop's trunk output
is computed once (full SFace, ~20-40 ms) and kept (RAM + disk, float16), and a swap only
runs the tail graph on those features, batched. The tail is cut from the optimised
inference graph itself (same node and initializer names). A version's tail is NOT a
patched copy of the graph: its session is built from the one shared tail graph with the
version's initializers handed to ONNX Runtime by name (``SessionOptions.add_initializer``),
so a swap copies no model bytes on the frame thread's GIL.

float16 storage halves RAM and disk (1,000 crops: ~100 MB at the conv14 cut); measured
effect on the gallery embeddings vs the full graph: cosine > 0.9999 (see tests).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from edge.vision.embed import session_options
from federation.files import PRIVATE_DIR, make_dirs, open_new
from models.trunk import TrunkRunner, crops_to_blob

log = logging.getLogger(__name__)

TAIL_BATCH = 32  # measured: larger batches were not faster on 2 cores (cache-bound conv)


class TailError(ValueError):
    """The graph cannot be cut at the requested tensor."""


def _nodes_feeding(graph: onnx.GraphProto, start: str, cut: str) -> list[onnx.NodeProto]:
    """The nodes tensor ``start`` is computed from, in graph order. The walk back stops at
    tensor ``cut`` (the tail takes it as its input) unless it starts there (the head)."""
    producers = {out: node for node in graph.node for out in node.output}
    if cut not in producers:
        raise TailError(f"no node of the model produces {cut!r}")
    initializers = {init.name for init in graph.initializer}
    needed: set[int] = set()
    stack, seen = [start], set()
    while stack:
        tensor = stack.pop()
        if tensor in initializers or tensor in seen or tensor not in producers or \
                (tensor == cut and start != cut):
            continue
        seen.add(tensor)
        needed.add(id(producers[tensor]))
        stack.extend(producers[tensor].input)
    return [node for node in graph.node if id(node) in needed]


def tail_model(model: onnx.ModelProto, cut: str) -> onnx.ModelProto:
    """The subgraph from tensor ``cut`` (new input, N x C x H x W) to the model's output."""
    graph = model.graph
    nodes = _nodes_feeding(graph, graph.output[0].name, cut)
    cut_input = helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT,
                                              ["batch", _channels_of(model, cut), None, None])
    return _subgraph(model, nodes, "fedface-tail", [cut_input], [graph.output[0]])


def head_model(model: onnx.ModelProto, cut: str) -> onnx.ModelProto:
    """The frozen trunk alone: the model's image input to tensor ``cut`` (its output)."""
    graph = model.graph
    nodes = _nodes_feeding(graph, cut, cut)
    output = helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT,
                                           ["batch", None, None, None])
    return _subgraph(model, nodes, "fedface-head", list(graph.input), [output])


def _subgraph(model: onnx.ModelProto, nodes: list[onnx.NodeProto], name: str,
              inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """A checked model of ``nodes`` with the initializers they read, in ``model``'s opset."""
    used = {tensor for node in nodes for tensor in node.input}
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [init for init in model.graph.initializer if init.name in used])
    out = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    onnx.checker.check_model(out)
    return out


def _channels_of(model: onnx.ModelProto, cut: str) -> int | None:
    """Channel count of ``cut`` from the first conv/BN weight that consumes it (or None)."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if cut in node.input and node.op_type in ("Conv", "BatchNormalization"):
            weight = shapes.get(node.input[1])
            if weight:
                return int(weight[1] if node.op_type == "Conv" else weight[0])
    return None


class TailEmbedder:
    """ONNX Runtime session of a tail graph: trunk features -> unit 128-d embeddings.

    ``overrides`` replace initializers of ``tail_bytes`` by name. Graph optimisations
    are off for tails: ORT's fusions and constant folding (Conv+BatchNorm, the PRelu
    rewrite's ``Reshape(gamma)``) read the graph's own initializer values, so with them
    an override would silently keep old weights (measured: 1e-3 to 1e-2 off); without
    them an override equals a byte patch within 1e-7 (tests). Cost, measured on the
    tails (batch 1 / 32): embed_bn 1.03 -> 1.04 / 7.3 -> 7.8 ms, conv14 1.79 -> 2.01 /
    30.8 -> 37.5 ms.
    """

    def __init__(self, tail_bytes: bytes, threads: int = 1,
                 overrides: Mapping[str, np.ndarray] | None = None) -> None:
        options = session_options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # ORT reads the override's memory for the session's lifetime: keep it alive here
        self._overrides = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
                           for value in (overrides or {}).values()]
        for name, value in zip(overrides or {}, self._overrides, strict=True):
            options.add_initializer(name, value)
        self._session = ort.InferenceSession(tail_bytes, options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    @property
    def input_channels(self) -> int:
        """Channels of the trunk features this tail takes (N x C x 7 x 7 for SFace)."""
        return int(self._session.get_inputs()[0].shape[1])

    def embed_features(self, features: np.ndarray, batch: int = TAIL_BATCH) -> np.ndarray:
        if len(features) == 0:
            return np.zeros((0, 128), np.float32)
        outputs = []
        for start in range(0, len(features), batch):
            chunk = np.asarray(features[start:start + batch], dtype=np.float32)
            outputs.append(self._session.run(None, {self._input: chunk})[0])
        vectors = np.concatenate(outputs).astype(np.float32, copy=False)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class SplitEmbedder:
    """A frames' embedder made of the frozen trunk (one session for the box's lifetime)
    and a version's tail: a swap builds only the small tail session, the same one that
    re-embeds the gallery. Same interface as ``edge.vision.embed.Embedder``."""

    def __init__(self, head: ort.InferenceSession, tail: TailEmbedder, version: str,
                 threads: int = 1, batch_size: int = 16) -> None:
        self.head, self.tail, self.version = head, tail, version
        self.threads, self.batch_size = threads, batch_size
        self._input = head.get_inputs()[0].name

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, 128), np.float32)
        blob = crops_to_blob(list(crops))
        features = [self.head.run(None, {self._input: blob[i:i + self.batch_size]})[0]
                    for i in range(0, len(blob), self.batch_size)]
        return self.tail.embed_features(np.concatenate(features), batch=self.batch_size)

    def embed_one(self, crop: np.ndarray) -> np.ndarray:
        return self.embed([crop])[0]


def head_session(head_bytes: bytes, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(head_bytes, session_options(threads),
                                providers=["CPUExecutionProvider"])


def crop_key(crop: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(crop).tobytes()).hexdigest()[:32]


class TrunkFeatures:
    """Trunk output at ``cut`` per crop (by content hash): RAM first, then disk, then ORT.

    ``directory`` is specific to the base model and cut (the caller names it so); entries
    are written by atomic rename, so a killed box never leaves a half-written one.
    """

    def __init__(self, model_path: Path, cut: str, directory: Path, threads: int = 1) -> None:
        self.model_path, self.cut, self.directory = Path(model_path), cut, Path(directory)
        self.threads = threads
        self._memory: dict[str, np.ndarray] = {}
        self._runner: TrunkRunner | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._memory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.npy"

    def _load(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            return np.asarray(np.load(path, allow_pickle=False))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("trunk feature %s unreadable; recomputing", path.name)
            return None

    def _compute(self, keys: Sequence[str], crops: Sequence[np.ndarray]) -> None:
        if self._runner is None:
            self._runner = TrunkRunner(self.model_path, [self.cut], threads=self.threads)
        features = self._runner.run(list(crops))[self.cut].astype(np.float16)
        make_dirs(self.directory, PRIVATE_DIR)
        for key, feature in zip(keys, features, strict=True):
            path = self._path(key)
            tmp = path.with_name(f".{path.stem}.tmp.npy")
            with open_new(tmp, 0o600) as f:
                np.save(f, feature)
            os.replace(tmp, path)
            self._memory[key] = feature

    def ensure(self, keys: Sequence[str], crops: Sequence[np.ndarray], batch: int = 16) -> int:
        """Make every key's features available; returns how many had to be computed."""
        missing_keys, missing_crops = [], []
        with self._lock:
            for key, crop in zip(keys, crops, strict=True):
                if key in self._memory:
                    continue
                loaded = self._load(key)
                if loaded is not None:
                    self._memory[key] = loaded
                else:
                    missing_keys.append(key)
                    missing_crops.append(crop)
            for start in range(0, len(missing_keys), batch):
                self._compute(missing_keys[start:start + batch],
                              missing_crops[start:start + batch])
        if missing_keys:
            log.info("trunk features computed for %d crop(s)", len(missing_keys))
        return len(missing_keys)

    def has(self, key: str) -> bool:
        return key in self._memory

    def stack(self, keys: Sequence[str]) -> np.ndarray:
        """(n, C, H, W) float16 features of ``keys`` (KeyError if one was never ensured)."""
        return np.stack([self._memory[key] for key in keys])
