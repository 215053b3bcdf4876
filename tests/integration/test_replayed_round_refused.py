"""Issue 15, attack 3 (downgrade after reboot), on a real Mosquitto with real signed
messages and real CKKS results.

The aggregator's publisher signs rounds 1 to 3; an MQTT client that recorded round 1's
pointer and chunks (any client may subscribe on a broker without ACLs) re-publishes
them, retained, while the box is down. Before the fix the rebooted box, which served
round 3, fetched and applied round 1. Now its high-water mark refuses the pointer as
``stale_round`` before fetching anything; a box that never had a newer round (the
control) applies the same replayed messages, so they are valid ones.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.publisher import Publisher
from aggregator.rounds.records import ResultReady
from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.federated.high_water import MARK_FILENAME, STALE_ROUND
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.crypto.bounds import Bounds, ResultPolicy
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.packing import StreamingSum, encrypt_update
from federation.crypto.signing import generate_signing_key
from federation.transport.mqtt import MqttTransport
from tests.support.broker import MosquittoBroker, free_port
from tests.support.federation_rig import PART, RecordingSink, part_base_vector
from tests.support.mqtt_clients import collect, connect

FED = "replay"
POLICY = ResultPolicy(64.0, Bounds(1000, None))


@pytest.fixture()
def broker(tmp_path: Path):
    b = MosquittoBroker(tmp_path / "broker", free_port()).start()
    yield b
    b.stop()


def round_blob(ctx: FederationContext, base: np.ndarray, round_no: int) -> bytes:
    """Two boxes' updates summed, as the aggregator sums them (real CKKS)."""
    total = StreamingSum(ctx.public(), base.size)
    for box in range(2):
        step = np.random.default_rng(round_no * 10 + box).normal(0, 1e-3, base.size)
        total.add(encrypt_update(ctx, (base + round_no * 1e-2 + step).astype(np.float32), 50))
    return total.result().to_bytes()


class Box:
    """A box's federation client over MQTT; ``serving`` is what its model store serves."""

    def __init__(self, url: str, ctx: FederationContext, agg_public: object, state: Path,
                 serving: tuple[str, np.ndarray] | None) -> None:
        self.events: queue.Queue[ClientEvent] = queue.Queue()
        self.seen: list[ClientEvent] = []
        self.sink = RecordingSink()
        if serving is not None:
            self.sink.applied.append(serving)
        base = part_base_vector()
        self.client = FederationClient(
            ClientConfig(FED, "box-1"),
            lambda will: MqttTransport(url, f"box-1-{state.name}", will=will),
            ctx, generate_signing_key(), agg_public,  # type: ignore[arg-type]
            NumpyDriftTrainer(PART, base, "box-1", 50), self.sink, state, base,
            on_event=self.events.put)
        self.client.start()

    def wait_event(self, kind: str, round_no: int, timeout: float = 60.0) -> ClientEvent:
        deadline = time.monotonic() + timeout
        while not any(e.kind == kind and e.round == round_no for e in self.seen):
            try:
                self.seen.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                saw = [(e.kind, e.round, e.data.get("reason")) for e in self.seen]
                raise AssertionError(f"no {kind} of round {round_no} in {timeout:.0f} s; "
                                     f"saw {saw}") from None
        return next(e for e in self.seen if e.kind == kind and e.round == round_no)

    def stop(self) -> None:
        self.client.stop(timeout=5)


def test_a_rebooted_box_refuses_a_replayed_older_round(broker: MosquittoBroker,
                                                        tmp_path: Path) -> None:
    ctx = new_secret_context()
    agg_key = generate_signing_key()
    agg = connect(broker.url, "aggregator")
    attacker = connect(broker.url, "attacker")
    recorded = collect(attacker, f"{topics.prefix(FED)}/#")
    publisher = Publisher(agg, agg_key, FED, "aggregator", chunk_size=16384)
    base = part_base_vector()
    state = tmp_path / "box-state"
    box = Box(broker.url, ctx, agg_key.public_key(), state, None)
    try:
        previous = "base"
        for r in (1, 2, 3):
            publisher.result(ResultReady(r, f"round-{r}", previous, "sum.bin", ["a", "b"],
                                         POLICY), round_blob(ctx, base, r), None)
            box.wait_event("applied", r)
            previous = f"round-{r}"
    finally:
        box.stop()
    served = box.sink.applied[-1]
    assert served[0] == "round-3" and (state / MARK_FILENAME).is_file()

    # what the attacker recorded of round 1: its pointer and its chunks
    chunks, pointers = [], []
    while not recorded.empty():
        topic, payload = recorded.get_nowait()
        if payload and topic.startswith(topics.result_filter(FED, 1)[:-1]):
            chunks.append((topic, payload))
        elif payload and topic == topics.model_latest(FED):
            pointers.append((topic, payload))
    assert chunks and len(pointers) == 3
    for topic, payload in [*chunks, pointers[0]]:  # replayed while the box is down, retained
        attacker.publish(topic, payload, retain=True, wait_timeout=10)

    rebooted = Box(broker.url, ctx, agg_key.public_key(), state, served)
    try:
        refused = rebooted.wait_event("result_rejected", 1)
        assert refused.data["reason"] == STALE_ROUND
        assert rebooted.client.version == "round-3"
        assert [v for v, _ in rebooted.sink.applied] == ["round-3"]  # nothing applied
        assert rebooted.client.counters.get(STALE_ROUND, 0) >= 1  # once per delivery
    finally:
        rebooted.stop()

    # control: the same replayed messages are valid; a box with no newer round takes them
    fresh = Box(broker.url, ctx, agg_key.public_key(), tmp_path / "fresh-state", None)
    try:
        fresh.wait_event("applied", 1)
    finally:
        fresh.stop()
    agg.close()
    attacker.close()
