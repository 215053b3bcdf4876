"""The federation's declared size on the command line (``keys create`` and ``init``), and
the CKKS budget it gets (``federation.crypto.budget``: the parameter policy)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from federation.crypto.budget import Budget, BudgetError, FederationSize, budget_for, choose
from federation.crypto.ckks import CkksParams

BoxesOpt = Annotated[int, typer.Option(
    "--boxes", help="declared size: boxes summed per round, all regions together (0: no "
    "declared size, no budget recorded)")]
RegionsOpt = Annotated[int, typer.Option("--regions", help="regional partial sums per round")]
MaxSamplesOpt = Annotated[int, typer.Option(
    "--max-samples", help="cap on a box's samples per update (serve --max-samples)")]
MaxValueOpt = Annotated[float, typer.Option(
    "--max-value", help="bound on |value| a box sends, after clipping")]
PrecisionOpt = Annotated[float, typer.Option(
    "--precision", help="max abs error wanted on the federated average")]
MinSamplesOpt = Annotated[int, typer.Option(
    "--min-samples", help="fewest samples a box trains on (the precision's worst case)")]

# one set of defaults for `keys create` and `init`, which must agree on the declared size
# (the set `keys create` picks is the one `init` checks); the model's where it has one
REGIONS = FederationSize.regions
MAX_VALUE = FederationSize.max_value
PRECISION = FederationSize.precision
MIN_SAMPLES = 10  # the precision's worst case: the fewest samples a box trains on (docs)


def declared_size(boxes: int, regions: int, max_samples: int, max_value: float,
                  precision: float, min_samples: int) -> FederationSize | None:
    if boxes == 0:
        return None
    return FederationSize(boxes, regions, max_samples, max_value, precision, min_samples)


def policy_params(size: FederationSize) -> CkksParams:
    """The set ``keys create`` makes for a declared size."""
    return choose(size).params


def check_context(params: CkksParams, size: FederationSize) -> Budget:
    """``init``: the federation's keys must hold the declared size; the refusal names the
    set the policy would have created."""
    try:
        return budget_for(params, size)
    except BudgetError as exc:
        try:
            wanted = choose(size).params
            hint = (f"; create the federation's keys for this size: fedface-aggregator keys "
                    f"create --coeff-mod-bits {','.join(map(str, wanted.coeff_mod_bit_sizes))} "
                    f"--scale-bits {wanted.global_scale_bits} (or the same --boxes ... options)")
        except BudgetError as none:
            hint = f"; {none}"
        raise BudgetError(f"{exc}{hint}") from None


def budget_lines(budget: Budget) -> list[str]:
    s, p = budget.size, budget.params
    return [
        f"CKKS budget for {s.boxes} boxes in {s.regions} region(s), <= {s.max_samples} "
        f"samples, |value| <= {s.max_value:g}:",
        f"  set {p.poly_modulus_degree} {list(p.coeff_mod_bit_sizes)} 2^{p.global_scale_bits}, "
        f"count_scale {budget.count_scale:g}",
        f"  range: {budget.range_bits:.1f} bits to spare above the largest round sum",
        f"  precision: worst error of the average {budget.worst_error:.1e} "
        f"({budget.precision_bits:.1f} bits; wanted {s.precision:g})",
        f"  wire: {budget.bytes_per_value:.2f} bytes per value",
    ]


def check_serve_cap(recorded: dict[str, Any] | None, max_samples: int) -> None:
    """``serve``: the sample cap must not exceed the one the recorded budget holds (0 is
    no cap at all), else a round could leave the CKKS range the budget was made for."""
    if recorded is None:
        return
    held = int(recorded["size"]["max_samples"])
    if max_samples == 0 or max_samples > held:
        asked = "no cap (0)" if max_samples == 0 else str(max_samples)
        raise BudgetError(
            f"--max-samples {asked} exceeds the {held} samples per box of the CKKS budget "
            "init recorded for this federation; serve with --max-samples <= "
            f"{held}, or declare the larger size with new keys (docs/protocol.md, "
            "\"Parameter policy\")")
