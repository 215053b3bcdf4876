"""What a caller of the federation client hands it and gets back, in one small module.

``ClientConfig`` (the box's federation settings), ``ModelSink`` (where accepted weights
go: the engine's hot swap on a real box), ``ClientEvent`` and ``EventCallback`` (what
the client reports, e.g. to the demo and the CLI), ``TransportFactory`` (how it opens
its connection, given its last will) and ``ClientEvents`` (the counters and event
callback the client's parts share). Kept apart from ``edge.federated.client`` so the
client's parts (``joining``, ``acks``, ``result_apply``) can name these without
importing the round loop; ``edge.federated.client`` re-exports them for the tests, its
many callers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edge.priority import background_niceness
from federation.transport.base import Transport, Will

log = logging.getLogger(__name__)


class ModelSink(Protocol):
    """Where accepted federated weights go (the engine's hot swap). A sink that keeps
    the box's model versions also tells what it serves: ``served_vector() -> (version,
    vector) | None`` (edge.serving.hot_swap.HotSwapper); the client resumes on that, so the box
    has one store of model versions, the sink's. ``serve_initial(reason, block)``, when the
    sink has it, serves the pretrained model again when the federation went back to it
    (a poisoned round, ``edge.federated.result_apply``); otherwise ``apply`` is handed
    the initial version and vector. ``reason``: what the box's model history says of the
    version (a region's box: which root result it is)."""

    def apply(self, version: str, vector: np.ndarray,
              reason: str = "federated result") -> None: ...


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
    kind: str  # joined, sitting_out, submitted (sent on a live connection), queued (the
    # broker unreachable), sent (a queued one went out), acked, rejected, applied,
    # result_rejected, back_to_initial, error, revoked
    round: int
    data: dict[str, Any]


EventCallback = Callable[[ClientEvent], None]
TransportFactory = Callable[[Will], Transport]


class ClientEvents:
    """The client's counters (``FederationClient.counters``) and its event callback."""

    def __init__(self, on_event: EventCallback | None) -> None:
        self.on_event = on_event
        self.counters: dict[str, int] = {}

    def emit(self, kind: str, round_no: int, data: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(ClientEvent(kind, round_no, data))
        except Exception:
            log.exception("federation event callback failed")

    def count(self, key: str) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]
