"""Camera distillation (bench.common.camera_distill, issue 18's research step) on real LFW
faces and the real SFace tail: the degraded views are reproducible, the teacher is the
pretrained embedding, and training pulls degraded views toward it without moving the
crop itself away."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bench.common.camera_distill import (
    DistillConfig,
    DistillSet,
    degraded_views,
    distill,
    distill_views,
    random_look,
)
from edge.vision.align import align_face
from edge.vision.detect import FaceDetector
from models.federated_parts import get_part
from models.registry import model_path
from models.trainable import TrainableTail
from models.trunk import TrunkRunner

PEOPLE = ("Colin_Powell", "Tony_Blair", "Hugo_Chavez")
PART = get_part("embed_bn")


@pytest.fixture(scope="module")
def crops(lfw_dir: Path) -> list[np.ndarray]:
    detector = FaceDetector(model_path("yunet"))
    out = []
    for person in PEOPLE:
        for i in (1, 2):
            image = cv2.imread(str(lfw_dir / person / f"{person}_{i:04d}.jpg"))
            assert image is not None
            faces = detector.detect(image)
            assert faces, f"no face in {person} {i}"
            out.append(align_face(image, faces[0].landmarks))
    return out


@pytest.fixture(scope="module")
def data(crops: list[np.ndarray]) -> DistillSet:
    trunk = TrunkRunner(model_path("sface"), [PART.cut])
    return distill_views(trunk, PART.cut, crops, n_views=4, seed=3)


def _cosines(tail: TrainableTail, data: DistillSet, view: int) -> np.ndarray:
    with torch.no_grad():
        out = tail(torch.from_numpy(np.asarray(data.features[:, view], dtype=np.float32)))
    emb = torch.nn.functional.normalize(out, dim=1).numpy()
    return np.asarray(np.sum(emb * data.teacher, axis=1))


def test_degraded_views_are_reproducible_and_start_with_the_crop(crops) -> None:
    views = degraded_views(crops[0], 5, seed=7)
    assert len(views) == 5
    assert np.array_equal(views[0], crops[0])
    assert all(v.shape == crops[0].shape and v.dtype == np.uint8 for v in views)
    assert all(not np.array_equal(v, crops[0]) for v in views[1:])
    again = degraded_views(crops[0], 5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(views, again, strict=True))
    looks = {repr(random_look(np.random.default_rng(s))) for s in range(20)}
    assert len(looks) > 10  # random strengths, not a handful of fixed cameras


def test_the_teacher_is_the_pretrained_embedding_of_the_crop(data: DistillSet) -> None:
    assert data.features.shape[:2] == (len(PEOPLE) * 2, 4)
    assert np.allclose(np.linalg.norm(data.teacher, axis=1), 1.0, atol=1e-5)
    tail = TrainableTail(model_path("sface"), PART)
    # float16 cached features: the pretrained tail gives the teacher back up to rounding
    assert _cosines(tail, data, view=0).min() > 0.999
    assert _cosines(tail, data, view=1).mean() < 0.99  # a degraded view is off the teacher


def test_distillation_pulls_degraded_views_toward_the_teacher(data: DistillSet) -> None:
    tail = TrainableTail(model_path("sface"), PART)
    before = np.mean([_cosines(tail, data, v).mean() for v in (1, 2, 3)])
    losses = distill(tail, data, DistillConfig(epochs=8, batch_size=8, lr=5e-3))
    after = np.mean([_cosines(tail, data, v).mean() for v in (1, 2, 3)])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert after > before + 0.01, (before, after)
    assert _cosines(tail, data, view=0).min() > 0.95  # the anchor keeps the crop in place
    assert not np.allclose(tail.get_vector(), tail.initial_vector())


def test_distillation_refuses_data_it_cannot_learn_from(crops, data: DistillSet) -> None:
    tail = TrainableTail(model_path("sface"), PART)
    only_crops = DistillSet(data.features[:, :1], data.teacher)
    with pytest.raises(ValueError, match="degraded views"):
        distill(tail, only_crops, DistillConfig())
    with pytest.raises(ValueError, match="nothing to distill"):
        distill_views(None, PART.cut, [], n_views=4, seed=0)


def test_cached_views_come_back_identical_from_a_private_file(crops, tmp_path: Path) -> None:
    trunk = TrunkRunner(model_path("sface"), [PART.cut])
    first = distill_views(trunk, PART.cut, crops[:2], n_views=2, seed=1, cache=tmp_path)
    (saved,) = tmp_path.glob("distill-*.npz")
    assert saved.stat().st_mode & 0o777 == 0o600  # trunk features of faces
    # no trunk the second time: the result must come from the file
    again = distill_views(None, PART.cut, crops[:2], n_views=2, seed=1, cache=tmp_path)
    assert np.array_equal(first.features, again.features)
    assert np.array_equal(first.teacher, again.teacher)


def _off_diagonal_gap(tail: TrainableTail, data: DistillSet) -> float:
    """How far the cosines between different crops' degraded views and crops are from
    the teacher's cosines of the same pairs."""
    with torch.no_grad():
        views = [torch.nn.functional.normalize(tail(torch.from_numpy(
            np.asarray(data.features[:, v], dtype=np.float32))), dim=1).numpy() for v in (0, 1)]
    off = ~np.eye(data.n_crops, dtype=bool)
    return float(np.abs((views[1] @ views[0].T - data.teacher @ data.teacher.T)[off]).mean())


def test_the_relational_term_keeps_other_crops_where_the_teacher_has_them(data) -> None:
    gaps = {}
    for weight in (0.0, 10.0):
        tail = TrainableTail(model_path("sface"), PART)
        distill(tail, data, DistillConfig(epochs=8, batch_size=8, lr=5e-3, relational=weight))
        gaps[weight] = _off_diagonal_gap(tail, data)
    assert gaps[10.0] < gaps[0.0], gaps
