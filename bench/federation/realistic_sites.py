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
epochs on the site alone), FedAvg (plaintext; its last round also through CKKS),
personalised (FedAvg then ``--personal-epochs`` on the site's own photos), centralised
(all sites pooled) with and without the same personalisation. Clean LFW pairs.txt
(``--lfw-folds`` folds) check what the shared models forgot. Trunk features are cached
(bench.common.fed_features); one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.common.fed_experiment import REPO, aggregate_encrypted, model_paths
from bench.common.fed_features import FeatureStore, align_crops, default_cache
from bench.common.fed_train import EmbedTask, TrainTask, run_embed, run_train
from bench.common.lfw_protocol import parse_pairs, ten_fold_accuracy
from bench.common.realistic_design import RealisticDesign, Site, build_realistic
from bench.common.site_scores import (
    CALIBRATION_FAR,
    LOWER_IS_BETTER,
    METRICS,
    Pairs,
    identification,
    row_stats,
    verification,
)
from bench.rig.compare import reproduce
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD, normalised
from edge.serving.calibration import calibrate
from edge.training.api import TrainConfig
from edge.vision.camera_domain import CLEAN

log = logging.getLogger("bench.federation.realistic_sites")
Vector = np.ndarray | None


@dataclass(frozen=True)
class SiteData:
    site: Site
    train_dir: Path
    labels: np.ndarray  # per train row (person within the site)
    gallery_rows: np.ndarray  # train rows of view 0: the enrolment gallery
    held_dir: Path
    held_ids: np.ndarray


def _path(crops: np.ndarray) -> Path:
    filename = getattr(crops, "filename", None)
    assert filename is not None, "align_crops returns a memory map"
    return Path(filename)


class Bench:
    """The design's features and how one model is scored on one site's camera."""

    def __init__(self, design: RealisticDesign, args: argparse.Namespace) -> None:
        yunet, self.sface = model_paths(args.models)
        cache = args.cache or default_cache()
        crops = align_crops(args.data / "lfw", design.images, yunet, self.sface, cache)
        store = FeatureStore(cache, _path(crops), self.sface, args.seed, workers=1)
        self.design, self.part, self.views = design, args.part, args.views
        keys = []
        for s in design.sites:
            items = [(i, v) for photos in s.enrol for i in photos for v in range(args.views)]
            labels = [p for p, photos in enumerate(s.enrol) for _ in photos
                      for _ in range(args.views)]
            held = [(i, 0) for photos in s.heldout for i in photos]
            held_ids = [p for p, photos in enumerate(s.heldout) for _ in photos]
            keys.append((store.request(items, s.domain, args.views),
                         store.request(held, s.domain, 1), np.array(labels),
                         np.array([v == 0 for _, v in items]), np.array(held_ids)))
        test_items = [(int(i), 0) for i in design.test_images]
        test_keys = {d.name: store.request(test_items, d, 1) for d in design.looks()}
        lfw = self._lfw_request(args, cache, yunet)
        store.compute()
        if lfw is not None:
            lfw[0].compute()
            self.lfw_dir: Path | None = lfw[0].load(lfw[1]).folder
        self.sites = [SiteData(s, store.load(t).folder, lab, np.flatnonzero(g),
                               store.load(h).folder, ids)
                      for s, (t, h, lab, g, ids) in zip(design.sites, keys, strict=True)]
        self.test_dirs = {name: store.load(k).folder for name, k in test_keys.items()}
        index_of = np.full(len(design.images), -1)
        index_of[design.test_images] = np.arange(len(design.test_images))
        self.pairs = Pairs(design.pairs, design.same, design.balanced, design.folds, index_of)
        self._shared: dict[tuple[str, str], np.ndarray] = {}
        self._pretrained_gallery: dict[int, np.ndarray] = {}

    def _lfw_request(self, args: argparse.Namespace, cache: Path, yunet: Path
                     ) -> tuple[FeatureStore, str] | None:
        if not args.lfw_folds:
            self.lfw_dir = None
            return None
        pairs = [p for p in parse_pairs(args.data / "lfw_protocol" / "pairs.txt")
                 if p.fold < args.lfw_folds]
        images = sorted({x for p in pairs for x in (p.left, p.right)})
        row = {x: i for i, x in enumerate(images)}
        self.lfw_pairs = (np.array([(row[p.left], row[p.right]) for p in pairs]),
                          np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
        self.lfw_site_people = sum(
            1 for p in pairs for x in (p.left, p.right)
            if x.split("/")[0] in {q for s in self.design.sites for q in s.people}) / 2
        crops = align_crops(args.data / "lfw", images, yunet, self.sface, cache)
        store = FeatureStore(cache, _path(crops), self.sface, args.seed, workers=1)
        return store, store.request([(i, 0) for i in range(len(images))], CLEAN, 1)

    def embed(self, vector: Vector, folder: Path) -> np.ndarray:
        return run_embed(EmbedTask(self.sface, self.part, vector, folder))

    def score(self, vector: Vector, k: int, shared: bool = False) -> dict[str, float]:
        """Site ``k``'s scores on its own camera; ``shared``: one vector for every site
        (its test-set embeddings are reused across sites with the same look)."""
        sd = self.sites[k]
        look = sd.site.domain.name
        key = ("pretrained" if vector is None else
               hashlib.sha256(np.ascontiguousarray(vector).tobytes()).hexdigest(), look)
        if shared and key in self._shared:
            test = self._shared[key]
        else:
            test = self.embed(vector, self.test_dirs[look])
            if shared:
                self._shared[key] = test
        train = self.embed(vector, sd.train_dir)
        strangers = test[self.pairs.index_of[np.array(sd.site.strangers)]]
        verified = verification(test, self.pairs)
        gallery = (train[sd.gallery_rows], sd.labels[sd.gallery_rows])
        probes = (self.embed(vector, sd.held_dir), sd.held_ids)
        at_far = identification(*gallery, *probes, strangers, verified["threshold_far"])
        own = self.product_threshold(vector, k, gallery[0])
        at_own = identification(*gallery, *probes, strangers, own)
        return {**verified, **identification(*gallery, *probes, strangers),
                "top1_far": at_far["top1"], "false_accept_far": at_far["false_accept"],
                "top1_cal": at_own["top1"], "false_accept_cal": at_own["false_accept"],
                "threshold_cal": own}

    def product_threshold(self, vector: Vector, k: int, gallery: np.ndarray) -> float:
        """The threshold the box would serve this model at: 0.40 carried from the
        pretrained model's scores of the site's enrolment crops to this model's."""
        if vector is None:
            return DEFAULT_MATCH_THRESHOLD
        sd = self.sites[k]
        if k not in self._pretrained_gallery:
            self._pretrained_gallery[k] = self.embed(None, sd.train_dir)[sd.gallery_rows]
        cal = calibrate(DEFAULT_MATCH_THRESHOLD, normalised(self._pretrained_gallery[k]),
                        normalised(gallery), sd.labels[sd.gallery_rows])
        return cal.threshold if cal is not None else DEFAULT_MATCH_THRESHOLD

    def score_all(self, vectors: Sequence[Vector] | Vector) -> list[dict[str, float]]:
        """A sequence: one model per site; one vector (or None): the same for all."""
        if isinstance(vectors, list | tuple):
            return [self.score(v, k) for k, v in enumerate(vectors)]
        assert vectors is None or isinstance(vectors, np.ndarray)
        return [self.score(vectors, k, shared=True) for k in range(len(self.sites))]

    def train(self, k: int | None, start: Vector, config: object) -> np.ndarray:
        """Site ``k``'s training from ``start`` (None for k: all sites pooled)."""
        chosen = self.sites if k is None else [self.sites[k]]
        task = TrainTask(self.sface, self.part, start, tuple(s.train_dir for s in chosen),
                         tuple(s.labels for s in chosen), config)
        return run_train(task)[0]

    def clean_lfw(self, vector: Vector) -> float:
        assert self.lfw_dir is not None
        pairs, same, folds = self.lfw_pairs
        e = self.embed(vector, self.lfw_dir)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        scores = np.sum(e[pairs[:, 0]] * e[pairs[:, 1]], axis=1)
        return 100.0 * ten_fold_accuracy(scores, same, folds)[0]


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
                      scale=args.scale)
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
            "lfw_site_pairs": getattr(bench, "lfw_site_people", 0.0),
            "features_s": t_feat, "total_s": time.perf_counter() - t0}


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
