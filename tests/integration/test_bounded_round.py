"""Issue 15, attack 1, through the product's round: the aggregator announces bounds, an
honest box with 16,384 samples and a large step clamps its n to the cap and clips its
change, the result's pointer carries the round's policy, and every box checks the
decrypted sum against it before applying (real CKKS, signatures, the aggregator
service and the federation client, over the in-memory bus)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.coordinator import RoundSettings
from edge.federated.client import ClientEvent, FederationClient
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.crypto.bounds import Bounds, clip_update
from federation.crypto.ckks import new_secret_context
from federation.crypto.packing import EncryptedUpdate, decrypt_sums
from federation.envelope import decode
from federation.messages import ModelPointer
from tests.support.aggregator_rig import in_memory_federation
from tests.support.federation_rig import PART, RecordingSink, part_base_vector, wait_for

FED = "bounded"
CAP = 100
BOXES = {"a": (50, 1e-3), "b": (50, 1e-3), "big": (16_384, 1e-1)}  # n, drift step


def test_a_round_under_bounds_caps_and_clips_and_every_box_checks_it(tmp_path: Path) -> None:
    ctx = new_secret_context()
    base = part_base_vector()
    trainers = {d: NumpyDriftTrainer(PART, base, d, n, step) for d, (n, step) in BOXES.items()}
    local = {d: t.local_update(None, 1).vector for d, t in trainers.items()}
    honest_norm = max(float(np.linalg.norm(local[d] - base)) for d in ("a", "b"))
    clip = 3 * honest_norm  # honest steps pass whole, the big one is clipped
    assert float(np.linalg.norm(local["big"] - base)) > 10 * clip

    fed = in_memory_federation(
        tmp_path / "agg", ctx, FED, list(BOXES),
        RoundSettings(deadline_seconds=60, quorum=3, count_scale=64, part_key=PART.key,
                      bounds=Bounds(CAP, clip)), max_rounds=1)
    bus, store = fed.bus, fed.store
    clients: dict[str, tuple[FederationClient, list[ClientEvent], RecordingSink]] = {}
    with fed.serving():
        try:
            for d in BOXES:
                events: list[ClientEvent] = []
                sink = RecordingSink()
                client = fed.client(d, trainers[d], sink, tmp_path / d, base, events.append)
                clients[d] = (client, events, sink)
                client.start()
            for d, (_, events, _) in clients.items():
                wait_for(lambda events=events: any(e.kind in ("applied", "result_rejected")
                                                   for e in events), 60, f"{d}'s verdict")
            for d, (_, events, _sink) in clients.items():
                assert [e.kind for e in events if e.kind in ("applied", "result_rejected")] \
                    == ["applied"], (d, [(e.kind, e.data) for e in events])
        finally:
            for client, _, _ in clients.values():
                client.stop(timeout=5)

    pointer = ModelPointer.from_json(decode(bus.retained[topics.model_latest(FED)]).payload)
    assert pointer.policy is not None and pointer.policy.bounds == Bounds(CAP, clip)
    row = store.get_round(1)
    assert row is not None and row.sum_blob
    _, count = decrypt_sums(ctx, EncryptedUpdate.from_bytes(store.read_blob(row.sum_blob), ctx))
    assert count * 64 == pytest.approx(50 + 50 + CAP, abs=1e-2)  # the big box weighs CAP
    sent = {d: local[d] if d != "big" else clip_update(local[d], base, clip)[0] for d in BOXES}
    expected = (50 * sent["a"] + 50 * sent["b"] + CAP * sent["big"]) / (100 + CAP)
    applied = clients["a"][2].applied[-1][1]
    np.testing.assert_allclose(applied, expected, atol=1e-4)
    assert float(np.linalg.norm(applied - base)) <= clip * 1.001
