"""LFW View 2 protocol and the pipeline's verification accuracy on a subset of folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.common.lfw_protocol import (
    PairsFormatError,
    best_threshold,
    parse_pairs,
    ten_fold_accuracy,
)
from bench.edge.lfw_verification import embed_images, evaluate, unique_images
from edge.vision.detect import FaceDetector
from edge.vision.embed import Embedder
from models.registry import model_path, optimised_sface_path


@pytest.fixture(scope="module")
def pairs_file(shared_data: Path) -> Path:
    return shared_data / "lfw_protocol" / "pairs.txt"


def test_pairs_file_parses_into_ten_balanced_folds(pairs_file: Path, lfw_dir: Path) -> None:
    pairs = parse_pairs(pairs_file)
    assert len(pairs) == 6000
    for fold in range(10):
        in_fold = [p for p in pairs if p.fold == fold]
        assert sum(p.same for p in in_fold) == 300 and len(in_fold) == 600
    first_same = pairs[0]
    assert first_same.same and first_same.left.split("/")[0] == first_same.right.split("/")[0]
    assert all((lfw_dir / rel).is_file() for rel in unique_images(pairs[:600]))


def test_malformed_pairs_file(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.txt"
    bad.write_text("2 1\nA 1 2\nA 1 B 1\nC 1 2\n")
    with pytest.raises(PairsFormatError, match="expected 4 pair lines"):
        parse_pairs(bad)


def test_threshold_is_chosen_on_the_other_folds() -> None:
    # Fold 0 alone would pick a threshold near 0.5; folds 1-2 put it at ~0.2, which
    # misclassifies fold 0's same pairs at 0.3 and its different pairs at 0.25.
    scores = np.array([0.9, 0.3, 0.1, 0.25, 0.8, 0.21, 0.1, 0.19, 0.7, 0.22, 0.0, 0.18])
    labels = np.array([1, 1, 0, 0] * 3, dtype=bool)
    folds = np.repeat([0, 1, 2], 4)
    mean, _, per_fold = ten_fold_accuracy(scores, labels, folds)
    assert per_fold[1] == per_fold[2] == 1.0
    assert per_fold[0] == 0.75  # 0.25 > 0.2: the different pair at 0.25 is wrong
    assert mean == pytest.approx((0.75 + 1 + 1) / 3)
    assert 0.19 < best_threshold(scores[4:], labels[4:]) < 0.21


@pytest.mark.slow
def test_pipeline_accuracy_on_two_lfw_folds(pairs_file: Path, lfw_dir: Path) -> None:
    """1,200 pairs (the first two folds, 1,583 images) through YuNet -> align -> SFace/ORT.

    The result is deterministic (same images, same models); on these folds the pipeline
    scores 99.33%. The bound is the product's requirement for the full 10 folds, 98.9%
    (SFace's reference is 99.05% +- 0.45): it allows 13 wrong pairs of 1,200 where we
    see 8, so numeric noise from another ORT build cannot fail it, while a broken
    alignment or graph rewrite (which costs points, not pairs) does.
    """
    pairs = [p for p in parse_pairs(pairs_file) if p.fold < 2]
    detector = FaceDetector(model_path("yunet"))
    embedder = Embedder(optimised_sface_path(), threads=2)
    emb = embed_images(lfw_dir, unique_images(pairs), detector, embedder)
    mean, _, per_fold = evaluate(pairs, emb)
    assert emb.misses == []  # YuNet finds a face in every LFW image
    assert len(emb.fallbacks) <= 2
    assert mean >= 0.989, per_fold
