"""The training loop of a round (torch): CosFace margin loss over cached trunk features.

Imported only by the round's process (``edge.training.trainer._run_round``) and by benches: the
box's long-lived process never maps torch (~180 MB) just to start a training child.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from edge.training.api import LOSSES, FitResult, TrainConfig, TrainingError
from models.trainable import (
    CosFaceHead,
    TrainableTail,
    class_centres,
    cosine_lr,
    proximal_penalty,
    supervised_contrastive,
)

# Adam learning rates per federated part, measured on the LFW experiment
# (bench.federation.federated_accuracy): the 1M-value conv block needs small steps, the affine-only
# and low-rank parts larger ones.
PART_LR = {"conv14": 1e-4, "fc1_lora": 3e-3, "embed_bn": 5e-3, "fc1": 1e-4}


def embed_all(tail: TrainableTail, features: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Embeddings of cached trunk features (no grad, float32)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch):
            x = torch.from_numpy(np.asarray(features[start : start + batch], dtype=np.float32))
            out.append(tail(x))
    return torch.cat(out)


def fit(
    tail: TrainableTail, features: np.ndarray, labels: np.ndarray, config: TrainConfig
) -> FitResult:
    """Train ``tail``'s federated part in place on cached features with a fresh head."""
    if len(features) != len(labels) or len(features) == 0:
        raise TrainingError(f"{len(features)} feature rows for {len(labels)} labels")
    if config.loss not in LOSSES:
        raise TrainingError(f"unknown loss {config.loss!r} ({' or '.join(LOSSES)})")
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n_classes = int(y_all.max()) + 1
    t0 = time.perf_counter()
    head = CosFaceHead(
        class_centres(embed_all(tail, features), y_all, n_classes), config.scale, config.margin
    )
    anchor = {k: p.detach().clone() for k, p in tail.trained.items()}
    lr = config.lr if config.lr is not None else PART_LR.get(tail.part.name, 1e-4)
    optimiser = torch.optim.Adam(
        [
            {"params": list(tail.trained.values()), "lr": lr, "base": lr},
            {"params": list(head.parameters()), "lr": config.head_lr, "base": config.head_lr},
        ]
    )
    n = len(features)
    total = max(1, math.ceil(config.epochs * n / config.batch_size))
    losses: list[float] = []
    order = torch.randperm(n, generator=generator)
    cursor, step, stopped = 0, 0, False
    for step in range(total):
        # at least one step: a budget eaten by the head's set-up on a loaded box must
        # not return the starting weights as if they were trained
        if step > 0 and time.perf_counter() - t0 > config.time_budget_s:
            stopped = True
            break
        if cursor + config.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = np.sort(order[cursor : cursor + config.batch_size].numpy())
        cursor += config.batch_size
        x = torch.from_numpy(np.asarray(features[idx], dtype=np.float32))
        if config.loss == "supcon":
            loss = supervised_contrastive(tail(x), y_all[idx])
        else:
            loss = head(tail(x), y_all[idx])
        if config.prox > 0:
            loss = loss + config.prox * proximal_penalty(tail, anchor)
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, total, group["base"])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    else:
        step = total
    return FitResult(
        steps=step,
        seconds=time.perf_counter() - t0,
        first_loss=losses[0] if losses else float("nan"),
        last_loss=losses[-1] if losses else float("nan"),
        stopped_by_budget=stopped,
        losses=losses,
    )
