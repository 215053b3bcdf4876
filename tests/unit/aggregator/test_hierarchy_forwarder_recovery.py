"""A regional partial whose confirmation was lost (crash, dropped PUBACK) is neither lost
nor counted twice (real CKKS; in-memory brokers make the failure points exact; the real
processes and brokers are in test_hierarchy_mqtt.py).

Regression: the forwarder recorded a partial only after the broker confirmed it. The
root can count the partial before that confirmation reaches the region; the region then
forwarded again on its next try, found the root on its next round (based on the result
that already held the region's sum), logged the sum as stale and "NOT forwarded", and
waited a whole root round before its boxes got the result they had contributed to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from aggregator.regional.forwarder import RegionalForwarder
from aggregator.state.regions import add_region, claimed_updates
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import plain_weighted_average
from federation.crypto.signing import public_key_hex
from federation.envelope import decode
from federation.errors import NOT_CONNECTED, PUBLISH_TIMEOUT, TransportError
from federation.transport.base import InMemoryBus, InMemoryTransport
from tests.support.aggregator_boxes import collect_result, decrypt_result, latest_announce
from tests.support.hierarchy import FED, Site, make_site, send_round, send_update, vec


class FlakyRootLink(InMemoryTransport):
    """The region's link to the root broker. ``lose_puback``: the confirmed (last) chunk
    reaches the broker but its confirmation does not; ``drop_before``: the link fails
    before the first chunk leaves (a crash right after the forwarder's record)."""

    def __init__(self, bus: InMemoryBus, client_id: str, mode: str, times: int = 1) -> None:
        super().__init__(bus, client_id)
        self.mode = mode
        self.failures_left = times

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                wait_timeout: float | None = None) -> None:
        if self.failures_left and self.mode == "drop_before":
            self.failures_left -= 1
            raise TransportError(NOT_CONNECTED, "link to the root broker lost")
        super().publish(topic, payload, retain=retain, wait_timeout=wait_timeout)
        if self.failures_left and self.mode == "lose_puback" and wait_timeout is not None:
            self.failures_left -= 1
            raise TransportError(PUBLISH_TIMEOUT, "no PUBACK (connection lost after sending)")


@dataclass
class TwoRegions:
    root: Site
    a: Site
    b: Site


def _forwarder(root: Site, site: Site, name: str, link: InMemoryTransport) -> RegionalForwarder:
    fwd = RegionalForwarder(link, FED, name, site.service.signing_key,
                            root.service.signing_key.public_key(), site.store.state_dir,
                            wait_seconds=0.0)
    fwd.start()
    site.service.forwarder = fwd
    return fwd


def _build(tmp_path: Path, secret: FederationContext, mode_a: str, times: int = 1
           ) -> TwoRegions:
    root = make_site(tmp_path, "root", secret, [], quorum=2)
    sites = []
    for name in ("region-a", "region-b"):
        site = make_site(tmp_path, name, secret, [f"{name}-box{i}" for i in range(3)], 3)
        add_region(root.store, name, bytes.fromhex(public_key_hex(site.service.signing_key)))
        sites.append(site)
    root.service.start()
    a, b = sites
    _forwarder(root, a, "region-a", FlakyRootLink(root.bus, "region-a", mode_a, times))
    _forwarder(root, b, "region-b", InMemoryTransport(root.bus, "region-b"))
    a.service.start()
    b.service.start()
    return TwoRegions(root, a, b)


@pytest.fixture
def closers() -> Iterator[list[TwoRegions]]:
    built: list[TwoRegions] = []
    yield built
    for h in built:
        for site in (h.root, h.a, h.b):
            site.store.close()


VECS = [vec(500 + i) for i in range(6)]
COUNTS = [110, 120, 130, 140, 150, 160]


def _check_global_result(h: TwoRegions, secret: FederationContext) -> bytes:
    _, root_blob = collect_result(h.root.bus.retained, FED)
    assert claimed_updates(root_blob) == 6  # region-a's three counted once
    got = decrypt_result(secret, root_blob)
    assert np.max(np.abs(got - plain_weighted_average(VECS, COUNTS))) < 1e-5
    return root_blob


def _finish_with_region_b(h: TwoRegions, secret: FederationContext) -> None:
    """Region b's partial closes the root's round; region a publishes the root's result."""
    send_round(h.b, VECS[3:], COUNTS[3:])
    h.root.service.pump()
    h.a.service.pump()
    root_blob = _check_global_result(h, secret)
    assert collect_result(h.a.bus.retained, FED)[1] == root_blob


