"""Augmentation-consistency distillation toward the frozen pretrained model (issue 18's
research step): no labels, so nothing of a dozen people to overfit.

For each of a site's crops x, the student tail on the trunk features of a degraded view
A(x) should give the pretrained embedding of x (the teacher; cosine loss), where A draws a
random kiosk-like camera look (``random_look``: the looks of
``edge.vision.camera_domain`` with random strengths). View 0 is x itself, the anchor that
keeps the student where the teacher is on the site's own camera. Degradations act on
images, before the trunk, so the trunk features of every (x, A_k(x)) are computed once
(``distill_views``) and the tail trains on them like ``edge.training.loop.fit``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.vision.camera_domain import Domain
from federation.files import PRIVATE_DIR, make_dirs, open_new


def random_look(rng: np.random.Generator) -> Domain:
    """A random camera look in the range of the kiosk cameras (each effect on or off,
    with a random strength), applied on top of what the site's camera already did."""
    grey, ir = False, False
    tone = rng.random()
    if tone < 0.15:
        grey = True
    elif tone < 0.3:
        ir = True
    gain = tuple(float(g) for g in rng.uniform(0.8, 1.25, 3)) if rng.random() < 0.4 else \
        (1.0, 1.0, 1.0)

    def maybe(p: float, low: float, high: float) -> float:
        return float(rng.uniform(low, high)) if rng.random() < p else 0.0

    return Domain(
        "random-look", grey=grey, ir=ir, colour_gain=gain,  # type: ignore[arg-type]
        gamma=1.0 + maybe(0.4, 0.2, 1.4),
        backlight=maybe(0.25, 0.3, 0.9),
        blur_sigma=maybe(0.35, 0.6, 1.8),
        motion_px=int(maybe(0.25, 3, 10)),
        low_res=int(maybe(0.5, 24, 48)),
        noise_sigma=maybe(0.5, 2.0, 9.0),
        jpeg_quality=int(maybe(0.5, 25, 60)),
    )


def degraded_views(crop: np.ndarray, n_views: int, seed: int) -> list[np.ndarray]:
    """``n_views`` images: the crop itself, then ``n_views - 1`` random looks of it."""
    rng = np.random.default_rng(seed)
    return [crop, *(random_look(rng).apply(crop, seed=seed * 64 + k)
                    for k in range(1, n_views))]


@dataclass(frozen=True)
class DistillSet:
    """Trunk features of every view and the teacher's embedding of each crop."""

    features: np.ndarray  # (n_crops, n_views, C, H, W) float16; view 0 is the crop itself
    teacher: np.ndarray  # (n_crops, 128) float32, L2-normalised pretrained embedding

    @property
    def n_crops(self) -> int:
        return int(self.features.shape[0])


def distill_views(trunk, cut: str, crops: Sequence[np.ndarray], n_views: int,
                  seed: int, cache: Path | None = None) -> DistillSet:
    """Runs ``trunk`` (a models.trunk.TrunkRunner with ``cut``) over every view once;
    with ``cache``, the result is kept there (0600: features of faces) for later runs."""
    if len(crops) == 0 or n_views < 1:
        raise ValueError(f"{len(crops)} crops and {n_views} views: nothing to distill")
    if cache is not None:
        digest = hashlib.sha256(repr((cut, n_views, seed)).encode())
        for crop in crops:
            digest.update(np.ascontiguousarray(crop).tobytes())
        path = cache / f"distill-{digest.hexdigest()[:20]}.npz"
        if path.exists():
            with np.load(path) as saved:
                return DistillSet(saved["features"], saved["teacher"])
        data = distill_views(trunk, cut, crops, n_views, seed)
        make_dirs(cache, PRIVATE_DIR)
        tmp = path.with_suffix(".tmp")
        with open_new(tmp, 0o600) as f:
            np.savez(f, features=data.features, teacher=data.teacher)
        os.replace(tmp, path)  # a stopped run never leaves half a file under the name
        return data
    feats, teacher = [], []
    for i, crop in enumerate(crops):
        out = trunk.run(degraded_views(crop, n_views, seed=seed * 100_003 + i))
        feats.append(out[cut].astype(np.float16))
        teacher.append(out["fc1"][0])
    t = np.asarray(teacher, dtype=np.float32)
    return DistillSet(np.stack(feats), t / np.linalg.norm(t, axis=1, keepdims=True))


@dataclass(frozen=True)
class DistillConfig:
    epochs: float = 4.0  # passes over the (crop, degraded view) pairs
    batch_size: int = 32
    lr: float = 1e-3  # Adam, cosine schedule
    anchor: float = 1.0  # weight of view 0 (the crop itself) against the degraded views
    # weight of keeping the cosines between *different* crops where the teacher has them:
    # pulling degraded views up alone can lift every score, strangers' too
    relational: float = 0.0
    seed: int = 0
    threads: int = 1


def distill(tail, data: DistillSet, config: DistillConfig) -> list[float]:
    """Train ``tail`` (a models.trainable.TrainableTail) in place; returns the losses
    (mean 1 - cosine to the teacher, per step)."""
    import torch
    import torch.nn.functional as F

    from models.trainable import cosine_lr

    torch.set_num_threads(config.threads)
    n, views = data.features.shape[:2]
    if views < 2:
        raise ValueError("distillation needs degraded views besides the crop itself")
    generator = torch.Generator().manual_seed(config.seed)
    teacher = torch.from_numpy(np.asarray(data.teacher, dtype=np.float32))
    weights = torch.tensor([config.anchor, *([1.0] * (views - 1))])
    params = list(tail.trained.values())
    optimiser = torch.optim.Adam(params, lr=config.lr)
    total = max(1, math.ceil(config.epochs * n * (views - 1) / config.batch_size))
    losses: list[float] = []
    for step in range(total):
        # a batch of crops, each with one random degraded view and (weighted) itself
        idx = np.sort(torch.randint(0, n, (config.batch_size,), generator=generator).numpy())
        view = torch.randint(1, views, (config.batch_size,), generator=generator).numpy()
        both = np.concatenate([data.features[idx, 0], data.features[idx, view]])
        out = F.normalize(tail(torch.from_numpy(both.astype(np.float32))), dim=1)
        target = torch.cat([teacher[idx], teacher[idx]])
        w = torch.cat([weights[0].expand(len(idx)), weights[1].expand(len(idx))])
        loss = ((1.0 - (out * target).sum(dim=1)) * w).sum() / w.sum()
        if config.relational > 0:
            loss = loss + config.relational * _relational(out, teacher[idx], len(idx))
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, total, config.lr)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


def _relational(out, teacher, n: int):
    """Mean squared gap between the student's cosines of degraded views to the other
    crops (off the diagonal) and the teacher's cosines of the same pairs."""
    import torch

    student = out[n:] @ out[:n].t()
    target = teacher @ teacher.t()
    off = ~torch.eye(n, dtype=torch.bool)
    return ((student - target)[off] ** 2).mean()
