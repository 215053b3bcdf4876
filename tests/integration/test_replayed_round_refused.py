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

from pathlib import Path

import pytest

from aggregator.rounds.publisher import Publisher
from bench.rig.replay import Box, publish_rounds, round_one
from edge.federated.high_water import MARK_FILENAME, STALE_ROUND
from federation import topics
from federation.crypto.bounds import Bounds, ResultPolicy
from federation.crypto.ckks import new_secret_context
from federation.crypto.signing import generate_signing_key
from tests.support.broker import MosquittoBroker, free_port
from tests.support.federation_rig import part_base_vector
from tests.support.mqtt_clients import collect, connect

FED = "replay"
POLICY = ResultPolicy(64.0, Bounds(1000, None))


@pytest.fixture()
def broker(tmp_path: Path):
    b = MosquittoBroker(tmp_path / "broker", free_port()).start()
    yield b
    b.stop()


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
    box = Box(broker.url, FED, ctx, agg_key.public_key(), state, base, None)
    try:
        publish_rounds(publisher, ctx, base, box, POLICY)
    finally:
        box.stop()
    served = box.sink.applied[-1]
    assert served[0] == "round-3" and (state / MARK_FILENAME).is_file()

    # what the attacker recorded of round 1: its pointer and its chunks
    chunks, pointers = round_one(recorded, FED)
    assert chunks and len(pointers) == 3
    for topic, payload in [*chunks, pointers[0]]:  # replayed while the box is down, retained
        attacker.publish(topic, payload, retain=True, wait_timeout=10)

    rebooted = Box(broker.url, FED, ctx, agg_key.public_key(), state, base, served)
    try:
        refused = rebooted.outcome(1)
        assert refused is not None and refused.kind == "result_rejected", refused
        assert refused.data["reason"] == STALE_ROUND
        assert rebooted.client.version == "round-3"
        assert [v for v, _ in rebooted.sink.applied] == ["round-3"]  # nothing applied
        assert rebooted.client.counters.get(STALE_ROUND, 0) >= 1  # once per delivery
    finally:
        rebooted.stop()

    # control: the same replayed messages are valid; a box with no newer round takes them
    fresh = Box(broker.url, FED, ctx, agg_key.public_key(), tmp_path / "fresh-state", base, None)
    try:
        applied = fresh.outcome(1)
        assert applied is not None and applied.kind == "applied", applied
    finally:
        fresh.stop()
    agg.close()
    attacker.close()
