"""The CKKS parameter policy: the set a federation of a declared size needs.

A round's decrypted sums are ``sum_i c*n_i*w_i`` and ``sum_i c*n_i`` (c = 1/count_scale,
``packing``). Two limits meet there:

- range: a decrypted slot must stay below ``value_bound`` = 2^(d-1-s) (d: bits of the
  data prime(s), s: scale bits) or it wraps around. The largest round sum is
  ``boxes * max_samples * max(max_value, 1) / count_scale`` (the 1: the count slot);
  the policy keeps it at most half the bound, and one update at most 1/8 of it
  (``packing.encrypt_update``'s own headroom).
- precision: a fresh ciphertext's noise is below ``FRESH_NOISE`` = 2^11 in units of
  2^-s per slot (symmetric encryption; ``bench.federation.ckks_params`` measures about
  2^10 as the largest over 1M values), independent noises add as sqrt(boxes), and the
  average divides by ``sum c*n_i >= boxes*min_samples/count_scale``. So the worst error
  of the average is ``FRESH_NOISE * sqrt(boxes) * count_scale / (2^s * boxes * min_samples)``.

Both depend on ``u = s - log2(count_scale)`` only: range wants u small, precision wants
it large; only more data bits widen the window (each 2 more bits cost 1 B/value on the
wire, ``wire``). Regional partial sums (``aggregator.regional``) add no noise (CKKS
additions are exact) and each is a part of the round's sum, so a hierarchy needs no
other budget than a flat round of the same number of boxes; ``regions`` is recorded
for the operator, and the 10,000-box test sums through regions to show it.

``choose`` picks the smallest set that holds a declared size; ``budget_for`` checks
a given set (an existing federation's keys) and picks its count_scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from federation.crypto.ckks import CkksParams

FRESH_NOISE = 2.0**11
RANGE_HEADROOM = 2.0
UPDATE_HEADROOM = 8.0  # = packing.DEFAULT_HEADROOM: one update's share of the range
_RING = 4096  # add-only: the smallest ring that keeps 128-bit security with one prime
_MAX_MODULUS_BITS = 109  # SEAL's 128-bit security limit at N = 4096
_DATA_BITS = tuple(range(38, 61, 2))
_PACKED_OVERHEAD = 160  # bytes per ciphertext around the coefficients (headers, framing)


class BudgetError(ValueError):
    """The declared federation does not fit (this set, or any set of the policy)."""


@dataclass(frozen=True)
class FederationSize:
    """What the operator declares: boxes summed per round (all regions together), regional
    partial sums, the cap on samples per box, the bound on |value| a box sends (after
    clipping), the precision wanted on the average, and the fewest samples a box trains on
    (the precision's worst case)."""

    boxes: int
    regions: int = 1
    max_samples: int = 1000
    max_value: float = 8.0
    precision: float = 1e-5
    min_samples: int = 1

    def __post_init__(self) -> None:
        if self.boxes < 1 or self.regions < 1 or self.regions > self.boxes:
            raise BudgetError(f"need 1 <= regions <= boxes, got {self.regions} regions for "
                              f"{self.boxes} boxes")
        if not 1 <= self.min_samples <= self.max_samples:
            raise BudgetError(f"need 1 <= min_samples <= max_samples, got {self.min_samples} "
                              f"and {self.max_samples}")
        if not (math.isfinite(self.max_value) and self.max_value > 0):
            raise BudgetError(f"max_value must be positive, got {self.max_value}")
        if not (math.isfinite(self.precision) and 0 < self.precision < 1):
            raise BudgetError(f"precision must be in (0, 1), got {self.precision}")

    @property
    def peak_samples_value(self) -> float:
        """The round's largest ``sum n_i * |w_i|`` (count slot: |w| = 1)."""
        return self.boxes * self.max_samples * max(self.max_value, 1.0)


@dataclass(frozen=True)
class Budget:
    """A set, its count_scale, and how much of range and precision a declared size uses."""

    params: CkksParams
    count_scale: float
    size: FederationSize

    @property
    def peak_sum(self) -> float:
        return self.size.peak_samples_value / self.count_scale

    @property
    def range_bits(self) -> float:
        """Bits of range to spare above the largest round sum (>= 1: the headroom)."""
        return math.log2(self.params.value_bound / self.peak_sum)

    @property
    def sum_noise(self) -> float:
        """The error of a decrypted slot of the round's sum (the weighted values' and
        the count's): the boxes' fresh noises added."""
        return FRESH_NOISE * math.sqrt(self.size.boxes) / self.params.scale

    @property
    def worst_error(self) -> float:
        s = self.size
        return self.sum_noise * self.count_scale / (s.boxes * s.min_samples)

    @property
    def precision_bits(self) -> float:
        return -math.log2(self.worst_error)

    @property
    def bytes_per_value(self) -> float:
        p = self.params
        bits = 2 * p.poly_modulus_degree * p.data_bits
        return (bits / 8 + _PACKED_OVERHEAD) / p.slots

    def to_dict(self) -> dict[str, object]:
        return {"size": asdict(self.size), "params": self.params.to_dict(),
                "count_scale": self.count_scale, "range_bits": round(self.range_bits, 2),
                "precision_bits": round(self.precision_bits, 2),
                "worst_error": self.worst_error, "bytes_per_value": round(self.bytes_per_value, 2)}


def _u_window(data_bits: int, size: FederationSize) -> tuple[float, float]:
    """(lowest, highest) u = s - log2(count_scale) for precision and range."""
    lowest = (math.log2(FRESH_NOISE) - 0.5 * math.log2(size.boxes)
              - math.log2(size.min_samples) - math.log2(size.precision))
    per_update = size.max_samples * max(size.max_value, 1.0)
    highest = min(data_bits - 1 - math.log2(RANGE_HEADROOM * size.peak_samples_value),
                  data_bits - 1 - math.log2(UPDATE_HEADROOM * per_update))
    return lowest, highest


def budget_for(params: CkksParams, size: FederationSize) -> Budget:
    """The count_scale (a power of two) that holds ``size`` with ``params``, the most
    precise one the range allows; ``BudgetError`` if none does."""
    lowest, highest = _u_window(params.data_bits, size)
    k = max(0, math.ceil(params.global_scale_bits - highest))  # count_scale = 2^k
    u = params.global_scale_bits - k
    if u > highest or u < lowest:
        need = ("too little range" if u > highest
                else "too little precision once the range is kept")
        raise BudgetError(
            f"CKKS set {params.poly_modulus_degree} {list(params.coeff_mod_bit_sizes)} "
            f"2^{params.global_scale_bits} cannot hold {size.boxes} boxes x "
            f"{size.max_samples} samples x |value| <= {size.max_value:g} at precision "
            f"{size.precision:g} ({params.data_bits} data bits: {need})")
    return Budget(params, float(2**k), size)


def _policy_params(data_bits: int, size: FederationSize) -> CkksParams | None:
    lowest, highest = _u_window(data_bits, size)
    if highest < lowest:
        return None
    special = min(max(data_bits, 40), _MAX_MODULUS_BITS - data_bits)
    u = math.floor(highest)  # the most precision the range allows
    scale = min(max(u + 6, 10), data_bits - 2)  # count_scale 64 where the window allows
    return CkksParams(_RING, (data_bits, special), scale, symmetric=True)


def choose(size: FederationSize) -> Budget:
    """The policy: the fewest data bits (bytes on the wire) that hold ``size``."""
    for bits in _DATA_BITS:
        params = _policy_params(bits, size)
        if params is None:
            continue
        try:
            return budget_for(params, size)
        except BudgetError:
            continue
    raise BudgetError(
        f"no add-only CKKS set up to {_DATA_BITS[-1]} data bits holds {size.boxes} boxes x "
        f"{size.max_samples} samples x |value| <= {size.max_value:g} at precision "
        f"{size.precision:g} (min {size.min_samples} samples per box): lower the sample cap "
        "or the value bound (send clipped deltas), or ask for less precision")
