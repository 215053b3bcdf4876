"""ONNX graph tools: weights as initializers, the SFace speed rewrite, weight patching.

Everything here works on ``onnx.ModelProto`` with numpy: no torch, no re-export. The
federated hot swap reads and patches initializers by name (see ``federated_parts``), so
every rewrite in this module keeps the original initializers, names and values intact:
a weight patched into the optimised graph means the same as in the shipped one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from federation.files import write_atomic

# Bumped whenever ``optimise_for_inference`` changes, so cached derived files are rebuilt.
OPTIMISATION_VERSION = 1


class GraphError(ValueError):
    """A graph edit was asked for something the graph does not have or cannot take."""


def weights_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy whose graph inputs no longer list its initializers.

    SFace (exported by an old MXNet converter) declares all 174 weights as graph inputs
    too. ONNX Runtime must then treat them as overridable at run time, so it skips
    constant folding and the Conv+BatchNorm / NCHWc fusions (about 49 -> 36 ms per face).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weight_names = {init.name for init in out.graph.initializer}
    runtime_inputs = [inp for inp in out.graph.input if inp.name not in weight_names]
    del out.graph.input[:]
    out.graph.input.extend(runtime_inputs)
    return out


def make_batch_dynamic(model: onnx.ModelProto, dim_name: str = "batch") -> onnx.ModelProto:
    """Return a copy whose graph inputs and outputs have a symbolic first dimension."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in [*out.graph.input, *out.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = dim_name
    return out


def rewrite_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each per-channel PRelu by two BatchNorms, a Relu and an Add.

    PRelu(z) = s*z + (1-s)*Relu(z). ONNX Runtime's CPU PRelu goes through a generic
    broadcast kernel (SFace spent 18 of its 30 ms in its 27 PRelus) and it breaks the
    NCHWc blocked layout, adding a reorder before and after every conv. A BatchNorm with
    mean 0 and variance 1 is a per-channel multiply that the NCHWc transformer turns into
    a blocked depthwise conv, so the whole trunk stays in NCHWc (30 -> 13.5 ms per face).

    The slope initializer is used as is (flattened and ``1 - s`` computed in the graph,
    which ORT constant-folds), so no derived copy of a weight enters the file.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shapes = {init.name: tuple(init.dims) for init in out.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    one_name = "__prelu_rewrite_one"
    new_inits.append(numpy_helper.from_array(np.ones(1, np.float32), one_name))
    flat_shape_name = "__prelu_rewrite_flat_shape"
    new_inits.append(numpy_helper.from_array(np.array([-1], np.int64), flat_shape_name))
    rewritten = 0
    for node in out.graph.node:
        slope = node.input[1] if node.op_type == "PRelu" else ""
        shape = shapes.get(slope)
        # Only a constant (C, 1, 1) slope is per-channel on an NCHW tensor.
        if shape is None or len(shape) != 3 or shape[1:] != (1, 1):
            nodes.append(node)
            continue
        channels = shape[0]
        z, y = node.input[0], node.output[0]
        p = f"{node.name or y}__prelu"
        zero, unit = f"{p}_zero", f"{p}_unit"
        new_inits.append(numpy_helper.from_array(np.zeros(channels, np.float32), zero))
        new_inits.append(numpy_helper.from_array(np.ones(channels, np.float32), unit))
        nodes += [
            helper.make_node("Reshape", [slope, flat_shape_name], [f"{p}_s"]),
            helper.make_node("Sub", [one_name, f"{p}_s"], [f"{p}_1ms"]),
            helper.make_node(
                "BatchNormalization", [z, f"{p}_s", zero, zero, unit], [f"{p}_lin"], epsilon=0.0
            ),
            helper.make_node("Relu", [z], [f"{p}_pos"]),
            helper.make_node(
                "BatchNormalization",
                [f"{p}_pos", f"{p}_1ms", zero, zero, unit],
                [f"{p}_pos_scaled"],
                epsilon=0.0,
            ),
            helper.make_node("Add", [f"{p}_lin", f"{p}_pos_scaled"], [y]),
        ]
        rewritten += 1
    if rewritten == 0:
        return out
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(new_inits)
    return out


def optimise_for_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """The SFace inference graph: weights as initializers, dynamic batch, PRelu rewrite."""
    optimised = rewrite_prelu(make_batch_dynamic(weights_to_initializers(model)))
    onnx.checker.check_model(optimised)
    return optimised


def read_initializers(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Copies of the named initializers as numpy arrays (GraphError on an unknown name)."""
    wanted = list(names)
    wanted_set = set(wanted)
    found = {init.name: init for init in model.graph.initializer if init.name in wanted_set}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise GraphError(f"graph has no initializer named {', '.join(map(repr, missing))}")
    return {name: numpy_helper.to_array(found[name]).copy() for name in wanted}


def patch_initializers(
    model: onnx.ModelProto, weights: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """Return a copy with the named initializers replaced (shape and dtype must match).

    Used by the hot swap: decrypted federated weights go straight into the inference
    graph by name. The input model is left untouched.
    """
    index = {init.name: i for i, init in enumerate(model.graph.initializer)}
    unknown = [name for name in weights if name not in index]
    if unknown:
        raise GraphError(
            f"cannot patch {', '.join(map(repr, unknown))}: no such initializer in the graph "
            "(is the model the one the federated part was defined for?)"
        )
    replacements: dict[int, onnx.TensorProto] = {}
    for name, value in weights.items():
        current = model.graph.initializer[index[name]]
        expected_dtype = helper.tensor_dtype_to_np_dtype(current.data_type)
        array = np.asarray(value)
        if tuple(array.shape) != tuple(current.dims):
            raise GraphError(
                f"initializer {name!r}: new value has shape {array.shape}, "
                f"the graph expects {tuple(current.dims)}"
            )
        if array.dtype != expected_dtype:
            raise GraphError(
                f"initializer {name!r}: new value has dtype {array.dtype}, "
                f"the graph expects {np.dtype(expected_dtype)}"
            )
        replacements[index[name]] = numpy_helper.from_array(np.ascontiguousarray(array), name)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, tensor in replacements.items():
        out.graph.initializer[i].CopyFrom(tensor)
    return out


def save_model_atomic(model: onnx.ModelProto, path: Path) -> bytes:
    """Serialise ``model`` into ``path`` by atomic rename; returns the bytes written."""
    data = model.SerializeToString()
    write_atomic(Path(path), data, mode=0o644)
    return data
