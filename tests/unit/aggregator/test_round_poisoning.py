"""A round the boxes refuse is marked poisoned and the federation goes back to the last
good base by itself: the aggregator service over the in-memory bus, real CKKS updates
(one of them overflowing the range), the boxes' refusals as real signed statuses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.coordinator import RoundSettings
from aggregator.rounds.poison import judge
from aggregator.state.registry import DeviceRegistry
from aggregator.state.verdicts import StoredVerdict, poisoned, poisoned_summary, suspects
from federation import topics
from federation.chunking import split_blob
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import encrypt_update
from federation.envelope import encode
from federation.errors import FederationError
from federation.messages import DeviceStatus
from federation.verdicts import Verdict
from tests.support.aggregator_boxes import (
    ScriptedBox,
    collect_result,
    decrypt_result,
    envelope_json,
    latest_announce,
)
from tests.support.aggregator_rig import COUNT_SCALE, FED, LENGTH, Rig, make_rig

SETTINGS = RoundSettings(deadline_seconds=60, quorum=2, count_scale=COUNT_SCALE)


@pytest.fixture
def rig(tmp_path: Path, secret_ctx: FederationContext) -> Iterator[Rig]:
    r = make_rig(tmp_path, secret_ctx, settings=SETTINGS)
    yield r
    r.store.close()


def _round(rig: Rig, blobs: dict[str, bytes] | None = None) -> dict:
    """Every box sends (``blobs``: a box's own bytes instead of an honest update);
    returns the announce the round was sent for."""
    ann = latest_announce(rig.bus.retained, FED)
    rng = np.random.default_rng(ann["round"])
    for box in rig.boxes:
        blob = (blobs or {}).get(box.device_id) or box.encrypted_blob(
            rng.normal(0, 0.5, LENGTH).astype(np.float32), 200, ann["count_scale"])
        box.send(box.envelopes(blob, ann["round"], ann["base_model"]))
        rig.service.pump()
        assert box.acks[-1]["accepted"] is True, box.acks[-1]
    return ann


def _verdict(box: ScriptedBox, round_no: int, model: str, outcome: str, code: str) -> None:
    """What a box's client publishes at once when it applies or refuses a result."""
    verdict = Verdict(round_no, model, outcome, f"{code}: test", time.time(), code=code)
    body = DeviceStatus("online", box.device_id, model, time.time(),
                        verdicts=(verdict,)).to_json()
    (env,) = split_blob(body, box.key, kind="status", fed=FED, sender=box.device_id,
                        round=round_no, model=model, chunk_size=len(body))
    box.transport.publish(topics.status(FED, box.device_id), encode(env), retain=True)


def _overflow(secret: FederationContext) -> bytes:
    # issue 15's attack 2: a count slot of 2047 (c*n, with n = 2047 * count_scale), just
    # inside the range on its own; any honest update added wraps the sum around
    return encrypt_update(secret, np.zeros(LENGTH, np.float32), int(2047 * COUNT_SCALE),
                          COUNT_SCALE, headroom=1).to_bytes()


def test_refused_round_is_poisoned_and_the_next_round_builds_on_the_last_good_one(
        rig: Rig, secret_ctx: FederationContext) -> None:
    _round(rig)  # round 1: good
    _, good_blob = collect_result(rig.bus.retained, FED)
    for box in rig.boxes:
        _verdict(box, 1, "round-1", "applied", "")
    rig.service.pump()
    evil, honest = rig.boxes[0], rig.boxes[1:]
    _round(rig, {evil.device_id: _overflow(secret_ctx)})  # round 2: poisoned
    pointer, blob = collect_result(rig.bus.retained, FED)
    assert pointer["model"] == "round-2"
    with pytest.raises(FederationError) as refused:  # what every honest box sees
        decrypt_result(secret_ctx, blob)
    assert refused.value.reason == "out_of_range"
    assert latest_announce(rig.bus.retained, FED)["base_model"] == "round-2"  # round 3

    _verdict(honest[0], 2, "round-2", "rejected", refused.value.reason)
    rig.service.pump()
    # one refusal of three active boxes is not evidence enough (the refuser might lie)
    assert rig.store.get_round(2).status == "published"  # type: ignore[union-attr]
    _verdict(honest[1], 2, "round-2", "rejected", refused.value.reason)
    rig.service.pump()

    assert rig.store.get_round(2).status == "poisoned"  # type: ignore[union-attr]
    failed = rig.store.get_round(3)
    assert failed is not None and failed.status == "failed"
    assert "round-2 was found poisoned" in (failed.close_reason or "")
    ann = latest_announce(rig.bus.retained, FED)
    assert (ann["round"], ann["base_model"], ann["state"]) == (4, "round-1", "open")
    # model/latest points at the good result again, re-published for round 4
    pointer, blob = collect_result(rig.bus.retained, FED)
    assert (pointer["model"], pointer["republished"], pointer["for_round"]) == \
        ("round-1", True, 4)
    assert blob == good_blob
    summary = poisoned_summary(rig.store, 2)
    assert summary is not None
    assert summary["refusals"] == {"out_of_range": 2}
    assert sorted(summary["refused_by"]) == sorted(b.device_id for b in honest)
    assert sorted(summary["contributors"]) == sorted(b.device_id for b in rig.boxes)
    assert summary["recovered_to"] == "round-1"

    # a restart keeps it poisoned and the round open on the good base
    service = rig.reopen(SETTINGS, secret_ctx.public())
    assert set(poisoned(rig.store)) == {2}
    assert service.coordinator.current is not None
    assert service.coordinator.current.base_model == "round-1"
    _round(rig)  # round 4, built on round-1, completes
    pointer, blob = collect_result(rig.bus.retained, FED)
    assert (pointer["model"], pointer["base_model"]) == ("round-4", "round-1")
    decrypt_result(secret_ctx, blob)  # a good sum again
    assert latest_announce(rig.bus.retained, FED)["base_model"] == "round-4"


def test_rounds_built_on_a_poisoned_one_are_poisoned_too_and_suspects_narrow(
        rig: Rig, secret_ctx: FederationContext) -> None:
    _round(rig)
    b0, b1, b2 = rig.boxes
    _round(rig, {b0.device_id: _overflow(secret_ctx)})  # round 2
    _verdict(b1, 2, "round-2", "rejected", "out_of_range")  # one refusal: not yet
    rig.service.pump()
    _round(rig)  # round 3, built on round-2 (boxes that took round-2 sent to it)
    assert rig.store.get_round(3).base_model == "round-2"  # type: ignore[union-attr]
    assert latest_announce(rig.bus.retained, FED)["round"] == 4
    _verdict(b2, 2, "round-2", "rejected", "out_of_range")  # a late refusal decides
    rig.service.pump()
    assert set(poisoned(rig.store)) == {2, 3}
    assert poisoned(rig.store)[3].why == "built on the poisoned round-2"
    assert rig.store.get_round(4).status == "failed"  # type: ignore[union-attr]
    ann = latest_announce(rig.bus.retained, FED)
    assert (ann["round"], ann["base_model"]) == (5, "round-1")
    assert suspects(rig.store) == {"rounds": [2], "devices": sorted([b0.device_id,
                                                                      b1.device_id,
                                                                      b2.device_id])}
    # round 5: b2 sits it out and b0 poisons again; the round closes at its deadline
    for box in (b0, b1):
        blob = _overflow(secret_ctx) if box is b0 else box.encrypted_blob(
            np.ones(LENGTH, np.float32), 200, COUNT_SCALE)
        box.send(box.envelopes(blob, 5, "round-1"))
        rig.service.pump()
    rig.clock[0] += SETTINGS.deadline_seconds + 1
    rig.service.pump()
    assert rig.store.get_round(5).status == "published"  # type: ignore[union-attr]
    for box in (b1, b2):
        _verdict(box, 5, "round-5", "rejected", "out_of_range")
    rig.service.pump()
    assert set(poisoned(rig.store)) == {2, 3, 5}
    # b2 sat round 5 out: cleared; the culprit is among the two left
    assert suspects(rig.store) == {"rounds": [2, 5],
                                   "devices": sorted([b0.device_id, b1.device_id])}
    assert latest_announce(rig.bus.retained, FED)["base_model"] == "round-1"


def test_the_first_round_poisoned_goes_back_to_the_initial_model(
        rig: Rig, secret_ctx: FederationContext) -> None:
    _round(rig, {rig.boxes[0].device_id: _overflow(secret_ctx)})
    assert topics.model_latest(FED) in rig.bus.retained
    for box in rig.boxes[1:]:
        _verdict(box, 1, "round-1", "rejected", "out_of_range")
    rig.service.pump()
    assert set(poisoned(rig.store)) == {1}
    ann = latest_announce(rig.bus.retained, FED)
    assert (ann["round"], ann["base_model"]) == (3, "base")
    # no good result to point at: the poisoned one is no longer retained either
    assert not rig.bus.retained.get(topics.model_latest(FED))
    assert not rig.bus.retained.get(topics.result(FED, 1, 0))


def test_a_status_not_signed_by_its_device_is_not_counted(
        rig: Rig, secret_ctx: FederationContext) -> None:
    _round(rig, {rig.boxes[0].device_id: _overflow(secret_ctx)})
    forger = rig.boxes[0]
    for victim in rig.boxes[1:]:  # the attacker signs "refusals" in the others' names
        verdict = Verdict(1, "round-1", "rejected", "x", time.time(), code="out_of_range")
        body = DeviceStatus("online", victim.device_id, "base", verdicts=(verdict,)).to_json()
        (env,) = split_blob(body, forger.key, kind="status", fed=FED,
                            sender=victim.device_id, round=1, model="base",
                            chunk_size=len(body))
        forger.transport.publish(topics.status(FED, victim.device_id), encode(env))
    rig.service.pump()
    assert poisoned(rig.store) == {}
    assert rig.store.get_round(1).status == "published"  # type: ignore[union-attr]


def _v(device: str, outcome: str = "rejected", code: str = "out_of_range") -> StoredVerdict:
    return StoredVerdict(2, device, "round-2", outcome, code, "", 0.0)


ACTIVE = {"a", "b", "c", "d", "e"}


@pytest.mark.parametrize(("verdicts", "age", "poisoned_"), [
    ([_v("a"), _v("b"), _v("c")], 0.0, True),  # a majority of the active boxes: at once
    ([_v("a"), _v("b")], 0.0, False),  # a minority: wait until the boxes had time
    ([_v("a"), _v("b")], 61.0, True),  # ... then a quorum (2) of refusals suffices
    ([_v("a"), _v("b"), _v("c", "applied", ""), _v("d", "applied", "")], 61.0, False),
    ([_v("a")], 61.0, False),  # one box alone: never (below the quorum)
    ([_v("a"), _v("b"), _v("c", code="stale_round")], 0.0, False),  # not about content
    # a box without the new key epoch yet says nothing about the result either
    ([_v("a", code="wrong_key"), _v("b", code="wrong_key"), _v("c", code="wrong_key")],
     61.0, False),
    ([_v("a"), _v("b"), _v("x"), _v("y")], 0.0, False),  # x, y: not active (revoked)
    ([_v("a"), _v("b", "refused", "canary_refused"), _v("c", code="count_over_cap")],
     0.0, True),  # any reason about the result counts, the new ones included
])
def test_the_poisoning_rule(verdicts: list[StoredVerdict], age: float,
                            poisoned_: bool) -> None:
    why = judge(verdicts, ACTIVE, quorum=2, age=age, settle_seconds=60.0)
    assert (why is not None) == poisoned_, why


def test_a_revoked_culprit_is_not_counted_among_the_active_boxes(
        rig: Rig, secret_ctx: FederationContext) -> None:
    _round(rig, {rig.boxes[0].device_id: _overflow(secret_ctx)})
    DeviceRegistry(rig.store).revoke(rig.boxes[0].device_id)  # the culprit, revoked
    _verdict(rig.boxes[1], 1, "round-1", "rejected", "out_of_range")
    rig.service.pump()
    # one of the two active boxes is no majority; the settle window is
    rig.clock[0] += 120
    rig.service.pump()
    assert set(poisoned(rig.store)) == set()  # quorum 2 > one refusal: not poisoned
    _verdict(rig.boxes[2], 1, "round-1", "rejected", "out_of_range")
    rig.service.pump()
    assert set(poisoned(rig.store)) == {1}
    _, pointer = envelope_json(rig.bus.retained[topics.announce(FED)])
    assert pointer["base_model"] == "base"
