"""ONNX graph tools on the real SFace: initializer rewrite equivalence, patching by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.vision.detect import FaceDetector
from edge.vision.embed import Embedder, session_options
from models.federated_parts import CONV14
from models.onnx_graph import (
    GraphError,
    optimise_for_inference,
    patch_initializers,
    read_initializers,
    save_model_atomic,
    weights_to_initializers,
)
from models.registry import model_path, optimised_sface_path
from tests.support.vision import aligned_crops


@pytest.fixture(scope="module")
def shipped() -> onnx.ModelProto:
    return onnx.load(str(model_path("sface")))


@pytest.fixture(scope="module")
def optimised(shipped: onnx.ModelProto) -> onnx.ModelProto:
    return optimise_for_inference(shipped)


@pytest.fixture(scope="module")
def crops(lfw_dir: Path) -> np.ndarray:
    return aligned_crops(lfw_dir, FaceDetector(model_path("yunet")))


@pytest.fixture(scope="module")
def crops_blob(crops: np.ndarray) -> np.ndarray:
    """RGB float32 NCHW 0-255, what SFace takes."""
    return np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


def _raw_features(model: onnx.ModelProto | bytes, blob: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, session_options(1), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if session.get_inputs()[0].shape[0] == 1:
        return np.concatenate(
            [session.run(None, {name: blob[i : i + 1]})[0] for i in range(len(blob))]
        )
    return np.asarray(session.run(None, {name: blob})[0])


def test_optimised_graph_matches_shipped_on_real_crops(
    shipped: onnx.ModelProto, optimised: onnx.ModelProto, crops_blob: np.ndarray
) -> None:
    reference = _raw_features(shipped, crops_blob)  # batch 1, as shipped
    fast = _raw_features(optimised, crops_blob)  # whole batch: the batch dim is dynamic
    assert fast.shape == reference.shape == (len(crops_blob), 128)
    assert np.abs(fast - reference).max() <= 1e-5
    # and the real embeddings differ between people (the check above is not vacuous)
    assert np.abs(reference[0] - reference[1]).max() > 0.1


def test_weights_leave_graph_inputs_but_keep_names(shipped: onnx.ModelProto) -> None:
    moved = weights_to_initializers(shipped)
    assert len(shipped.graph.input) == 175
    assert [i.name for i in moved.graph.input] == ["data"]
    assert [i.name for i in moved.graph.initializer] == [i.name for i in shipped.graph.initializer]


def test_optimised_graph_keeps_every_original_initializer(
    shipped: onnx.ModelProto, optimised: onnx.ModelProto
) -> None:
    names = [i.name for i in shipped.graph.initializer]
    before = read_initializers(shipped, names)
    after = read_initializers(optimised, names)
    for name in names:
        np.testing.assert_array_equal(before[name], after[name])
    assert not [n for n in optimised.graph.node if n.op_type == "PRelu"]


def test_patch_round_trip_with_federated_part(optimised: onnx.ModelProto) -> None:
    original = read_initializers(optimised, CONV14.names)
    vector = CONV14.flatten(original)
    rng = np.random.default_rng(0)
    new_weights = CONV14.unflatten(vector + rng.normal(0, 0.01, vector.size).astype(np.float32))
    patched = patch_initializers(optimised, new_weights)
    back = read_initializers(patched, CONV14.names)
    np.testing.assert_array_equal(CONV14.flatten(back), CONV14.flatten(new_weights))
    # the source model is untouched, and untouched tensors are carried over
    np.testing.assert_array_equal(
        CONV14.flatten(read_initializers(optimised, CONV14.names)), vector
    )
    other = read_initializers(patched, ["pre_fc1_weight"])["pre_fc1_weight"]
    np.testing.assert_array_equal(
        other, read_initializers(optimised, ["pre_fc1_weight"])["pre_fc1_weight"]
    )


def test_patched_model_changes_embeddings_and_version(
    optimised: onnx.ModelProto, crops: np.ndarray, tmp_path: Path
) -> None:
    weights = read_initializers(optimised, ["fc1_beta"])
    weights["fc1_beta"] = weights["fc1_beta"] + np.float32(0.5)
    path = tmp_path / "patched.onnx"
    data = save_model_atomic(patch_initializers(optimised, weights), path)
    assert path.read_bytes() == data
    base = Embedder(optimised_sface_path(), version="v1").embed(crops[:4])
    swapped = Embedder(data, version="v2")
    assert swapped.version == "v2"
    moved = swapped.embed(crops[:4])
    cosine = np.sum(base * moved, axis=1)
    assert np.all(cosine < 0.9999) and np.all(cosine > 0.5)


def test_patch_unknown_name_is_a_clear_error(optimised: onnx.ModelProto) -> None:
    with pytest.raises(GraphError, match="conv_99_weight"):
        patch_initializers(optimised, {"conv_99_weight": np.zeros(3, np.float32)})


def test_patch_shape_and_dtype_are_checked(optimised: onnx.ModelProto) -> None:
    with pytest.raises(GraphError, match="shape"):
        patch_initializers(optimised, {"fc1_beta": np.zeros(64, np.float32)})
    with pytest.raises(GraphError, match="dtype"):
        patch_initializers(optimised, {"fc1_beta": np.zeros(128, np.float64)})


def test_read_unknown_initializer(optimised: onnx.ModelProto) -> None:
    with pytest.raises(GraphError, match="nope"):
        read_initializers(optimised, ["fc1_beta", "nope"])
