"""What a caller of the federation client hands it and gets back, in one small module.

``ClientConfig`` (the box's federation settings), ``ModelSink`` (where accepted weights
go: the engine's hot swap on a real box), ``ClientEvent`` and ``EventCallback`` (what
the client reports, e.g. to the demo and the CLI), ``TransportFactory`` (how it opens
its connection, given its last will). Kept apart from ``edge.federated.client`` so the
client's parts can name these without importing the round loop;
``edge.federated.client`` re-exports them for the tests, its many callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edge.priority import background_niceness
from federation.transport.base import Transport, Will


class ModelSink(Protocol):
    """Where accepted federated weights go (the engine's hot swap). A sink that keeps
    the box's model versions also tells what it serves: ``served_vector() -> (version,
    vector) | None`` (edge.serving.hot_swap.HotSwapper); the client resumes on that, so the box
    has one store of model versions, the sink's."""

    def apply(self, version: str, vector: np.ndarray) -> None: ...


@dataclass(frozen=True)
class ClientConfig:
    fed_id: str
    device_id: str
    aggregator_id: str = "aggregator"
    initial_model: str = "base"  # the aggregator's name for the pretrained weights
    retry_seconds: float = 30.0
    # A federated average that moves the weights by more than this fraction of their
    # norm is not an average of honest fine-tuning steps: refuse it (keep the old model).
    max_relative_change: float = 0.5
    train_niceness: int = field(default_factory=background_niceness)
    tick_seconds: float = 0.5


@dataclass(frozen=True)
class ClientEvent:
    kind: str  # joined, sitting_out, submitted, acked, rejected, applied, result_rejected,
    # error, revoked
    round: int
    data: dict[str, Any]


EventCallback = Callable[[ClientEvent], None]
TransportFactory = Callable[[Will], Transport]
