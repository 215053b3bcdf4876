"""Bad updates are rejected with a counted reason and the aggregator keeps serving;
deadlines, restarts and a full disk, over the in-memory transport with real CKKS."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import aggregator.state.durable_io
from aggregator.rounds.coordinator import RoundSettings
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import encrypt_update, plain_weighted_average
from federation.crypto.signing import generate_signing_key
from federation.envelope import encode
from federation.transport.base import InMemoryTransport
from tests.support.aggregator_boxes import (
    ScriptedBox,
    collect_result,
    decrypt_result,
    latest_announce,
)
from tests.support.aggregator_rig import COUNT_SCALE, FED, Rig, make_rig

LENGTH = 2500


@pytest.fixture
def rig(tmp_path: Path, secret_ctx: FederationContext) -> Iterator[Rig]:
    r = make_rig(tmp_path, secret_ctx, n_boxes=3)
    yield r
    r.store.close()


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, LENGTH).astype(np.float32)


def _send_valid(rig: Rig, box: ScriptedBox, vec: np.ndarray, n: int) -> dict:
    ann = latest_announce(rig.bus.retained, FED)
    blob = box.encrypted_blob(vec, n, COUNT_SCALE)
    box.send(box.envelopes(blob, ann["round"], ann["base_model"]))
    rig.service.pump()
    return box.acks[-1]


def _reject(rig: Rig, box: ScriptedBox, send: Callable[[], None]) -> dict:
    before = len(box.acks)
    send()
    rig.service.pump()
    assert len(box.acks) == before + 1, "exactly one ack per bad update"
    ack = box.acks[-1]
    assert ack["accepted"] is False
    return ack


def _unanswered(rig: Rig, box: ScriptedBox, send: Callable[[], None], reason: str) -> None:
    """Not proven to come from the box: counted, never answered to the box."""
    before, counted = len(box.acks), rig.store.counters().get(f"rejected.{reason}", 0)
    send()
    rig.service.pump()
    assert len(box.acks) == before, "an unauthenticated chunk must not be answered"
    assert rig.store.counters().get(f"rejected.{reason}", 0) >= counted + 1  # per chunk


def test_a_forged_chunk_with_a_genuine_message_id_cannot_sink_that_upload(rig: Rig) -> None:
    """Someone who can publish on a box's topic (no broker ACL) sends a chunk signed by
    another key under the message id of the box's upload: it is counted, but it neither
    drops the box's partly received upload nor tells the box its update was rejected."""
    box = rig.boxes[0]
    ann = latest_announce(rig.bus.retained, FED)
    r, base = ann["round"], ann["base_model"]
    blob = box.encrypted_blob(_vec(4), 100, COUNT_SCALE)
    genuine = box.envelopes(blob, r, base, chunk_size=4096)
    forged = box.envelopes(blob, r, base, chunk_size=4096, key=generate_signing_key(),
                           msg=genuine[0].msg)
    box.send(genuine[:2])  # part of the upload is in
    _unanswered(rig, box, lambda: box.send(forged[:1]), "bad_signature")
    _unanswered(rig, box, lambda: box.send(forged[5:6]), "bad_signature")
    box.send(genuine[2:])
    rig.service.pump()
    assert box.acks[-1]["accepted"] is True and box.acks[-1]["msg"] == genuine[0].msg
    # box0's validly signed chunk replayed on another device's topic: answered to neither
    other = rig.boxes[1]
    replayed = box.envelopes(blob, r, base, chunk_size=4096)[0]
    _unanswered(rig, other, lambda: other.send([replayed]), "malformed")
    assert box.acks[-1]["msg"] == genuine[0].msg


