"""The frozen SFace trunk as an ONNX Runtime session that also returns a cut tensor.

Training touches only the tail after a cut (see ``models.federated_parts``); everything
below it is identical on every box and never changes, so its output is computed once per
crop with ONNX Runtime and cached. No torch here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

EMBEDDING = "fc1"


class TrunkError(ValueError):
    """The model does not contain a requested tensor, or the crops are not 112x112 BGR."""


def load_model(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model
    return onnx.load(str(source))


def read_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """All initializers of the graph as float32 arrays, by name."""
    return {
        init.name: numpy_helper.to_array(init).astype(np.float32, copy=False)
        for init in model.graph.initializer
    }


def _prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights out of the graph inputs (SFace lists them there, which blocks ORT's
    constant folding and fusion) and a dynamic batch dimension."""
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in init_names]
    del graph.input[:]
    graph.input.extend(data_inputs)
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    return model


def trunk_model(source: str | Path | onnx.ModelProto, cuts: Sequence[str]) -> onnx.ModelProto:
    """SFace with the given internal tensors added as graph outputs (after ``fc1``)."""
    model = _prepare(load_model(source))
    produced = {out for node in model.graph.node for out in node.output}
    outputs = {o.name for o in model.graph.output}
    for cut in cuts:
        if cut not in produced:
            raise TrunkError(f"tensor {cut!r} is not produced by any node of the model")
        if cut not in outputs:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None)
            )
            outputs.add(cut)
    return model


def crops_to_blob(crops: Sequence[np.ndarray]) -> np.ndarray:
    """112x112 BGR uint8 crops -> N x 3 x 112 x 112 RGB float32 0-255 (SFace's input)."""
    if len(crops) == 0:
        raise TrunkError("no crops given")
    for crop in crops:
        if crop.shape != (112, 112, 3):
            raise TrunkError(f"crop has shape {crop.shape}, expected (112, 112, 3) BGR")
    batch = np.stack(crops).astype(np.float32)[..., ::-1]
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


class TrunkRunner:
    """Runs SFace once and returns the cut tensors plus the pretrained embedding."""

    def __init__(
        self,
        source: str | Path | onnx.ModelProto,
        cuts: Sequence[str],
        threads: int = 1,
        batch_size: int = 16,
    ) -> None:
        import onnxruntime as ort

        self.cuts = tuple(dict.fromkeys(cuts))
        self.batch_size = batch_size
        model = trunk_model(source, self.cuts)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No memory arena: batches of 112x112 crops need ~100 MB of activations, and an
        # arena keeps its peak for the process's life (the box's main process warms the
        # trunk features of every enrolled crop once, then only of new ones). Measured
        # on a box of 32 crops: +400 MB kept with the arena.
        options.enable_cpu_mem_arena = False
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [*self.cuts, EMBEDDING]

    def run(self, crops: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Cut tensors (N x C x H x W float32) and ``fc1`` (N x 128) for BGR crops."""
        results: dict[str, list[np.ndarray]] = {name: [] for name in self._outputs}
        for start in range(0, len(crops), self.batch_size):
            blob = crops_to_blob(crops[start : start + self.batch_size])
            values = self._session.run(self._outputs, {self._input: blob})
            for name, value in zip(self._outputs, values, strict=True):
                results[name].append(value)
        return {name: np.concatenate(parts) for name, parts in results.items()}
