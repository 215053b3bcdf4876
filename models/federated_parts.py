"""Federated parameter sets: which part of the embedding network the federation trains.

Only this part leaves a box (encrypted); the frozen trunk below it is identical on every
box, so its features can be cached per enrolment crop. A part is named and versioned, and
maps onto ONNX initializer names of the SFace graph, so federated weights are patched
into the inference graph by name: no torch and no re-export on the box's inference path.

The flat vector order is the order of ``initializers``; every box and every round of a
federation must use the same part (its ``key`` travels with the federation config).

Most parts map one to one onto ONNX initializers. A low-rank part (``low_rank``) carries
factors ``<name>.lora_a`` / ``<name>.lora_b`` instead of a large matrix: the box turns
them into the real initializer with ``onnx_weights(vector, base)`` (W = W0 + A @ B)
before patching, so only r * (rows + cols) values travel instead of rows * cols.

``cut`` names the frozen-trunk tensor the trainable tail starts from: trunk features are
computed once per enrolment crop at that tensor and cached.
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
    # frozen-trunk tensor the trainable tail starts from (ONNX value name)
    cut: str = "conv_14_dw_relu"
    # ONNX initializer names that this part updates through low-rank factors
    low_rank: tuple[str, ...] = ()

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


    def initial_vector(self, base: Mapping[str, np.ndarray]) -> np.ndarray:
        """The round-0 vector: pretrained values; for low-rank factors A = 0 and a fixed
        pseudo-random B (seeded by the part key, identical on every box) so that
        W0 + A @ B starts at W0 while gradients can still flow into A."""
        weights: dict[str, np.ndarray] = {}
        for name, shape in self.initializers:
            if name.endswith(".lora_a"):
                weights[name] = np.zeros(shape, dtype=np.float32)
            elif name.endswith(".lora_b"):
                seed = int.from_bytes(self.key.encode()[:8].ljust(8, b"\0"), "little")
                rng = np.random.default_rng(seed)
                weights[name] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(
                    np.float32
                )
            else:
                if name not in base:
                    raise PartMismatchError(f"{self.key}: base weights lack {name!r}")
                weights[name] = np.asarray(base[name], dtype=np.float32)
        return self.flatten(weights)

    def onnx_weights(
        self, vector: np.ndarray, base: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The ONNX initializers to patch for this vector (low-rank factors materialised).

        ``base`` holds the pretrained initializers (needed only for low-rank parts).
        """
        named = self.unflatten(vector)
        for target in self.low_rank:
            a = named.pop(f"{target}.lora_a")
            b = named.pop(f"{target}.lora_b")
            if target not in base:
                raise PartMismatchError(f"{self.key}: base weights lack {target!r}")
            w0 = np.asarray(base[target], dtype=np.float32)
            named[target] = (w0 + a @ b).astype(np.float32)
        return named


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

# The affine parameters after the last big convolution: conv_14 batch norm, its PReLU
# slopes, bn1 and fc1 (5.4k values). Tiny to send; starts after the 1x1 convolution.
EMBED_BN = FederatedPart(
    name="embed_bn",
    version=1,
    initializers=(
        *_bn_affine("conv_14_batchnorm", 1024),
        ("conv_14_relu_gamma", (1024, 1, 1)),
        *_bn_affine("bn1", 1024),
        *_bn_affine("fc1", 128),
    ),
    description="batch-norm affines + PReLU slopes after conv_14, bn1, fc1",
    cut="conv_14_conv2d",
)

# Rank-8 update of the 6.4M-value embedding Gemm: 402k values instead of 6.4M.
FC1_LORA_RANK = 8
FC1_LORA = FederatedPart(
    name="fc1_lora",
    version=1,
    initializers=(
        ("pre_fc1_weight.lora_a", (128, FC1_LORA_RANK)),
        ("pre_fc1_weight.lora_b", (FC1_LORA_RANK, 50176)),
        ("pre_fc1_bias", (128,)),
        *_bn_affine("fc1", 128),
    ),
    description="rank-8 update of pre_fc1_weight (128x50176) + pre_fc1 bias + fc1 affine",
    # same cut as embed_bn (one feature cache); the frozen BN/PReLU/bn1 run in the tail
    cut="conv_14_conv2d",
    low_rank=("pre_fc1_weight",),
)

# The whole embedding Gemm at full rank, with its bias and fc1 affine: 6.42M values. The
# largest part; it starts at the same cut as embed_bn (one feature cache) and is there to
# measure what the embedding layer itself can take (README: the part study).
FC1 = FederatedPart(
    name="fc1",
    version=1,
    initializers=(
        ("pre_fc1_weight", (128, 50176)),
        ("pre_fc1_bias", (128,)),
        *_bn_affine("fc1", 128),
    ),
    description="the whole embedding Gemm pre_fc1 (128x50176) + its bias + fc1 affine",
    cut="conv_14_conv2d",
)

PARTS: dict[str, FederatedPart] = {p.name: p for p in (CONV14, EMBED_BN, FC1_LORA, FC1)}
# Chosen by accuracy per encrypted byte (bench.federation.federated_accuracy, 504 held-out
# LFW people, 8 institutions on 4 degraded cameras, 3 CKKS rounds; mean over camera domains):
#   pretrained 91.81 | embed_bn  92.83, 0.15 MB/box/round (+1.02, 6.96 points/MB)
#                    | conv14    92.97, 25.1 MB/box/round (+1.16, 0.046 points/MB)
#                    | fc1_lora  92.07,  9.6 MB/box/round (+0.26; no better than local-only)
# embed_bn is within fold noise (SE ~0.2) of conv14 for 1/167 of the bytes; conv14 is the
# choice where bandwidth allows the largest absolute gain. Confirmed on the realistic
# small-site design with all four parts (README, "Which part"): FedAvg's top-1 at FAR 1e-3
# per MB and per training second is highest for embed_bn (fc1 ties per second at 1,000x
# the bytes); conv14 takes +0.5 more of a larger headroom for 167x the bytes.
DEFAULT_PART = EMBED_BN.name


def get_part(name: str) -> FederatedPart:
    try:
        return PARTS[name]
    except KeyError:
        known = ", ".join(sorted(PARTS))
        raise PartMismatchError(f"unknown federated part {name!r} (known: {known})") from None
