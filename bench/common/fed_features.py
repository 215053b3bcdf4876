"""Aligned crops and frozen-trunk features for the federated experiment, cached on disk.

The trunk (SFace up to the cut) is 95% of the compute and never changes, so each
(image, domain, augmented view) goes through ONNX Runtime exactly once; the result is
stored as float16 memmaps under the cache folder and reused by every run and model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bench.common.fed_data import CLEAN, Design, Domain
from edge.training.augment import augmented_views

log = logging.getLogger(__name__)

CUTS = ("conv_14_dw_relu", "conv_14_conv2d")
FEATURE_SHAPE = (1024, 7, 7)


def default_cache() -> Path:
    return Path(os.environ.get("FEDFACE_BENCH_CACHE", Path.home() / ".cache/fedface/bench"))


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def align_crops(
    lfw_dir: Path, images: Sequence[str], yunet: Path, sface: Path, cache: Path
) -> np.ndarray:
    """112x112 BGR crops (YuNet landmarks + SFace alignment), one per image, cached."""
    path = cache / f"crops-{_digest(list(images))}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    detector = cv2.FaceDetectorYN.create(str(yunet), "", (250, 250), 0.5)
    recogniser = cv2.FaceRecognizerSF.create(str(sface), "")
    crops = np.zeros((len(images), 112, 112, 3), np.uint8)
    missing = 0
    for i, rel in enumerate(images):
        img = cv2.imread(str(lfw_dir / rel))
        if img is None:
            raise FileNotFoundError(f"cannot read {lfw_dir / rel}")
        detector.setInputSize((img.shape[1], img.shape[0]))
        _, faces = detector.detect(img)
        if faces is None or len(faces) == 0:
            # LFW centres the face: fall back to the central region
            missing += 1
            crops[i] = cv2.resize(img[69:181, 69:181], (112, 112))
            continue
        centre = np.array([img.shape[1] / 2, img.shape[0] / 2])
        dist = [np.linalg.norm(f[:2] + f[2:4] / 2 - centre) for f in faces]
        crops[i] = recogniser.alignCrop(img, faces[int(np.argmin(dist))])
    log.info("aligned %d images (%d without a detection)", len(images), missing)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), crops)
    os.replace(path.with_suffix(".tmp.npy"), path)
    return np.load(path, mmap_mode="r")


@dataclass(frozen=True)
class FeatureSet:
    """Trunk features of a list of (image, view) items under one domain."""

    folder: Path  # <cut>.npy and fc1.npy inside
    cuts: dict[str, np.ndarray]  # cut -> (n, 1024, 7, 7) float16 memmap
    embedding: np.ndarray  # (n, 128) float32: pretrained SFace output


@dataclass(frozen=True)
class _Job:
    paths: tuple[str, ...]  # memmap paths: cuts..., embedding
    rows: tuple[int, int]
    items: tuple[tuple[int, int], ...]  # (image index, view)
    domain: Domain
    n_views: int
    seed: int
    marker: str


_WORKER: dict[str, object] = {}


def _init_worker(sface: str, crops_path: str) -> None:
    from models.trunk import TrunkRunner

    _WORKER["runner"] = TrunkRunner(sface, CUTS, threads=1)
    _WORKER["crops"] = np.load(crops_path, mmap_mode="r")


def _run_job(job: _Job) -> str:
    from models.trunk import TrunkRunner

    runner = _WORKER["runner"]
    crops = _WORKER["crops"]
    assert isinstance(runner, TrunkRunner) and isinstance(crops, np.ndarray)
    batch = []
    for image, view in job.items:
        views = augmented_views(np.asarray(crops[image]), job.n_views, seed=job.seed + image)
        noise_seed = (job.seed * 100003 + image) * 64 + view
        batch.append(job.domain.apply(views[view], seed=noise_seed))
    out = runner.run(batch)
    start, stop = job.rows
    for path, name in zip(job.paths, (*CUTS, "fc1"), strict=True):
        arr = np.load(path, mmap_mode="r+")
        arr[start:stop] = out[name].astype(arr.dtype)
        arr.flush()
    return job.marker


class FeatureStore:
    """Computes missing feature sets in worker processes, then serves them as memmaps."""

    def __init__(self, cache: Path, crops_path: Path, sface: Path, seed: int, workers: int = 2):
        self.cache, self.crops_path, self.sface = cache, crops_path, sface
        self.seed, self.workers = seed, workers
        self._pending: list[_Job] = []
        self._markers: list[Path] = []
        self._jobs_left: dict[str, int] = {}

    def _paths(self, key: str) -> tuple[tuple[str, ...], Path]:
        folder = self.cache / "features" / key
        names = [*(f"{c}.npy" for c in CUTS), "fc1.npy"]
        return tuple(str(folder / n) for n in names), folder / "done"

    def request(
        self, items: Sequence[tuple[int, int]], domain: Domain, n_views: int
    ) -> str:
        key = _digest([self.crops_path.name, list(items), domain, n_views, self.seed])
        paths, done = self._paths(key)
        if done.exists() or done in self._markers:
            return key
        Path(paths[0]).parent.mkdir(parents=True, exist_ok=True)
        n = len(items)
        todo = np.ones(n, dtype=bool)
        try:  # resume an interrupted computation: an embedding row of zeros is not done
            todo = np.all(np.load(paths[-1], mmap_mode="r") == 0, axis=1)
        except (OSError, ValueError):
            for path in paths[:-1]:
                np.lib.format.open_memmap(path, "w+", np.float16, (n, *FEATURE_SHAPE)).flush()
            np.lib.format.open_memmap(paths[-1], "w+", np.float32, (n, 128)).flush()
        chunk = 32
        jobs = 0
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            if todo[start:stop].any():
                rows = tuple(items[start:stop])
                self._pending.append(
                    _Job(paths, (start, stop), rows, domain, n_views, self.seed, str(done))
                )
                jobs += 1
        self._markers.append(done)
        self._jobs_left[str(done)] = jobs
        return key

    def compute(self) -> None:
        for marker in self._markers:
            if self._jobs_left.get(str(marker)) == 0:
                marker.write_text("ok\n")
        if not self._pending:
            self._markers = []
            return
        total = sum(j.rows[1] - j.rows[0] for j in self._pending)
        log.info("trunk features: %d crops to compute with %d workers", total, self.workers)
        t0, finished = time.perf_counter(), 0
        ctx = mp.get_context("fork")
        with ctx.Pool(
            self.workers, _init_worker, (str(self.sface), str(self.crops_path))
        ) as pool:
            for i, done in enumerate(pool.imap(_run_job, self._pending)):
                finished += self._pending[i].rows[1] - self._pending[i].rows[0]
                self._jobs_left[done] -= 1
                if self._jobs_left[done] == 0:
                    Path(done).write_text("ok\n")  # this set is complete: survives a stop
                if i % 64 == 63:
                    log.info(
                        "trunk features %d/%d (%.0f s)", finished, total, time.perf_counter() - t0
                    )
        self._pending, self._markers, self._jobs_left = [], [], {}

    def load(self, key: str) -> FeatureSet:
        paths, done = self._paths(key)
        if not done.exists():
            raise RuntimeError(f"feature set {key} was requested but not computed")
        cuts = {c: np.load(p, mmap_mode="r") for c, p in zip(CUTS, paths, strict=False)}
        embedding = np.load(paths[-1], mmap_mode="r")
        return FeatureSet(folder=done.parent, cuts=cuts, embedding=embedding)


@dataclass(frozen=True)
class ExperimentFeatures:
    test: dict[str, FeatureSet]  # domain name -> features of design.test_images
    train: list[tuple[FeatureSet, np.ndarray]]  # per institution: features, labels
    domains: list[Domain]


def experiment_features(
    design: Design,
    crops_path: Path,
    sface: Path,
    cache: Path,
    n_views: int,
    seed: int,
    workers: int = 2,
) -> ExperimentFeatures:
    store = FeatureStore(cache, crops_path, sface, seed, workers)
    domains = [CLEAN, *{inst.domain.name: inst.domain for inst in design.institutions}.values()]
    # training sets first: tuning can start while test domains are still being computed
    train_keys, labels = [], []
    for inst in design.institutions:
        items, lab = [], []
        for label, person in enumerate(inst.people):
            for image in design.train_images[person]:
                for view in range(n_views):
                    items.append((image, view))
                    lab.append(label)
        train_keys.append(store.request(items, inst.domain, n_views))
        labels.append(np.array(lab, dtype=np.int64))
    test_items = [(int(i), 0) for i in design.test_images]
    test_keys = {d.name: store.request(test_items, d, 1) for d in domains}
    store.compute()
    return ExperimentFeatures(
        test={name: store.load(key) for name, key in test_keys.items()},
        train=[(store.load(k), lab) for k, lab in zip(train_keys, labels, strict=True)],
        domains=domains,
    )
