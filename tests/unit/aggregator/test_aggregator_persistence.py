"""Persistence details of the aggregator: the announced count scale, a state directory
written by the previous version (running sum blob), and what stays on disk."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from aggregator.rounds.coordinator import RoundSettings
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import (
    DEFAULT_COUNT_SCALE,
    EncryptedUpdate,
    StreamingSum,
    encrypt_update,
    plain_weighted_average,
)
from tests.support.aggregator_boxes import collect_result, decrypt_result, latest_announce
from tests.support.aggregator_rig import FED, make_rig

LENGTH = 2500


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, LENGTH).astype(np.float32)


def test_default_count_scale_is_announced_and_meets_the_precision_for_small_rounds(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    """One source of truth: RoundSettings' default is federation.crypto.packing's; with it, three
    boxes with ~100 samples each (c*sum(n) ~ 5) still decrypt within 1e-5."""
    rig = make_rig(tmp_path, secret_ctx, settings=RoundSettings(deadline_seconds=60, quorum=3))
    ann = latest_announce(rig.bus.retained, FED)
    assert ann["count_scale"] == DEFAULT_COUNT_SCALE
    vecs, counts = [_vec(i) for i in range(3)], [90, 110, 120]
    for box, vec, n in zip(rig.boxes, vecs, counts, strict=True):
        box.send(box.envelopes(box.encrypted_blob(vec, n, ann["count_scale"]), ann["round"],
                               ann["base_model"]))
        rig.service.pump()
        assert box.acks[-1]["accepted"], box.acks[-1]
    _, blob = collect_result(rig.bus.retained, FED)
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    rig.store.close()


def test_open_round_of_a_state_dir_with_a_legacy_running_sum_resumes(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    """The previous version stored the running sum after every update (rounds.sum_blob)
    and no per-update blob: an upgrade mid-round keeps those contributions."""
    rig = make_rig(tmp_path, secret_ctx, n_boxes=3)
    ann = latest_announce(rig.bus.retained, FED)
    vecs, counts = [_vec(10 + i) for i in range(3)], [150, 250, 350]
    updates = [encrypt_update(secret_ctx, v, n, ann["count_scale"])
               for v, n in zip(vecs[:2], counts[:2], strict=True)]
    running = StreamingSum(secret_ctx, LENGTH)
    for u in updates:
        running.add(u)
    store = rig.store
    store.write_blob("round-1-sum-2.bin", running.result().to_bytes())
    with store.transaction() as db:
        for seq, box in enumerate(rig.boxes[:2], start=1):
            db.execute(
                "INSERT INTO contributions(round, device_id, msg_id, blob_sha256, seq,"
                " accepted_at, blob) VALUES (1, ?, ?, ?, ?, ?, NULL)",
                (box.device_id, f"{seq:032x}", "0" * 64, seq, time.time()))
        db.execute("UPDATE rounds SET contributions=2, sum_blob='round-1-sum-2.bin'"
                   " WHERE round=1")
    rig.service.transport.close()
    service = rig.reopen(rig.service.settings, secret_ctx.public())
    assert service.coordinator.sum is not None and service.coordinator.sum.count == 2
    box = rig.boxes[2]
    box.send(box.envelopes(box.encrypted_blob(vecs[2], counts[2], ann["count_scale"]), 1,
                           ann["base_model"]))
    service.pump()
    assert box.acks[-1]["accepted"], box.acks[-1]
    pointer, blob = collect_result(rig.bus.retained, FED)
    assert pointer["contributors"] == 3
    assert EncryptedUpdate.from_bytes(blob).n_updates == 3
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    assert sorted(p.name for p in rig.store.blob_dir.iterdir()) == ["round-1-result.bin"]
    rig.store.close()


def test_a_published_round_keeps_its_result_and_drops_its_update_blobs(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    rig = make_rig(tmp_path, secret_ctx, n_boxes=2)
    for round_no in (1, 2):
        ann = latest_announce(rig.bus.retained, FED)
        assert ann["round"] == round_no
        for i, box in enumerate(rig.boxes):
            box.send(box.envelopes(box.encrypted_blob(_vec(20 + i), 100, ann["count_scale"]),
                                   round_no, ann["base_model"]))
            rig.service.pump()
            if i == 0:  # mid-round: the update is on disk as its own file
                assert len(list((rig.store.accepted_dir / f"round-{round_no}").iterdir())) == 1
    assert list(rig.store.accepted_dir.iterdir()) == []
    assert sorted(p.name for p in rig.store.blob_dir.iterdir()) == [
        "round-1-result.bin", "round-2-result.bin"]
    rows = {r.round: r for r in rig.store.list_rounds()}
    assert rows[1].status == rows[2].status == "published"
    assert json.loads(json.dumps(rows[2].announce))["count_scale"] == DEFAULT_COUNT_SCALE
    rig.store.close()


def test_a_state_dir_from_before_update_counts_opens_with_one_update_each(
        tmp_path: Path) -> None:
    """contributions.updates (a region's partial counts as the updates it sums) is added
    to an older state.db on open; its rows count one update each, as they were boxes'."""
    import sqlite3

    from aggregator.state.store import Store

    old = sqlite3.connect(tmp_path / "state.db")
    old.execute("CREATE TABLE contributions (round INTEGER NOT NULL, device_id TEXT NOT NULL,"
                " msg_id TEXT NOT NULL, blob_sha256 TEXT NOT NULL, seq INTEGER NOT NULL,"
                " accepted_at REAL NOT NULL, blob TEXT, PRIMARY KEY (round, device_id))")
    old.executemany("INSERT INTO contributions VALUES (4, ?, ?, ?, ?, 0.0, NULL)",
                    [("box-a", "m1", "0" * 64, 1), ("box-b", "m2", "0" * 64, 2)])
    old.commit()
    old.close()
    store = Store(tmp_path)
    try:
        assert store.updates_of(4) == 2 and store.updates_of(5) == 0
    finally:
        store.close()


def test_a_restart_with_differential_privacy_does_not_resume_a_round_without_it(
        tmp_path: Path, secret_ctx: FederationContext) -> None:
    """A walkthrough restarted serve with --dp-clip 0.5 --dp-noise 1 while round 8 was
    open: the round resumed with its old announce and both boxes sent it without noise
    (their ledgers start at round 9); the reverse after a restart without DP. The open
    round is failed, its accepted update dropped, and the next opens with the new policy."""
    from federation.crypto.dp import DpConfig

    rig = make_rig(tmp_path, secret_ctx, n_boxes=3)
    ann = latest_announce(rig.bus.retained, FED)
    assert ann["round"] == 1 and ann.get("dp") is None
    box = rig.boxes[0]
    box.send(box.envelopes(box.encrypted_blob(_vec(1), 100, ann["count_scale"]), 1,
                           ann["base_model"]))
    rig.service.pump()
    assert box.acks[-1]["accepted"], box.acks[-1]
    rig.service.transport.close()
    dp = DpConfig(0.5, 1.0, 1e-5, "local")
    service = rig.reopen(replace(rig.service.settings, dp=dp), secret_ctx.public())
    failed = rig.store.get_round(1)
    assert failed is not None and failed.status == "failed"
    assert failed.close_reason == "serve restarted with other settings (dp)"
    ann = latest_announce(rig.bus.retained, FED)
    assert ann["round"] == 2 and ann["dp"] == dp.to_dict() and ann["state"] == "open"
    assert service.coordinator.current is not None
    assert service.coordinator.current.round == 2
    # the same settings again: nothing is failed
    rig.service.transport.close()
    rig.reopen(service.settings, secret_ctx.public())
    assert rig.store.get_round(2).status == "open"  # type: ignore[union-attr]
    rig.store.close()


def test_a_restart_with_another_quorum_applies_it_to_the_open_round(
        tmp_path: Path, secret_ctx: FederationContext) -> None:
    """A walkthrough restarted serve with --quorum 3 while round 5 was open: the round
    resumed with quorum 2 and was published from 2 updates. The quorum is a privacy
    floor and nothing a box applies: the open round takes it and keeps its updates."""
    rig = make_rig(tmp_path, secret_ctx, n_boxes=3)
    ann = latest_announce(rig.bus.retained, FED)
    for box in rig.boxes[:2]:
        box.send(box.envelopes(box.encrypted_blob(_vec(1), 100, ann["count_scale"]), 1,
                               ann["base_model"]))
        rig.service.pump()
        assert box.acks[-1]["accepted"], box.acks[-1]
    rig.service.transport.close()
    service = rig.reopen(replace(rig.service.settings, quorum=3), secret_ctx.public())
    resumed = rig.store.get_round(1)
    assert resumed is not None and (resumed.status, resumed.quorum) == ("open", 3)
    assert latest_announce(rig.bus.retained, FED)["quorum"] == 3
    rig.clock[0] += 10_000  # its deadlines, extensions included: 2 updates never publish
    for _ in range(4):
        service.pump()
        rig.clock[0] += 10_000
    assert rig.store.get_round(1).status == "failed"  # type: ignore[union-attr]
    rig.store.close()
