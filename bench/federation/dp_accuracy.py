"""Accuracy cost of differential privacy, on the federated accuracy bench's experiment.

    .venv/bin/python -m bench.federation.dp_accuracy [--part conv14] [--rounds 6] [--epsilons 8,2]
        [--modes local,distributed] [--delta 1e-5]

Same design, institutions, cached features, training and held-out pairs as
``bench.federation.federated_accuracy`` (its functions are reused). Rows, all through the real CKKS
path (federation.crypto.packing: encrypt, streaming sum, decrypt):

- pretrained SFace;
- federated, non-private: weighted FedAvg of the institutions' trained parts (the
  product's default);
- federated, clipped only: equal weights and each delta clipped to C, no noise (what
  clipping alone costs);
- federated, DP at each target epsilon and mode: each institution's delta clipped to C
  and noised (federation.crypto.dp.privatize, the boxes' code), equal weights. The noise
  multiplier z is the smallest whose RDP epsilon over ``--rounds`` rounds at ``--delta``
  stays within the target (federation.crypto.dp.noise_multiplier_for); the epsilon printed is
  what the accountant reports after the last round.

C = the median L2 norm of the institutions' round-1 deltas in the non-private run (a
common, data-dependent heuristic; a deployment fixes C in advance). Accuracy = held-out
pair accuracy, mean over the institutions' camera domains (10 folds), as in the
federated accuracy bench.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import fed_experiment as experiment
from bench.rig.compare import reproduce
from federation.crypto.dp import DpConfig, epsilon, noise_multiplier_for, privatize
from federation.crypto.packing import DEFAULT_COUNT_SCALE
from models.federated_parts import get_part

log = logging.getLogger("bench.federation.dp_accuracy")


@dataclass
class Arm:
    name: str
    dp: DpConfig | None  # None: no noise
    clip: bool  # clip + equal weights (True for DP arms and the clip-only arm)


def run_arm(setup: experiment.Setup, part: str, arm: Arm, rounds: int, config: object, ctx: object,
            counts: list[int], base: np.ndarray, clip_norm: float, seed: int
            ) -> tuple[np.ndarray, list[float]]:
    """``rounds`` federated rounds; returns the final weights and the per-round deltas'
    median norm (before clipping)."""
    g: np.ndarray | None = None
    rng = np.random.default_rng(seed)
    norms: list[float] = []
    for r in range(rounds):
        start = base if g is None else g
        vectors = experiment.train_all(setup, part, g, config, seed=10_000 * (r + 1))
        norms.append(float(np.median([np.linalg.norm(v - start) for v in vectors])))
        if arm.clip:
            sent = []
            for v in vectors:
                if arm.dp is None:
                    d = v.astype(np.float64) - start
                    n = float(np.linalg.norm(d))
                    sent.append((start + d * min(1.0, clip_norm / max(n, 1e-30)))
                                .astype(np.float32))
                else:
                    sent.append(privatize(v, start, arm.dp, quorum=len(vectors), rng=rng)[0])
            weights = [int(DEFAULT_COUNT_SCALE)] * len(sent)  # equal weights: c*n = 1
        else:
            sent, weights = vectors, counts
        g, _, _ = experiment.aggregate_encrypted(ctx, sent, weights)
        log.info("%s round %d done (median delta norm %.3g)", arm.name, r + 1, norms[-1])
    assert g is not None
    return g, norms


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=experiment.REPO.parent / "shared" / "data")
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--part", default="conv14")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--epsilons", default="8,2")
    p.add_argument("--modes", default="local,distributed")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--institutions", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--clip-only", action="store_true", help="also the clipped, noiseless arm")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from edge.training.trainer import TrainConfig
    from federation.crypto.ckks import new_secret_context

    t0 = time.perf_counter()
    setup = experiment.make_setup(args)
    ctx = new_secret_context()
    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    from models.trainable import TrainableTail

    base = TrainableTail(setup.model_path, get_part(args.part)).initial_vector()
    base = np.asarray(base, dtype=np.float32)
    counts = [len(lab) // args.views for _, lab in setup.feats.train]
    rows: dict[str, dict[str, float]] = {}
    rows["pretrained"] = experiment.summary(setup, experiment.evaluate(setup, args.part, None))
    plain = Arm("non-private (weighted)", None, clip=False)
    g, norms = run_arm(setup, args.part, plain, args.rounds, config, ctx, counts, base, 0.0, 0)
    rows[plain.name] = experiment.summary(setup, experiment.evaluate(setup, args.part, g))
    clip = norms[0]
    arms = [Arm("clipped only (eps inf)", None, clip=True)] if args.clip_only else []
    spent: dict[str, tuple[float, float]] = {}
    for mode in args.modes.split(","):
        for target in (float(e) for e in args.epsilons.split(",")):
            z = noise_multiplier_for(target, args.rounds, args.delta, mode)
            dp = DpConfig(clip, z, args.delta, mode)
            name = f"DP {mode} eps {target:g}"
            arms.append(Arm(name, dp, clip=True))
            spent[name] = (epsilon(dp, args.rounds), z)
    for i, arm in enumerate(arms):
        g, _ = run_arm(setup, args.part, arm, args.rounds, config, ctx, counts, base, clip,
                       seed=1 + i)
        rows[arm.name] = experiment.summary(setup, experiment.evaluate(setup, args.part, g))
    setup.workers.close()
    part = get_part(args.part)
    print(f"\nDP accuracy cost: part {part.key} ({part.size:,} values), "
          f"{len(counts)} institutions, {args.rounds} rounds, clip C = {clip:.4g} (median "
          f"round-1 delta norm), delta {args.delta:g}; accountant RDP (Gaussian, composed "
          "over rounds, no subsampling); every row through CKKS")
    print(f"{'row':<30}{'eps spent':>10}{'z':>8}{'mean over domains':>19}{'fold SE':>9}"
          f"{'clean':>8}{'vs non-private':>16}")
    ref = rows[plain.name]["mean"]
    for name, row in rows.items():
        eps, z = spent.get(name, (float("nan"), float("nan")))
        eps_s = f"{eps:.2f}" if name in spent else ("inf" if "inf" in name or "non" in name
                                                    else "-")
        z_s = f"{z:.2f}" if name in spent else "-"
        print(f"{name:<30}{eps_s:>10}{z_s:>8}{row['mean']:>19.2f}{row['se']:>9.2f}"
              f"{row['clean']:>8.2f}{row['mean'] - ref:>+16.2f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(reproduce("bench.federation.dp_accuracy", argv))


if __name__ == "__main__":
    main()
