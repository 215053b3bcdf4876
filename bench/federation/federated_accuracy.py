"""Federated accuracy benchmark: does federation beat each institution alone?

    .venv/bin/python -m bench.federation.federated_accuracy [--parts conv14,embed_bn,fc1_lora]

Held-out LFW identities (30% of people with 2+ images) give 3,000 same + 3,000
different test pairs; the remaining people are split into 16 institutions, each with its
own camera degradation. Rows: pretrained SFace, local-only (each institution alone),
FedAvg in plaintext, FedAvg through the real CKKS path (federation.crypto.packing), centralised.
Prints the tables and writes a convergence plot and a JSON of all numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.common.fed_data import Design
from bench.common.fed_eval import DomainAccuracy
from bench.common.fed_experiment import (
    REPO,
    Setup,
    aggregate_encrypted,
    evaluate,
    make_setup,
    summary,
    train_all,
)
from bench.common.fed_train import TrainTask, run_train
from bench.rig.compare import reproduce
from models.federated_parts import get_part

log = logging.getLogger("bench.federation.federated_accuracy")


@dataclass
class PartResult:
    part: str
    size: int
    bytes_per_round: int = 0
    encrypt_s: float = 0.0
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    per_domain: dict[str, dict[str, float]] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)
    enc_vs_plain_max_abs: float = 0.0
    fed_minus_local_paired_se: float = 0.0
    train_s: float = 0.0


def run_part(setup: Setup, part_name: str, rounds: int, config: object, ctx: object,
             pretrained: DomainAccuracy, n_views: int) -> PartResult:
    from edge.training.trainer import TrainConfig
    from federation.crypto.packing import plain_weighted_average

    assert isinstance(config, TrainConfig)
    part = get_part(part_name)
    res = PartResult(part.key, part.size)
    t0 = time.perf_counter()
    counts = [len(lab) // n_views for _, lab in setup.feats.train]
    total_epochs = config.epochs * rounds
    long_cfg = TrainConfig(**{**asdict(config), "epochs": total_epochs})

    log.info("%s: local-only training of %d institutions", part.key, len(counts))
    local = [evaluate(setup, part_name, v) for v in train_all(setup, part_name, None,
                                                                   long_cfg, seed=1000)]
    local_means = [a.mean_over(setup.domain_names)[0] for a in local]
    res.rows["pretrained"] = summary(setup, pretrained)
    res.rows["local-only mean"] = {
        "mean": float(np.mean(local_means)),
        "se": float(np.mean([a.mean_over(setup.domain_names)[1] for a in local])),
        "clean": float(np.mean([a.mean("clean") for a in local])),
        "worst_domain": float(np.mean([summary(setup, a)["worst_domain"] for a in local])),
    }
    res.rows["local-only worst"] = summary(setup, local[int(np.argmin(local_means))])

    finals: dict[str, np.ndarray] = {}
    for mode in ("plaintext", "encrypted"):
        g = None
        for r in range(rounds):
            vectors = train_all(setup, part_name, g, config, seed=10_000 * (r + 1))
            if mode == "plaintext":
                g = plain_weighted_average(vectors, counts).astype(np.float32)
            else:
                g, res.bytes_per_round, res.encrypt_s = aggregate_encrypted(ctx, vectors, counts)
                acc = evaluate(setup, part_name, g)
                res.curve.append(acc.mean_over(setup.domain_names)[0])
                log.info("%s encrypted round %d: mean over domains %.2f", part.key, r + 1,
                         res.curve[-1])
        assert g is not None
        finals[mode] = g
    fed = {m: evaluate(setup, part_name, v) for m, v in finals.items()}
    res.rows["federated plaintext"] = summary(setup, fed["plaintext"])
    res.rows["federated encrypted"] = summary(setup, fed["encrypted"])
    res.enc_vs_plain_max_abs = float(np.max(np.abs(finals["plaintext"] - finals["encrypted"])))

    log.info("%s: centralised training", part.key)
    central_task = TrainTask(setup.model_path, part_name, None,
                             tuple(fs.folder for fs, _ in setup.feats.train),
                             tuple(lab for _, lab in setup.feats.train), long_cfg)
    central_vec = setup.workers.map(run_train, [central_task])[0][0]
    central = evaluate(setup, part_name, central_vec)
    res.rows["centralised"] = summary(setup, central)

    # paired fold-to-fold SE of (federated encrypted - local-only mean)
    def per_fold(acc: DomainAccuracy) -> np.ndarray:
        return np.mean([acc.folds[d] for d in setup.domain_names], axis=0)

    diff = per_fold(fed["encrypted"]) - np.mean([per_fold(a) for a in local], axis=0)
    res.fed_minus_local_paired_se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    names = ["clean", *setup.domain_names]
    for label, acc in (("pretrained", pretrained), ("federated encrypted", fed["encrypted"]),
                       ("centralised", central)):
        res.per_domain[label] = {n: acc.mean(n) for n in names}
    res.per_domain["local-only mean"] = {
        n: float(np.mean([a.mean(n) for a in local])) for n in names}
    res.train_s = time.perf_counter() - t0
    return res


def print_tables(results: list[PartResult], design: Design, args: argparse.Namespace) -> None:
    print(f"\nFederated accuracy benchmark: {len(design.test_people)} test people, "
          f"{len(design.pairs)} held-out pairs (10 folds), {len(design.institutions)} "
          f"institutions ({min(len(i.people) for i in design.institutions)}-"
          f"{max(len(i.people) for i in design.institutions)} people), {args.rounds} rounds, "
          f"{args.views} views/image, seed {args.seed}")
    for res in results:
        print(f"\n== {res.part}: {res.size:,} federated values, "
              f"{res.bytes_per_round / 1e6:.2f} MB encrypted per box per round ==")
        print(f"{'row':<22}{'mean over domains':>20}{'fold SE':>9}{'clean':>8}{'worst dom':>11}")
        for name, row in res.rows.items():
            print(f"{name:<22}{row['mean']:>20.2f}{row['se']:>9.2f}{row['clean']:>8.2f}"
                  f"{row['worst_domain']:>11.2f}")
        fed, loc = res.rows["federated encrypted"], res.rows["local-only mean"]
        print(f"federated - local-only mean: {fed['mean'] - loc['mean']:+.2f} "
              f"(paired fold SE {res.fed_minus_local_paired_se:.2f}); encrypted - plaintext: "
              f"{fed['mean'] - res.rows['federated plaintext']['mean']:+.3f} "
              f"(max |weight diff| {res.enc_vs_plain_max_abs:.1e}); clean vs pretrained: "
              f"{fed['clean'] - res.rows['pretrained']['clean']:+.2f}; "
              f"centralised - federated: {res.rows['centralised']['mean'] - fed['mean']:+.2f}")
        print("per domain (pretrained / local mean / federated enc / centralised): " + ", ".join(
            f"{d} {res.per_domain['pretrained'][d]:.1f}/{res.per_domain['local-only mean'][d]:.1f}"
            f"/{res.per_domain['federated encrypted'][d]:.1f}"
            f"/{res.per_domain['centralised'][d]:.1f}"
            for d in res.per_domain["pretrained"]))
    print("\nparameter sets: accuracy per encrypted byte")
    print(f"{'part':<16}{'values':>11}{'MB/round':>10}{'fed enc':>9}{'gain vs pre':>12}"
          f"{'gain/MB':>9}{'clean':>8}")
    for res in results:
        fed, pre = res.rows["federated encrypted"], res.rows["pretrained"]
        gain, mb = fed["mean"] - pre["mean"], res.bytes_per_round / 1e6
        print(f"{res.part:<16}{res.size:>11,}{mb:>10.2f}{fed['mean']:>9.2f}{gain:>+12.2f}"
              f"{gain / mb:>9.3f}{fed['clean']:>8.2f}")


def plot(results: list[PartResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, res in enumerate(results):
        colour = f"C{i}"
        rounds = np.arange(1, len(res.curve) + 1)
        ax.plot(rounds, res.curve, "o-", color=colour, label=f"{res.part} federated (CKKS)")
        ax.axhline(res.rows["local-only mean"]["mean"], color=colour, ls=":", lw=1,
                   label=f"{res.part} local-only mean")
        ax.axhline(res.rows["centralised"]["mean"], color=colour, ls="--", lw=1,
                   label=f"{res.part} centralised")
    ax.axhline(results[0].rows["pretrained"]["mean"], color="k", lw=1, label="pretrained")
    ax.set_xlabel("federated round")
    ax.set_ylabel("held-out pair accuracy, mean over domains (%)")
    ax.set_title("Federated fine-tuning of SFace on degraded institution cameras")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", type=Path, default=None, help="folder with the .onnx files")
    parser.add_argument("--parts", default="conv14,fc1_lora,embed_bn")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epochs", type=float, default=1.0, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--institutions", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use-cameras", type=int, default=0,
                        help="only institutions whose camera is among the first K "
                             "(reuses the full design's cached features; 0: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    setup, results = run(args)
    print_tables(results, setup.design, args)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "federated_convergence.png")
    (args.out / "federated_accuracy.json").write_text(
        json.dumps([asdict(r) for r in results], indent=1))
    total = time.perf_counter() - t0
    print(f"\nplot: {args.out / 'federated_convergence.png'}; total {total:.0f} s")
    print(reproduce("bench.federation.federated_accuracy", argv))


def run(args: argparse.Namespace, design: Design | None = None) -> tuple[Setup, list[PartResult]]:
    from edge.training.trainer import TrainConfig
    from federation.crypto.ckks import new_secret_context

    setup = make_setup(args, design)
    ctx = new_secret_context()
    pretrained = evaluate(setup, "conv14", None)
    results = []
    for name in args.parts.split(","):
        config = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed)
        results.append(run_part(setup, name, args.rounds, config, ctx, pretrained,
                                args.views))
    setup.workers.close()
    return setup, results


if __name__ == "__main__":
    main()
