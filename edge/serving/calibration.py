"""Each model's own match threshold: the deployed threshold carried to it on the box's gallery.

Why: training moves the cosines. The deployed threshold (``match_threshold``, 0.40 by
default) was chosen for the pretrained SFace; a trained model scores everyone lower, so at
the same 0.40 it names fewer of the box's own people while accepting fewer strangers.
Measured on issue 18's realistic design (``bench.federation.realistic_sites``, 48 small
sites, each on its own camera): at a fixed 0.40 FedAvg named 8.3 points fewer of a site's
people than the pretrained model; with each model at its own threshold for equal false
accepts it named 2.5 more. So a model is served at its own threshold, made here when it is
installed and stored with it (``edge.serving.versions``).

How, without any stranger's photo: the box's enrolled people stand in for strangers. Each
enrolment crop's best score against the crops of every *other* person is the score its
face would get at the kiosk if its person were not enrolled (``stranger_scores``). The
model's threshold is the deployed one moved by as much as the mean of those scores moved
from the reference model (the pretrained one, for which the deployed threshold was
chosen) to the model, on the same crops.

Chosen by measurement (``python -m bench.federation.realistic_sites``, 48 sites, each
model's strangers scored at the threshold the rule gives it, against the pretrained model
at 0.40, paired SE over sites): the FedAvg model named +2.1 (SE 0.5) points more of a
site's own people with strangers' false accepts +0.7 (SE 0.5) points; a quantile map
gave +1.9 / +1.7, a mean-and-spread map of the top quarter +1.3 / +1.0, a shift of the
top tenth +2.6 / +0.3 but +8.2 false accepts for a model trained on the site alone
(whole-distribution shift: +4.3).

Limits: a crop the model was trained on scores lower against everyone than a real
stranger's does, so the threshold errs low. For a federated model, trained on every
box's people, that cost +0.7 points of false accepts above (SE 0.5); for a model trained
on the site's people alone +4.3, so ``fedface-edge train``'s local model is not
calibrated. Holding a fifth of each site's people back from training, as calibration
strangers, did not lower it (same bench: +1.9 top-1, +0.9 false accepts, SE 0.5-0.6)
and trains on fewer people, so every enrolled person trains. A
shift is capped at ``MAX_SHIFT``; with fewer than ``MIN_PEOPLE`` people the model keeps
the deployed threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PEOPLE = 5  # fewer: each crop's "strangers" are too few people to stand for anyone
MAX_SHIFT = 0.15  # a model never moves the gate further than this from the deployed one
SAMPLE = 2048  # crops scored at most (evenly spread): bounded time on a large gallery


@dataclass(frozen=True)
class Calibration:
    threshold: float  # the model's own threshold
    calibrated_for: float  # the deployed threshold it stands for
    crops: int
    people: int
    capped: bool = False

    def describe(self) -> str:
        capped = f", capped at +-{MAX_SHIFT}" if self.capped else ""
        return (f"{self.threshold:.3f} for the deployed {self.calibrated_for:.2f}, from "
                f"{self.crops} enrolment crops of {self.people} people, each scored against "
                f"the other people's{capped}")


def stranger_scores(vectors: np.ndarray, person_ids: np.ndarray) -> np.ndarray:
    """Each crop's best cosine against the crops of other people, sorted ascending."""
    v = np.asarray(vectors, dtype=np.float32)
    ids = np.asarray(person_ids)
    rows = np.linspace(0, len(v) - 1, min(len(v), SAMPLE)).astype(np.int64)
    scores = v[rows] @ v.T
    scores[ids[rows][:, None] == ids[None, :]] = -np.inf  # itself and its own person
    return np.sort(scores.max(axis=1))


def carry_threshold(deployed: float, reference: np.ndarray, model: np.ndarray
                    ) -> tuple[float, float]:
    """(threshold, share): ``deployed`` moved by as much as the model moved the mean
    stranger score of the crops, and the share of ``reference`` at or above ``deployed``.

    A shift of the mean, not a quantile or a mean-and-spread map: it is the rule that
    kept strangers' false accepts where the pretrained model had them on issue 18's 48
    sites (see the module's note), and a mean over every crop does not hang on the one
    highest score the way a quantile does on a small clean gallery, where every stranger
    score is under 0.40."""
    threshold = deployed + float(np.mean(model)) - float(np.mean(reference))
    return threshold, float(np.mean(reference >= deployed))


def calibrate(deployed: float, reference_vectors: np.ndarray, model_vectors: np.ndarray,
              person_ids: np.ndarray) -> Calibration | None:
    """The model's own threshold for ``deployed`` (None: too few people to say)."""
    ids = np.asarray(person_ids)
    people = len(set(ids.tolist()))
    if people < MIN_PEOPLE or len(model_vectors) != len(reference_vectors) or not len(ids):
        return None
    reference = stranger_scores(reference_vectors, ids)
    model = stranger_scores(model_vectors, ids)
    if not (np.all(np.isfinite(reference)) and np.all(np.isfinite(model))):
        return None
    threshold, _ = carry_threshold(deployed, reference, model)
    capped = abs(threshold - deployed) > MAX_SHIFT
    if capped:
        threshold = deployed + float(np.sign(threshold - deployed)) * MAX_SHIFT
    return Calibration(round(threshold, 4), deployed, len(model_vectors), people, capped)


def own_threshold(threshold: float | None, calibrated_for: float | None,
                  deployed: float) -> float | None:
    """A stored model threshold, if it was made for this deployed threshold (a command run
    with ``--threshold`` serves every model at that one: ``Engine.fixed_threshold``)."""
    if threshold is None or calibrated_for is None:
        return None
    return threshold if abs(calibrated_for - deployed) < 1e-9 else None
