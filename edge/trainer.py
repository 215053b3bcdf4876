"""On-device fine-tuning of the federated part (torch; never imported by inference).

A round: trunk features of the enrolment crops come from the feature cache (computed
once), the trainable tail starts from the federated weights, a local CosFace head is
initialised at each person's mean embedding, and a few epochs of margin loss with a
proximal pull towards the round's starting weights run within a time budget. Only the
federated part's vector leaves; the head is dropped at the end of the round.

Priority: by default the round runs in a child process that lowers its own priority
(nice 10) and uses one torch thread, so the live recognition stream keeps its cores.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from edge.feature_cache import CropsByPerson, FeatureCache, TrainingSet
from edge.trainer_api import LocalUpdate, TrainingError
from models.federated_parts import DEFAULT_PART, FederatedPart, get_part
from models.trainable import (
    CosFaceHead,
    TrainableTail,
    class_centres,
    cosine_lr,
    proximal_penalty,
)

log = logging.getLogger(__name__)


# Adam learning rates per federated part, measured on the LFW experiment
# (bench.federated_accuracy): the 1M-value conv block needs small steps, the affine-only
# and low-rank parts larger ones.
PART_LR = {"conv14": 1e-4, "fc1_lora": 3e-3, "embed_bn": 5e-3}


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 2.0  # passes over the box's augmented views per round
    batch_size: int = 64
    lr: float | None = None  # Adam, federated part; None: PART_LR of the part
    head_lr: float = 1e-2  # Adam, local class centres
    prox: float = 0.0  # weight of ||theta - theta_round_start||^2
    scale: float = 30.0  # CosFace s
    margin: float = 0.25  # CosFace m
    time_budget_s: float = 300.0  # stop the round early after this much training
    threads: int = 1
    seed: int = 0


@dataclass(frozen=True)
class FitResult:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    stopped_by_budget: bool = False
    losses: list[float] = field(default_factory=list)


def embed_all(tail: TrainableTail, features: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Embeddings of cached trunk features (no grad, float32)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch):
            x = torch.from_numpy(np.asarray(features[start : start + batch], dtype=np.float32))
            out.append(tail(x))
    return torch.cat(out)


def fit(
    tail: TrainableTail, features: np.ndarray, labels: np.ndarray, config: TrainConfig
) -> FitResult:
    """Train ``tail``'s federated part in place on cached features with a fresh head."""
    if len(features) != len(labels) or len(features) == 0:
        raise TrainingError(f"{len(features)} feature rows for {len(labels)} labels")
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n_classes = int(y_all.max()) + 1
    t0 = time.perf_counter()
    head = CosFaceHead(
        class_centres(embed_all(tail, features), y_all, n_classes), config.scale, config.margin
    )
    anchor = {k: p.detach().clone() for k, p in tail.trained.items()}
    lr = config.lr if config.lr is not None else PART_LR.get(tail.part.name, 1e-4)
    optimiser = torch.optim.Adam(
        [
            {"params": list(tail.trained.values()), "lr": lr, "base": lr},
            {"params": list(head.parameters()), "lr": config.head_lr, "base": config.head_lr},
        ]
    )
    n = len(features)
    total = max(1, math.ceil(config.epochs * n / config.batch_size))
    losses: list[float] = []
    order = torch.randperm(n, generator=generator)
    cursor, step, stopped = 0, 0, False
    for step in range(total):
        # at least one step: a budget eaten by the head's set-up on a loaded box must
        # not return the starting weights as if they were trained
        if step > 0 and time.perf_counter() - t0 > config.time_budget_s:
            stopped = True
            break
        if cursor + config.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = np.sort(order[cursor : cursor + config.batch_size].numpy())
        cursor += config.batch_size
        x = torch.from_numpy(np.asarray(features[idx], dtype=np.float32))
        loss = head(tail(x), y_all[idx])
        if config.prox > 0:
            loss = loss + config.prox * proximal_penalty(tail, anchor)
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, total, group["base"])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    else:
        step = total
    return FitResult(
        steps=step,
        seconds=time.perf_counter() - t0,
        first_loss=losses[0] if losses else float("nan"),
        last_loss=losses[-1] if losses else float("nan"),
        stopped_by_budget=stopped,
        losses=losses,
    )


def _lower_priority(niceness: int) -> None:
    # Recognition must never wait for training: the child yields the CPU to it.
    try:
        os.nice(niceness)
    except OSError:
        log.warning("could not lower the trainer's priority")
    torch.set_num_threads(1)


@dataclass(frozen=True)
class _RoundJob:
    model_path: Path
    part_name: str
    features_path: Path
    labels_path: Path
    global_vector: np.ndarray | None
    config: TrainConfig


def _run_round(job: _RoundJob) -> tuple[np.ndarray, FitResult]:
    tail = TrainableTail(job.model_path, get_part(job.part_name))
    if job.global_vector is not None:
        tail.set_vector(job.global_vector)
    features = np.load(job.features_path, mmap_mode="r")
    labels = np.load(job.labels_path)
    result = fit(tail, features, labels, job.config)
    return tail.get_vector(), result


class TorchLocalTrainer:
    """``LocalTrainer`` over the box's enrolled people (see ``edge.trainer_api``).

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
        niceness: int = 10,
    ) -> None:
        self.part = part or get_part(DEFAULT_PART)
        self.model_path = Path(model_path)
        self.config = config or TrainConfig()
        self.isolate = isolate
        self.niceness = niceness
        self._crops = crops
        self._cache = FeatureCache(self.model_path, self.part.cut, cache_dir / "features",
                                   n_views=n_views, seed=self.config.seed)
        self._work = cache_dir / "round"
        self.last_result: FitResult | None = None

    def _training_set(self) -> TrainingSet:
        crops = self._crops() if callable(self._crops) else self._crops
        return self._cache.training_set(crops)  # type: ignore[arg-type]

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        t0 = time.perf_counter()
        if global_vector is not None:
            global_vector = np.asarray(global_vector, dtype=np.float32).ravel()
            if global_vector.size != self.part.size or not np.all(np.isfinite(global_vector)):
                raise TrainingError(
                    f"global vector has {global_vector.size} values (finite: "
                    f"{bool(np.all(np.isfinite(global_vector)))}), part {self.part.key} "
                    f"needs {self.part.size} finite values"
                )
        data = self._training_set()
        self._work.mkdir(parents=True, exist_ok=True)
        features_path, labels_path = self._work / "features.npy", self._work / "labels.npy"
        np.save(features_path, data.features)
        np.save(labels_path, data.labels)
        config = TrainConfig(**{**self.config.__dict__, "seed": self.config.seed + round_no})
        job = _RoundJob(self.model_path, self.part.name, features_path, labels_path,
                        global_vector, config)
        if self.isolate:
            with ProcessPoolExecutor(
                1, get_context("spawn"), _lower_priority, (self.niceness,)
            ) as pool:
                vector, result = pool.submit(_run_round, job).result()
        else:
            vector, result = _run_round(job)
        self.last_result = result
        seconds = time.perf_counter() - t0
        log.info(
            "round %d: %s trained on %d people / %d crops, %d steps, loss %.3f -> %.3f, %.1f s",
            round_no, self.part.key, len(data.people), data.n_crops, result.steps,
            result.first_loss, result.last_loss, seconds,
        )
        return LocalUpdate(vector=vector, n_samples=data.n_crops, seconds=seconds)


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
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        with tmp.open("wb") as f:
            np.savez(f, vector=update.vector, part=np.array(trainer.part.key),
                     n_samples=np.array(update.n_samples))
        os.replace(tmp, out_path)
    return update
