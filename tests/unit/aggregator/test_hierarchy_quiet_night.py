"""A quiet night across a hierarchy: every region's boxes have nothing new, so each region
sits the root's round out in its signed status and the root skips the round at its
deadline, as a flat aggregator skips one its boxes all sit out. Before, the regions said
nothing to the root: it extended the round and then failed it, an error every quiet
night (in-memory transports standing in for three brokers, real CKKS services)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aggregator.rounds.events import FOLLOWS_ROOT, STALE_SUM
from federation import topics
from federation.crypto.ckks import FederationContext
from federation.envelope import decode
from federation.messages import CLOSED, RoundAnnounce
from tests.support.aggregator_boxes import collect_result, latest_announce
from tests.support.hierarchy import (
    FED,
    Hierarchy,
    Site,
    build_hierarchy,
    send_round,
    send_update,
    vec,
)


@pytest.fixture
def hierarchy(tmp_path: Path, secret_ctx: FederationContext) -> Iterator[Hierarchy]:
    built = build_hierarchy(tmp_path, secret_ctx)
    yield built
    built.close()


def region_status(root: Site, region: str) -> dict[str, Any]:
    """The region's retained status as the root's broker holds it."""
    return dict(json.loads(decode(root.bus.retained[topics.status(FED, region)]).payload))


def boxes_sit_out(site: Site) -> None:
    round_no = latest_announce(site.bus.retained, FED)["round"]
    for box in site.boxes:
        box.say_status(sitting_out=round_no)
    site.service.pump()


def test_a_night_quiet_in_every_region_is_skipped_at_the_root(hierarchy: Hierarchy) -> None:
    root, regions = hierarchy.root, hierarchy.regions
    for site in regions:
        site.service.pump()
    # before its boxes say anything, a region is online and sits nothing out
    assert region_status(root, "region-a")["state"] == "online"
    assert "not_joining" not in region_status(root, "region-a")
    for site in regions:
        boxes_sit_out(site)
    for region in ("region-a", "region-b"):
        assert region_status(root, region)["not_joining"] == {
            "round": 1, "reason": "no_new_samples"}
    root.service.pump()
    root.clock[0] += 61  # the root's deadline
    root.service.pump()
    skipped = root.store.get_round(1)
    assert skipped is not None and (skipped.status, skipped.close_reason, skipped.extensions) \
        == ("skipped", "nothing new", 0)
    nxt = root.store.get_round(2)
    assert nxt is not None and nxt.status == "open" and nxt.base_model == skipped.base_model
    # the regions' own rounds are still open with nothing new: they sit the root's round 2 out
    for site in regions:
        site.service.pump()
    assert region_status(root, "region-b")["not_joining"]["round"] == 2


def test_a_region_whose_box_has_something_new_keeps_the_root_waiting(
        hierarchy: Hierarchy) -> None:
    root, (site_a, site_b) = hierarchy.root, hierarchy.regions
    for site in (site_a, site_b):
        boxes_sit_out(site)
    site_a.boxes[0].say_status(sitting_out=None)  # enrolled people: it joins region-a's round
    site_a.service.pump()
    assert "not_joining" not in region_status(root, "region-a")
    assert region_status(root, "region-b")["not_joining"]["round"] == 1
    root.service.pump()
    root.clock[0] += 61
    root.service.pump()
    waiting = root.store.get_round(1)  # region-a's partial may still come: extended
    assert waiting is not None and (waiting.status, waiting.extensions) == ("open", 1)


def test_a_region_keeps_sitting_out_between_its_own_rounds(hierarchy: Hierarchy) -> None:
    """region-a's quiet round was skipped and its next opened: until its boxes spoke of
    the new round, the region told the root it no longer sat out, and a root deadline
    landing then extended the root's round instead of skipping it. What a box last said
    now stands until it speaks of the new round; a box that joins it still counts at once."""
    root, (site_a, site_b) = hierarchy.root, hierarchy.regions
    for site in (site_a, site_b):
        boxes_sit_out(site)
    site_a.clock[0] += 61  # region-a's deadline: skipped, nothing new; its round 2 opens
    site_a.service.pump()
    assert site_a.store.get_round(1).status == "skipped"  # type: ignore[union-attr]
    assert latest_announce(site_a.bus.retained, FED)["round"] == 2
    site_a.service.pump()
    assert region_status(root, "region-a")["not_joining"]["round"] == 1
    root.service.pump()
    root.clock[0] += 61  # the root's deadline, before region-a's boxes spoke of round 2
    root.service.pump()
    skipped = root.store.get_round(1)
    assert skipped is not None and (skipped.status, skipped.extensions) == ("skipped", 0)
    site_a.boxes[0].say_status(sitting_out=None)  # it joins region-a's round 2
    site_a.service.pump()
    assert "not_joining" not in region_status(root, "region-a")


def test_a_stopped_region_says_offline_to_the_root(hierarchy: Hierarchy) -> None:
    root, site_a = hierarchy.root, hierarchy.regions[0]
    site_a.service.pump()
    hierarchy.forwarders[0].close()
    assert region_status(root, "region-a")["state"] == "offline"


def test_a_partial_whose_root_round_ended_without_a_result_goes_to_the_next_one(
        hierarchy: Hierarchy) -> None:
    """The root's round failed (too few updates) after region-a's partial was in: the
    region waited for that round's result for good, opened no more rounds and its boxes'
    newcomers were never federated. The root's next round builds on the same base, so
    the same partial goes there."""
    root, (site_a, site_b) = hierarchy.root, hierarchy.regions
    send_round(site_a, [vec(i) for i in range(3)], [100, 110, 120])
    root.service.pump()
    assert root.service.coordinator.updates_summed() == 3
    root.service.events.handle(root.service.coordinator.abandon("no quorum (test)"))
    assert root.store.get_round(1).status == "failed"  # type: ignore[union-attr]
    assert latest_announce(root.bus.retained, FED)["round"] == 2
    site_a.service.pump()  # the region, still waiting, sees the root's round 2
    root.service.pump()
    assert root.store.contributors(2) == ["region-a"]
    assert root.service.coordinator.updates_summed() == 3
    send_round(site_b, [vec(10 + i) for i in range(3)], [100, 100, 100])
    root.service.pump()  # both regions in: round 2 closes and publishes
    for site in (site_a, site_b):
        site.service.pump()
        pointer, _ = collect_result(site.bus.retained, FED)
        assert pointer["round"] == 1 and pointer["contributors"] == 3


def test_a_region_sum_of_a_stale_base_is_published_as_holding_no_update(
        hierarchy: Hierarchy) -> None:
    """region-b's round was built on the pretrained model while the root had moved on
    (round-1, from region-a alone): its sum is not forwarded and the root's model is
    what it publishes, with 0 contributors, so that its boxes count their samples as new
    again (they said their update was in: a walkthrough's newcomers were lost)."""
    root, (site_a, site_b) = hierarchy.root, hierarchy.regions
    root.store.update_round(1, quorum=3)
    root.service.coordinator.current = root.store.get_round(1)
    send_round(site_a, [vec(i) for i in range(3)], [100, 110, 120])
    root.service.pump()
    root.clock[0] += 61  # the root's deadline: region-a's 3 updates are the quorum
    root.service.pump()
    assert root.store.get_round(1).status == "published"  # type: ignore[union-attr]
    # region-b's first box sends for its round on the pretrained model: the round follows
    # the root at once, without waiting for the other two boxes (their training would be
    # of the stale base too), and its sum is not forwarded
    send_update(site_b, site_b.boxes[0], vec(10), 100)
    site_b.service.pump()
    assert root.store.contributors(2) == []
    pointer, blob = collect_result(site_b.bus.retained, FED)
    assert blob == collect_result(root.bus.retained, FED)[1]  # the root's round-1
    assert pointer["contributors"] == 0
    row = site_b.store.get_round(1)
    assert row is not None and row.close_reason == STALE_SUM


@pytest.mark.parametrize("root_waits", [False, True], ids=["root-round-open", "root-waits"])
def test_a_quiet_region_follows_the_roots_newer_model_at_once(hierarchy: Hierarchy,
                                                              root_waits: bool) -> None:
    """region-b's boxes sat out while the root published round-1 from region-a alone:
    region-b served the pretrained model until its boxes next had something new, and
    that round's sum was then of a stale base. Its open round, which every box sits out,
    now closes on the root's model; its next round builds on it and reaches the root.
    Also while the root's schedule holds its next round back (its announce: round 1,
    closed)."""
    root, (site_a, site_b) = hierarchy.root, hierarchy.regions
    root.store.update_round(1, quorum=3)
    root.service.coordinator.current = root.store.get_round(1)
    boxes_sit_out(site_b)
    send_round(site_a, [vec(i) for i in range(3)], [100, 110, 120])
    root.service.pump()
    root.clock[0] += 61
    root.service.pump()
    assert root.store.get_round(1).status == "published"  # type: ignore[union-attr]
    if root_waits:  # what the root announces while its schedule holds round 2 back
        closed = RoundAnnounce.from_dict(root.store.get_round(1).announce)  # type: ignore[union-attr]
        root.service.publisher.announce(replace(closed, state=CLOSED))
    site_b.service.pump()  # hears the root's result: its quiet round follows it
    followed = site_b.store.get_round(1)
    assert followed is not None and followed.status == "published"
    assert followed.close_reason == f"{FOLLOWS_ROOT} round-1"
    pointer, blob = collect_result(site_b.bus.retained, FED)
    assert blob == collect_result(root.bus.retained, FED)[1] and pointer["contributors"] == 0
    ann = latest_announce(site_b.bus.retained, FED)
    assert (ann["round"], ann["base_model"]) == (2, "round-1")
    if root_waits:
        return
    # its boxes' next updates are of the root's current base: forwarded, not stale
    send_round(site_b, [vec(10 + i) for i in range(3)], [100, 100, 100])
    root.service.pump()
    assert root.store.contributors(2) == ["region-b"]


def test_a_rollback_at_the_root_reaches_every_region_without_a_deadlock(
        hierarchy: Hierarchy) -> None:
    """helper-41: after `models rollback` at the root (a pin of round-1, republished as the
    base of its next round), the regions kept building on round-3 (the older result was
    dropped as soon as it arrived, being of a lower round number), their boxes' sums were
    then of a stale base and not forwarded, and each region waited for the result of the
    root round its partial never went to: the root's rounds failed for "no word from"
    either region, for good. Now a region follows the root's current result whatever its
    round number, and its republication of a result its boxes assembled before carries a
    new message id (running boxes dropped it as a duplicate and stalled)."""
    from aggregator.rounds import pins as model_pins

    root, regions = hierarchy.root, hierarchy.regions

    def federated_round(seed: int) -> None:
        for k, site in enumerate(regions):
            send_round(site, [vec(seed + 10 * k + i) for i in range(3)], [100, 100, 100])
        root.service.pump()
        for site in regions:
            site.service.pump()

    for seed in (0, 100):
        federated_round(seed)
    assert [r.status for r in root.store.list_rounds()][:2] == ["published", "published"]
    assert model_pins.rollback(root.store) == ("round-2", "round-1")
    federated_round(200)  # root round 3 finishes on its own base; round 4 opens on round-1
    ann = latest_announce(root.bus.retained, FED)
    assert (ann["round"], ann["base_model"]) == (4, "round-1"), ann
    root_round_1 = root.store.read_blob(root.store.get_round(1).sum_blob)  # type: ignore[arg-type,union-attr]
    for site in regions:
        followed = site.store.get_round(4)
        assert followed is not None and followed.status == "published", followed
        assert followed.close_reason == f"{FOLLOWS_ROOT} round-1", followed.close_reason
        pointer, blob = collect_result(site.bus.retained, FED)
        assert blob == root_round_1 and pointer["round"] == 4
        first = site.store.get_round(1)
        assert first is not None and pointer["msg"] != first.result_msg  # not a duplicate
        region_ann = latest_announce(site.bus.retained, FED)
        assert (region_ann["round"], region_ann["base_model"]) == (5, "round-4"), region_ann
    federated_round(300)  # built on the rolled-back model: forwarded, not stale
    row = root.store.get_round(4)
    assert row is not None and row.status == "published", row
    assert sorted(root.store.contributors(4)) == ["region-a", "region-b"]


def test_a_pin_of_the_initial_model_at_the_root_is_followed_by_every_region(
        hierarchy: Hierarchy) -> None:
    """helper-43: `models pin base` at the root has no result to re-publish. A region
    whose sum was waiting for the root's failed round waited for good, one with an open
    round kept the root's previous model, and a region pinned by hand as the docs said
    was pulled back to that previous model at once; the root's rounds failed for "no
    word from" them. Each region now follows the root's initial model: its round fails
    (its updates are of another base), its initial model is pinned there too, its next
    round builds on it and reaches the root's, whose result every region then serves."""
    from aggregator.rounds import pins as model_pins

    root, (site_a, site_b) = hierarchy.root, hierarchy.regions

    def federated_round(seed: int) -> None:
        for k, site in enumerate((site_a, site_b)):
            send_round(site, [vec(seed + 10 * k + i) for i in range(3)], [100, 100, 100])
        root.service.pump()
        for site in (site_a, site_b):
            site.service.pump()

    for seed in (0, 100):
        federated_round(seed)
    # region-a's round 3 closes and its partial waits in the root's round 3; the root's
    # operator pins the initial model, and that round fails (the pin opens the next)
    send_round(site_a, [vec(200 + i) for i in range(3)], [100, 100, 100])
    root.service.pump()
    assert root.store.contributors(3) == ["region-a"]
    model_pins.pin(root.store, "base")
    root.service.events.handle(root.service.coordinator.abandon("no quorum (test)"))
    ann = latest_announce(root.bus.retained, FED)
    assert (ann["round"], ann["base_model"]) == (4, "base"), ann
    for site in (site_a, site_b):  # a: its closed round; b: its open one
        site.service.pump()
        row = site.store.get_round(3)
        assert row is not None and row.status == "failed", row
        assert row.close_reason == f"{FOLLOWS_ROOT} base (pinned at the root)"
        region_ann = latest_announce(site.bus.retained, FED)
        assert (region_ann["round"], region_ann["base_model"]) == (4, "base"), region_ann
        assert model_pins.pinned(site.store) == "base"
    federated_round(300)  # on the initial model at every level
    row = root.store.get_round(4)
    assert row is not None and row.status == "published", row
    assert sorted(root.store.contributors(4)) == ["region-a", "region-b"]
    _, root_blob = collect_result(root.bus.retained, FED)
    for site in (site_a, site_b):
        assert collect_result(site.bus.retained, FED)[1] == root_blob
        region_ann = latest_announce(site.bus.retained, FED)
        assert (region_ann["round"], region_ann["base_model"]) == (5, "round-4"), region_ann
        assert model_pins.pinned(site.store) is None  # done with once the root published

    # helper-45: unpin, a round, then `pin base` again at the root: the regions looped
    # thousands of rounds (their pin of the first time held their base on a later result)
    model_pins.unpin(root.store)
    federated_round(400)
    model_pins.pin(root.store, "base")
    federated_round(500)  # root round 6 finishes on its base; round 7 opens on base
    assert latest_announce(root.bus.retained, FED)["base_model"] == "base"
    for site in (site_a, site_b):
        for _ in range(3):  # pumps of a quiet moment: no round after round 8
            site.service.pump()
        region_ann = latest_announce(site.bus.retained, FED)
        assert (region_ann["round"], region_ann["base_model"]) == (8, "base"), region_ann
        row = site.store.get_round(7)
        assert row is not None and row.close_reason == f"{FOLLOWS_ROOT} base (pinned at the root)"
    federated_round(600)
    row = root.store.get_round(7)
    assert row is not None and row.status == "published", row
    assert sorted(root.store.contributors(7)) == ["region-a", "region-b"]


def test_the_announce_of_a_root_round_whose_result_is_in_does_not_move_a_region(
        hierarchy: Hierarchy) -> None:
    """Over MQTT a root round's open announce can still be the latest a region heard when
    that round's result is already in: taken for what the root builds on, it made a
    region abandon its new round for the root's previous base (a run of
    tests/integration/test_hierarchy_mqtt.py). A result of the announced round or later
    wins over it."""
    from aggregator.regional.forwarder import _RootRound

    root, (site_a, site_b) = hierarchy.root, hierarchy.regions
    for k, site in enumerate((site_a, site_b)):
        send_round(site, [vec(10 * k + i) for i in range(3)], [100, 100, 100])
    root.service.pump()
    for site, fwd in zip((site_a, site_b), hierarchy.forwarders, strict=True):
        fwd._announce = _RootRound(1, "base", True)  # round 1's announce, heard late
        site.service.pump()  # publishes the root's round-1 and opens its round 2 on it
        assert fwd.root_moved_past("round-1") is None
        ann = latest_announce(site.bus.retained, FED)
        assert (ann["round"], ann["base_model"], ann["state"]) == (2, "round-1", "open"), ann
