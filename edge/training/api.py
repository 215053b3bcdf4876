"""What the federation client needs from a trainer, without importing torch.

The client asks a ``LocalTrainer`` for one ``local_update`` per round; the torch
implementation lives in ``edge.training.trainer`` and is imported only by boxes that train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.federated_parts import FederatedPart


@dataclass(frozen=True)
class LocalUpdate:
    vector: np.ndarray  # flat float32, part.size values: the box's new federated weights
    n_samples: int  # enrolment crops used (the FedAvg weight); augmented views not counted
    seconds: float  # wall time of the update (feature caching + training)


class LocalTrainer(Protocol):
    """A trainer may also have ``stop()``: end a round that is running (its
    ``local_update`` raises ``TrainingStopped``) and refuse any later one. The client
    calls it when it stops, so that a stopping ``join`` does not wait out the round."""

    part: FederatedPart

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        """Train from ``global_vector`` (None: the pretrained weights) on the box's own
        people and return the new federated weights."""
        ...


class TrainingError(ValueError):
    """Training cannot run: too few enrolled people or crops, or a bad vector."""


class TrainingStopped(Exception):
    """The trainer was stopped (its box is stopping) before the round's training ended:
    nothing of the round is sealed or sent. Not a TrainingError: nothing is wrong."""


class TooFewPeople(TrainingError):
    """Fewer enrolled (trainable) people than training needs: the box has nothing to
    federate yet, which its round client says as sitting the round out."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 2.0  # passes over the box's augmented views per round
    batch_size: int = 64
    lr: float | None = None  # Adam, federated part; None: PART_LR of the part
    head_lr: float = 1e-2  # Adam, local class centres
    prox: float = 0.0  # weight of ||theta - theta_round_start||^2
    scale: float = 30.0  # CosFace s
    margin: float = 0.25  # CosFace m
    loss: str = "cosface"  # one of LOSSES ("supcon": models.trainable.supervised_contrastive)
    time_budget_s: float = 300.0  # stop the round early after this much training
    threads: int = 1
    seed: int = 0


LOSSES = ("cosface", "supcon")  # TrainConfig.loss: the product's, and one for benches


@dataclass(frozen=True)
class FitResult:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    stopped_by_budget: bool = False
    losses: list[float] = field(default_factory=list)
