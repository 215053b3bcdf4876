"""Bounded influence under encryption: a cap on each box's weight and a clip on each
update's change, and the check every box runs on a decrypted sum.

The aggregator sums ciphertexts it cannot read, so it can check neither a box's sample
count ``n`` nor how far its update moves the weights. The federation's policy
(``Bounds``, announced with every round and carried by the result's pointer as a
``ResultPolicy``) says what an honest update looks like:

- ``max_samples``: a box weighs at most this many samples (an honest box clamps its
  ``n`` before encrypting): its share of a round's average is at most
  ``max_samples / (max_samples + sum of the other boxes' n)``;
- ``clip_norm`` (optional): the L2 norm of ``w_i - w_base`` is at most C (an honest box
  clips its delta, as the DP option does with ``federation.crypto.dp.clip_delta``).

What a box can check after decrypting, and the aggregator cannot (``check_sums``,
``check_change``): the decrypted count is at most ``k * max_samples / count_scale``
(``k``: the updates the aggregator says it summed, in the signed result) and at least
``k / count_scale`` (every update counts one sample or more); and the average moves the
base by at most C in L2 (a weighted average of vectors in the C-ball stays in it), plus
the CKKS noise and, in a DP round, the Gaussian noise the boxes added. A sum outside
these bounds holds an update that broke the policy: the box refuses the round
(``count_over_cap``, ``count_under_floor``, ``change_over_clip``) before its canary.
docs/protocol.md ("Bounded influence") says what this guarantees and what it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from federation.crypto.dp import DpConfig, clip_delta
from federation.errors import MALFORMED, OUT_OF_RANGE, FederationError

# Default cap of the aggregator's ``serve``: 20x the ~50 samples of a typical box, so
# honest boxes are rarely clamped while one box holds at most ~1000/(1000 + others).
DEFAULT_MAX_SAMPLES = 1000

COUNT_OVER_CAP = "count_over_cap"
COUNT_UNDER_FLOOR = "count_under_floor"
CHANGE_OVER_CLIP = "change_over_clip"

# CKKS noise of a decrypted slot at the default parameters is ~1e-6 per summed update
# (bench.federation.ckks_params); these margins are 100x that, and far below what an
# update breaking the policy shows (one sample more than the cap is 1/count_scale).
COUNT_ABS_TOLERANCE = 1e-3
SLOT_NOISE = 1e-4  # per summed update, per value of the weighted sum
# Gaussian noise norm: sigma * (sqrt(d) + DP_SIGMAS) bounds it but for odds below e^-50
DP_SIGMAS = 10.0


@dataclass(frozen=True)
class Bounds:
    """The federation's bounds on one update (announced; the same for every box)."""

    max_samples: int  # cap on a box's n
    clip_norm: float | None = None  # L2 bound of w_i - w_base; None: no clip

    def __post_init__(self) -> None:
        if isinstance(self.max_samples, bool) or self.max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer, got {self.max_samples!r}")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm)
                                               and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")

    def to_dict(self) -> dict[str, Any]:
        return {"max_samples": self.max_samples, "clip_norm": self.clip_norm}

    @classmethod
    def from_dict(cls, data: object) -> Bounds:
        """Strict parse of an announced ``bounds`` object (FederationError malformed)."""
        if not isinstance(data, dict):
            raise FederationError(MALFORMED, "bounds must be an object")
        cap, clip = data.get("max_samples"), data.get("clip_norm")
        if isinstance(cap, bool) or not isinstance(cap, int):
            raise FederationError(MALFORMED, "bounds max_samples must be an integer")
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))):
            raise FederationError(MALFORMED, "bounds clip_norm must be a number or null")
        try:
            return cls(cap, None if clip is None else float(clip))
        except ValueError as exc:
            raise FederationError(MALFORMED, f"bounds: {exc}") from None

    def capped(self, n_samples: int) -> int:
        return min(int(n_samples), self.max_samples)

    def dp_within(self, dp: DpConfig) -> DpConfig:
        """The DP config a box applies under these bounds: clipped to the smaller C."""
        if self.clip_norm is None or dp.clip_norm <= self.clip_norm:
            return dp
        return replace(dp, clip_norm=self.clip_norm)


@dataclass(frozen=True)
class ResultPolicy:
    """What a box needs to check a round's decrypted sum: the round's policy, as its
    announce said it (the pointer carries it, so a result is checked on its own terms)."""

    count_scale: float
    bounds: Bounds
    dp: DpConfig | None = None
    quorum: int = 1

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"count_scale": self.count_scale, "quorum": self.quorum,
                                **self.bounds.to_dict()}
        if self.dp is not None:
            body["dp"] = self.dp.to_dict()
        return body

    @classmethod
    def from_dict(cls, data: object) -> ResultPolicy:
        if not isinstance(data, dict):
            raise FederationError(MALFORMED, "result policy must be an object")
        scale, quorum = data.get("count_scale"), data.get("quorum", 1)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise FederationError(MALFORMED, "result policy count_scale must be > 0")
        if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
            raise FederationError(MALFORMED, "result policy quorum must be an integer >= 1")
        dp = DpConfig.from_dict(data["dp"]) if data.get("dp") is not None else None
        bounds = Bounds.from_dict({k: data.get(k) for k in ("max_samples", "clip_norm")})
        return cls(float(scale), bounds, dp, quorum)


