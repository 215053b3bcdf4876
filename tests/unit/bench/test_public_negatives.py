"""bench.federation.public_negatives: the fixed public classes reach the training loss,
and only inside the context."""

from __future__ import annotations

import numpy as np
import torch

import edge.training.loop as loop
from bench.federation.public_negatives import negatives_in_every_head
from models.trainable import CosFaceHead


def test_public_negatives_join_the_softmax_only_inside_the_context() -> None:
    rng = np.random.default_rng(0)
    centres = torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32))
    embeddings = centres + 0.1 * torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32))
    labels = torch.arange(3)
    # negatives right where the embeddings are: the loss must grow with them
    negatives = torch.nn.functional.normalize(embeddings, dim=1).numpy()
    plain = CosFaceHead(centres)(embeddings, labels).item()
    with negatives_in_every_head(negatives):
        assert loop.CosFaceHead is not CosFaceHead
        with_public = loop.CosFaceHead(centres)(embeddings, labels).item()
    assert loop.CosFaceHead is CosFaceHead
    assert with_public > plain + 1.0, (plain, with_public)
