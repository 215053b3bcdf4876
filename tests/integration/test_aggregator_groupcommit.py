"""Group commit and summing workers: a batch is stored with one commit or not at all,
nothing is acked before its batch's commit (a real kill -9 of `serve` blocked inside the
commit), and a summing worker process that dies loses no update."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.accumulator import AccumulatorBroken
from aggregator.rounds.coordinator import RoundSettings
from aggregator.rounds.sumpool import ProcessSumFactory
from aggregator.service import AggregatorService
from aggregator.state.store import AcceptedUpdate, Store
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import encrypt_update, plain_weighted_average
from federation.crypto.signing import generate_signing_key
from federation.transport.base import InMemoryBus, InMemoryTransport
from tests.support.aggregator_boxes import (
    collect_result,
    decrypt_result,
    latest_announce,
)
from tests.support.aggregator_mqtt import (
    RetainedWatcher,
    announce_open,
    read_result,
    result_complete,
    send_update,
    serve_aggregator,
    setup_federation,
)
from tests.support.aggregator_rig import registered_boxes
from tests.support.broker import MosquittoBroker

FED = "fedtest"
LENGTH = 3000
COUNT_SCALE = 64.0


@pytest.fixture
def pool(secret_ctx: FederationContext) -> Iterator[ProcessSumFactory]:
    factory = ProcessSumFactory(secret_ctx.public(), None, workers=2)
    yield factory
    factory.close()


def _spooled(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "spool" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def _item(path: Path, device: str) -> AcceptedUpdate:
    data = path.read_bytes()
    return AcceptedUpdate(device, f"msg-{device}", hashlib.sha256(data).hexdigest(), path)


def test_a_batch_is_stored_with_one_commit_or_not_at_all(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.insert_round(1, "base", 0.0, 60.0, 2, {"round": 1})
    batch = [_item(_spooled(tmp_path, f"u{i}", os.urandom(1000 + i)), f"box{i}")
             for i in range(3)]
    names = store.accept_updates(1, batch, 1, 5.0)
    assert [d for d, _ in store.accepted_blobs(1)] == ["box0", "box1", "box2"]
    assert names == [n for _, n in store.accepted_blobs(1)]
    assert all(store.accepted_path(n).is_file() for n in names)
    assert not any((tmp_path / "spool").iterdir())  # moved, not copied
    row = store.get_round(1)
    assert row is not None and row.contributions == 3
    assert store.counters()["accepted"] == 3
    # A batch that fails half-way (its second file vanished after the first was moved
    # into place) counts nothing and leaves none of its files behind.
    first = _item(_spooled(tmp_path, "u3", b"x" * 500), "box3")
    gone = _spooled(tmp_path, "u4", b"y" * 500)
    second = _item(gone, "box4")
    gone.unlink()
    with pytest.raises(OSError):
        store.accept_updates(1, [first, second], 4, 6.0)
    assert [d for d, _ in store.accepted_blobs(1)] == ["box0", "box1", "box2"]
    assert sorted(p.name for p in (tmp_path / "accepted" / "round-1").iterdir()) == sorted(
        Path(n).name for n in names)
    row = store.get_round(1)
    assert row is not None and row.contributions == 3
    assert store.counters()["accepted"] == 3
    store.close()


def test_summing_workers_equal_the_plain_average_and_refuse_without_touching_the_sum(
    tmp_path: Path, secret_ctx: FederationContext, pool: ProcessSumFactory
) -> None:
    rng = np.random.default_rng(3)
    vecs = [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in range(5)]
    counts = [120, 250, 90, 310, 200]
    blobs = [encrypt_update(secret_ctx, v, n, COUNT_SCALE).to_bytes()
             for v, n in zip(vecs, counts, strict=True)]
    paths = [_spooled(tmp_path, f"u{i}", b) for i, b in enumerate(blobs)]
    truncated = _spooled(tmp_path, "bad", blobs[0][:-100])
    other_length = _spooled(tmp_path, "long", encrypt_update(
        secret_ctx, np.zeros(LENGTH + 7, np.float32), 100, COUNT_SCALE).to_bytes())
    acc = pool.new()
    results = acc.stage_many([paths[0], truncated, paths[1], other_length, paths[2]])
    assert [r is None for r in results] == [True, False, True, False, True]
    assert results[1] is not None and results[1].reason == "malformed"
    assert results[3] is not None and "values" in results[3].detail
    acc.discard_staged()  # e.g. the store failed: the sum holds none of them
    assert acc.count == 0
    assert acc.stage_many(paths[:3]) == [None, None, None]
    acc.commit_staged()
    assert acc.stage_many([blobs[3], paths[4]]) == [None, None]  # bytes or files
    acc.commit_staged()
    assert acc.count == 5
    got = decrypt_result(secret_ctx, acc.to_bytes())
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    # A worker that dies takes its share with it: the next call says so, and a new sum
    # on restarted workers works (the coordinator rebuilds it from the stored blobs).
    os.kill(pool.pids()[1], signal.SIGKILL)
    pool._workers[1].proc.join(10)
    with pytest.raises(AccumulatorBroken):
        acc.stage_many(paths)
        acc.commit_staged()
        acc.to_bytes()
    fresh = pool.new()
    assert fresh.stage_many(paths[:2]) == [None, None]
    fresh.commit_staged()
    got = decrypt_result(secret_ctx, fresh.to_bytes())
    assert np.max(np.abs(got - plain_weighted_average(vecs[:2], counts[:2]))) < 1e-5


def test_a_summing_worker_killed_mid_round_loses_no_update(
    tmp_path: Path, secret_ctx: FederationContext, pool: ProcessSumFactory
) -> None:
    bus = InMemoryBus(synchronous=True)
    store = Store(tmp_path)
    boxes = registered_boxes(bus, store, secret_ctx, 4)
    service = AggregatorService(
        InMemoryTransport(bus, "aggregator"), store, secret_ctx.public(),
        generate_signing_key(), FED, accumulators=pool,
        settings=RoundSettings(deadline_seconds=60, quorum=4, count_scale=COUNT_SCALE),
    )
    service.start()
    ann = latest_announce(bus.retained, FED)
    rng = np.random.default_rng(5)
    vecs = [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in boxes]
    counts = [150, 240, 330, 100]
    blobs = [box.encrypted_blob(v, n, COUNT_SCALE)
             for box, v, n in zip(boxes, vecs, counts, strict=True)]
    for box, blob in zip(boxes[:2], blobs[:2], strict=True):  # one batch of two
        box.send(box.envelopes(blob, ann["round"], ann["base_model"]))
    service.pump()
    assert all(b.acks[-1]["accepted"] for b in boxes[:2])
    for pid in pool.pids():  # both shares of the sum are gone
        os.kill(pid, signal.SIGKILL)
    for box, blob in zip(boxes[2:], blobs[2:], strict=True):
        box.send(box.envelopes(blob, ann["round"], ann["base_model"]))
    service.pump()
    for box, blob in zip(boxes[2:], blobs[2:], strict=True):
        if not box.acks[-1]["accepted"]:  # refused as unavailable while rebuilding
            assert box.acks[-1]["reason"] == "unavailable", box.acks[-1]
            box.send(box.envelopes(blob, ann["round"], ann["base_model"]))
    for _ in range(3):
        service.pump()
    assert all(b.acks[-1]["accepted"] for b in boxes), [b.acks[-1] for b in boxes]
    pointer, result = collect_result(bus.retained, FED)
    assert pointer["round"] == 1 and pointer["contributors"] == 4
    got = decrypt_result(secret_ctx, result)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    service.close()
    store.close()


@pytest.mark.mosquitto
def test_kill_9_inside_a_group_commit_acks_nothing_and_loses_nothing(
    tmp_path: Path, mosquitto: MosquittoBroker, secret_ctx: FederationContext
) -> None:
    """`serve` is blocked INSIDE its group commit (a second connection holds SQLite's write
    lock: the batch's blobs are fsync'ed and moved into accepted/, its commit waits) and
    killed there. No box may have an ack; after a restart every box's update is counted
    exactly once."""
    state, boxes = setup_federation(tmp_path, secret_ctx, mosquitto.url, 4)
    watcher = RetainedWatcher(mosquitto.url, "watcher")
    rng = np.random.default_rng(9)
    vecs = [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in boxes]
    counts = [150, 240, 330, 120]
    args = ("--round-deadline", "120", "--quorum", "4", "--rounds", "1")
    agg = serve_aggregator(state, mosquitto.url, *args)
    agg2 = None
    try:
        watcher.wait_for(announce_open, 60)
        ann = watcher.announce()
        lock = sqlite3.connect(state / "state.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the aggregator's next write transaction waits
        for box, vec, n in zip(boxes, vecs, counts, strict=True):
            send_update(box, ann, vec, n)
        round_dir = state / "accepted" / "round-1"
        deadline = time.monotonic() + 4.0  # sqlite3 gives up on a lock after 5 s
        while time.monotonic() < deadline and not (
                round_dir.is_dir() and any(round_dir.iterdir())):
            time.sleep(0.01)
        moved = sorted(p.name for p in round_dir.iterdir()) if round_dir.is_dir() else []
        assert moved, "the aggregator never reached its group commit"
        time.sleep(0.3)
        assert not any(box.acks for box in boxes), [box.acks for box in boxes]
        agg.send_signal(signal.SIGKILL)
        agg.communicate(timeout=10)
        lock.execute("ROLLBACK")
        lock.close()
        with sqlite3.connect(state / "state.db") as db:
            assert db.execute("SELECT COUNT(*) FROM contributions").fetchone()[0] == 0
        agg2 = serve_aggregator(state, mosquitto.url, *args)
        for box, vec, n in zip(boxes, vecs, counts, strict=True):  # no ack: resend
            send_update(box, ann, vec, n)
        out, _ = agg2.communicate(timeout=120)
        assert agg2.returncode == 0, out.decode()[-3000:]
        assert b"stale file(s)" in out  # the uncommitted batch's blobs were removed
        for box in boxes:  # accepted, or already counted from a redelivered first send
            last = box.wait_acks(1, 10)[-1]
            assert last["accepted"] or last["reason"] == "duplicate", last
        pointer, blob = read_result(watcher.wait_for(result_complete, 30))
        assert pointer["round"] == 1 and pointer["contributors"] == 4
        got = decrypt_result(secret_ctx, blob)
        assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    finally:
        for p in (agg, agg2):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        watcher.close()
        for box in boxes:
            box.transport.close()
