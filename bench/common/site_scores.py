"""One site's scores on its own camera: verification of held-out identities' pairs
(10-fold accuracy, TAR at fixed FAR) and 1:N identification of its enrolled people at
the deployed threshold, through the product's match rule (edge.gallery.match)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.common.fed_eval import fold_accuracies, pair_scores
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD, match, normalised

# top1/false_accept at the deployed threshold; *_far at the model's own threshold for
# FAR 1e-3 on the site camera's different pairs (each model at equal false accepts)
# *_cal at the model's own threshold as the product makes it on the box, from the site's
# enrolment crops only (edge.serving.calibration; the pretrained model's is 0.40)
METRICS = ("acc", "tar_1e-3", "tar_1e-2", "top1", "rank1", "false_accept", "top1_far",
           "false_accept_far", "top1_cal", "false_accept_cal")
LOWER_IS_BETTER = frozenset({"false_accept", "false_accept_far", "false_accept_cal"})
CALIBRATION_FAR = 1e-3


def threshold_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """The score above which at most ``far`` of the different pairs lie (the next
    different pair's score; above every score when ``far`` admits them all)."""
    neg = np.sort(scores[~same])[::-1]
    k = int(np.floor(far * len(neg)))
    return float(neg[k]) if k < len(neg) else float("-inf")


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """Share (%) of same pairs accepted at the threshold where at most ``far`` of the
    different pairs score above it."""
    return float(100.0 * np.mean(scores[same] > threshold_at_far(scores, same, far)))


@dataclass(frozen=True)
class Pairs:
    pairs: np.ndarray
    same: np.ndarray
    balanced: np.ndarray
    folds: np.ndarray
    index_of: np.ndarray  # image index -> row of the test feature set


def verification(test_emb: np.ndarray, p: Pairs) -> dict[str, float]:
    scores = pair_scores(test_emb, p.index_of, p.pairs)
    b = p.balanced
    return {"acc": float(fold_accuracies(scores[b], p.same[b], p.folds[b]).mean()),
            "tar_1e-3": tar_at_far(scores, p.same, 1e-3),
            "tar_1e-2": tar_at_far(scores, p.same, 1e-2),
            "threshold_far": threshold_at_far(scores, p.same, CALIBRATION_FAR)}


def identification(gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray,
                   probe_ids: np.ndarray, strangers: np.ndarray,
                   threshold: float = DEFAULT_MATCH_THRESHOLD) -> dict[str, float]:
    """top1: share (%) of held-out photos named as their own person at ``threshold``;
    rank1: the same without the threshold (the nearest enrolment photo's person: a top1
    change that rank1 lacks is scores moved across the threshold, not people put right);
    false_accept: share (%) of strangers' photos named as anyone at ``threshold``."""
    g = normalised(gallery)
    names = {int(i): str(int(i)) for i in set(gallery_ids.tolist())}
    found = match(normalised(probes), g, gallery_ids, names, threshold)
    top1 = np.mean([m.name == str(int(p)) for m, p in zip(found, probe_ids, strict=True)])
    nearest = match(normalised(probes), g, gallery_ids, names, -1.0)
    rank1 = np.mean([m.name == str(int(p)) for m, p in zip(nearest, probe_ids, strict=True)])
    fa = np.mean([m.known for m in match(normalised(strangers), g, gallery_ids, names,
                                         threshold)])
    return {"top1": float(100.0 * top1), "rank1": float(100.0 * rank1),
            "false_accept": float(100.0 * fa)}


def row_stats(rows: dict[str, list[dict[str, float]]], metric: str, local: str,
              pretrained: str) -> dict[str, dict[str, float]]:
    """Per row: mean over sites, paired SE of the per-site difference to ``local`` and to
    ``pretrained``, worst site, share (%) of sites better than local-only / pretrained
    (for false accepts lower is better)."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    base = {k: np.array([s[metric] for s in rows[k]]) for k in (local, pretrained)}
    out = {}
    for name, sites in rows.items():
        v = np.array([s[metric] for s in sites])
        d_loc, d_pre = v - base[local], v - base[pretrained]
        n = len(v)
        out[name] = {
            "mean": float(v.mean()),
            "vs_local": float(d_loc.mean()), "se_local": float(d_loc.std(ddof=1) / np.sqrt(n)),
            "vs_pre": float(d_pre.mean()), "se_pre": float(d_pre.std(ddof=1) / np.sqrt(n)),
            "worst": float(v.min() if sign > 0 else v.max()),
            "gain_local": float(100.0 * np.mean(sign * d_loc > 0)),
            "gain_pre": float(100.0 * np.mean(sign * d_pre > 0)),
        }
    return out
