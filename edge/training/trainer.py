"""On-device fine-tuning of the federated part (torch; never imported by inference).

A round: trunk features of the enrolment crops come from the feature cache (computed
once), the trainable tail starts from the federated weights, a local CosFace head is
initialised at each person's mean embedding, and a few epochs of margin loss with a
proximal pull towards the round's starting weights run within a time budget. Only the
federated part's vector leaves; the head is dropped at the end of the round.

Priority: by default the round runs in a child process that lowers its own priority
(nice 10) and uses one torch thread, so the live recognition stream keeps its cores.
The child also computes the trunk features of new crops: the box's long-lived process
then never holds the trunk's ONNX Runtime session, its batch buffers or the feature
arrays (measured: ~450 MB it would otherwise keep for the rest of its life).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from edge.lifetime import die_with_parent
from edge.priority import background_niceness
from edge.training.api import (
    FitResult,
    LocalUpdate,
    TooFewPeople,
    TrainConfig,
    TrainingError,
    TrainingStopped,
)
from edge.training.augment import check_crop
from edge.training.feature_cache import CropsByPerson, FeatureCache, group_crops
from federation.files import PRIVATE_DIR, make_dirs, open_new
from federation.memory import BOX_MALLOC, TRAINING_MALLOC, pin_malloc
from models.federated_parts import DEFAULT_PART, FederatedPart, get_part

__all__ = ["TorchLocalTrainer", "TrainConfig", "check_torch", "train_local"]

log = logging.getLogger(__name__)


@functools.cache
def check_torch() -> None:
    """Raise ImportError unless torch imports, checked in a short-lived child: importing
    it here would keep ~180 MB mapped in a box process that never trains itself."""
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True,
                           text=True, timeout=300, check=False)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or ["import torch failed"]
        raise ImportError(f"torch cannot be imported (the train extra): {lines[-1]}")


def _init_round_process(niceness: int, parent: int) -> None:
    # a join killed with -9 left its training child (680 MB RSS) running for good
    die_with_parent(parent)
    # As every box process while computing trunk features (federation.memory): with
    # glibc's dynamic thresholds, round 1's ONNX passes (one per crop, no arena) left
    # their freed activations in a fragmented heap, and the child grew with every view:
    # 0.9-3.5 GB for 80 people's 1,300 views (bench.edge.trainer_cost), 0.86-0.92 GB
    # pinned. _run_round_in_child loosens it for the training itself.
    pin_malloc(BOX_MALLOC)
    # Recognition must never wait for training: the child yields the CPU to it.
    try:
        os.nice(niceness)
    except OSError:
        log.warning("could not lower the trainer's priority")
    import torch

    torch.set_num_threads(1)


@dataclass(frozen=True)
class _RoundJob:
    model_path: Path
    part_name: str
    crops_path: Path  # .npz: the crops (N x 112 x 112 x 3) and each one's person
    cache_dir: Path
    n_views: int
    cache_seed: int  # the augmentation seed of the feature cache (the same every round)
    global_vector: np.ndarray | None
    config: TrainConfig


def _run_round_in_child(job: _RoundJob) -> tuple[np.ndarray, FitResult, int, int]:
    # torch's steps at BOX_MALLOC's 1 MiB mmap threshold took 1.6x as long (7.5 -> 12 s
    # for 41 steps): once the features are in, the child's heap may keep its buffers
    return _run_round(job, features_done=lambda: pin_malloc(TRAINING_MALLOC))


def _run_round(job: _RoundJob, cache: FeatureCache | None = None,
               features_done: Callable[[], None] | None = None
               ) -> tuple[np.ndarray, FitResult, int, int]:
    """(vector, fit result, people, crops); ``cache``: the caller's, when in process."""
    from edge.training.loop import fit
    from models.trainable import TrainableTail

    part = get_part(job.part_name)
    if cache is None:
        cache = _feature_cache(job.model_path, part, job.cache_dir, job.n_views,
                               job.cache_seed)
    with np.load(job.crops_path, allow_pickle=False) as data:
        crops, people = data["crops"], data["people"]
    data_set = cache.training_set([(str(p), c) for p, c in zip(people, crops, strict=True)])
    del crops
    if features_done is not None:
        features_done()
    tail = TrainableTail(job.model_path, part)
    if job.global_vector is not None:
        tail.set_vector(job.global_vector)
    result = fit(tail, data_set.features, data_set.labels, job.config)
    return tail.get_vector(), result, len(data_set.people), data_set.n_crops


