"""What the federation client needs from a trainer, without importing torch.

The client asks a ``LocalTrainer`` for one ``local_update`` per round; the torch
implementation lives in ``edge.trainer`` and is imported only by boxes that train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models.federated_parts import FederatedPart


@dataclass(frozen=True)
class LocalUpdate:
    vector: np.ndarray  # flat float32, part.size values: the box's new federated weights
    n_samples: int  # enrolment crops used (the FedAvg weight); augmented views not counted
    seconds: float  # wall time of the update (feature caching + training)


class LocalTrainer(Protocol):
    part: FederatedPart

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        """Train from ``global_vector`` (None: the pretrained weights) on the box's own
        people and return the new federated weights."""
        ...


class TrainingError(ValueError):
    """Training cannot run: too few enrolled people or crops, or a bad vector."""