def clip_update(local: np.ndarray, base: np.ndarray, clip_norm: float
                ) -> tuple[np.ndarray, float]:
    """``base + clip(local - base)`` as float32, and the delta's norm before clipping."""
    w = np.asarray(local, dtype=np.float64).ravel()
    b = np.asarray(base, dtype=np.float64).ravel()
    if w.shape != b.shape:
        raise ValueError(f"local vector has {w.size} values, base has {b.size}")
    clipped, norm = clip_delta(w - b, clip_norm)
    return (b + clipped).astype(np.float32), norm


def check_update(weights: np.ndarray, n_samples: int, bounds: Bounds,
                 base: np.ndarray | None) -> None:
    """``encrypt_update``'s side: refuse an update the policy forbids (an honest box's
    own mistake; a hostile one skips this, which is why every box checks the sum)."""
    if n_samples > bounds.max_samples:
        raise FederationError(COUNT_OVER_CAP, f"n_samples {n_samples} is over the "
                              f"federation's cap of {bounds.max_samples}: clamp it first")
    if bounds.clip_norm is None or base is None:
        return
    delta = np.asarray(weights, dtype=np.float64).ravel() - np.asarray(base, np.float64).ravel()
    norm = float(np.linalg.norm(delta))
    # float32 rounding of base + clipped delta: a few ulps of the weights, never more
    slack = 1e-5 * bounds.clip_norm + 1e-6 * math.sqrt(delta.size)
    if norm > bounds.clip_norm + slack:
        raise FederationError(CHANGE_OVER_CLIP, f"update moves the base by {norm:.4g} (L2), "
                              f"over the federation's clip of {bounds.clip_norm:g}: clip it")


def check_sums(count: float, k: int, policy: ResultPolicy) -> None:
    """The decrypted count of ``k`` summed updates against the cap (and the floor)."""
    if k < 1:
        raise FederationError(MALFORMED, "a result must sum at least one update")
    if not (math.isfinite(count) and count > 0):
        raise FederationError(OUT_OF_RANGE, f"decrypted sample count {count!r} is not > 0")
    per_sample = 1.0 / policy.count_scale
    ceiling = k * policy.bounds.max_samples * per_sample
    if count > ceiling * (1 + 1e-6) + COUNT_ABS_TOLERANCE:
        raise FederationError(COUNT_OVER_CAP, (
            f"the {k} update(s) count {count * policy.count_scale:.1f} samples, over "
            f"{k} x the cap of {policy.bounds.max_samples}: an update ignored the cap"))
    floor = k * per_sample
    if count < floor * (1 - 1e-6) - COUNT_ABS_TOLERANCE:
        raise FederationError(COUNT_UNDER_FLOOR, (
            f"the {k} update(s) count {count * policy.count_scale:.3f} samples, fewer than "
            f"one each: an update's count slot was forged"))


def dp_noise_allowance(policy: ResultPolicy | None, k: int, length: int) -> float:
    """The L2 norm the DP noise of an average of ``k`` updates stays under (0: no DP)."""
    if policy is None or policy.dp is None:
        return 0.0
    # equal weights: the average's noise is one box's / sqrt(k)
    sigma = policy.bounds.dp_within(policy.dp).box_noise_std(policy.quorum)
    return sigma / math.sqrt(max(1, k)) * (math.sqrt(length) + DP_SIGMAS)


def allowed_change(policy: ResultPolicy, k: int, count: float, length: int) -> float | None:
    """The largest L2 change of an average of ``k`` honest updates (None: no clip). Under
    DP every box clips to the smaller of the federation's clip and the DP clip."""
    clip = policy.bounds.clip_norm
    if policy.dp is not None:
        clip = policy.bounds.dp_within(policy.dp).clip_norm
    if clip is None:
        return None
    # CKKS: per value, the weighted sum's noise (k updates) divided by the count
    ckks = SLOT_NOISE * k / max(count, 1e-12) * math.sqrt(length)
    return clip * (1 + 1e-5) + ckks + dp_noise_allowance(policy, k, length)


def check_change(average: np.ndarray, base: np.ndarray, policy: ResultPolicy, k: int,
                 count: float) -> float:
    """Refuse an average that moves ``base`` beyond what clipped updates allow; returns
    the change (L2)."""
    change = float(np.linalg.norm(np.asarray(average, np.float64)
                                  - np.asarray(base, np.float64).ravel()))
    limit = allowed_change(policy, k, count, average.size)
    if limit is not None and change > limit:
        raise FederationError(CHANGE_OVER_CLIP, (
            f"the average of {k} update(s) moves the base by {change:.4g} (L2), over the "
            f"{limit:.4g} that updates clipped to {policy.bounds.clip_norm:g} allow: an "
            "update ignored the clip"))
    return change
