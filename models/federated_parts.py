"""Federated parameter sets: which part of the embedding network the federation trains.

Only this part leaves a box (encrypted); the frozen trunk below it is identical on every
box, so its features can be cached per enrolment crop. A part is named and versioned, and
maps onto ONNX initializer names of the SFace graph, so federated weights are patched
into the inference graph by name: no torch and no re-export on the box's inference path.

The flat vector order is the order of ``initializers``; every box and every round of a
federation must use the same part (its ``key`` travels with the federation config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


class PartMismatchError(ValueError):
    """A vector or weight dict does not fit the federated part it claims to be."""


@dataclass(frozen=True)
class FederatedPart:
    name: str
    version: int
    # (initializer name, shape) in flat-vector order
    initializers: tuple[tuple[str, tuple[int, ...]], ...]
    description: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(shape)) for _, shape in self.initializers))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.initializers)

    def flatten(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate the part's tensors (by name) into one float32 vector."""
        pieces = []
        for name, shape in self.initializers:
            if name not in weights:
                raise PartMismatchError(f"{self.key}: missing tensor {name!r}")
            arr = np.asarray(weights[name], dtype=np.float32)
            if arr.shape != shape:
                raise PartMismatchError(
                    f"{self.key}: tensor {name!r} has shape {arr.shape}, expected {shape}"
                )
            pieces.append(arr.ravel())
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector back into named tensors (copies, float32)."""
        vec = np.asarray(vector, dtype=np.float32).ravel()
        if vec.size != self.size:
            raise PartMismatchError(
                f"{self.key}: vector has {vec.size} values, expected {self.size}"
            )
        out: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in self.initializers:
            n = int(np.prod(shape))
            out[name] = vec[offset : offset + n].reshape(shape).copy()
            offset += n
        return out


def _bn_affine(prefix: str, channels: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Only the affine scale/shift are trained; running mean/var stay frozen.
    return ((f"{prefix}_gamma", (channels,)), (f"{prefix}_beta", (channels,)))


# The last 1x1 convolution block of SFace with its batch-norm affines: 1.05M values.
CONV14 = FederatedPart(
    name="conv14",
    version=1,
    initializers=(
        ("conv_14_conv2d_weight", (1024, 1024, 1, 1)),
        *_bn_affine("conv_14_batchnorm", 1024),
        *_bn_affine("bn1", 1024),
        *_bn_affine("fc1", 128),
    ),
    description="last 1x1 conv block (conv_14) + batch-norm affines of conv_14, bn1, fc1",
)

PARTS: dict[str, FederatedPart] = {CONV14.name: CONV14}
DEFAULT_PART = CONV14.name


def get_part(name: str) -> FederatedPart:
    try:
        return PARTS[name]
    except KeyError:
        known = ", ".join(sorted(PARTS))
        raise PartMismatchError(f"unknown federated part {name!r} (known: {known})") from None
