"""Is a candidate model fit to serve? Checked on the box's own enrolled people.

Leave-one-out identification over the stored enrolment crops: each crop of a person who
has at least two is a probe, searched against every other crop (never itself), and is
right if the best match is the same person at or above the model's own match threshold
(a right match under it is a miss, as at the kiosk; each model at its own threshold,
``edge.serving.calibration``, so a model that moves every score is not judged by a
threshold chosen for another). The candidate's accuracy
is compared with the serving model's on the same crops; the update is refused if it
drops by more than ``margin`` (absolute, 0.02 = 2 points) and the probes it gets wrong
that the serving model got right outnumber the reverse beyond chance (a one-sided sign
test at ``significance``): on a box of 8 people, 32 probes, one probe that flips is 3.1
points, and the demo's kiosk cameras had rounds refused for exactly that.

Small galleries: with fewer than ``min_probes`` probes (people with 2+ crops) accuracy
is too noisy to compare (one probe is 1/n of it), so the comparison is SKIPPED with a
logged warning and a "skipped" verdict in the swap history. Two checks still always run
and refuse a broken model whatever the gallery size: embeddings must be finite, and
must not collapse (mean cosine between different people's crops above
``collapse_cosine``; a zeroed layer maps every face to the same vector).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MARGIN_ENV = "FEDFACE_CANARY_MARGIN"
COLLAPSE_SAMPLE = 256


@dataclass(frozen=True)
class CanaryPolicy:
    margin: float = 0.02
    min_probes: int = 10
    threshold: float = 0.40  # the gallery's match threshold (edge.gallery.store)
    collapse_cosine: float = 0.95
    # a drop past the margin refuses only if the probes lost outnumber those won beyond
    # chance (sign test): on 32 probes one probe is 3 points, more than the margin. 0.10:
    # 4 lost and none won is refused (p 0.06), 3 is not (p 0.13)
    significance: float = 0.10

    @classmethod
    def from_env(cls, threshold: float = 0.40) -> CanaryPolicy:
        """Default policy; ``$FEDFACE_CANARY_MARGIN`` (e.g. 0.05) overrides the margin."""
        raw = os.environ.get(MARGIN_ENV, "").strip()
        if not raw:
            return cls(threshold=threshold)
        try:
            margin = float(raw)
        except ValueError:
            raise ValueError(f"{MARGIN_ENV}={raw!r} is not a number (e.g. 0.02)") from None
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"{MARGIN_ENV}={raw!r} must be between 0 and 1")
        return cls(margin=margin, threshold=threshold)


@dataclass(frozen=True)
class CanaryResult:
    passed: bool
    skipped: bool
    reason: str
    probes: int
    current: float | None = None
    candidate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def leave_one_out_hits(vectors: np.ndarray, person_ids: np.ndarray,
                       threshold: float) -> np.ndarray:
    """Per probe (each crop of a person with a 2nd crop, in row order): named right?"""
    counts: dict[int, int] = {}
    for pid in person_ids.tolist():
        counts[pid] = counts.get(pid, 0) + 1
    probe_rows = np.array([i for i, p in enumerate(person_ids.tolist()) if counts[p] >= 2],
                          dtype=np.int64)
    if len(probe_rows) == 0:
        return np.zeros(0, dtype=bool)
    scores = vectors[probe_rows] @ vectors.T
    scores[np.arange(len(probe_rows)), probe_rows] = -np.inf  # never match itself
    best = np.argmax(scores, axis=1)
    best_scores = scores[np.arange(len(probe_rows)), best]
    return np.asarray((person_ids[best] == person_ids[probe_rows])
                      & (best_scores >= threshold))


def leave_one_out_accuracy(vectors: np.ndarray, person_ids: np.ndarray,
                           threshold: float) -> tuple[float, int]:
    """(accuracy, probes) of leave-one-out identification; probes need a 2nd crop."""
    return _accuracy(leave_one_out_hits(vectors, person_ids, threshold))


def _accuracy(hits: np.ndarray) -> tuple[float, int]:
    return (float(np.mean(hits)), len(hits)) if len(hits) else (0.0, 0)


def sign_test(losses: int, wins: int) -> float:
    """One-sided p-value of at least ``losses`` probes lost among the ``losses + wins``
    that changed, if either model were as likely to win each (binomial, p = 1/2)."""
    n = losses + wins
    return sum(math.comb(n, k) for k in range(losses, n + 1)) / 2 ** n if n else 1.0


def _collapsed(vectors: np.ndarray, person_ids: np.ndarray, limit: float) -> float | None:
    """Mean cosine between crops of different people (None if fewer than two people)."""
    if len(set(person_ids.tolist())) < 2:
        return None
    rows = np.linspace(0, len(vectors) - 1, min(len(vectors), COLLAPSE_SAMPLE)).astype(int)
    v, p = vectors[rows], person_ids[rows]
    different = p[:, None] != p[None, :]
    if not different.any():
        return None
    mean = float((v @ v.T)[different].mean())
    return mean if mean > limit else None


def run_canary(current: np.ndarray, candidate: np.ndarray, person_ids: np.ndarray,
               policy: CanaryPolicy, current_threshold: float | None = None,
               candidate_threshold: float | None = None) -> CanaryResult:
    """Compare the candidate's vectors with the serving model's, row for row (same crops),
    each at its own threshold (``edge.serving.calibration``; default: the policy's)."""
    new_at = policy.threshold if candidate_threshold is None else candidate_threshold
    old_at = policy.threshold if current_threshold is None else current_threshold
    if len(candidate) and not np.all(np.isfinite(candidate)):
        return CanaryResult(False, False, "the candidate model gives non-finite embeddings", 0)
    collapsed = _collapsed(candidate, person_ids, policy.collapse_cosine)
    if collapsed is not None:
        return CanaryResult(False, False, f"embeddings collapsed: different people's crops "
                            f"have mean cosine {collapsed:.3f}", 0)
    new_hits = leave_one_out_hits(candidate, person_ids, new_at)
    new_acc, probes = _accuracy(new_hits)
    if probes < policy.min_probes:
        log.warning("canary skipped: %d probe(s) (people with 2+ enrolment crops), %d needed "
                    "to compare accuracy; only the finite/collapse checks ran", probes,
                    policy.min_probes)
        return CanaryResult(True, True, f"only {probes} probe(s), {policy.min_probes} needed: "
                            "accuracy not compared", probes, None, new_acc)
    old_hits = leave_one_out_hits(current, person_ids, old_at)
    old_acc, _ = _accuracy(old_hits)
    drop = old_acc - new_acc
    lost, won = int(np.sum(old_hits & ~new_hits)), int(np.sum(~old_hits & new_hits))
    chance = sign_test(lost, won)
    if drop > policy.margin and chance < policy.significance:
        return CanaryResult(False, False, f"leave-one-out accuracy {new_acc:.1%} vs "
                            f"{old_acc:.1%} now: drops {drop:.1%} > margin {policy.margin:.1%} "
                            f"({lost} probes lost, {won} won; p = {chance:.3f})",
                            probes, old_acc, new_acc)
    if drop > policy.margin:
        return CanaryResult(True, False, f"leave-one-out accuracy {new_acc:.1%} vs "
                            f"{old_acc:.1%}: a drop within chance ({lost} probes lost, {won} "
                            f"won; p = {chance:.2f} >= {policy.significance})",
                            probes, old_acc, new_acc)
    return CanaryResult(True, False, f"leave-one-out accuracy {new_acc:.1%} vs {old_acc:.1%}",
                        probes, old_acc, new_acc)
