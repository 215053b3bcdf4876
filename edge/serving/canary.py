"""Is a candidate model fit to serve? Checked on the box's own enrolled people.

Leave-one-out identification over the stored enrolment crops: each crop of a person who
has at least two is a probe, searched against every other crop (never itself), and is
right if the best match is the same person at or above the box's match threshold (a
right match under the threshold is a miss, as at the kiosk). The candidate's accuracy
is compared with the serving model's on the same crops; the update is refused if it
drops by more than ``margin`` (absolute, 0.02 = 2 points).

Small galleries: with fewer than ``min_probes`` probes (people with 2+ crops) accuracy
is too noisy to compare (one probe is 1/n of it), so the comparison is SKIPPED with a
logged warning and a "skipped" verdict in the swap history. Two checks still always run
and refuse a broken model whatever the gallery size: embeddings must be finite, and
must not collapse (mean cosine between different people's crops above
``collapse_cosine``; a zeroed layer maps every face to the same vector).
"""

from __future__ import annotations

import logging
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


def leave_one_out_accuracy(vectors: np.ndarray, person_ids: np.ndarray,
                           threshold: float) -> tuple[float, int]:
    """(accuracy, probes) of leave-one-out identification; probes need a 2nd crop."""
    counts: dict[int, int] = {}
    for pid in person_ids.tolist():
        counts[pid] = counts.get(pid, 0) + 1
    probe_rows = np.array([i for i, p in enumerate(person_ids.tolist()) if counts[p] >= 2],
                          dtype=np.int64)
    if len(probe_rows) == 0:
        return 0.0, 0
    scores = vectors[probe_rows] @ vectors.T
    scores[np.arange(len(probe_rows)), probe_rows] = -np.inf  # never match itself
    best = np.argmax(scores, axis=1)
    best_scores = scores[np.arange(len(probe_rows)), best]
    right = (person_ids[best] == person_ids[probe_rows]) & (best_scores >= threshold)
    return float(np.mean(right)), len(probe_rows)


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
               policy: CanaryPolicy) -> CanaryResult:
    """Compare the candidate's vectors with the serving model's, row for row (same crops)."""
    if len(candidate) and not np.all(np.isfinite(candidate)):
        return CanaryResult(False, False, "the candidate model gives non-finite embeddings", 0)
    collapsed = _collapsed(candidate, person_ids, policy.collapse_cosine)
    if collapsed is not None:
        return CanaryResult(False, False, f"embeddings collapsed: different people's crops "
                            f"have mean cosine {collapsed:.3f}", 0)
    new_acc, probes = leave_one_out_accuracy(candidate, person_ids, policy.threshold)
    if probes < policy.min_probes:
        log.warning("canary skipped: %d probe(s) (people with 2+ enrolment crops), %d needed "
                    "to compare accuracy; only the finite/collapse checks ran", probes,
                    policy.min_probes)
        return CanaryResult(True, True, f"only {probes} probe(s), {policy.min_probes} needed: "
                            "accuracy not compared", probes, None, new_acc)
    old_acc, _ = leave_one_out_accuracy(current, person_ids, policy.threshold)
    drop = old_acc - new_acc
    if drop > policy.margin:
        return CanaryResult(False, False, f"leave-one-out accuracy {new_acc:.1%} vs "
                            f"{old_acc:.1%} now: drops {drop:.1%} > margin {policy.margin:.1%}",
                            probes, old_acc, new_acc)
    return CanaryResult(True, False, f"leave-one-out accuracy {new_acc:.1%} vs {old_acc:.1%}",
                        probes, old_acc, new_acc)
