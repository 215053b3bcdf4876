"""A quiet night across a hierarchy: every region's boxes have nothing new, so each region
sits the root's round out in its signed status and the root skips the round at its
deadline, as a flat aggregator skips one its boxes all sit out. Before, the regions said
nothing to the root: it extended the round and then failed it, an error every quiet
night (in-memory transports standing in for three brokers, real CKKS services)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation import topics
from federation.crypto.ckks import FederationContext
from federation.envelope import decode
from tests.support.aggregator_boxes import latest_announce
from tests.support.hierarchy import FED, Hierarchy, Site, build_hierarchy


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


def test_a_stopped_region_says_offline_to_the_root(hierarchy: Hierarchy) -> None:
    root, site_a = hierarchy.root, hierarchy.regions[0]
    site_a.service.pump()
    hierarchy.forwarders[0].close()
    assert region_status(root, "region-a")["state"] == "offline"
