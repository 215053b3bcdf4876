"""Before a model serves: its own match threshold, then the canary at it.

The hot swap (``edge.serving.hot_swap``) re-embeds every enrolment crop with the candidate
model; here the same crops give (1) the candidate's own threshold
(``edge.serving.calibration``: the deployed threshold carried from the pretrained
model's scores of the calibration people's crops to the candidate's) and (2) the
canary's verdict, the serving model at its threshold against the candidate at its own
(``edge.serving.canary``). A rollback to a
version validated before is calibrated again (the gallery may have grown) but not judged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge.errors import ResultRejected
from edge.serving.calibration import (
    MIN_HELD_OUT_PEOPLE,
    MIN_PEOPLE,
    Calibration,
    calibrate,
    held_out_rows,
)
from edge.serving.canary import CanaryPolicy, CanaryResult, run_canary
from edge.serving.engine import Engine

log = logging.getLogger(__name__)


class ModelRefused(ResultRejected):
    """The box refused federated weights (canary failed, or the version is blocked)."""

    canary: CanaryResult | None = None  # the figures behind a canary refusal
    # Only this box's canary declined the weights (now or before): they passed every
    # check of the result itself, so the box still federates from them without serving
    # them (edge.federated.result_apply). False for the technician's rollback.
    declined_by_canary: bool = False


@dataclass(frozen=True)
class Admission:
    canary: CanaryResult | None  # None: not judged (a rollback)
    calibration: Calibration | None  # None: served at the deployed threshold

    @property
    def threshold(self) -> float | None:
        return self.calibration.threshold if self.calibration is not None else None


def admit(engine: Engine, policy: CanaryPolicy, crop_ids: np.ndarray,
          person_ids: np.ndarray, vectors: np.ndarray, base_vectors: np.ndarray | None,
          judge: bool) -> Admission:
    """The candidate's threshold and verdict on the box's crops (rows of ``crop_ids``).
    ``base_vectors``: the pretrained model's vectors of the same crops (None: the
    candidate is the pretrained model, or calibration is off)."""
    calibration = None
    if base_vectors is not None:
        calibration = calibrate(engine.threshold, base_vectors, vectors, person_ids,
                                held_out=held_out_rows(person_ids))
        # capped: the model moved strangers' scores further than any round should (a
        # walkthrough's noisy DP rounds hit the cap every round, silently): said loudly
        log.log(logging.WARNING if calibration is not None and calibration.capped
                else logging.INFO, "model threshold: %s", calibration.describe()
                if calibration else f"the deployed {engine.threshold:.2f} (calibration needs "
                f"at least {MIN_PEOPLE} people, {MIN_HELD_OUT_PEOPLE} of them calibration "
                f"people; this box has {len(np.unique(person_ids))}, "
                f"{len(np.unique(person_ids[held_out_rows(person_ids)]))} of them calibration "
                "people)")
    if not judge:
        return Admission(None, calibration)
    current = engine.state
    common, new_rows, old_rows = np.intersect1d(crop_ids, current.gallery.crop_ids,
                                                return_indices=True)
    result = run_canary(current.gallery.vectors[old_rows], vectors[new_rows],
                        person_ids[new_rows], policy, engine.threshold_for(current),
                        calibration.threshold if calibration else engine.threshold)
    log.info("canary on %d crops: %s", len(common), result.reason)
    return Admission(result, calibration)
