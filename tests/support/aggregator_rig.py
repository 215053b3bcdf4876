"""An aggregator service on an in-memory bus with scripted boxes: the rounds tests' rig."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation.crypto.ckks import FederationContext
from federation.crypto.signing import generate_signing_key
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
