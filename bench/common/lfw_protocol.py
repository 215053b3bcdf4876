"""LFW View 2 verification protocol: pairs.txt parsing and 10-fold accuracy.

pairs.txt: first line ``10 300``, then per fold 300 same-person lines ``name i j`` followed
by 300 different-person lines ``name1 i name2 j`` (1-based image indices). The standard
evaluation picks the threshold that maximises accuracy on 9 folds and tests it on the
10th, for each fold in turn; the figure is the mean (and std) over the 10 test folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class PairsFormatError(ValueError):
    """pairs.txt does not follow the LFW View 2 layout."""


@dataclass(frozen=True)
class Pair:
    left: str  # path relative to the lfw folder: Person/Person_0001.jpg
    right: str
    same: bool
    fold: int


def image_relpath(name: str, index: int) -> str:
    return f"{name}/{name}_{index:04d}.jpg"


def parse_pairs(path: Path) -> list[Pair]:
    """All pairs of pairs.txt in file order, with their fold (0-based)."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or len(lines[0]) != 2:
        raise PairsFormatError(f"{path}: first line must be '<folds> <pairs per class>'")
    n_folds, per_class = int(lines[0][0]), int(lines[0][1])
    body = lines[1:]
    if len(body) != n_folds * 2 * per_class:
        raise PairsFormatError(
            f"{path}: expected {n_folds * 2 * per_class} pair lines, found {len(body)}"
        )
    pairs: list[Pair] = []
    for i, fields in enumerate(body):
        fold = i // (2 * per_class)
        if len(fields) == 3:
            name, a, b = fields
            pairs.append(Pair(image_relpath(name, int(a)), image_relpath(name, int(b)), True, fold))
        elif len(fields) == 4:
            n1, a, n2, b = fields
            pairs.append(Pair(image_relpath(n1, int(a)), image_relpath(n2, int(b)), False, fold))
        else:
            raise PairsFormatError(f"{path}: line {i + 2} has {len(fields)} fields")
    return pairs


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold (score > t means same) maximising accuracy on the given pairs.

    Candidates are the midpoints between consecutive sorted scores (and both ends), so
    the choice is exact rather than limited to a fixed grid.
    """
    order = np.sort(np.unique(scores))
    candidates = np.concatenate(([order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1]]))
    predictions = scores[None, :] > candidates[:, None]
    accuracy = (predictions == labels[None, :]).mean(axis=1)
    return float(candidates[int(np.argmax(accuracy))])


def ten_fold_accuracy(
    scores: np.ndarray, labels: np.ndarray, folds: np.ndarray
) -> tuple[float, float, list[float]]:
    """(mean, std, per-fold accuracies): threshold from the other folds, tested on each."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    folds = np.asarray(folds)
    if not (scores.shape == labels.shape == folds.shape):
        raise ValueError("scores, labels and folds must have the same length")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError("need at least two folds to choose a threshold on held-out pairs")
    per_fold: list[float] = []
    for fold in fold_ids:
        test = folds == fold
        threshold = best_threshold(scores[~test], labels[~test])
        per_fold.append(float(((scores[test] > threshold) == labels[test]).mean()))
    return float(np.mean(per_fold)), float(np.std(per_fold)), per_fold
