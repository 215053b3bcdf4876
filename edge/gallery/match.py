"""The one rule that names a face: a pure function over vectors, no database, no model.

A probe is compared with every enrolled embedding of the probe's own model version
(vectors of two model versions live in different spaces and their cosine means
nothing); the best-scoring person is named when that score reaches the threshold, else
the probe is unknown. The gallery store (SQLite) and the serving snapshot (in memory)
both call :func:`match`, so the kiosk, ``identify``, ``run`` and the canary agree.

Match threshold
---------------
Scores are SFace cosine similarities in [-1, 1] between L2-normalised embeddings; a
probe is reported as the best-scoring person if that score is >= the threshold, else as
unknown. OpenCV recommends 0.363 for SFace (tuned for 1:1 verification). Raising the
threshold makes the box stricter: fewer strangers accepted as someone enrolled (false
accepts), more enrolled people reported unknown. Lowering it does the reverse. A 1:N
search takes the best of N comparisons, so strangers score higher than in 1:1 and a
gallery needs a somewhat higher threshold than verification does.

:data:`DEFAULT_MATCH_THRESHOLD` = 0.40 was chosen by measurement on LFW with
``python -m bench.edge.identification`` (50 people enrolled with one image each, up to 5 of
their other images as probes, one image each of 200 never-enrolled people; median of 3
seeds). Measured here:

=========  =========  ============  =====
threshold  top-1 acc  false accept
=========  =========  ============  =====
0.34       99.1%      6.0%
0.363      98.3%      4.0%          OpenCV's recommendation
0.38       97.4%      1.5%
0.40       95.7%      0.5%          default
0.42       94.3%      0.0%
0.45       93.4%      0.0%
=========  =========  ============  =====

At 0.363 one stranger in 25 is named as someone enrolled, too many for a kiosk that
raises alerts on unknown faces; 0.40 cuts that eightfold for 2.6 points of accuracy (and
an enrolled person seen on several frames is still named on most of them). No probe was
ever named as the wrong enrolled person at any of these thresholds. Re-run the bench on
your own faces (``--lfw`` takes any folder with one sub-folder per person) to tune a box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MATCH_THRESHOLD = 0.40
"""SFace cosine similarity; see the module docstring for how it was chosen and tuned."""

EMBEDDING_DIM = 128


@dataclass(frozen=True)
class Match:
    name: str | None  # None: unknown (best score under the threshold, or empty gallery)
    score: float  # best cosine similarity found (0.0 for an empty gallery)
    person_id: int | None
    best_name: str | None = None  # closest person even when under the threshold

    @property
    def known(self) -> bool:
        return self.name is not None


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Unit rows of float32 x EMBEDDING_DIM; ValueError for a wrong shape, NaN or zeros."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.shape[1] != EMBEDDING_DIM:
        raise ValueError(f"embeddings must have {EMBEDDING_DIM} values, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("an embedding contains NaN or infinity")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is all zeros")
    return np.ascontiguousarray(v / norms, dtype=np.float32)


def match(probes: np.ndarray, vectors: np.ndarray, person_ids: np.ndarray,
          names: dict[int, str], threshold: float) -> list[Match]:
    """The best enrolled person for each probe, named only at or above ``threshold``.

    ``probes`` (m, d) and ``vectors`` (n, d) are unit rows of the same model version;
    ``person_ids[j]`` owns ``vectors[j]``. With nothing enrolled every probe is unknown
    with score 0.0. ``best_name`` is kept even under the threshold (for tuning and logs).
    """
    if len(vectors) == 0:
        return [Match(None, 0.0, None) for _ in range(len(probes))]
    scores = np.asarray(probes, dtype=np.float32) @ vectors.T  # cosine: unit rows
    best = np.argmax(scores, axis=1)
    matches = []
    for row, column in enumerate(best):
        score = float(scores[row, column])
        person_id = int(person_ids[column])
        name = names.get(person_id)
        known = score >= threshold
        matches.append(Match(name if known else None, score, person_id if known else None, name))
    return matches


def enrolled_as_another(matches: list[Match], name: str) -> Match | None:
    """Photos about to be enrolled as ``name`` (their matches against the gallery) that
    look like someone enrolled under another name: the best match of the person most of
    them are named as, or None. Most, not one: among 40 photos of someone, one at 0.41
    with a different person is a stranger's false accept (helper-48: 6 of 16 people of a
    --from-dir were told to remove themselves). The CLI's enroll and the kiosk use it."""
    named = [m.name for m in matches if m.name is not None and m.name != name]
    if not named:
        return None
    likely = max(set(named), key=named.count)
    if 2 * named.count(likely) < len(matches):
        return None
    return max((m for m in matches if m.name == likely), key=lambda m: m.score)


# Cosine to the direction of a person's photos alone under which a face from a group
# photo is likely someone else's: well below the match threshold, since one of a
# person's own photos (grey, a grimace) can fall under 0.40 (LFW's Nestor_Kirchner_0032)
UNLIKE_THE_REST = 0.25


def face_like_the_rest(faces: list[np.ndarray], alone: list[np.ndarray]) -> int | None:
    """Which of a group photo's faces (embeddings) looks like the person's photos
    ``alone`` (the most alike, if above UNLIKE_THE_REST), else None. The largest face
    may be a stranger's (helper-49 enrolled Tony Blair as Kofi Annan, Kofi beside him):
    the CLI's enroll and the kiosk's uploads take this one."""
    if not faces or not alone:
        return None
    centre = normalised(np.mean(normalised(np.stack(alone)), axis=0))[0]
    scores = normalised(np.stack(faces)) @ centre
    best = int(np.argmax(scores))
    return best if float(scores[best]) >= UNLIKE_THE_REST else None


# Median cosine to a person's enrolled photos under which a photo about to be added to
# them is someone else's (helper-53 added Colin Powell's photo to Al Gore, with a green
# "Added"). The median, not the cosine to their mean: one stranger's photo that got
# through moved the mean towards that stranger, and the rest of their photos followed
# (helper-56: 1 of 20 at first, the other 19 on the next run). Measured on LFW (250
# people, 3 photos enrolled, their next 3 and one of every other person's as probes,
# pretrained SFace): 0.40% of a person's own photos fall under 0.30 and 0.46% of
# strangers reach it (to the mean: 0.13% and 1.4%); with a stranger's photo among the 3,
# 0.20% of other strangers reach it.
NOT_THE_PERSON = 0.30


def not_the_person(new: np.ndarray, enrolled: np.ndarray) -> list[tuple[int, float]]:
    """The photos of ``new`` (unit embeddings) about to be added to a person whose photos
    ``enrolled`` are (same model version) that are someone else's: (index, median cosine
    to ``enrolled``) of each under NOT_THE_PERSON. None for a new person."""
    if len(enrolled) == 0 or len(new) == 0:
        return []
    scores = np.median(normalised(new) @ normalised(enrolled).T, axis=1)
    return [(i, float(s)) for i, s in enumerate(scores) if s < NOT_THE_PERSON]
