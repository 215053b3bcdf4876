"""Worker tasks of the federated experiment: train one institution, embed one domain.

Tasks carry paths, not arrays: workers (spawned, one torch thread each) memory-map the
cached features, so the OS page cache is shared and nothing large is pickled.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_TAILS: dict[tuple[str, str], object] = {}


def _tail(model_path: Path, part_name: str) -> Any:
    from models.federated_parts import get_part
    from models.trainable import TrainableTail

    key = (str(model_path), part_name)
    if key not in _TAILS:
        _TAILS[key] = TrainableTail(model_path, get_part(part_name))
    return _TAILS[key]


def pretrained_vector(model_path: Path, part_name: str) -> np.ndarray:
    """The part's values in the pretrained model (the federation's round-0 model)."""
    return np.asarray(_tail(model_path, part_name).initial_vector(), dtype=np.float32)


def _features(folder: Path, cut: str) -> np.ndarray:
    return np.load(folder / f"{cut}.npy", mmap_mode="r")


@dataclass(frozen=True)
class TrainTask:
    model_path: Path
    part_name: str
    start_vector: np.ndarray | None
    feature_dirs: tuple[Path, ...]  # several: centralised training pools institutions
    labels: tuple[np.ndarray, ...]
    config: object  # edge.training.trainer.TrainConfig (kept loose: no torch import here)


def run_train(task: TrainTask) -> tuple[np.ndarray, float, float]:
    """Returns the trained vector, the first and the last loss."""
    from edge.training.loop import fit

    tail = _tail(task.model_path, task.part_name)
    tail.set_vector(
        task.start_vector if task.start_vector is not None else tail.initial_vector()
    )
    cut = tail.part.cut
    if len(task.feature_dirs) == 1:
        feats = _features(task.feature_dirs[0], cut)
        labels = task.labels[0]
    else:
        # pooled: identities of different institutions are distinct people
        offset, labs = 0, []
        for lab in task.labels:
            labs.append(lab + offset)
            offset += int(lab.max()) + 1
        feats = np.concatenate([np.asarray(_features(d, cut)) for d in task.feature_dirs])
        labels = np.concatenate(labs)
    result = fit(tail, feats, labels, task.config)  # type: ignore[arg-type]
    return tail.get_vector(), result.first_loss, result.last_loss


@dataclass(frozen=True)
class EmbedTask:
    model_path: Path
    part_name: str
    vector: np.ndarray | None  # None: pretrained
    feature_dir: Path


def run_embed(task: EmbedTask) -> np.ndarray:
    if task.vector is None:
        return np.asarray(np.load(task.feature_dir / "fc1.npy"), dtype=np.float32)
    from edge.training.loop import embed_all

    tail = _tail(task.model_path, task.part_name)
    tail.set_vector(task.vector)
    return embed_all(tail, _features(task.feature_dir, tail.part.cut)).numpy()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


class Workers:
    """A spawned process pool (torch and fork do not mix well)."""

    def __init__(self, n: int) -> None:
        self._pool = mp.get_context("spawn").Pool(n, _init_worker) if n > 1 else None

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> list[R]:
        items = list(tasks)
        if self._pool is None:
            _init_worker()
            return [fn(t) for t in items]
        return self._pool.map(fn, items, chunksize=1)

    def imap(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        if self._pool is None:
            _init_worker()
            return (fn(t) for t in tasks)
        return self._pool.imap(fn, tasks, chunksize=1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
