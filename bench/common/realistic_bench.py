"""The realistic design's cached features and the scoring of one model on one site's own
camera (bench.federation.realistic_sites, bench.federation.server_optimiser).

Trunk features are cached (bench.common.fed_features); scoring is verification of the
test people's pairs, 1:N identification of the site's enrolled people at the deployed
threshold, at each model's FAR 1e-3 threshold and at the product's calibrated one.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common.fed_experiment import model_paths
from bench.common.fed_features import FeatureStore, align_crops, default_cache
from bench.common.fed_train import EmbedTask, TrainTask, run_embed, run_train
from bench.common.lfw_protocol import parse_pairs, ten_fold_accuracy
from bench.common.realistic_design import RealisticDesign, Site
from bench.common.site_scores import Pairs, identification, verification
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD, normalised
from edge.serving.calibration import calibrate
from edge.vision.camera_domain import CLEAN

Vector = np.ndarray | None


@dataclass(frozen=True)
class SiteData:
    site: Site
    train_dir: Path
    labels: np.ndarray  # per train row (person within the site)
    gallery_rows: np.ndarray  # train rows of view 0: the enrolment gallery
    held_dir: Path
    held_ids: np.ndarray


def add_design_options(ap: argparse.ArgumentParser, rounds: int) -> None:
    """The options of the benches that federate the realistic design round by round
    (bench.federation.server_optimiser, bench.federation.threshold_drift)."""
    from bench.common.fed_experiment import REPO
    from edge.training.api import TrainConfig

    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--sites", type=int, default=48, choices=range(32, 65), metavar="32-64")
    ap.add_argument("--part", default="embed_bn")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--epochs", type=float, default=TrainConfig.epochs)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)


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
        """The threshold the box served this model at before calibration people: 0.40
        carried from the pretrained model's scores of every enrolment crop of the site to
        this model's. The models here train on every person, so the box's rule now
        (only the calibration people's crops, whom no round trains on) is measured by
        bench.federation.threshold_drift instead."""
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
