"""Federation on realistic small sites, each scored on its own camera (issue 18).

    .venv/bin/python -m bench.federation.realistic_sites [--sites 48] [--rounds 4]
        [--part embed_bn] [--epochs 2] [--personal-epochs 1] [--lfw-folds 4]

The design (bench.common.realistic_design): 48 disjoint sites of 10-40 LFW people with
1-5 enrolment photos each, every site behind one camera look (six kiosk looks and eight
synthetic ones); 300 held-out test people give the verification pairs and the strangers.
Every site's model is scored on its own camera only: 10-fold accuracy and TAR at FAR
1e-3 / 1e-2 on the test people's pairs, and 1:N identification of its own enrolled
people's held-out photos against its enrolment gallery at DEFAULT_MATCH_THRESHOLD (top-1
named right, strangers named as someone). Rows: pretrained, local-only (the rounds'
epochs on the site alone), FedAvg (plaintext; its last round also through CKKS), FedBN
(each site keeps its batch-norm affines through the rounds; the rest is averaged),
personalised (FedAvg then ``--personal-epochs`` on the site's own photos), centralised
(all sites pooled) with and without the same personalisation. Clean LFW pairs.txt
(``--lfw-folds`` folds) check what the shared models forgot. Trunk features are cached
(bench.common.fed_features); one core.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common.fed_experiment import REPO, aggregate_encrypted
from bench.common.realistic_bench import Bench
from bench.common.realistic_design import RealisticDesign, build_realistic
from bench.common.site_scores import CALIBRATION_FAR, LOWER_IS_BETTER, METRICS, row_stats
from bench.rig.compare import reproduce
from edge.training.api import LOSSES, TrainConfig

log = logging.getLogger("bench.federation.realistic_sites")


def run(args: argparse.Namespace) -> dict[str, object]:
    from federation.crypto.ckks import new_secret_context
    from federation.crypto.packing import plain_weighted_average

    t0 = time.perf_counter()
    design = build_realistic(args.data / "lfw", seed=args.seed, n_sites=args.sites)
    bench = Bench(design, args)
    t_feat = time.perf_counter() - t0
    import torch  # after the trunk's forked workers

    torch.set_num_threads(1)
    n = len(bench.sites)
    counts = [sum(len(p) for p in s.enrol) for s in design.sites]
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, margin=args.margin,
                      scale=args.scale, loss=args.loss)
    long_cfg = replace(cfg, epochs=args.epochs * args.rounds)
    own = replace(cfg, epochs=args.personal_epochs)
    rows: dict[str, list[dict[str, float]]] = {"pretrained": bench.score_all(None)}
    log.info("local-only: %d sites", n)
    local = [bench.train(k, None, replace(long_cfg, seed=1000 + k)) for k in range(n)]
    rows["local-only"] = bench.score_all(local)
    g: np.ndarray | None = None
    curve = []
    for r in range(args.rounds):
        vectors = [bench.train(k, g, replace(cfg, seed=10_000 * (r + 1) + k))
                   for k in range(n)]
        g = plain_weighted_average(vectors, counts).astype(np.float32)
        scored = bench.score_all(g)
        curve.append({m: float(np.mean([s[m] for s in scored])) for m in METRICS})
        log.info("FedAvg round %d: %s", r + 1, curve[-1])
    assert g is not None
    rows["FedAvg"] = scored
    enc, sent, enc_s = aggregate_encrypted(new_secret_context(), vectors, counts)
    rows_enc = bench.score_all(enc)
    ckks = {m: float(np.mean([a[m] - b[m] for a, b in zip(rows_enc, scored, strict=True)]))
            for m in METRICS}
    ckks["max_abs_weight"] = float(np.max(np.abs(enc - g)))
    rows["FedBN (BN affines local)"], res_bn = _fedbn(bench, cfg, counts, args.rounds)
    log.info("personalised: %d sites", n)
    rows["personalised FedAvg"] = bench.score_all(
        [bench.train(k, g, replace(own, seed=20_000 + k)) for k in range(n)])
    log.info("centralised")
    central = bench.train(None, None, long_cfg)
    rows["centralised"] = bench.score_all(central)
    rows["centralised personalised"] = bench.score_all(
        [bench.train(k, central, replace(own, seed=20_000 + k)) for k in range(n)])
    clean = {}
    if bench.lfw_dir is not None:
        clean = {name: bench.clean_lfw(v) for name, v in
                 (("pretrained", None), ("FedAvg", g), ("centralised", central))}
    return {"design": design, "rows": rows, "curve": curve, "ckks": ckks,
            "ckks_bytes": sent, "ckks_encrypt_s": enc_s, "clean": clean,
            "fedbn_curve": res_bn,
            "lfw_site_pairs": getattr(bench, "lfw_site_people", 0.0),
            "features_s": t_feat, "total_s": time.perf_counter() - t0}


def local_affines(part_name: str) -> np.ndarray:
    """The mask of a part's vector that FedBN keeps on the site: the batch norms' scale
    and shift (their running statistics are frozen in every part); what is left (weights,
    PReLU slopes) is averaged."""
    from models.federated_parts import PARTS

    part = PARTS[part_name]
    bn = {f"{p}_{a}" for p in ("conv_14_batchnorm", "bn1", "fc1") for a in ("gamma", "beta")}
    return np.concatenate([np.full(int(np.prod(shape)), name in bn, dtype=bool)
                           for name, shape in part.initializers])


def _fedbn(bench: Bench, cfg: TrainConfig, counts: list[int], rounds: int
           ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """FedBN (Li et al., ICLR 2021): every round each site trains from the average of the
    shared entries and its own batch-norm affines, which never leave it."""
    from federation.crypto.packing import plain_weighted_average

    mask = local_affines(bench.part)
    n = len(bench.sites)
    own: list[np.ndarray | None] = [None] * n
    curve, scored = [], []
    for r in range(rounds):
        vectors = [bench.train(k, own[k], replace(cfg, seed=10_000 * (r + 1) + k))
                   for k in range(n)]
        avg = plain_weighted_average(vectors, counts).astype(np.float32)
        own = [np.where(mask, v, avg).astype(np.float32) for v in vectors]
        scored = bench.score_all(own)
        curve.append({m: float(np.mean([s[m] for s in scored])) for m in METRICS})
        log.info("FedBN round %d (%d of %d values local): %s", r + 1, int(mask.sum()),
                 mask.size, curve[-1])
    return scored, curve


def print_report(res: dict[str, object], args: argparse.Namespace) -> None:
    design = res["design"]
    rows = res["rows"]
    assert isinstance(design, RealisticDesign) and isinstance(rows, dict)
    sizes = np.array([len(s.people) for s in design.sites])
    enrol = [len(p) for s in design.sites for p in s.enrol]
    print(f"\nRealistic sites: {len(design.sites)} sites of {sizes.min()}-{sizes.max()} people "
          f"(mean {sizes.mean():.1f}), {np.mean(enrol):.2f} enrolment photos per person "
          f"(1-5), {len(design.looks())} camera looks; {len(design.test_people)} test people, "
          f"{int(design.same.sum())} same / {int((~design.same).sum())} different pairs; "
          f"part {args.part}, {args.rounds} rounds x {args.epochs} epochs, personalisation "
          f"{args.personal_epochs} epoch(s), seed {args.seed}")
    for metric in METRICS:
        st = row_stats(rows, metric, "local-only", "pretrained")
        print(f"\n{metric} (%), each site on its own camera"
              + (" [lower is better]" if metric in LOWER_IS_BETTER else "")
              + (f" at each model's threshold for FAR {CALIBRATION_FAR:g} on the site's "
                 "different pairs" if metric.endswith("_far") else ""))
        print(f"{'row':<26}{'mean':>7}{'- local (SE)':>15}{'- pre (SE)':>15}{'worst':>7}"
              f"{'gain>loc':>9}{'gain>pre':>9}")
        for name, s in st.items():
            print(f"{name:<26}{s['mean']:>7.2f}{s['vs_local']:>+8.2f} ({s['se_local']:.2f})"
                  f"{s['vs_pre']:>+8.2f} ({s['se_pre']:.2f}){s['worst']:>7.1f}"
                  f"{s['gain_local']:>8.0f}%{s['gain_pre']:>8.0f}%")
    for key, what in (("threshold_far", f"each model's threshold for FAR {CALIBRATION_FAR:g}"),
                      ("threshold_cal", "the product's calibrated threshold (_cal)")):
        print(f"\n{what} (mean over sites; the deployed one is 0.40): " + ", ".join(
            f"{name} {np.mean([s[key] for s in sites]):.3f}" for name, sites in rows.items()))
    curve = res["curve"]
    assert isinstance(curve, list)
    print("\nFedAvg per round (mean over sites): " + "; ".join(
        f"r{i + 1} acc {c['acc']:.2f} TAR@1e-3 {c['tar_1e-3']:.2f} top1 {c['top1']:.2f} "
        f"rank1 {c['rank1']:.2f}"
        for i, c in enumerate(curve)))
    bn_curve = res["fedbn_curve"]
    assert isinstance(bn_curve, list)
    print("FedBN per round: " + "; ".join(
        f"r{i + 1} acc {c['acc']:.2f} TAR@1e-3 {c['tar_1e-3']:.2f} top1@FAR {c['top1_far']:.2f}"
        f" top1_cal {c['top1_cal']:.2f}" for i, c in enumerate(bn_curve)))
    for m in ("acc", "tar_1e-3", "top1", "rank1"):
        vals = [c[m] for c in curve]
        within = next(i + 1 for i, v in enumerate(vals) if abs(v - vals[-1]) <= 0.2)
        print(f"  {m}: within 0.2 of the final value from round {within}")
    ck = res["ckks"]
    assert isinstance(ck, dict)
    print(f"CKKS FedAvg - plaintext (last round, mean over sites): acc {ck['acc']:+.3f}, "
          f"top1 {ck['top1']:+.3f}, TAR@1e-3 {ck['tar_1e-3']:+.3f}; max |weight diff| "
          f"{ck['max_abs_weight']:.1e}; {int(res['ckks_bytes']) / 1e6:.2f} MB per box")  # type: ignore[call-overload]
    by_size = {f"{lo}-{hi}": (sizes >= lo) & (sizes <= hi) for lo, hi in ((10, 19), (20, 29),
                                                                        (30, 40))}
    print("\ngain by site size, mean over the bin's sites (acc / TAR@1e-3 / rank1):")
    for b, mask in by_size.items():
        print(f"  {b} people ({int(mask.sum())} sites): " + "; ".join(
            f"{a} - {z} " + " / ".join(f"{_diff(rows, a, m, mask, z):+.2f}"
                                       for m in ("acc", "tar_1e-3", "rank1"))
            for a, z in (("local-only", "pretrained"), ("FedAvg", "local-only"),
                         ("personalised FedAvg", "local-only"))))
    looks = sorted({s.domain.name for s in design.sites})
    print("personalised - local acc by look: " + ", ".join(
        f"{lk} {_diff(rows, 'personalised FedAvg', 'acc', np.array([s.domain.name == lk for s in design.sites])):+.1f}"  # noqa: E501
        for lk in looks))
    if res["clean"]:
        print(f"clean LFW pairs.txt ({args.lfw_folds} folds; {res['lfw_site_pairs']:.0f} pairs "
              "touch a site person): " + ", ".join(
                  f"{k} {v:.2f}" for k, v in res["clean"].items()))  # type: ignore[attr-defined]
    print(f"wall time: features {res['features_s']:.0f} s, total {res['total_s']:.0f} s")


def _diff(rows: dict[str, list[dict[str, float]]], name: str, metric: str,
          mask: np.ndarray, base: str = "local-only") -> float:
    a = np.array([s[metric] for s in rows[name]])
    b = np.array([s[metric] for s in rows[base]])
    return float((a - b)[mask].mean()) if mask.any() else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--models", type=Path, default=None, help="folder with the .onnx files")
    ap.add_argument("--sites", type=int, default=48, choices=range(32, 65), metavar="32-64")
    ap.add_argument("--part", default="embed_bn")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=float, default=2.0, help="local epochs per round")
    ap.add_argument("--personal-epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--margin", type=float, default=TrainConfig.margin, help="CosFace m")
    ap.add_argument("--scale", type=float, default=TrainConfig.scale, help="CosFace s")
    ap.add_argument("--loss", choices=LOSSES, default=TrainConfig.loss,
                    help="supcon: supervised contrastive over the batch (README, the demo)")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--lfw-folds", type=int, default=4, help="0: skip the clean check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_results"))
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "realistic_sites.json").write_text(json.dumps(
        {k: v for k, v in res.items() if k != "design"} | {"args": {
            k: str(v) for k, v in vars(args).items()}}, indent=1, default=str))
    print_report(res, args)
    print(reproduce("bench.federation.realistic_sites", argv))


if __name__ == "__main__":
    main()