_RUN_IDS = itertools.count()


def _forget_dead_runs_crops(work: Path) -> None:
    """Delete the crops a killed run left (biometric data no process will read)."""
    for stale in work.glob("crops*.npz"):
        pid = stale.name.removeprefix("crops-").split("-", 1)[0]
        if pid.isdigit() and Path(f"/proc/{pid}").exists():
            continue  # a live run's (another command on this box, or this process's)
        stale.unlink(missing_ok=True)


def _feature_cache(model_path: Path, part: FederatedPart, cache_dir: Path, n_views: int,
                   seed: int) -> FeatureCache:
    return FeatureCache(model_path, part.cut, cache_dir / "features", n_views=n_views,
                        seed=seed)


class TorchLocalTrainer:
    """``LocalTrainer`` over the box's enrolled people (see ``edge.training.api``).

    ``crops`` is ``{person: [112x112 BGR crops]}`` or an iterable of (person, crop), or
    a callable returning one (read at every round, so newly enrolled people join).
    """

    def __init__(
        self,
        model_path: Path,
        crops: CropsByPerson | object,
        cache_dir: Path,
        part: FederatedPart | None = None,
        config: TrainConfig | None = None,
        n_views: int = 4,
        isolate: bool = True,
        niceness: int | None = None,  # None: edge.federated.sealing.background_niceness()
    ) -> None:
        if isolate:
            check_torch()  # fail here, not at round 1
        else:
            import torch  # noqa: F401  (trains in this process: it is needed here anyway)
        self.part = part or get_part(DEFAULT_PART)
        self.model_path = Path(model_path)
        self.config = config or TrainConfig()
        self.isolate = isolate
        self.niceness = background_niceness() if niceness is None else niceness
        self._crops = crops
        self._cache_dir, self._n_views = cache_dir, n_views
        self._cache: FeatureCache | None = None  # in process only (isolate=False)
        self._work = cache_dir / "round"
        self.last_result: FitResult | None = None
        # stop(): the round's child is ended, not waited for (a stopping join waited out
        # the whole round, ~16 s with no word: the interpreter's exit joins the pool)
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # the pool, against a stop() while it starts
        self._pool: ProcessPoolExecutor | None = None

    def stop(self) -> None:
        """End the round running in the child, if any, and refuse later rounds: its
        ``local_update`` raises TrainingStopped. Nothing of a half-trained round is kept
        (the child's work is thrown away; its crops file is deleted by the round)."""
        with self._lock:
            self._stopped.set()
            pool = self._pool
        if pool is not None:
            # ProcessPoolExecutor has no public way to end a running job (3.14 adds
            # terminate_workers); its processes are the round's child alone
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()

    def warm_features(self) -> int:
        """Compute and cache (on disk) the trunk features of the enrolled crops, in this
        process; returns the number of crops. For benches, whose rounds must time the
        training only; a box leaves it to the round's process."""
        if self._cache is None:
            self._cache = _feature_cache(self.model_path, self.part, self._cache_dir,
                                         self._n_views, self.config.seed)
        crops = self._crops() if callable(self._crops) else self._crops
        return self._cache.training_set(crops).n_crops  # type: ignore[arg-type]

    def _save_crops(self, path: Path) -> None:
        """The enrolment crops for this round, for the round's process (0600: biometric)."""
        crops = self._crops() if callable(self._crops) else self._crops
        grouped = group_crops(crops)  # type: ignore[arg-type]
        if len(grouped) < 2:
            raise TooFewPeople(f"{len(grouped)} enrolled people: training needs at least 2 "
                                "(enrol more people before training)")
        people = [p for p, cs in grouped.items() for _ in cs]
        stacked = np.stack([check_crop(c) for cs in grouped.values() for c in cs])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, crops=stacked, people=np.array(people))

    def _run_in_child(self, job: _RoundJob) -> tuple[np.ndarray, FitResult, int, int]:
        with ProcessPoolExecutor(
            1, get_context("spawn"), _init_round_process, (self.niceness, os.getpid())
        ) as pool:
            with self._lock:  # a stop() from now on finds the child to end
                if self._stopped.is_set():
                    raise TrainingStopped("the trainer was stopped before the round began")
                self._pool = pool
                future = pool.submit(_run_round_in_child, job)  # starts the child
            try:
                return future.result()
            except BrokenProcessPool:
                if self._stopped.is_set():
                    raise TrainingStopped("the round's training was ended: the box is "
                                          "stopping") from None
                raise
            finally:
                with self._lock:
                    self._pool = None

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        t0 = time.perf_counter()
        if self._stopped.is_set():
            raise TrainingStopped("the trainer was stopped")
        if global_vector is not None:
            global_vector = np.asarray(global_vector, dtype=np.float32).ravel()
            if global_vector.size != self.part.size or not np.all(np.isfinite(global_vector)):
                raise TrainingError(
                    f"global vector has {global_vector.size} values (finite: "
                    f"{bool(np.all(np.isfinite(global_vector)))}), part {self.part.key} "
                    f"needs {self.part.size} finite values"
                )
        make_dirs(self._work, PRIVATE_DIR)
        _forget_dead_runs_crops(self._work)
        # a file of its own: `train` during a federated round wrote the same crops.npz,
        # so the round trained on the calibration people `train` includes (or lost its
        # file to the other's clean-up)
        crops_path = self._work / f"crops-{os.getpid()}-{next(_RUN_IDS)}.npz"
        self._save_crops(crops_path)
        config = TrainConfig(**{**self.config.__dict__, "seed": self.config.seed + round_no})
        job = _RoundJob(self.model_path, self.part.name, crops_path, self._cache_dir,
                        self._n_views, self.config.seed, global_vector, config)
        try:
            if self.isolate:
                vector, result, people, n_crops = self._run_in_child(job)
            else:
                if self._cache is None:
                    self._cache = _feature_cache(self.model_path, self.part, self._cache_dir,
                                                 self._n_views, self.config.seed)
                vector, result, people, n_crops = _run_round(job, self._cache)
        finally:
            crops_path.unlink(missing_ok=True)
        self.last_result = result
        seconds = time.perf_counter() - t0
        log.info(
            "round %d: %s trained on %d people / %d crops, %d steps, loss %.4g -> %.4g, %.1f s",
            round_no, self.part.key, people, n_crops, result.steps,
            result.first_loss, result.last_loss, seconds,
        )
        return LocalUpdate(vector=vector, n_samples=n_crops, seconds=seconds)


def train_local(
    model_path: Path,
    crops: CropsByPerson,
    cache_dir: Path,
    out_path: Path | None = None,
    part_name: str = DEFAULT_PART,
    global_vector: np.ndarray | None = None,
    config: TrainConfig | None = None,
    isolate: bool = True,
) -> LocalUpdate:
    """One local training run (``fedface-edge train``); optionally saves the vector.

    The saved ``.npz`` holds ``vector``, ``part`` (key) and ``n_samples``; patch it into
    the inference graph with ``part.onnx_weights(vector, base)`` and
    ``models.onnx_graph.patch_initializers``.
    """
    trainer = TorchLocalTrainer(model_path, crops, cache_dir, get_part(part_name), config,
                                isolate=isolate)
    update = trainer.local_update(global_vector, round_no=0)
    if out_path is not None:
        make_dirs(out_path.parent, PRIVATE_DIR)
        tmp = out_path.with_name(out_path.name + ".tmp")
        with open_new(tmp, 0o600) as f:  # a local update: private to the box user
            np.savez(f, vector=update.vector, part=np.array(trainer.part.key),
                     n_samples=np.array(update.n_samples))
        os.replace(tmp, out_path)
    return update
