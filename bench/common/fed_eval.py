"""10-fold verification accuracy on the experiment's held-out pairs (LFW protocol:
threshold chosen on 9 folds, accuracy measured on the 10th)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pair_scores(embeddings: np.ndarray, index_of: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity per pair; ``index_of`` maps an image index to its row."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    a, b = e[index_of[pairs[:, 0]]], e[index_of[pairs[:, 1]]]
    return np.sum(a * b, axis=1)


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    order = np.argsort(scores)
    s, y = scores[order], same[order]
    # accuracy when the threshold sits just above position i: negatives below, positives above
    neg_below = np.concatenate([[0], np.cumsum(~y)])
    pos_above = y.sum() - np.concatenate([[0], np.cumsum(y)])
    correct = neg_below + pos_above
    i = int(np.argmax(correct))
    if i == 0:
        return float(s[0] - 1e-6)
    if i == len(s):
        return float(s[-1] + 1e-6)
    return float((s[i - 1] + s[i]) / 2)


def fold_accuracies(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Accuracy (%) of each of the 10 folds."""
    out = []
    for k in range(int(folds.max()) + 1):
        test = folds == k
        threshold = _best_threshold(scores[~test], same[~test])
        out.append(100.0 * np.mean((scores[test] > threshold) == same[test]))
    return np.array(out)


@dataclass(frozen=True)
class DomainAccuracy:
    """Per-fold accuracy (%) for each test domain."""

    folds: dict[str, np.ndarray]

    def mean(self, domain: str) -> float:
        return float(self.folds[domain].mean())

    def mean_over(self, domains: list[str]) -> tuple[float, float]:
        """Mean accuracy over domains, and its fold-to-fold standard error."""
        per_fold = np.mean([self.folds[d] for d in domains], axis=0)
        return float(per_fold.mean()), float(per_fold.std(ddof=1) / np.sqrt(len(per_fold)))
