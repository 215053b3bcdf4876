"""The federated-accuracy experiment's shared steps (bench.federation.federated_accuracy and
bench.federation.dp_accuracy): the setup of one design (:func:`make_setup`), training every
institution, the encrypted FedAvg of their vectors and the held-out evaluation."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.fed_data import Design, build_design
from bench.common.fed_eval import DomainAccuracy, fold_accuracies, pair_scores
from bench.common.fed_features import (
    ExperimentFeatures,
    align_crops,
    default_cache,
    experiment_features,
)
from bench.common.fed_train import EmbedTask, TrainTask, Workers, run_embed, run_train

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Setup:
    design: Design
    feats: ExperimentFeatures
    model_path: Path
    workers: Workers
    domain_names: list[str]  # institution domains (the test mean is over these)
    index_of: np.ndarray


def evaluate(setup: Setup, part_name: str, vector: np.ndarray | None) -> DomainAccuracy:
    names = ["clean", *setup.domain_names]
    tasks = [
        EmbedTask(setup.model_path, part_name, vector, setup.feats.test[n].folder) for n in names
    ]
    d = setup.design
    folds = {}
    for name, emb in zip(names, setup.workers.map(run_embed, tasks), strict=True):
        scores = pair_scores(emb, setup.index_of, d.pairs)
        folds[name] = fold_accuracies(scores, d.same, d.folds)
    return DomainAccuracy(folds)


def summary(setup: Setup, acc: DomainAccuracy) -> dict[str, float]:
    mean, se = acc.mean_over(setup.domain_names)
    return {"mean": mean, "se": se, "clean": acc.mean("clean"),
            "worst_domain": min(acc.mean(n) for n in setup.domain_names)}


def train_all(setup: Setup, part: str, start: np.ndarray | None, config: object,
               seed: int) -> list[np.ndarray]:
    from edge.training.trainer import TrainConfig

    assert isinstance(config, TrainConfig)
    tasks = [
        TrainTask(setup.model_path, part, start, (fs.folder,), (lab,),
                  TrainConfig(**{**asdict(config), "seed": seed + i}))
        for i, (fs, lab) in enumerate(setup.feats.train)
    ]
    return [v for v, _, _ in setup.workers.map(run_train, tasks)]


def aggregate_encrypted(ctx: object, vectors: list[np.ndarray], counts: list[int]
                         ) -> tuple[np.ndarray, int, float]:
    from federation.crypto.packing import StreamingSum, decrypt_average, encrypt_update

    aggregator = StreamingSum(ctx.public(), vectors[0].size)  # type: ignore[attr-defined]
    sent, t0 = 0, time.perf_counter()
    for v, n in zip(vectors, counts, strict=True):
        blob = encrypt_update(ctx, v, n).to_bytes()  # type: ignore[arg-type]
        sent = max(sent, len(blob))
        aggregator.add(blob)
    encrypt_s = (time.perf_counter() - t0) / len(vectors)
    return decrypt_average(ctx, aggregator.result()), sent, encrypt_s  # type: ignore[arg-type]


def model_paths(models: Path | None) -> tuple[Path, Path]:
    if models is not None:
        return models / "face_detection_yunet_2023mar.onnx", models / \
            "face_recognition_sface_2021dec.onnx"
    from models.registry import model_path

    return model_path("yunet"), model_path("sface")


def make_setup(args: Any, design: Design | None = None) -> Setup:
    """The design's crops and features (cached), its test index and the workers."""
    yunet, sface = model_paths(args.models)
    cache = args.cache or default_cache()
    design = design or build_design(args.data / "lfw", seed=args.seed,
                                    n_institutions=args.institutions)
    if getattr(args, "use_cameras", 0):
        cams = list(dict.fromkeys(i.domain.name for i in design.institutions))[: args.use_cameras]
        design.institutions = [i for i in design.institutions if i.domain.name in cams]
    crops = align_crops(args.data / "lfw", design.images, yunet, sface, cache)
    crops_path = Path(crops.filename) if hasattr(crops, "filename") else None
    assert crops_path is not None
    feats = experiment_features(design, crops_path, sface, cache, args.views, args.seed,
                                args.workers)
    index_of = np.full(len(design.images), -1)
    index_of[design.test_images] = np.arange(len(design.test_images))
    return Setup(design, feats, sface, Workers(args.workers),
                 list(dict.fromkeys(i.domain.name for i in design.institutions)), index_of)
