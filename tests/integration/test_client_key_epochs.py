"""The box's side of key epochs (edge.federated.epochs, the client's worker): it takes
a newer epoch sealed to it and refuses everything else, keeping its key; it sits out a
round announced under an older key. Real client, real CKKS contexts and sealed bundles,
signed envelopes on the in-memory bus (the MQTT path: tests/integration/test_key_rotation.py)."""

from __future__ import annotations

import stat
import time
from dataclasses import replace
from pathlib import Path

from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.federated.epochs import EpochKeys
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.chunking import split_blob
from federation.crypto.ckks import FederationContext, new_secret_context, secret_context_bytes
from federation.crypto.epochs import generate_exchange_key, seal_context
from federation.crypto.keys import load_secret_context, save_secret_context
from federation.crypto.signing import generate_signing_key
from federation.envelope import encode
from federation.messages import OPEN, RoundAnnounce
from federation.transport.base import InMemoryBus, InMemoryTransport
from tests.support.federation_rig import PART, RecordingSink, part_base_vector, wait_for

FED = "epochs"
SLOW = 30.0


def test_a_box_takes_only_a_newer_epoch_sealed_to_it_by_the_key_holder(tmp_path: Path) -> None:
    bus = InMemoryBus(synchronous=True)
    agg, holder, kx = generate_signing_key(), generate_signing_key(), generate_exchange_key()
    ctx = {e: new_secret_context(epoch=e) for e in (0, 1, 2)}
    secret_path = tmp_path / "keys" / "federation-secret.tenseal"
    secret_path.parent.mkdir()
    save_secret_context(secret_path, ctx[0])
    events: list[ClientEvent] = []
    base = part_base_vector()
    client = FederationClient(
        ClientConfig(FED, "box-a", tick_seconds=0.05), lambda will: InMemoryTransport(
            bus, "box-a", will=will), load_secret_context(secret_path), generate_signing_key(),
        agg.public_key(), NumpyDriftTrainer(PART, base, "box-a", 50), RecordingSink(),
        tmp_path / "state", base, on_event=events.append,
        epochs=EpochKeys(FED, "box-a", kx, holder.public_key(), secret_path))
    relay = InMemoryTransport(bus, "aggregator")

    def send(kind: str, topic: str, data: bytes, round_no: int = 0) -> None:
        for env in split_blob(data, agg, kind=kind, fed=FED, sender="aggregator",
                              round=round_no, model="m", chunk_size=len(data)):
            relay.publish(topic, encode(env), retain=True)

    def sealed(c: FederationContext, device: str = "box-a", key=None, signer=None) -> bytes:
        return seal_context(c, secret_context_bytes(c), fed=FED, device_id=device,
                            recipient=(key or kx).public_key(), keyholder=signer or holder)

    def counted(reason: str, n: int = 1) -> None:
        wait_for(lambda: client.counters.get(reason, 0) >= n, SLOW, f"{reason} counted")

    client.start()
    try:
        key_topic = topics.key(FED, "box-a")
        # not the key holder's signature: the aggregator sealing a key it knows is refused
        send("key", key_topic, sealed(ctx[2], signer=agg))
        counted("bad_signature")
        # sealed to another box's exchange key, relayed on this box's topic
        send("key", key_topic, sealed(ctx[2], device="box-b", key=generate_exchange_key()))
        counted("wrong_recipient")
        assert client.context.key_id == ctx[0].key_id
        # the key holder's epoch 2, to this box: taken, on disk 0600, in use
        send("key", key_topic, sealed(ctx[2]))
        wait_for(lambda: any(e.kind == "key_epoch" for e in events), SLOW, "epoch 2 taken")
        assert client.context.key_id == ctx[2].key_id
        assert load_secret_context(secret_path).key_id == ctx[2].key_id
        assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
        # the same bundle again (every reconnect): nothing; an older epoch replayed: refused
        send("key", key_topic, sealed(ctx[2]))
        send("key", key_topic, sealed(ctx[1]))
        counted("old_epoch")
        assert load_secret_context(secret_path).key_id == ctx[2].key_id
        assert sum(e.kind == "key_epoch" for e in events) == 1
        # a round of the older key: sat out, nothing trained or sent
        ann = RoundAnnounce(round=5, base_model="base", state=OPEN, deadline=time.time() + 60,
                            quorum=1, count_scale=64, chunk_size=16384, part_key=PART.key,
                            key_id=ctx[1].key_id, key_epoch=1)
        send("announce", topics.announce(FED), ann.to_json(), 5)
        wait_for(lambda: any(e.kind == "not_joined" and e.round == 5 for e in events), SLOW,
                 "round 5 sat out")
        reason = next(e for e in events if e.kind == "not_joined").data["reason"]
        assert reason == "old_epoch"
        # another key of the same epoch (a bundle of another key of the federation)
        other = new_secret_context(epoch=2)
        send("announce", topics.announce(FED), replace(
            ann, round=6, key_id=other.key_id, key_epoch=2).to_json(), 6)
        wait_for(lambda: any(e.kind == "not_joined" and e.round == 6 for e in events), SLOW,
                 "round 6 sat out")
        sat = next(e for e in events if e.kind == "not_joined" and e.round == 6).data
        assert sat["reason"] == "wrong_key" and "provision --bundle" in sat["detail"], sat
        assert not any(e.kind == "joined" for e in events)
    finally:
        client.stop(timeout=5)
