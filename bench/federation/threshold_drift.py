"""Does a model's own match threshold drift as the federation trains on the same crops
round after round, and which calibration rule holds strangers' false accepts?

    .venv/bin/python -m bench.federation.threshold_drift [--sites 48] [--group 4]
        [--rounds 16] [--part embed_bn] [--holdout 5]

Why: a box calibrates each federated model's threshold on its enrolment crops
(edge.serving.calibration). Crops the model was trained on score lower against other
people than a real stranger's face does, more with every round on the same people (a
federation trains every night, ``--min-new-samples 0`` by default): an operator's
walkthrough saw 0.40 become 0.25 by round 17 when every crop was scored.

The realistic design of bench.federation.realistic_sites (48 small sites, each on its own
camera; features cached), split into federations of ``--group`` consecutive sites, each
federated ``--rounds`` times with plain FedAvg. After each round, every site's model is
scored at the threshold each rule gives it: top-1 (held-out photos of the site's people
named right) and false accepts (the site's 40 strangers named as anyone), against the
pretrained model at 0.40 (paired SE over sites). Two chains: every person trains, scored
with the rule on every crop (the product's before, capped at 0.15; tighter caps; half
the shift; a fixed 0.40); and (``--holdout K``) every site keeps one person in K out of
training, scored with the product's rule on those people's crops only
(``calibrate(held_out=...)``, edge.gallery.holdout).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common.fed_train import pretrained_vector
from bench.common.realistic_bench import Bench, SiteData, add_design_options
from bench.common.realistic_design import build_realistic
from bench.common.site_scores import identification
from bench.rig.compare import reproduce
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD, normalised
from edge.serving.calibration import calibrate, stranger_scores
from edge.training.api import TrainConfig

log = logging.getLogger("bench.federation.threshold_drift")
T0 = DEFAULT_MATCH_THRESHOLD


def capped(shift: float, cap: float) -> float:
    return T0 + float(np.clip(shift, -cap, cap))


# rule name -> threshold from the mean shift of the crops' stranger scores
Rule = Callable[[float], float] | None  # None: the product's, on the calibration people
RULES: dict[str, Rule] = {
    "fixed 0.40": lambda s: T0,
    "every crop, cap 0.15 (the rule before)": lambda s: capped(s, 0.15),
    "every crop, cap 0.10": lambda s: capped(s, 0.10),
    "every crop, cap 0.08": lambda s: capped(s, 0.08),
    "every crop, cap 0.05": lambda s: capped(s, 0.05),
    "every crop, half the shift": lambda s: capped(0.5 * s, 0.15),
}


def mean_shift(reference: np.ndarray, model: np.ndarray, ids: np.ndarray) -> float:
    """How far the model moved the mean stranger score of every crop."""
    return float(np.mean(stranger_scores(model, ids)) - np.mean(stranger_scores(reference, ids)))


def subset_dir(sd: SiteData, keep: np.ndarray, root: Path) -> Path:
    """A feature folder of the training rows ``keep`` (the people a site trains on)."""
    tag = hashlib.sha256("\n".join(sd.site.people).encode()).hexdigest()[:12]
    out = root / f"{sd.site.domain.name}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    for f in sd.train_dir.glob("*.npy"):
        np.save(out / f.name, np.asarray(np.load(f, mmap_mode="r"))[keep])
    return out


class Chain:
    """One FedAvg run: every site trains from the shared model on its training rows."""

    def __init__(self, bench: Bench, args: argparse.Namespace, holdout: int) -> None:
        self.bench, self.holdout = bench, holdout
        self.dirs, self.labels, self.counts, self.cal_people = [], [], [], []
        for sd in bench.sites:
            people = np.unique(sd.labels)
            cal = people[::holdout] if holdout else people[:0]
            keep = ~np.isin(sd.labels, cal)
            self.cal_people.append(cal)
            if holdout:
                self.dirs.append(subset_dir(sd, keep, args.cache / "drift-subsets"))
                _, relabel = np.unique(sd.labels[keep], return_inverse=True)
                self.labels.append(relabel)
            else:
                self.dirs.append(sd.train_dir)
                self.labels.append(sd.labels)
            self.counts.append(int(keep.sum()))

    def round(self, models: list[np.ndarray], r: int, cfg: TrainConfig, group: int
              ) -> list[np.ndarray]:
        """Every site trains from its federation's model (``models[k]``); each federation
        of ``group`` consecutive sites averages its own: the sites' new models."""
        from bench.common.fed_train import TrainTask, run_train
        from federation.crypto.packing import plain_weighted_average

        vectors = [run_train(TrainTask(self.bench.sface, self.bench.part, models[k], (d,),
                                       (lab,), replace(cfg, seed=10_000 * (r + 1) + k)))[0]
                   for k, (d, lab) in enumerate(zip(self.dirs, self.labels, strict=True))]
        out: list[np.ndarray] = []
        for start in range(0, len(vectors), group):
            members = slice(start, start + group)
            average = plain_weighted_average(vectors[members], self.counts[members])
            out += [average.astype(np.float32)] * len(vectors[members])
        return out


