"""A box set up for another federated part than the one the aggregator announces never
trains or sends a vector: it says why (log, event, retained status) and keeps running.

Real aggregator service, real CKKS context and signatures, over the in-memory bus.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.training.api import LocalUpdate
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.chunking import split_blob
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.signing import generate_signing_key, public_key_hex
from federation.envelope import decode, encode
from federation.transport.base import InMemoryBus, InMemoryTransport, Will
from models.federated_parts import CONV14, DEFAULT_PART, EMBED_BN, FederatedPart, get_part
from tests.support.federation_rig import RecordingSink, part_base_vector, wait_for

FED = "parts"
BOX_PART = get_part(DEFAULT_PART)


class CountingTrainer:
    """The default-part drift trainer, counting how often the client asks it to train."""

    def __init__(self, part: FederatedPart) -> None:
        self.part = part
        self.calls = 0
        self._inner = NumpyDriftTrainer(part, part_base_vector(part), "a", 20, 1e-2)

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        self.calls += 1
        return self._inner.local_update(global_vector, round_no)


@pytest.fixture(scope="module")
def ctx() -> FederationContext:
    return new_secret_context()


class Federation:
    """An aggregator service announcing ``part`` and one box ``a`` with the default part."""

    def __init__(self, root: Path, ctx: FederationContext, announced: FederatedPart) -> None:
        self.bus = InMemoryBus(synchronous=True)
        self.agg_key = generate_signing_key()
        self.box_key = generate_signing_key()
        (root / "agg").mkdir(parents=True)
        store = Store(root / "agg")
        DeviceRegistry(store).add("a", bytes.fromhex(public_key_hex(self.box_key)))
        self.service = AggregatorService(
            InMemoryTransport(self.bus, "agg"), store, ctx.public(), self.agg_key, FED,
            settings=RoundSettings(deadline_seconds=60, quorum=1, count_scale=64,
                                   part_key=announced.key), max_rounds=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop, 0.05),
                                       daemon=True)
        self.thread.start()
        self.events: list[ClientEvent] = []
        self.trainer = CountingTrainer(BOX_PART)
        self.sink = RecordingSink()
        self.transport: InMemoryTransport | None = None

        def factory(will: Will) -> InMemoryTransport:
            self.transport = InMemoryTransport(self.bus, "a", will=will)
            return self.transport

        self.client = FederationClient(
            ClientConfig(FED, "a", retry_seconds=0.5, tick_seconds=0.05), factory, ctx,
            self.box_key, self.agg_key.public_key(), self.trainer, self.sink, root / "a",
            part_base_vector(BOX_PART), on_event=self.events.append)

    def status(self) -> dict:
        body: dict = json.loads(decode(self.bus.retained[topics.status(FED, "a")]).payload)
        return body

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def close(self) -> None:
        self.client.stop()
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def federation(tmp_path: Path, ctx: FederationContext) -> Iterator:
    made: list[Federation] = []

    def make(announced: FederatedPart) -> Federation:
        f = Federation(tmp_path / announced.name, ctx, announced)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def test_box_joins_when_the_announced_part_is_its_own(federation) -> None:
    f = federation(BOX_PART)  # the control: same set-up, matching part
    f.client.start()
    wait_for(lambda: f.client.version == "round-1", 20, "round 1 trained and applied")
    assert f.trainer.calls == 1 and "not_joined" not in f.kinds()
    assert "not_joining" not in f.status()


def test_box_with_another_part_refuses_to_join_and_says_why(federation) -> None:
    announced = CONV14 if BOX_PART is not CONV14 else EMBED_BN
    f = federation(announced)
    f.client.start()
    wait_for(lambda: "not_joined" in f.kinds(), 10, "the box to refuse round 1")
    refusal = next(e for e in f.events if e.kind == "not_joined")
    assert refusal.round == 1 and refusal.data["reason"] == "wrong_part"
    assert announced.key in refusal.data["detail"] and BOX_PART.key in refusal.data["detail"]
    wait_for(lambda: "not_joining" in f.status(), 5, "the refusal in the retained status")
    status = f.status()
    assert status["state"] == "online"
    assert status["not_joining"]["reason"] == "wrong_part"
    assert status["not_joining"]["round"] == 1
    time.sleep(0.5)  # several worker ticks and announce handlings later...
    assert f.trainer.calls == 0
    assert "joined" not in f.kinds() and "submitted" not in f.kinds()
    assert not [t for t, _, _ in f.bus.published if t == topics.update(FED, "a")]
    assert f.client.counters.get("wrong_part") == 1  # said once per round, not per tick
    assert f.client.counters.get("internal") is None  # no crash in the worker

    # a result of that federation (its announced part) is not fetched either
    body = json.dumps({"round": 1, "model": "round-1", "base_model": "base", "msg": "m" * 32,
                       "blob_sha256": "0" * 64, "blob_size": 10, "chunks": 1}).encode()
    (env,) = split_blob(body, f.agg_key, kind="result", fed=FED, sender="aggregator", round=1,
                        model="round-1", chunk_size=len(body))
    f.bus.publish(topics.model_latest(FED), encode(env), retain=True)
    time.sleep(0.3)
    assert f.transport is not None
    assert topics.result_filter(FED, 1) not in f.transport._subs
    assert f.client.version == "base" and f.sink.applied == []
    assert f.client._worker is not None and f.client._worker.is_alive()