def test_lost_puback_then_root_moved_on_publishes_the_round_it_was_counted_in(
    tmp_path: Path, secret_ctx: FederationContext, closers: list[TwoRegions],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the partial reaches the root, then the regional process dies before the broker's
    # confirmation reaches it (kill -9, power cut: its link never confirms again)
    h = _build(tmp_path, secret_ctx, "lose_puback", times=1000)
    closers.append(h)
    send_round(h.a, VECS[:3], COUNTS[:3])
    send_round(h.b, VECS[3:], COUNTS[3:])
    h.root.service.pump()  # both partials: root round 1 published, round 2 opened
    assert latest_announce(h.root.bus.retained, FED)["base_model"] == "round-1"
    # restart: a new forwarder on the same state directory, the root's round 2 open
    _forwarder(h.root, h.a, "region-a", InMemoryTransport(h.root.bus, "region-a-2"))
    with caplog.at_level(logging.INFO, logger="aggregator.regional.forwarder"):
        h.a.service.pump()  # the root's round 1 result is the one to publish
    assert "NOT forwarded" not in caplog.text
    root_blob = _check_global_result(h, secret_ctx)
    pointer, blob = collect_result(h.a.bus.retained, FED)
    assert pointer["round"] == 1 and blob == root_blob
    assert latest_announce(h.a.bus.retained, FED)["base_model"] == "round-1"


def test_crash_before_the_partial_left_resends_it_after_restart(
    tmp_path: Path, secret_ctx: FederationContext, closers: list[TwoRegions],
) -> None:
    h = _build(tmp_path, secret_ctx, "drop_before", times=1000)  # the link stays down
    closers.append(h)
    send_round(h.a, VECS[:3], COUNTS[:3])  # recorded, then the link fails: nothing sent
    assert h.a.service.forwarder._state["forwarded"]["1"]["confirmed"] is False
    h.root.service.pump()
    assert h.root.service.coordinator.updates_summed() == 0
    # the regional process restarts: a new forwarder on the same state directory
    fwd = _forwarder(h.root, h.a, "region-a", InMemoryTransport(h.root.bus, "region-a-2"))
    h.a.service.pump()  # the unconfirmed partial is sent again (same msg id)
    h.root.service.pump()
    assert h.root.service.coordinator.updates_summed() == 3
    assert fwd.acks[-1].accepted, fwd.acks
    _finish_with_region_b(h, secret_ctx)


def test_resend_after_a_lost_puback_is_not_counted_twice(
    tmp_path: Path, secret_ctx: FederationContext, closers: list[TwoRegions],
) -> None:
    h = _build(tmp_path, secret_ctx, "lose_puback")
    closers.append(h)
    # delivered, confirmation lost; the service's retry in the same pump sends the same
    # partial again (the root's round is still open, no result yet)
    send_round(h.a, VECS[:3], COUNTS[:3])
    sent = [(t, decode(p).msg) for t, p, _ in h.root.bus.published
            if t.endswith("/update/region-a")]
    chunks = len(sent) // 2
    assert chunks >= 1 and len(sent) == 2 * chunks, sent
    assert len({msg for _, msg in sent}) == 1  # the same message id both times
    assert h.a.service.forwarder._state["forwarded"]["1"]["confirmed"] is True
    h.root.service.pump()
    assert h.root.service.coordinator.updates_summed() == 3  # the root counted it once
    assert h.root.store.get_round(1).contributions == 1  # type: ignore[union-attr]
    _finish_with_region_b(h, secret_ctx)


def test_late_region_publishes_the_roots_new_base_at_once_and_joins_its_next_round(
    tmp_path: Path, secret_ctx: FederationContext, closers: list[TwoRegions],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: with the root's next round open on a newer base, a late region waited
    ("the root has no open round yet") until that root round closed too, its boxes
    idle on the old base and missing the root's open round."""
    h = _build(tmp_path, secret_ctx, "lose_puback", times=0)
    closers.append(h)
    h.root.store.update_round(1, quorum=3)
    h.root.service.coordinator.current = h.root.store.get_round(1)
    send_round(h.b, VECS[3:], COUNTS[3:])
    h.root.clock[0] += 61  # deadline: region-b's partial of three meets the quorum
    h.root.service.pump()
    root_pointer, root_blob = collect_result(h.root.bus.retained, FED)
    assert root_pointer["round"] == 1
    assert latest_announce(h.root.bus.retained, FED)["state"] == "open"  # round 2, on round-1
    h.b.service.pump()  # region-b publishes it and opens its round 2
    with caplog.at_level(logging.ERROR, logger="aggregator.regional.forwarder"):
        # region-a's round 1, on the pretrained model, gets its first update late: it
        # closes at once on the root's round-1 (its other boxes' training would be of the
        # stale base too), its sum not forwarded
        send_update(h.a, h.a.boxes[0], VECS[0], COUNTS[0])
    assert "NOT forwarded" in caplog.text
    pointer, blob = collect_result(h.a.bus.retained, FED)
    assert pointer["round"] == 1 and blob == root_blob  # at once, without a root round
    assert pointer["contributors"] == 0  # its box counts its samples as new again
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(VECS[3:], COUNTS[3:]))) < 1e-5
    ann_a = latest_announce(h.a.bus.retained, FED)
    assert ann_a["round"] == 2 and ann_a["base_model"] == "round-1"
    # region-a's round 2 (on the root's round-1) reaches the root's open round 2
    vecs2 = [vec(700 + i) for i in range(6)]
    send_round(h.a, vecs2[:3], COUNTS[:3])
    send_round(h.b, vecs2[3:], COUNTS[3:])
    h.root.service.pump()
    h.a.service.pump()
    h.b.service.pump()
    _, root_blob2 = collect_result(h.root.bus.retained, FED)
    assert claimed_updates(root_blob2) == 6
    for site in (h.a, h.b):
        assert collect_result(site.bus.retained, FED)[1] == root_blob2
    got2 = decrypt_result(secret_ctx, root_blob2)
    assert np.max(np.abs(got2 - plain_weighted_average(vecs2, COUNTS))) < 1e-5