def site_scores(bench: Bench, k: int, vector: np.ndarray | None, strangers: np.ndarray,
                reference: np.ndarray, rules: dict[str, Rule],
                cal_people: np.ndarray | None) -> dict[str, dict[str, float]]:
    sd = bench.sites[k]
    rows, ids = sd.gallery_rows, sd.labels[sd.gallery_rows]
    gallery = normalised(bench.embed(vector, sd.train_dir)[rows])
    probes = bench.embed(vector, sd.held_dir)
    shift = mean_shift(reference, gallery, ids)
    # the product's rule (edge.serving.calibration) on the people no round trained on
    held = None if cal_people is None else calibrate(T0, reference, gallery, ids,
                                                     held_out=np.isin(ids, cal_people))
    out = {}
    for name, rule in rules.items():
        if vector is None:
            t = T0
        elif rule is None:  # the product's: the deployed threshold when it cannot say
            t = held.threshold if held is not None else T0
        else:
            t = rule(shift)
        ident = identification(gallery, ids, probes, sd.held_ids, strangers, t)
        out[name] = {"threshold": t, "top1": ident["top1"], "fa": ident["false_accept"]}
    return out


def run(args: argparse.Namespace) -> tuple[dict[str, list[list[dict[str, float]]]], float]:
    t0 = time.perf_counter()
    design = build_realistic(args.data / "lfw", seed=args.seed, n_sites=args.sites)
    bench = Bench(design, args)
    import torch  # after the trunk's forked workers

    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    pretrained = pretrained_vector(bench.sface, args.part)
    index = bench.pairs.index_of

    def strangers(models: list[np.ndarray] | None, k: int) -> np.ndarray:
        """Site k's strangers through its camera, embedded by its model (cached per
        model and look: a federation's sites share theirs)."""
        vector = None if models is None else models[k]
        look = bench.sites[k].site.domain.name
        key = (None if vector is None else hashlib.sha256(vector.tobytes()).hexdigest(), look)
        if key not in cache:
            if len(cache) > 64:  # bounded memory: a round's models replace the last's
                cache.clear()
            cache[key] = bench.embed(vector, bench.test_dirs[look])
        return cache[key][index[np.array(bench.sites[k].site.strangers)]]

    cache: dict[tuple[str | None, str], np.ndarray] = {}

    refs = [normalised(bench.embed(None, sd.train_dir)[sd.gallery_rows]) for sd in bench.sites]
    chains: dict[str, tuple[Chain, dict[str, Rule]]] = {
        "all people train": (Chain(bench, args, 0), RULES)}
    if args.holdout:
        chains[f"1 in {args.holdout} people held out"] = (
            Chain(bench, args, args.holdout), {"fixed 0.40": RULES["fixed 0.40"],
                                              "calibration people (product)": None})
    base = [site_scores(bench, k, None, strangers(None, k), refs[k],
                        {"pretrained at 0.40": RULES["fixed 0.40"]}, None)["pretrained at 0.40"]
            for k in range(len(bench.sites))]
    curves: dict[str, list[list[dict[str, float]]]] = {"pretrained at 0.40": [base]}
    for chain_name, (chain, rules) in chains.items():
        models = [pretrained] * len(bench.sites)
        for r in range(args.rounds):
            models = chain.round(models, r, cfg, args.group)
            per_site = [site_scores(bench, k, models[k], strangers(models, k), refs[k], rules,
                                    chain.cal_people[k] if chain.holdout else None)
                        for k in range(len(bench.sites))]
            for name in rules:
                curves.setdefault(f"{chain_name}: {name}", []).append(
                    [s[name] for s in per_site])
            log.info("%s round %d: %s", chain_name, r + 1, {
                name: tuple(round(float(np.mean([s[name][m] for s in per_site])), 3)
                            for m in ("threshold", "top1", "fa")) for name in rules})
    return curves, time.perf_counter() - t0


def print_report(curves: dict[str, list[list[dict[str, float]]]], seconds: float,
                 args: argparse.Namespace) -> None:
    base = curves.pop("pretrained at 0.40")[0]
    top0 = float(np.mean([s["top1"] for s in base]))
    fa0 = float(np.mean([s["fa"] for s in base]))
    print(f"\nThreshold drift on the realistic design: {args.sites} sites in federations of "
          f"{args.group}, part {args.part}, {args.rounds} FedAvg rounds x {args.epochs} "
          "epochs on the same crops; mean over sites, each on its own camera. Pretrained "
          f"at 0.40: top-1 {top0:.2f}, strangers accepted {fa0:.2f}")
    shown = sorted({0, 3, 5, 7, 11, args.rounds - 1} & set(range(args.rounds)))
    print("rule | " + " | ".join(f"round {r + 1}: threshold / top-1 - pre / FA - pre"
                                 for r in shown))
    for name, curve in curves.items():
        cells = []
        for r in shown:
            sites = curve[r]
            dt = np.array([s["top1"] - b["top1"] for s, b in zip(sites, base, strict=True)])
            df = np.array([s["fa"] - b["fa"] for s, b in zip(sites, base, strict=True)])
            se = np.sqrt(len(dt))
            cells.append(f"{np.mean([s['threshold'] for s in sites]):.3f} / "
                         f"{dt.mean():+.2f} ({dt.std(ddof=1) / se:.2f}) / "
                         f"{df.mean():+.2f} ({df.std(ddof=1) / se:.2f})")
        print(f"{name} | " + " | ".join(cells))
    print(f"wall time {seconds:.0f} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_design_options(ap, rounds=16)
    ap.add_argument("--holdout", type=int, default=5, help="0: no held-out chain")
    ap.add_argument("--group", type=int, default=4,
                    help="sites per federation: the sites are split into federations of "
                         "this many consecutive sites, each averaging its own (default 4, "
                         "as a small deployment; the design's number of sites: one)")
    args = ap.parse_args(argv)
    args.lfw_folds = 0
    if args.cache is None:
        from bench.common.fed_features import default_cache
        args.cache = default_cache()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    curves, seconds = run(args)
    print_report(curves, seconds, args)
    print(reproduce("bench.federation.threshold_drift", argv))


if __name__ == "__main__":
    main()
