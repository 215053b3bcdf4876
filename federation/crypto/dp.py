"""Differential privacy of a box's update: clip, add Gaussian noise, account the budget.

The option is per federation: the aggregator announces it with every round (``dp`` in
the announce JSON) so every box applies the same; each box applies it to its own update
BEFORE encryption (the aggregator only ever sees ciphertexts either way).

What a box does (``privatize``): ``delta = w_local - w_base`` is clipped to L2 norm
``clip_norm`` (C), Gaussian noise is added, and the box sends ``w_base + noisy delta``
with EQUAL weight: it encrypts with ``n = count_scale`` (so ``c*n = 1``) instead of its
sample count. The sample count is data-dependent (it would need its own noise) and a
large n would multiply the noised delta; equal weights make the federated result the
plain mean of the boxes' noised weights.

Two modes (``mode``), with the guarantee each gives:

- ``local``: each box adds N(0, (z*C)^2) per coordinate to its own clipped delta. The
  update that leaves the box is private on its own, against everyone (the aggregator
  colluding with a box that holds the federation key, other boxes reading a single
  update). Neighbouring = any two datasets of the box (its whole contribution changes,
  institution level): L2 sensitivity 2C, so per round RDP(a) = a * (2C)^2 / (2 (zC)^2)
  = 2a / z^2.
- ``distributed``: each box adds a share N(0, (z*C)^2 / m) with m = the announced
  quorum, so a SUM of at least m updates (a round closes only with quorum) carries noise
  of at least (z*C)^2. Neighbouring = one box added or removed (its clipped delta moves
  the sum by at most C): per round RDP(a) = a / (2 z^2). Valid only against parties who
  see the sum (the boxes decrypting the result) and only if every box is honest (adds
  its share); a single update carries only 1/m of the noise, so this does NOT protect an
  update against the aggregator colluding with a key-holding box.

Accountant: Renyi DP of the Gaussian mechanism (Mironov 2017), composed by adding RDP
over rounds (no subsampling amplification: every listed box takes part in every
round), converted to (epsilon, delta) with the bound of Canonne, Kamath & Steinke 2020
(the one Opacus uses), minimised over a grid of orders. ``gaussian_epsilon_exact`` is
the tight (epsilon, delta) of the composed Gaussian mechanism (Balle & Wang 2018), used
by the tests as a lower bound that the RDP figure must stay above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from federation.errors import MALFORMED, FederationError

MODES = ("local", "distributed")
ACCOUNTANT = "RDP (Gaussian mechanism, Mironov 2017; conversion Canonne-Kamath-Steinke 2020)"
# Orders of the RDP grid: the optimum for useful budgets lies between ~1.5 and a few
# hundred; a dense log grid keeps the epsilon within a fraction of a percent of the
# continuous minimum.
ORDERS: tuple[float, ...] = tuple(float(a) for a in np.unique(np.concatenate([
    1.0 + np.logspace(-2, 0, 60), np.logspace(np.log10(2.0), 4, 400)])))


@dataclass(frozen=True)
class DpConfig:
    """DP settings of a federation (announced; the same on every box)."""

    clip_norm: float  # C: L2 bound of a box's delta (w_local - w_base)
    noise_multiplier: float  # z: noise std is z*C (local) or z*C/sqrt(m) per box
    delta: float = 1e-5
    mode: str = "local"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"dp clip_norm must be > 0, got {self.clip_norm}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"dp noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp delta must be in (0, 1), got {self.delta}")
        if self.mode not in MODES:
            raise ValueError(f"dp mode must be one of {MODES}, got {self.mode!r}")

    @property
    def sensitivity_over_clip(self) -> float:
        """L2 sensitivity in units of C (see the module docstring)."""
        return 2.0 if self.mode == "local" else 1.0

    def box_noise_std(self, quorum: int) -> float:
        """Std of the noise ONE box adds per coordinate."""
        if self.mode == "local":
            return self.noise_multiplier * self.clip_norm
        return self.noise_multiplier * self.clip_norm / math.sqrt(max(1, quorum))

    def to_dict(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier,
                "delta": self.delta, "mode": self.mode}

    @classmethod
    def from_dict(cls, data: object) -> DpConfig:
        """Strict parse of an announced ``dp`` object (FederationError malformed)."""
        if not isinstance(data, dict) or set(data) != {"clip_norm", "noise_multiplier",
                                                        "delta", "mode"}:
            raise FederationError(MALFORMED, "announce dp must be an object with clip_norm, "
                                  "noise_multiplier, delta and mode")
        try:
            for key in ("clip_norm", "noise_multiplier", "delta"):
                if isinstance(data[key], bool) or not isinstance(data[key], (int, float)):
                    raise ValueError(f"{key} must be a number")
            if not isinstance(data["mode"], str):
                raise ValueError("mode must be a string")
            return cls(float(data["clip_norm"]), float(data["noise_multiplier"]),
                       float(data["delta"]), data["mode"])
        except ValueError as exc:
            raise FederationError(MALFORMED, f"announce dp: {exc}") from None


def clip_delta(delta: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """``delta`` scaled down to L2 norm ``clip_norm`` if longer; returns (clipped, norm)."""
    d = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(d))
    if norm > clip_norm:
        d = d * (clip_norm / norm)
    return d, norm


def privatize(
    local: np.ndarray, base: np.ndarray, config: DpConfig, quorum: int,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, float]:
    """``base + clip(local - base) + noise`` as float32, and the delta's norm before
    clipping (worth logging: a norm far above C means most of the update is clipped away).

    ``rng`` defaults to the OS entropy source: the noise must be unpredictable to anyone
    else, so never seed it in production.
    """
    w = np.asarray(local, dtype=np.float64).ravel()
    b = np.asarray(base, dtype=np.float64).ravel()
    if w.shape != b.shape:
        raise ValueError(f"local vector has {w.size} values, base has {b.size}")
    clipped, norm = clip_delta(w - b, config.clip_norm)
    gen = rng if rng is not None else np.random.default_rng()
    noise = gen.normal(0.0, config.box_noise_std(quorum), size=w.size)
    return (b + clipped + noise).astype(np.float32), norm


# --- accountant ------------------------------------------------------------------------
def rdp_per_round(config: DpConfig, orders: Sequence[float] = ORDERS) -> np.ndarray:
    """RDP of one round at each order: a * s^2 / (2 z^2), s = sensitivity / C."""
    a = np.asarray(orders, dtype=np.float64)
    s = config.sensitivity_over_clip
    return a * s * s / (2.0 * config.noise_multiplier ** 2)


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = ORDERS
                   ) -> tuple[float, float]:
    """(epsilon, best order) from RDP values at ``orders`` (Canonne et al. 2020, Prop. 12)."""
    a = np.asarray(orders, dtype=np.float64)
    eps = rdp + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1.0)
    i = int(np.nanargmin(eps))
    return max(0.0, float(eps[i])), float(a[i])


def epsilon(config: DpConfig, rounds: int) -> float:
    """Epsilon at ``config.delta`` after ``rounds`` rounds of this mechanism."""
    if rounds <= 0:
        return 0.0
    return rdp_to_epsilon(rounds * rdp_per_round(config), config.delta)[0]


def noise_multiplier_for(target_epsilon: float, rounds: int, delta: float,
                         mode: str = "local") -> float:
    """Smallest z (to 0.1%) whose ``rounds``-round epsilon stays <= ``target_epsilon``."""
    if target_epsilon <= 0 or rounds < 1:
        raise ValueError("target epsilon must be > 0 and rounds >= 1")
    lo, hi = 1e-3, 1e4
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        if epsilon(DpConfig(1.0, mid, delta, mode), rounds) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_epsilon_exact(config: DpConfig, rounds: int) -> float:
    """Tight epsilon of ``rounds`` composed Gaussian mechanisms (mu = sqrt(T) * s / z;
    Balle & Wang 2018 / Dong, Roth & Su GDP): the RDP figure is always above it."""
    mu = math.sqrt(rounds) * config.sensitivity_over_clip / config.noise_multiplier

    def delta_at(eps: float) -> float:
        return _phi(-eps / mu + mu / 2) - math.exp(eps) * _phi(-eps / mu - mu / 2)

    lo, hi = 0.0, 1.0
    while delta_at(hi) > config.delta:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_at(mid) > config.delta else (lo, mid)
    return hi


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


@dataclass
class PrivacyLedger:
    """Budget spent by one box: one entry per round it sent a DP update in."""

    rounds: list[tuple[int, DpConfig]]

    def spend(self, round_no: int, config: DpConfig) -> None:
        if all(r != round_no for r, _ in self.rounds):
            self.rounds.append((round_no, config))

    def total_epsilon(self, delta: float | None = None) -> float:
        """Epsilon over every round at ``delta`` (default: the latest round's delta);
        rounds with different settings compose by adding their RDP curves."""
        if not self.rounds:
            return 0.0
        d = delta if delta is not None else self.rounds[-1][1].delta
        rdp = sum((rdp_per_round(c) for _, c in self.rounds), np.zeros(len(ORDERS)))
        return rdp_to_epsilon(rdp, d)[0]

    def report(self) -> dict[str, Any]:
        last = self.rounds[-1][1] if self.rounds else None
        return {
            "rounds": len(self.rounds),
            "epsilon_last_round": epsilon(last, 1) if last else 0.0,
            "epsilon_total": self.total_epsilon(),
            "delta": last.delta if last else None,
            "mode": last.mode if last else None,
            "accountant": ACCOUNTANT,
        }

    def to_json(self) -> list[dict[str, Any]]:
        return [{"round": r, **c.to_dict()} for r, c in self.rounds]

    @classmethod
    def from_json(cls, data: object) -> PrivacyLedger:
        if not isinstance(data, list):
            raise FederationError(MALFORMED, "privacy ledger must be a list")
        rounds = []
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("round"), int):
                raise FederationError(MALFORMED, "privacy ledger entry lacks its round")
            rest = {k: v for k, v in item.items() if k != "round"}
            rounds.append((int(item["round"]), DpConfig.from_dict(rest)))
        return cls(rounds)
