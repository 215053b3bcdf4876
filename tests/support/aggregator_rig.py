"""An aggregator service on an in-memory bus with scripted boxes: the rounds tests' rig;
or with real federation clients (``InMemoryFederation``), run in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from edge.federated.client import ClientConfig, ClientEvent, FederationClient, ModelSink
from edge.training.api import LocalTrainer
from federation.crypto.ckks import FederationContext
from federation.crypto.signing import generate_signing_key, public_key_hex
from federation.transport.base import InMemoryBus, InMemoryTransport
from tests.support.aggregator_boxes import ScriptedBox

FED = "fedtest"
COUNT_SCALE = 64.0
LENGTH = 3000  # 2 ciphertexts of 2048 slots: exercises the multi-ciphertext path


@dataclass
class Rig:
    bus: InMemoryBus
    store: Store
    service: AggregatorService
    boxes: list[ScriptedBox]
    clock: list[float]

    def reopen(self, settings: RoundSettings, public: FederationContext) -> AggregatorService:
        """A new service on the same state dir (a restart), same bus."""
        self.store.close()
        self.store = Store(self.store.state_dir)
        self.service = make_service(self.bus, self.store, public, settings, self.clock)
        self.service.start()
        return self.service


def make_service(
    bus: InMemoryBus, store: Store, public: FederationContext, settings: RoundSettings,
    clock: list[float],
) -> AggregatorService:
    return AggregatorService(
        InMemoryTransport(bus, "aggregator"), store, public, generate_signing_key(), FED,
        settings=settings, clock=lambda: clock[0],
    )


def registered_boxes(bus: InMemoryBus, store: Store, secret_ctx: FederationContext,
                     n_boxes: int, fed: str = FED) -> list[ScriptedBox]:
    """``n_boxes`` scripted boxes on ``bus``, each registered with the aggregator's store."""
    boxes = [ScriptedBox(f"box{i}", fed, secret_ctx, InMemoryTransport(bus, f"box{i}"))
             for i in range(n_boxes)]
    registry = DeviceRegistry(store)
    for box in boxes:
        registry.add(box.device_id, bytes.fromhex(box.public_hex))
    return boxes


def make_rig(
    tmp_path: Path, secret_ctx: FederationContext, n_boxes: int = 3,
    settings: RoundSettings | None = None,
) -> Rig:
    bus = InMemoryBus(synchronous=True)
    store = Store(tmp_path)
    clock = [1_000_000.0]
    boxes = registered_boxes(bus, store, secret_ctx, n_boxes)
    service = make_service(
        bus, store, secret_ctx.public(),
        settings or RoundSettings(deadline_seconds=60, quorum=2, count_scale=COUNT_SCALE), clock,
    )
    service.start()
    return Rig(bus, store, service, boxes, clock)


@dataclass
class InMemoryFederation:
    """The aggregator service on an in-memory bus with ``device_keys``' devices registered,
    and real federation clients for them (``client``); ``serving()`` runs the service."""

    bus: InMemoryBus
    store: Store
    key: Ed25519PrivateKey
    device_keys: dict[str, Ed25519PrivateKey]
    service: AggregatorService
    ctx: FederationContext
    fed: str

    def client(self, device: str, trainer: LocalTrainer, sink: ModelSink, state: Path,
               base: np.ndarray, on_event: Callable[[ClientEvent], None]) -> FederationClient:
        """Box ``device``'s federation client, retrying and ticking fast for a test."""
        return FederationClient(
            ClientConfig(self.fed, device, retry_seconds=0.5, tick_seconds=0.05),
            lambda will: InMemoryTransport(self.bus, device, will=will), self.ctx,
            self.device_keys[device], self.key.public_key(), trainer,
            sink, state, base, on_event=on_event)

    @contextmanager
    def serving(self) -> Iterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=self.service.run, args=(stop, 0.05), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)


def in_memory_federation(state_dir: Path, ctx: FederationContext, fed: str,
                         devices: list[str], settings: RoundSettings,
                         max_rounds: int) -> InMemoryFederation:
    bus = InMemoryBus(synchronous=True)
    state_dir.mkdir()
    store = Store(state_dir)
    keys = {d: generate_signing_key() for d in devices}
    registry = DeviceRegistry(store)
    for d, k in keys.items():
        registry.add(d, bytes.fromhex(public_key_hex(k)))
    agg_key = generate_signing_key()
    service = AggregatorService(InMemoryTransport(bus, "agg"), store, ctx.public(), agg_key,
                                fed, settings=settings, max_rounds=max_rounds)
    return InMemoryFederation(bus, store, agg_key, keys, service, ctx, fed)
