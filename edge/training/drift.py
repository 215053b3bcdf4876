"""``NumpyDriftTrainer``: a stand-in LocalTrainer that does NOT learn. Tests and fallback only.

It moves the federated vector by a small deterministic pseudo-random step (seeded by the
device and the round), scaled per tensor to its own spread, so every box sends a
distinct, realistic-looking update and the encrypted FedAvg can be checked against the
plaintext oracle. It is used where torch is not installed (the demo says so loudly) and
in the federation tests that are about transport and cryptography, not learning. The
real trainer is ``edge.training.trainer`` (torch).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from edge.training.api import LocalUpdate, TrainingError
from models.federated_parts import FederatedPart


class NumpyDriftTrainer:
    """Deterministic drift of the weights; ``n_samples`` is what the box claims to have."""

    def __init__(
        self,
        part: FederatedPart,
        initial_vector: np.ndarray,
        device_id: str,
        n_samples: int,
        step: float = 1e-3,
    ) -> None:
        vec = np.asarray(initial_vector, dtype=np.float32).ravel()
        if vec.size != part.size:
            raise TrainingError(f"initial vector has {vec.size} values, {part.key} needs "
                                f"{part.size}")
        if n_samples < 1:
            raise TrainingError("n_samples must be >= 1")
        self.part = part
        self.initial = vec
        self.device_id = device_id
        self.n_samples = int(n_samples)
        self.step = float(step)
        # per-tensor spread, so a 1e-3 step means the same thing for a conv weight and a
        # batch-norm shift
        self._scale = np.concatenate([
            np.full(int(np.prod(shape)), max(float(np.std(values)), 1e-3), np.float32)
            for (_, shape), values in zip(part.initializers,
                                          part.unflatten(vec).values(), strict=True)
        ])

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        t0 = time.perf_counter()
        start = self.initial if global_vector is None else np.asarray(global_vector, np.float32)
        seed = int.from_bytes(hashlib.sha256(f"{self.device_id}/{round_no}".encode())
                              .digest()[:8], "little")
        rng = np.random.default_rng(seed)
        direction = rng.standard_normal(start.size).astype(np.float32)
        vector = (start + self.step * self._scale * direction).astype(np.float32)
        return LocalUpdate(vector=vector, n_samples=self.n_samples,
                           seconds=time.perf_counter() - t0)
