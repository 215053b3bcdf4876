"""A regional aggregator site (its own state and scripted boxes) for the hierarchy tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregator.regional.forwarder import RegionalForwarder
from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.regions import add_region
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation.crypto.ckks import FederationContext
from federation.crypto.signing import generate_signing_key, public_key_hex
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
    for box, v, n in zip(site.boxes, vecs, counts, strict=True):
        send_update(site, box, v, n)


def send_update(site: Site, box: ScriptedBox, v: np.ndarray, n: int) -> None:
    """One box's update for the site's open round, accepted."""
    ann = latest_announce(site.bus.retained, FED)
    box.send(box.envelopes(box.encrypted_blob(v, n, COUNT_SCALE), ann["round"],
                           ann["base_model"]))
    site.service.pump()
    assert box.acks[-1]["accepted"], box.acks[-1]


@dataclass
class Hierarchy:
    root: Site
    regions: list[Site]
    forwarders: list[RegionalForwarder]

    def close(self) -> None:
        for site in [self.root, *self.regions]:
            site.store.close()


def build_hierarchy(tmp_path: Path, secret: FederationContext) -> Hierarchy:
    """A root (quorum 2) and two regions of three scripted boxes each (quorum 3), each
    region forwarding through its RegionalForwarder; every service started."""
    root = make_site(tmp_path, "root", secret, [], quorum=2)
    regions, forwarders = [], []
    for name in ["region-a", "region-b"]:
        site = make_site(tmp_path, name, secret, [f"{name}-box{i}" for i in range(3)], 3)
        add_region(root.store, name, bytes.fromhex(public_key_hex(site.service.signing_key)))
        fwd = RegionalForwarder(
            InMemoryTransport(root.bus, name), FED, name, site.service.signing_key,
            root.service.signing_key.public_key(), site.store.state_dir, wait_seconds=0.0)
        site.service.forwarder = fwd
        regions.append(site)
        forwarders.append(fwd)
    root.service.start()
    for fwd, site in zip(forwarders, regions, strict=True):
        fwd.start()
        site.service.start()
    return Hierarchy(root, regions, forwarders)
