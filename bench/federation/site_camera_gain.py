"""What training buys a small site on its own camera: held-out 1:N identification at the
deployed threshold, the demo's measure, before and after.

    .venv/bin/python -m bench.federation.site_camera_gain [--people 12] [--enrol 3]
        [--heldout 3] [--cameras low-light,backlight,...] [--part embed_bn] [--epochs 2]
        [--bn-mix 0.1] [--faces DIR] [--distill-views 8] [--distill-epochs 4]
        [--distill-lr LR] [--anchor 1] [--relational 0] [--rounds 2] [--distill-seed 0]
        [--strangers 12] [--clean]

One site per kiosk camera (edge.vision.camera_domain.KIOSK_DOMAINS), each with its own
disjoint people (the demo's choice: sorted LFW folders with enough photos, dealt
round-robin). Every photo goes through the site's camera and then the product's
enrolment path (YuNet -> align -> crop). A site's held-out photos of its own enrolled
people are identified against its gallery of enrolment crops (edge.gallery.match at
DEFAULT_MATCH_THRESHOLD, a wrong or under-threshold best match is a miss). Rows, each
scored per site on its own camera:

- pretrained SFace (the baseline);
- local fine-tune: the box trainer's loop (edge.training.loop.fit, the product's
  TrainConfig defaults but ``--epochs``) on the site's enrolment crops, 4 augmented views;
- FedAvg of the local parts (weighted by enrolment crops, plaintext: the CKKS path's sum
  equals it within its scale, see bench.federation.federated_accuracy), what the demo's
  boxes serve after one round;
- local BN statistics: the running mean/var of the part's batch norms moved ``--bn-mix``
  of the way to the site's own enrolment crops (AdaBN-style, no labels), weights pretrained;
- camera distillation (bench.common.camera_distill, no labels): the part learns to give a
  randomly degraded view of each enrolment crop the pretrained embedding of the crop,
  ``--distill-views`` views per crop (one is the crop itself), ``--distill-epochs`` per
  round; local-only for all ``--rounds`` rounds' epochs, FedAvg after each round, and
  personalised (the last FedAvg distilled one more round on the site's own crops);
- with ``--clean``, the same rows on the same people's photos without any camera
  (forgetting of clean LFW).

Gains are in points against pretrained, mean over the sites with the paired standard error.
Then, per row, rank-1 without the threshold (a gain at 0.40 that rank-1 lacks is scores
lifted over it) and the share of ``--strangers`` unenrolled people's photos, through the
site's camera, that the site names as someone at the threshold.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from bench.common.camera_distill import DistillConfig, DistillSet, distill, distill_views
from edge.errors import FedFaceError
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD, match
from edge.training.api import TrainConfig
from edge.vision.camera_domain import CLEAN, KIOSK_DOMAINS, Domain, kiosk_domain
from edge.vision.pipeline import FacePipeline
from models.federated_parts import get_part
from models.registry import model_path

log = logging.getLogger(__name__)
# Adam learning rates of the distillation per part (the CosFace ones of
# edge.training.loop.PART_LR as the starting point)
DISTILL_LR = {"embed_bn": 5e-3, "conv14": 1e-4, "fc1_lora": 3e-3}
DEFAULT_FACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lfw"


@dataclass
class Site:
    camera: str
    enrol: list[tuple[int, np.ndarray]]  # (person, crop)
    heldout: list[tuple[int, np.ndarray]]


def shoot_site(pipeline: FacePipeline, folders: list[Path], domain: Domain, enrol: int,
               heldout: int, seed: int) -> Site:
    site = Site(domain.name, [], [])
    for person, folder in enumerate(folders):
        for k, path in enumerate(sorted(folder.glob("*.jpg"))[: enrol + heldout]):
            image = cv2.imread(str(path))
            if image is None:
                continue
            try:
                face = pipeline.embed_image(domain.apply(image, seed=seed * 100_003 + person * 101
                                                         + k))
            except FedFaceError:  # the camera lost the face: the box would skip it too
                continue
            (site.enrol if k < enrol else site.heldout).append((person, face.crop))
    return site


def false_accepts(embed, site: Site, strangers: list[np.ndarray]) -> float:
    """Share of photos of people the site never enrolled (through its camera) that the
    deployed threshold names as someone: what lifting every score over 0.40 would cost."""
    gallery = embed([c for _, c in site.enrol])
    ids = np.array([p for p, _ in site.enrol])
    found = match(embed(strangers), gallery, ids, {p: str(p) for p in set(ids.tolist())},
                  DEFAULT_MATCH_THRESHOLD)
    return float(np.mean([m.name is not None for m in found]))


def identification(embed, site: Site, threshold: float = DEFAULT_MATCH_THRESHOLD) -> float:
    """Share of held-out photos named right at the deployed threshold (-1: rank-1, the
    nearest enrolment crop's person whatever the score)."""
    gallery, probes = embed([c for _, c in site.enrol]), embed([c for _, c in site.heldout])
    ids = np.array([p for p, _ in site.enrol])
    names = {p: str(p) for p in set(ids.tolist())}
    found = match(probes, gallery, ids, names, threshold)
    return float(np.mean([m.name == str(p) for m, (p, _) in zip(found, site.heldout,
                                                                 strict=True)]))


class SiteModels:
    """The site's trunk features (once) and embeddings through a tail of the part."""

    def __init__(self, part_name: str, cache_dir: Path) -> None:
        from models.trunk import TrunkRunner

        self.part = get_part(part_name)
        self.model = model_path("sface")
        self.trunk = TrunkRunner(self.model, [self.part.cut])
        self.cache_dir = cache_dir

    def tail(self, vector: np.ndarray | None = None):
        from models.trainable import TrainableTail

        tail = TrainableTail(self.model, self.part)
        if vector is not None:
            tail.set_vector(vector)
        return tail

    def embedder(self, tail):
        import torch

        def embed(crops: list[np.ndarray]) -> np.ndarray:
            feats = self.trunk.run(crops)[self.part.cut]
            with torch.no_grad():
                out = tail(torch.from_numpy(feats))
            return np.asarray(torch.nn.functional.normalize(out, dim=1).numpy())
        return embed

    def fine_tune(self, site: Site, epochs: float) -> tuple[np.ndarray, int]:
        from edge.training.feature_cache import FeatureCache
        from edge.training.loop import fit

        cache = FeatureCache(self.model, self.part.cut, self.cache_dir / site.camera,
                             n_views=4, seed=0)
        data = cache.training_set([(str(p), c) for p, c in site.enrol])
        tail = self.tail()
        fit(tail, data.features, data.labels, TrainConfig(epochs=epochs))
        return tail.get_vector(), data.n_crops

    def distill_set(self, site: Site, n_views: int, seed: int) -> DistillSet:
        return distill_views(self.trunk, self.part.cut, [c for _, c in site.enrol], n_views,
                             seed, cache=self.cache_dir / "distill")

    def distilled(self, start: np.ndarray | None, data: DistillSet,
                  config: DistillConfig) -> np.ndarray:
        tail = self.tail(start)
        distill(tail, data, config)
        return tail.get_vector()

    def bn_local(self, site: Site, mix: float):
        """A pretrained tail whose batch-norm statistics moved ``mix`` towards the site's."""
        import torch
        from onnx import helper

        from models.trainable import _apply, _key

        tail = self.tail()
        feats = self.trunk.run([c for _, c in site.enrol])[self.part.cut]
        values = {self.part.cut: torch.from_numpy(feats)}
        with torch.no_grad():
            for node in tail.nodes:
                if node.op_type == "BatchNormalization":
                    x = values[node.input[0]]
                    dims = [0, *range(2, x.dim())]
                    for name, stat in ((node.input[3], x.mean(dim=dims)),
                                       (node.input[4], x.var(dim=dims))):
                        getattr(tail, _key(name)).mul_(1 - mix).add_(mix * stat)
                args = [values[n] if n in values else tail._weight(n) for n in node.input if n]
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                values[node.output[0]] = _apply(node.op_type, attrs, args)
        return tail


def _gain_line(name: str, rows: list[float], base: list[float]) -> str:
    diff = 100 * (np.asarray(rows) - np.asarray(base))
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    cells = " ".join(f"{100 * r:6.1f}" for r in rows)
    return (f"{name:24s} {cells} | mean {100 * np.mean(rows):5.1f}  "
            f"gain {diff.mean():+5.1f} (SE {se:.1f}), worst site {diff.min():+5.1f}")


def _fedavg(vectors: list[np.ndarray], weights: list[int]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return (np.sum([wi * v for wi, v in zip(w, vectors, strict=True)], axis=0)
            / w.sum()).astype(np.float32)


def _distill_rows(models: SiteModels, sites: list[Site], args: argparse.Namespace
                  ) -> tuple[dict[str, list[np.ndarray | None]], str]:
    """Per row name, the vector each site serves: local-only distillation (all rounds'
    epochs at once) and FedAvg of the distilled parts after each round; and what a site's
    round costs (one core: the trunk runs with one thread, torch with one)."""
    lr = args.distill_lr if args.distill_lr is not None else DISTILL_LR.get(args.part, 1e-4)
    config = DistillConfig(epochs=args.distill_epochs, lr=lr, anchor=args.anchor,
                           relational=args.relational, seed=args.distill_seed)
    t0 = time.perf_counter()
    # seed 0 keeps the looks (and the cached views) of the first runs
    data = [models.distill_set(s, args.distill_views, seed=i + 1000 * args.distill_seed)
            for i, s in enumerate(sites)]
    views_s = (time.perf_counter() - t0) / len(sites)
    local_config = replace(config, epochs=args.distill_epochs * args.rounds)
    rows: dict[str, list[np.ndarray | None]] = {
        "distill local-only": [models.distilled(None, d, local_config) for d in data]}
    vector: np.ndarray | None = None
    for r in range(1, args.rounds + 1):
        vectors, seconds = [], []
        for d in data:
            t0 = time.perf_counter()
            vectors.append(models.distilled(vector, d, config))
            seconds.append(time.perf_counter() - t0)
        vector = _fedavg(vectors, [d.n_crops for d in data])
        rows[f"distill FedAvg round {r}"] = [vector] * len(sites)
    # personalised: each site distils the federation's last model once more on its own
    rows["distill FedAvg + local"] = [models.distilled(vector, d, config) for d in data]
    cost = (f"per site: trunk features of the views {views_s:.1f} s (0 when cached), one "
            f"distillation round median {np.median(seconds):.1f} s (last round)")
    return rows, cost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    ap.add_argument("--people", type=int, default=12)
    ap.add_argument("--enrol", type=int, default=3)
    ap.add_argument("--heldout", type=int, default=3)
    ap.add_argument("--cameras", default=",".join(d.name for d in KIOSK_DOMAINS))
    ap.add_argument("--part", default="embed_bn")
    ap.add_argument("--epochs", type=float, default=TrainConfig().epochs)
    ap.add_argument("--bn-mix", type=float, default=0.1)
    ap.add_argument("--distill-views", type=int, default=8)
    ap.add_argument("--distill-epochs", type=float, default=DistillConfig().epochs)
    ap.add_argument("--distill-lr", type=float, default=None)
    ap.add_argument("--anchor", type=float, default=DistillConfig().anchor)
    ap.add_argument("--relational", type=float, default=DistillConfig().relational)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--distill-seed", type=int, default=0, help="random looks and batches")
    ap.add_argument("--strangers", type=int, default=12, help="unenrolled people per site")
    ap.add_argument("--clean", action="store_true", help="also score without the camera")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/fedface-site-camera-gain"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    domains = [kiosk_domain(n) for n in args.cameras.split(",")]
    need = args.enrol + args.heldout
    folders = sorted(p for p in args.faces.iterdir()
                     if p.is_dir() and len(list(p.glob("*.jpg"))) >= need)
    t0 = time.perf_counter()
    pipeline = FacePipeline.from_model_dir()
    people = [folders[i :: len(domains)][: args.people] for i in range(len(domains))]
    sites = [shoot_site(pipeline, people[i], d, args.enrol, args.heldout, seed=i)
             for i, d in enumerate(domains)]
    # one photo each of people no site enrolled, through each site's camera
    strangers = [[c for _, c in shoot_site(pipeline, folders[i :: len(domains)][
        args.people : args.people + args.strangers], d, 0, 1, seed=i + 500).heldout]
        for i, d in enumerate(domains)]
    models = SiteModels(args.part, args.cache / args.part)
    tuned = [models.fine_tune(s, args.epochs) for s in sites]
    served: dict[str, list[np.ndarray | None]] = {
        "pretrained (baseline)": [None] * len(sites),
        "local fine-tune": [v for v, _ in tuned],
        "FedAvg of the sites": [_fedavg([v for v, _ in tuned], [n for _, n in tuned])]
        * len(sites),
    }
    t1 = time.perf_counter()
    rows, cost = _distill_rows(models, sites, args)
    served.update(rows)
    distill_s = time.perf_counter() - t1
    scores = {name: [identification(models.embedder(models.tail(v)), s)
                     for v, s in zip(vectors, sites, strict=True)]
              for name, vectors in served.items()}
    bn = [identification(models.embedder(models.bn_local(s, args.bn_mix)), s) for s in sites]
    pre = scores["pretrained (baseline)"]
    print(f"sites: {len(sites)} x {args.people} people, {args.enrol} enrolment + "
          f"{args.heldout} held-out photos each, part {args.part}, {args.epochs} epochs; "
          f"held-out identification at threshold {DEFAULT_MATCH_THRESHOLD} on each site's "
          f"own camera ({time.perf_counter() - t0:.0f} s; distillation "
          f"{args.distill_views} views, {args.distill_epochs} epochs x {args.rounds} rounds, "
          f"{distill_s:.0f} s for all sites and rows; {cost})")
    print(f"{'':24s} " + " ".join(f"{s.camera[:6]:>6s}" for s in sites))
    print(f"{'held-out photos':24s} " + " ".join(f"{len(s.heldout):6d}" for s in sites))
    for name, row in scores.items():
        print(_gain_line(name, row, pre))
        if name == "FedAvg of the sites":
            print(_gain_line(f"local BN stats (mix {args.bn_mix})", bn, pre))
    # a gain at the threshold can be scores lifted over it or nearest people put right
    rank1 = {name: np.mean([identification(models.embedder(models.tail(v)), s, -1.0)
                            for v, s in zip(vectors, sites, strict=True)])
             for name, vectors in served.items()}
    print("rank-1 without the threshold, mean over sites: "
          + ", ".join(f"{name} {100 * r:.1f}" for name, r in rank1.items()))
    accepted = {name: np.mean([false_accepts(models.embedder(models.tail(v)), s, x)
                               for v, s, x in zip(vectors, sites, strangers, strict=True)])
                for name, vectors in served.items()}
    print(f"false accepts of {args.strangers} strangers per site at {DEFAULT_MATCH_THRESHOLD}"
          ", mean over sites: " + ", ".join(f"{n} {100 * a:.1f}" for n, a in accepted.items()))
    if args.clean:
        _print_clean(pipeline, models, people, args, served)
    return 0


def _print_clean(pipeline: FacePipeline, models: SiteModels, people: list[list[Path]],
                 args: argparse.Namespace, served: dict[str, list[np.ndarray | None]]) -> None:
    """The same people and photos without a camera: what the served models forgot."""
    clean = [shoot_site(pipeline, p, CLEAN, args.enrol, args.heldout, seed=i)
             for i, p in enumerate(people)]
    print("the same sites' people without any camera (clean LFW), same models:")
    pre = [identification(models.embedder(models.tail()), s) for s in clean]
    for name, vectors in served.items():
        row = [identification(models.embedder(models.tail(v)), s)
               for v, s in zip(vectors, clean, strict=True)]
        print(_gain_line(name, row, pre))


if __name__ == "__main__":
    raise SystemExit(main())
