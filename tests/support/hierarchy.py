"""A regional aggregator site (its own state and scripted boxes) for the hierarchy tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation.crypto.ckks import FederationContext
from federation.crypto.signing import generate_signing_key
from federation.transport.base import InMemoryBus, InMemoryTransport
from tests.support.aggregator_boxes import ScriptedBox, latest_announce

FED = "hierfed"


COUNT_SCALE = 64.0


LENGTH = 3000  # two ciphertexts


@dataclass
class Site:
    bus: InMemoryBus
    store: Store
    service: AggregatorService
    boxes: list[ScriptedBox]
    clock: list[float]


def make_site(root: Path, name: str, secret: FederationContext, box_ids: list[str],
              quorum: int) -> Site:
    bus = InMemoryBus(synchronous=True)
    (root / name).mkdir()
    store = Store(root / name)
    clock = [1_000_000.0]
    boxes = [ScriptedBox(b, FED, secret, InMemoryTransport(bus, b)) for b in box_ids]
    for box in boxes:
        DeviceRegistry(store).add(box.device_id, bytes.fromhex(box.public_hex))
    service = AggregatorService(
        InMemoryTransport(bus, f"agg-{name}"), store, secret.public(), generate_signing_key(),
        FED, settings=RoundSettings(60, quorum, COUNT_SCALE), clock=lambda: clock[0])
    return Site(bus, store, service, boxes, clock)


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, LENGTH).astype(np.float32)


def send_round(site: Site, vecs: list[np.ndarray], counts: list[int]) -> None:
    ann = latest_announce(site.bus.retained, FED)
    for box, v, n in zip(site.boxes, vecs, counts, strict=True):
        box.send(box.envelopes(box.encrypted_blob(v, n, COUNT_SCALE), ann["round"],
                               ann["base_model"]))
        site.service.pump()
        assert box.acks[-1]["accepted"], box.acks[-1]
