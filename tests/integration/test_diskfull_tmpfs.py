"""A REAL full disk at the aggregator: its state directory on a 40 MiB tmpfs filled up
with a file. Updates and the round close fail cleanly (clear reason, nothing counted,
nothing half-written), the service keeps serving, and once space is freed the round
completes with the right sum; a restart on the same state finds it intact."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.coordinator import RoundSettings
from aggregator.state.store import Store
from aggregator.state.verdicts import verdicts_on
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import plain_weighted_average
from federation.verdicts import Verdict
from tests.support.aggregator_boxes import collect_result, decrypt_result, latest_announce
from tests.support.aggregator_rig import COUNT_SCALE, FED, Rig, make_rig
from tests.support.tmpfs import mounted_tmpfs

LENGTH = 60_000  # ~1.4 MB per encrypted update, ~1.4 MB result


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small-fs", "40m") as mount:
        yield mount


def fill(fs: Path, leave: int, name: str = "filler") -> Path:
    """Fill ``fs`` until only ``leave`` bytes are free."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    filler = fs / name
    with filler.open("ab") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def free_bytes(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, LENGTH).astype(np.float32)


def test_full_disk_fails_cleanly_keeps_serving_and_recovers(
    small_fs: Path, secret_ctx: FederationContext
) -> None:
    state = small_fs / "state"
    state.mkdir()
    rig: Rig = make_rig(state, secret_ctx, n_boxes=3,
                        settings=RoundSettings(60, 3, COUNT_SCALE, chunk_size=64 * 1024))
    vecs, counts = [vec(i) for i in range(3)], [100, 150, 200]
    blobs = [b.encrypted_blob(v, n, COUNT_SCALE) for b, v, n in zip(rig.boxes, vecs, counts,
                                                                    strict=True)]
    ann = latest_announce(rig.bus.retained, FED)
    envs = [b.envelopes(blob, ann["round"], ann["base_model"])
            for b, blob in zip(rig.boxes, blobs, strict=True)]
    box0, box1, box2 = rig.boxes
    box0.send(envs[0])
    rig.service.pump()
    assert box0.acks[-1]["accepted"]

    # 1) the disk is full while box1's update arrives: refused as unavailable, not counted
    filler = fill(small_fs, leave=64 * 1024)
    box1.send(envs[1])
    rig.service.pump()
    ack = box1.acks[-1]
    assert ack["accepted"] is False and ack["reason"] == "unavailable", ack
    assert "disk full" in ack["detail"]
    assert rig.store.get_round(1).contributions == 1  # type: ignore[union-attr]
    assert not list(rig.service.spool.dir.iterdir())  # no half-spooled file left
    # the service keeps serving while full: a bad message still gets its answer
    box2.send_raw(b"garbage")
    rig.service.pump()
    assert box2.acks[-1]["reason"] == "malformed"
    # completely full (not even room to count a rejection in SQLite): still answers
    filler2 = fill(small_fs, leave=0, name="filler2")
    box2.send_raw(b"garbage again")
    rig.service.pump()
    assert box2.acks[-1]["reason"] == "malformed"
    filler2.unlink()

    # 2) space freed: box1 resends the SAME message and is counted once
    filler.unlink()
    box1.send(envs[1])
    rig.service.pump()
    assert box1.acks[-1]["accepted"], box1.acks[-1]

    # 3) box2's update is spooled, then the disk fills before the round closes: the update
    #    is accepted (its spooled file is renamed, no new space) but the result cannot be
    #    written: the round stays open with every update, nothing half-written in blobs/
    box2.send(envs[2])
    filler = fill(small_fs, leave=256 * 1024)
    rig.service.pump()
    row = rig.store.get_round(1)
    assert row is not None and row.status == "open" and row.contributions == 3, row
    assert box2.acks[-1]["accepted"]
    assert list(rig.store.blob_dir.iterdir()) == []
    rig.service.pump()  # retried, still full: still open, still serving
    assert rig.store.get_round(1).status == "open"  # type: ignore[union-attr]

    # 4) space freed: the next tick closes and publishes the right sum
    filler.unlink()
    rig.service.pump()
    pointer, blob = collect_result(rig.bus.retained, FED)
    assert pointer["round"] == 1 and pointer["contributors"] == 3
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5

    # 4b) completely full again while the boxes report their verdicts on round-1: not
    #     recorded, and the service keeps serving (this stopped serve); once space is
    #     freed, their next statuses (which carry the same verdicts) are recorded
    filler = fill(small_fs, leave=0)
    applied = Verdict(1, "round-1", "applied", "canary ok", time.time(), code="")
    for box in rig.boxes:
        box.say_status(model="round-1", verdicts=(applied,))
    rig.service.pump()
    box2.send_raw(b"garbage while full")
    rig.service.pump()
    assert box2.acks[-1]["reason"] == "malformed"
    filler.unlink()
    for box in rig.boxes:
        box.say_status(model="round-1", verdicts=(applied,))
    rig.service.pump()
    assert {v.device_id for v in verdicts_on(rig.store, 1)} == {b.device_id for b in rig.boxes}

    # 5) no corrupted state: SQLite integrity, and a restart on the same state resumes
    db = sqlite3.connect(state / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    counters = rig.store.counters()
    assert counters["accepted"] == 3 and counters.get("rejected.unavailable", 0) >= 1
    rig.store.close()
    store = Store(state)
    assert [r.status for r in store.list_rounds()] == ["published", "open"]
    assert store.get_round(2).base_model == "round-1"  # type: ignore[union-attr]
    store.close()
    assert free_bytes(small_fs) > 30 * 2**20  # nothing of the refused writes left behind