def test_each_bad_update_is_rejected_counted_and_a_valid_one_follows(rig: Rig) -> None:
    box, other, third = rig.boxes
    ann = latest_announce(rig.bus.retained, FED)
    r, base = ann["round"], ann["base_model"]
    good_blob = box.encrypted_blob(_vec(1), 100, COUNT_SCALE)
    truncated = encode(box.envelopes(good_blob, r, base, chunk_size=4096)[0])[:-100]
    reasons = {}

    # truncated chunk: the signed header promises bytes that are not there
    reasons["truncated"] = _reject(rig, box, lambda: box.send_raw(truncated))
    # wrong signature: signed by a key that is not the registered one (counted, not
    # answered: nothing proves the box sent it)
    _unanswered(rig, box, lambda: box.send(box.envelopes(good_blob, r, base,
                                                         key=generate_signing_key())),
                "bad_signature")
    # garbage bytes
    reasons["garbage"] = _reject(rig, box, lambda: box.send_raw(b"\x00garbage" * 50))
    # wrong federation id (validly signed)
    reasons["wrong_fed"] = _reject(
        rig, box, lambda: box.send(box.envelopes(good_blob, r, base, fed="otherfed"))
    )
    # oversized: the header announces a blob above the limit
    rig.service.spool.max_blob_bytes = len(good_blob) - 1
    reasons["oversized"] = _reject(rig, box, lambda: box.send(box.envelopes(good_blob, r, base)))
    rig.service.spool.max_blob_bytes = 1 << 30
    # stale model version
    reasons["stale"] = _reject(
        rig, box, lambda: box.send(box.envelopes(good_blob, r, "some-old-model"))
    )
    # garbage inside a correctly signed, intact envelope: not a CKKS update
    reasons["not_ckks"] = _reject(rig, box, lambda: box.send(box.envelopes(b"x" * 5000, r, base)))
    # unknown device: a box the registry never saw, on its own topic: counted, not
    # answered (aggregator.intake.unknown: an ack per made-up id would be a flood)
    stranger = ScriptedBox("stranger", FED, box.secret, InMemoryTransport(rig.bus, "stranger"))
    _unanswered(rig, stranger, lambda: stranger.send(stranger.envelopes(good_blob, r, base)),
                "unknown_device")

    assert reasons["truncated"]["reason"] in ("integrity", "malformed")
    assert reasons["garbage"]["reason"] == "malformed"
    assert reasons["wrong_fed"]["reason"] == "wrong_federation"
    assert reasons["oversized"]["reason"] == "oversized"
    assert reasons["stale"]["reason"] == "stale_version"
    assert reasons["not_ckks"]["reason"] == "malformed"

    # after all that, the genuine update (fresh msg id) is accepted
    box.send(box.envelopes(good_blob, r, base))
    rig.service.pump()
    assert box.acks[-1]["accepted"] is True
    # duplicate: a second update of the same box in the same round
    dup = _reject(rig, box, lambda: box.send(box.envelopes(good_blob, r, base)))
    assert dup["reason"] == "duplicate"

    counters = rig.store.counters()
    for reason in ("bad_signature", "malformed", "wrong_federation", "oversized",
                   "stale_version", "unknown_device", "duplicate"):
        assert counters.get(f"rejected.{reason}", 0) >= 1, (reason, counters)
    assert counters["accepted"] == 1

    # the round closes; a fresh update for the closed round is late
    assert _send_valid(rig, other, _vec(2), 150)["accepted"]
    assert _send_valid(rig, third, _vec(3), 170)["accepted"]
    assert latest_announce(rig.bus.retained, FED)["round"] == r + 1
    late = _reject(rig, box, lambda: box.send(box.envelopes(good_blob, r, base)))
    assert late["reason"] == "late"
    assert rig.store.counters()["rejected.late"] == 1


def test_replay_of_an_accepted_update_from_an_earlier_round(rig: Rig) -> None:
    box, other, third = rig.boxes
    ann = latest_announce(rig.bus.retained, FED)
    blob = box.encrypted_blob(_vec(4), 90, COUNT_SCALE)
    envs = box.envelopes(blob, ann["round"], ann["base_model"])
    box.send(envs)
    rig.service.pump()
    assert box.acks[-1]["accepted"]
    assert _send_valid(rig, other, _vec(5), 90)["accepted"]
    assert _send_valid(rig, third, _vec(6), 90)["accepted"]
    assert latest_announce(rig.bus.retained, FED)["round"] == ann["round"] + 1
    # an attacker (or a confused broker) re-publishes the captured round-1 chunks
    rig.service._finished_msgs.clear()  # not relying on the in-memory redelivery filter
    ack = _reject(rig, box, lambda: box.send(envs))
    assert ack["reason"] == "replay"
    # and the service keeps serving round 2
    assert _send_valid(rig, box, _vec(7), 90)["accepted"]
    assert rig.store.counters()["rejected.replay"] == 1


