"""Frozen-trunk features of the box's enrolment crops, computed once and kept on disk.

The trunk (SFace up to ``part.cut``) is the same on every box and never trained, so each
augmented view of each enrolment crop goes through ONNX Runtime once; later rounds only
run the small trainable tail. Entries are keyed by the crop's bytes, the model file,
the cut and the augmentation, so a re-enrolled or removed person just adds or stops
using entries. Stored as float16 (half the disk and RAM; the tail computes in float32).
No torch here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.training.api import TooFewPeople
from edge.training.augment import augmented_views, check_crop
from federation.files import PRIVATE_DIR, make_dirs, open_new
from models.trunk import TrunkRunner

log = logging.getLogger(__name__)

CropsByPerson = Mapping[str, Iterable[np.ndarray]] | Iterable[tuple[str, np.ndarray]]


def group_crops(crops: CropsByPerson) -> dict[str, list[np.ndarray]]:
    """Accept {person: [crops]} or an iterable of (person, crop); validate every crop."""
    grouped: dict[str, list[np.ndarray]] = {}
    pairs = crops.items() if isinstance(crops, Mapping) else ((p, [c]) for p, c in crops)
    for person, person_crops in pairs:
        for crop in person_crops:
            grouped.setdefault(str(person), []).append(check_crop(crop))
    return grouped


@dataclass(frozen=True)
class TrainingSet:
    features: np.ndarray  # (n_views_total, C, H, W) float16
    labels: np.ndarray  # (n_views_total,) int64, index into ``people``
    people: tuple[str, ...]
    n_crops: int  # distinct enrolment crops (the FedAvg weight)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureCache:
    """Trunk features per (crop, view) under ``cache_dir``, computed on first use."""

    def __init__(
        self,
        model_path: Path,
        cut: str,
        cache_dir: Path,
        n_views: int = 4,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.model_path, self.cut, self.n_views, self.seed = model_path, cut, n_views, seed
        self.threads = threads
        self._model_id = _file_digest(model_path)[:16]
        self.dir = cache_dir / f"{self._model_id}-{cut}-v{n_views}-s{seed}"
        self._runner: TrunkRunner | None = None

    def _key(self, crop: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(crop).tobytes()).hexdigest()[:24]

    def _compute(self, crop: np.ndarray, path: Path) -> np.ndarray:
        if self._runner is None:
            self._runner = TrunkRunner(self.model_path, [self.cut], threads=self.threads)
        seed = self.seed + int(self._key(crop)[:8], 16)
        views = augmented_views(crop, self.n_views, seed=seed)
        features = self._runner.run(views)[self.cut].astype(np.float16)
        # features of enrolled faces are biometric data: private to the box user
        make_dirs(self.dir, PRIVATE_DIR)
        # a temp file of this writer's own: two trainings on one box (`train` during a
        # federated round) computing the same crop shared ".tmp.npy", and the second's
        # rename found it gone (FileNotFoundError, a fresh-clone CI)
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npy")
        try:
            with open_new(tmp, 0o600) as f:
                np.save(f, features)
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written entry
        finally:
            tmp.unlink(missing_ok=True)  # gone after the rename; a failed write's is not
        return features

    def features_for(self, crop: np.ndarray) -> np.ndarray:
        path = self.dir / f"{self._key(crop)}.npy"
        if path.exists():
            try:
                return np.load(path)
            except (OSError, ValueError):
                log.warning("feature cache entry %s is unreadable; recomputing", path.name)
        return self._compute(crop, path)

    def training_set(self, crops: CropsByPerson, min_people: int = 2) -> TrainingSet:
        grouped = group_crops(crops)
        people = tuple(sorted(grouped))
        if len(people) < min_people:
            raise TooFewPeople(
                f"{len(people)} enrolled people: training needs at least {min_people} "
                "(enrol more people before training)"
            )
        feats, labels, n_crops = [], [], 0
        for label, person in enumerate(people):
            for crop in grouped[person]:
                f = self.features_for(crop)
                feats.append(f)
                labels.append(np.full(len(f), label, dtype=np.int64))
                n_crops += 1
        log.info("training set: %d people, %d crops, %d views", len(people), n_crops,
                 sum(len(f) for f in feats))
        return TrainingSet(np.concatenate(feats), np.concatenate(labels), people, n_crops)
