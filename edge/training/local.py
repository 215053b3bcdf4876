"""``fedface-edge train``'s work: fine-tune the box's federated part on its own people.

Starts from the weights the box serves (pretrained, a federated result, or an earlier
local run), trains within a time budget on the enrolment crops (``edge.training.trainer``, torch,
imported by the caller only when torch is installed), measures leave-one-out
identification accuracy on the box's own people before and after (``edge.serving.canary``: the
same measure the hot swap's canary uses), and saves the result under
``<data dir>/train/results/<version>.npz``. ``HotSwapper.apply`` then serves it, after
the canary; this module never swaps by itself.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge.serving.canary import leave_one_out_accuracy
from edge.serving.hot_swap import HotSwapper
from edge.training.api import LocalUpdate, TrainingError
from federation.files import PRIVATE_DIR, make_dirs
from models.federated_parts import FederatedPart

log = logging.getLogger(__name__)

RESULTS_DIR = "results"


@dataclass(frozen=True)
class LocalTrainingReport:
    version: str
    part: str
    people: int
    samples: int  # enrolment crops trained on (augmented views not counted)
    seconds: float  # whole run: features (cached after the first run) + training
    steps: int
    first_loss: float
    last_loss: float
    stopped_by_budget: bool
    started_from: str  # the served version the training started from
    probes: int  # leave-one-out probes (crops of people with 2+ crops)
    accuracy_before: float | None  # None: fewer than 2 crops for every person
    accuracy_after: float | None
    result_path: Path

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["result_path"] = str(self.result_path)
        return out


def local_version(now: float | None = None) -> str:
    stamp = dt.datetime.fromtimestamp(now or time.time(), dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"local-{stamp}"


def claim_version(results: Path, now: float | None = None) -> tuple[str, Path]:
    """A local version name no other run has, and its results file (created empty, 0600,
    by this run only). Two `train --apply` finishing in the same second took the same
    name, and the second overwrote the first's weights under the box's rollback chain
    (helper-48): a second run of that second gets ``-2``, and so on."""
    make_dirs(results, PRIVATE_DIR)
    base = local_version(now)
    for n in range(1, 1000):
        version = base if n == 1 else f"{base}-{n}"
        path = results / f"{version}.npz"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        return version, path
    raise TrainingError(f"no free local version name for {base} in {results}")


def lock_training(train_dir: Path) -> IO[str]:
    """One local training at a time per box (keep the returned file open while it runs).
    Two `train --apply` at once each trained from the same model and both said `now
    serving`, the first wrongly a moment later, and the second's N-1 was its sibling
    (helper-49). The kernel drops the lock with its process."""
    make_dirs(train_dir, PRIVATE_DIR)
    handle = os.fdopen(os.open(train_dir / "train.lock", os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise TrainingError(f"another `fedface-edge train` (pid {holder}) runs on this box: "
                            "one training at a time; wait for it to finish") from None
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def served_vector(swapper: HotSwapper, data_dir: Path, part: FederatedPart,
                  train_dir: Path) -> tuple[str, np.ndarray | None]:
    """(served version, its vector of ``part``); None means the pretrained weights.

    The box's model versions keep each version's vector (edge.serving.versions), a local run
    also has it in this command's results; if neither does (e.g. the box changed part),
    training starts from the pretrained weights, with a warning.
    """
    served = swapper.served
    if served.model_file is None:
        return served.version, None
    known = swapper.served_vector()
    if known is not None and known[0] == served.version:
        return served.version, known[1]
    local = train_dir / RESULTS_DIR / f"{served.version}.npz"
    if local.is_file():
        with np.load(local, allow_pickle=False) as data:
            if str(data["part"]) == part.key:
                return served.version, np.asarray(data["vector"], np.float32)
    log.warning("no %s vector of the served model %s on this box: training starts from the "
                "pretrained weights", part.key, served.version)
    return served.version, None


def _accuracies(swapper: HotSwapper, vector: np.ndarray,
                threshold: float) -> tuple[float | None, float | None, int]:
    """Leave-one-out accuracy of the served model and of ``vector`` on the same crops."""
    crop_ids, person_ids, features = swapper.assets.features()
    if len(crop_ids) == 0:
        return None, None, 0
    weights = swapper.part.onnx_weights(vector, swapper.assets.base_weights)
    candidate = swapper.assets.tail_embedder(weights).embed_features(features)
    current = swapper.engine.state.gallery
    _, new_rows, old_rows = np.intersect1d(crop_ids, current.crop_ids, return_indices=True)
    people = person_ids[new_rows]
    # the served model at the threshold it serves at (a federated one's own); the local
    # candidate at the deployed one, at which it would serve (local models are not
    # calibrated: edge.serving.calibration)
    served_at = swapper.engine.threshold_for(swapper.engine.state)
    before, probes = leave_one_out_accuracy(current.vectors[old_rows], people, served_at)
    after, _ = leave_one_out_accuracy(candidate[new_rows], people, threshold)
    if probes == 0:
        return None, None, 0
    return before, after, probes


def save_result(path: Path, update: LocalUpdate, part: FederatedPart,
                extra: dict[str, Any]) -> None:
    """``vector``, ``part`` (key), ``n_samples`` (as ``edge.training.trainer.train_local``) and the
    run's figures; written by atomic rename, 0600 (weights trained on biometric data)."""
    make_dirs(path.parent, PRIVATE_DIR)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        arrays: dict[str, Any] = {k: np.array(v) for k, v in extra.items() if v is not None}
        np.savez(f, vector=update.vector, part=np.array(part.key),
                 n_samples=np.array(update.n_samples), **arrays)
    os.replace(tmp, path)


def train_box(swapper: HotSwapper, trainer: Any, data_dir: Path, train_dir: Path,
              threshold: float, people: int) -> tuple[LocalTrainingReport, np.ndarray]:
    """Train ``trainer`` (a ``TorchLocalTrainer`` of ``swapper.part``) from the served
    weights; returns the report and the new vector (saved, not yet served)."""
    part = swapper.part
    if trainer.part.key != part.key:
        raise TrainingError(f"trainer part {trainer.part.key} != serving part {part.key}")
    t0 = time.perf_counter()
    started_from, start = served_vector(swapper, data_dir, part, train_dir)
    update: LocalUpdate = trainer.local_update(start, round_no=0)
    fit = trainer.last_result
    before, after, probes = _accuracies(swapper, update.vector, threshold)
    version, path = claim_version(train_dir / RESULTS_DIR)
    report = LocalTrainingReport(
        version=version, part=part.key, people=people,
        samples=update.n_samples, seconds=time.perf_counter() - t0,
        steps=fit.steps if fit else 0, first_loss=fit.first_loss if fit else float("nan"),
        last_loss=fit.last_loss if fit else float("nan"),
        stopped_by_budget=bool(fit and fit.stopped_by_budget), started_from=started_from,
        probes=probes, accuracy_before=before, accuracy_after=after, result_path=path)
    save_result(path, update, part, {"accuracy_before": before, "accuracy_after": after,
                                     "started_from": started_from,
                                     "last_loss": report.last_loss})
    log.info("local training %s: %d samples, %.1f s, loss %.4g -> %.4g, leave-one-out "
             "%s -> %s", version, update.n_samples, report.seconds, report.first_loss,
             report.last_loss, before, after)
    return report, update.vector