def test_deadline_closes_with_quorum_when_a_box_is_silent(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    rig = make_rig(tmp_path, secret_ctx, n_boxes=4,
                   settings=RoundSettings(deadline_seconds=60, quorum=3, count_scale=COUNT_SCALE))
    vecs, counts = [_vec(10 + i) for i in range(3)], [100, 200, 300]
    for box, vec, n in zip(rig.boxes[:3], vecs, counts, strict=True):
        assert _send_valid(rig, box, vec, n)["accepted"]
    rig.clock[0] += 59
    rig.service.pump()
    assert latest_announce(rig.bus.retained, FED)["round"] == 1  # still collecting
    rig.clock[0] += 2
    rig.service.pump()
    assert latest_announce(rig.bus.retained, FED)["round"] == 2
    pointer, blob = collect_result(rig.bus.retained, FED)
    assert pointer["contributors"] == 3
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    assert "deadline with quorum" in (rig.store.get_round(1).close_reason or "")  # type: ignore[union-attr]
    rig.store.close()


def test_deadline_without_quorum_extends_then_fails_and_reopens(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    settings = RoundSettings(deadline_seconds=10, quorum=2, count_scale=COUNT_SCALE,
                             max_extensions=1)
    rig = make_rig(tmp_path, secret_ctx, n_boxes=3, settings=settings)
    assert _send_valid(rig, rig.boxes[0], _vec(20), 100)["accepted"]
    first_deadline = latest_announce(rig.bus.retained, FED)["deadline"]
    rig.clock[0] += 11
    rig.service.pump()
    ann = latest_announce(rig.bus.retained, FED)
    assert ann["round"] == 1 and ann["deadline"] == rig.clock[0] + 10  # extended from now
    assert ann["deadline"] > first_deadline + 10
    rig.clock[0] += 10
    rig.service.pump()
    ann = latest_announce(rig.bus.retained, FED)
    assert ann["round"] == 2 and ann["base_model"] == "base"  # failed, reopened on same base
    assert rig.store.get_round(1).status == "failed"  # type: ignore[union-attr]
    assert rig.store.counters()["rejected.round_failed"] == 1
    rig.store.close()


def test_a_deadline_long_past_is_extended_from_now(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    """serve back after an upgrade window longer than the round's deadline: the round
    was extended to a deadline already past and failed on the same pump (helper-40),
    with "no word from" boxes that had had no time to speak."""
    settings = RoundSettings(deadline_seconds=10, quorum=2, count_scale=COUNT_SCALE,
                             max_extensions=1)
    rig = make_rig(tmp_path, secret_ctx, n_boxes=3, settings=settings)
    assert _send_valid(rig, rig.boxes[0], _vec(21), 100)["accepted"]
    rig.clock[0] += 600  # serve was down for ten minutes
    rig.service.pump()
    rig.service.pump()
    ann = latest_announce(rig.bus.retained, FED)
    assert ann["round"] == 1 and ann["deadline"] == rig.clock[0] + 10, ann  # still open
    assert rig.store.get_round(1).status == "open"  # type: ignore[union-attr]
    assert _send_valid(rig, rig.boxes[1], _vec(22), 100)["accepted"]  # in time now
    rig.clock[0] += 11  # the third box stays silent: the round closes at its deadline
    rig.service.pump()
    pointer, _ = collect_result(rig.bus.retained, FED)
    assert pointer["round"] == 1 and pointer["contributors"] == 2
    rig.store.close()


def test_restart_resumes_the_open_round_with_every_accepted_update(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    rig = make_rig(tmp_path, secret_ctx, n_boxes=3)
    settings = rig.service.settings
    vecs, counts = [_vec(30 + i) for i in range(3)], [120, 80, 260]
    for box, vec, n in zip(rig.boxes[:2], vecs[:2], counts[:2], strict=True):
        assert _send_valid(rig, box, vec, n)["accepted"]
    # "crash": drop the service without any shutdown and start a new one on the state dir
    rig.service.transport.close()
    service = rig.reopen(settings, secret_ctx.public())
    assert service.coordinator.current is not None
    assert service.coordinator.current.contributions == 2
    # a resend by an already-counted box is a duplicate, not a double count
    ack = _send_valid(rig, rig.boxes[0], vecs[0], counts[0])
    assert ack["reason"] == "duplicate"
    assert _send_valid(rig, rig.boxes[2], vecs[2], counts[2])["accepted"]
    pointer, blob = collect_result(rig.bus.retained, FED)
    assert pointer["round"] == 1 and pointer["contributors"] == 3
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    rig.store.close()


def test_disk_full_rejects_that_update_cleanly_and_keeps_serving(
    rig: Rig, secret_ctx: FederationContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    vecs, counts = [_vec(40 + i) for i in range(3)], [100, 110, 120]
    assert _send_valid(rig, rig.boxes[0], vecs[0], counts[0])["accepted"]
    store = rig.store
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:  # delayed allocation: ENOSPC shows at fsync
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(aggregator.state.durable_io.os, "fsync", full_disk)
    box = rig.boxes[1]
    ann = latest_announce(rig.bus.retained, FED)
    envs = box.envelopes(box.encrypted_blob(vecs[1], counts[1], COUNT_SCALE), 1, ann["base_model"])
    box.send(envs)
    rig.service.pump()
    ack = box.acks[-1]
    assert ack["accepted"] is False and ack["reason"] == "unavailable"
    assert "disk full" in ack["detail"]
    assert store.get_round(1).contributions == 1  # type: ignore[union-attr]
    stored = sorted(p.name for p in (store.accepted_dir / "round-1").iterdir())
    assert stored == ["00001-box0.bin"]  # nothing of the refused update left behind
    assert not list(rig.service.spool.dir.iterdir())
    monkeypatch.setattr(aggregator.state.durable_io.os, "fsync", real_fsync)
    # the box resends the SAME message after the operator freed space: accepted once
    box.send(envs)
    rig.service.pump()
    assert box.acks[-1]["accepted"], box.acks[-1]
    assert _send_valid(rig, rig.boxes[2], vecs[2], counts[2])["accepted"]
    _, blob = collect_result(rig.bus.retained, FED)
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    # the result is kept, the accepted blobs of the published round are gone
    assert not (store.accepted_dir / "round-1").exists()
    assert (store.blob_dir / "round-1-result.bin").exists()


def test_serve_keeps_running_through_a_write_the_state_disk_cannot_take(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any step of a pump that fails on the state disk (full) is logged and retried on
    a later pump; it stopped serve, which systemd's restart limit then left stopped."""
    stop = threading.Event()
    real_pump, calls = rig.service.pump, []

    def pump(timeout: float = 0.0) -> int:
        calls.append(timeout)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database or disk is full")
        stop.set()
        return real_pump(timeout)

    monkeypatch.setattr(rig.service, "pump", pump)
    with caplog.at_level(logging.ERROR, logger="aggregator.service"):
        rig.service.loop(stop, tick_seconds=0.01)
    assert len(calls) == 3
    said = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(said) == 1 and "disk full" in said[0], said  # once a minute, not per pump


def test_restart_after_an_interrupted_accept_uses_the_committed_updates(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    rig = make_rig(tmp_path, secret_ctx, n_boxes=3)
    vecs, counts = [_vec(50 + i) for i in range(3)], [100, 200, 300]
    assert _send_valid(rig, rig.boxes[0], vecs[0], counts[0])["accepted"]
    # a crash after the next update was renamed into place but before the db commit:
    # simulate it with an orphan accepted blob of the next sequence number holding junk
    orphan = rig.store.accepted_dir / "round-1" / "00002-box1.bin"
    orphan.write_bytes(b"junk from a torn step")
    rig.service.transport.close()
    rig.reopen(rig.service.settings, secret_ctx.public())
    assert not orphan.exists()
    for box, vec, n in zip(rig.boxes[1:], vecs[1:], counts[1:], strict=True):
        assert _send_valid(rig, box, vec, n)["accepted"]
    _, blob = collect_result(rig.bus.retained, FED)
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    rig.store.close()


def test_sum_rebuilt_after_restart_equals_the_uninterrupted_sum(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    """CKKS addition is deterministic: re-adding the accepted blobs after a restart must
    give the very same result bytes as the sum that never stopped."""
    vecs, counts = [_vec(70 + i) for i in range(3)], [130, 170, 210]
    blobs = [encrypt_update(secret_ctx, v, n, COUNT_SCALE).to_bytes()
             for v, n in zip(vecs, counts, strict=True)]

    def send(rig: Rig, i: int) -> dict:
        ann = latest_announce(rig.bus.retained, FED)
        box = rig.boxes[i]
        box.send(box.envelopes(blobs[i], ann["round"], ann["base_model"]))
        rig.service.pump()
        return box.acks[-1]

    (tmp_path / "steady").mkdir()
    (tmp_path / "restarted").mkdir()
    steady = make_rig(tmp_path / "steady", secret_ctx, n_boxes=3)
    for i in range(3):
        assert send(steady, i)["accepted"]
    _, want = collect_result(steady.bus.retained, FED)
    steady.store.close()

    restarted = make_rig(tmp_path / "restarted", secret_ctx, n_boxes=3)
    assert send(restarted, 0)["accepted"] and send(restarted, 1)["accepted"]
    restarted.service.transport.close()  # "crash": no shutdown
    service = restarted.reopen(restarted.service.settings, secret_ctx.public())
    assert service.coordinator.sum is not None and service.coordinator.sum.count == 2
    assert send(restarted, 2)["accepted"]
    _, got = collect_result(restarted.bus.retained, FED)
    assert got == want
    restarted.store.close()


def test_revoked_device_is_refused(rig: Rig) -> None:
    from aggregator.state.registry import DeviceRegistry

    box = rig.boxes[0]
    DeviceRegistry(rig.store).revoke(box.device_id)
    rig.service.pump()  # the service refreshes its key snapshot every pump
    _send_valid(rig, box, _vec(60), 100)
    refused, notice = box.acks[-2:]
    assert refused["accepted"] is False and refused["reason"] == "unknown_device"
    # and the box is told, signed, that it was revoked: a box the broker still let in
    # (its CRL never reloaded) had only "unknown_device", joined and applied results
    assert notice["revoked"] is True and notice["device"] == box.device_id
    assert notice["reason"] == "revoked" and notice["revoked_at"] > 0
    _send_valid(rig, box, _vec(61), 100)  # at most one notice every 30 s
    box.say_status()
    rig.service.pump()
    assert [a["reason"] for a in box.acks] == ["unknown_device", "revoked", "unknown_device"]


def test_a_revoked_device_saying_it_is_online_is_told(rig: Rig) -> None:
    from aggregator.state.registry import DeviceRegistry

    box = rig.boxes[1]
    DeviceRegistry(rig.store).revoke(box.device_id)
    rig.service.pump()
    box.say_status()  # online: the broker let it in
    rig.service.pump()
    assert [(a["reason"], a["revoked"]) for a in box.acks] == [("revoked", True)]


def test_update_at_another_scale_is_rejected_before_it_is_stored(
    rig: Rig, secret_ctx: FederationContext
) -> None:
    """+= would fail half-way through the sum on such an update: prepare refuses it."""
    import tenseal as ts

    from federation.crypto import wire
    from federation.crypto.packing import EncryptedUpdate, wire_widths

    good = encrypt_update(secret_ctx, _vec(80), 100, COUNT_SCALE)
    odd = wire.serialize_vector(ts.ckks_vector(
        secret_ctx.context, [0.5] * (LENGTH + 1 - secret_ctx.params.slots), scale=2**20),
        wire_widths(secret_ctx))
    forged = EncryptedUpdate(good.key_id, good.length, good.slots,
                             (good.ciphertexts[0], odd)).to_bytes()
    assert _send_valid(rig, rig.boxes[0], _vec(81), 100)["accepted"]
    ann = latest_announce(rig.bus.retained, FED)
    box = rig.boxes[1]
    ack = _reject(rig, box, lambda: box.send(box.envelopes(forged, ann["round"],
                                                           ann["base_model"])))
    assert ack["reason"] == "malformed" and "scale" in ack["detail"]
    assert sorted(p.name for p in (rig.store.accepted_dir / "round-1").iterdir()) == [
        "00001-box0.bin"]
    assert rig.service.coordinator.sum is not None and rig.service.coordinator.sum.count == 1
