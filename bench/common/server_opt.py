"""Server-side optimisers on the federated average (Hsu et al. 2019, FedAvgM; Reddi et al.
2021, "Adaptive Federated Optimization", FedAdam).

Each round's pseudo-gradient is ``delta = average - previous``: what plain FedAvg would
move the model by. FedAvgM keeps a momentum of those moves; FedAdam scales each value's
move by its running root mean square. In FedFace only a key holder can compute this (the
aggregator sums ciphertexts and cannot decrypt), so the product would have to run it on
every box, identically: this module is the bench's plaintext version, to find out
whether it is worth that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ServerOptimiser:
    kind: str = "avg"  # avg (plain FedAvg), avgm, adam
    lr: float = 1.0
    momentum: float = 0.9  # avgm's beta; adam's beta1
    beta2: float = 0.99
    tau: float = 1e-3  # adam's adaptivity floor
    _m: np.ndarray | None = field(default=None, repr=False)
    _v: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("avg", "avgm", "adam"):
            raise ValueError(f"unknown server optimiser {self.kind!r} (avg, avgm, adam)")

    @classmethod
    def parse(cls, spec: str) -> ServerOptimiser:
        """``avg``, ``avgm:LR:MOMENTUM`` or ``adam:LR[:TAU]``."""
        kind, *nums = spec.split(":")
        values = [float(x) for x in nums]
        if kind == "avgm":
            lr, momentum = (values + [1.0, 0.9][len(values):])[:2]
            return cls("avgm", lr, momentum)
        if kind == "adam":
            lr = values[0] if values else 1e-2
            return cls("adam", lr, tau=values[1] if len(values) > 1 else 1e-3)
        if values:
            raise ValueError(f"avg takes no parameters: {spec!r}")
        return cls(kind)

    @property
    def label(self) -> str:
        if self.kind == "avgm":
            return f"FedAvgM lr {self.lr:g} beta {self.momentum:g}"
        if self.kind == "adam":
            return f"FedAdam lr {self.lr:g} tau {self.tau:g}"
        return "FedAvg"

    def step(self, previous: np.ndarray, average: np.ndarray) -> np.ndarray:
        delta = (average - previous).astype(np.float64)
        if self.kind == "avg":
            return average.astype(np.float32)
        if self._m is None:
            self._m = np.zeros_like(delta)
            self._v = np.zeros_like(delta)
        assert self._v is not None
        if self.kind == "avgm":
            self._m = self.momentum * self._m + delta
            move = self.lr * self._m
        else:
            self._m = self.momentum * self._m + (1 - self.momentum) * delta
            self._v = self.beta2 * self._v + (1 - self.beta2) * delta * delta
            move = self.lr * self._m / (np.sqrt(self._v) + self.tau)
        return (previous + move).astype(np.float32)
