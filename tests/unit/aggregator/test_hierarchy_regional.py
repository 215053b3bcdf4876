"""Hierarchical aggregation: two regional aggregators forward signed, encrypted partial
sums to a root; every box decrypts the same average as a flat aggregation of all boxes
(real CKKS, in-memory transports standing in for three brokers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.regions import claimed_updates
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation import topics
from federation.chunking import split_blob
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import StreamingSum, encrypt_update, plain_weighted_average
from federation.envelope import encode
from federation.transport.base import InMemoryTransport
from tests.support.aggregator_boxes import (
    ScriptedBox,
    collect_result,
    decrypt_result,
    latest_announce,
)
from tests.support.hierarchy import (
    COUNT_SCALE,
    FED,
    LENGTH,
    Hierarchy,
    build_hierarchy,
    make_site,
    send_round,
    vec,
)


@pytest.fixture
def hierarchy(tmp_path: Path, secret_ctx: FederationContext) -> Iterator[Hierarchy]:
    built = build_hierarchy(tmp_path, secret_ctx)
    yield built
    built.close()


def test_two_regions_equal_flat_aggregation_over_two_rounds(
    hierarchy: Hierarchy, tmp_path: Path, secret_ctx: FederationContext
) -> None:
    flat = make_site(tmp_path, "flat", secret_ctx, [f"flat-box{i}" for i in range(6)], 6)
    flat.service.start()
    root = hierarchy.root
    for round_no in (1, 2):
        vecs = [vec(100 * round_no + i) for i in range(6)]
        counts = [100 + 37 * i for i in range(6)]
        for r, site in enumerate(hierarchy.regions):
            send_round(site, vecs[3 * r: 3 * r + 3], counts[3 * r: 3 * r + 3])
        root.service.pump()  # both partials: the root's round closes and publishes
        for site in hierarchy.regions:
            site.service.pump()  # the region publishes the root's result
        send_round(flat, vecs, counts)

        expected = plain_weighted_average(vecs, counts)
        _, flat_blob = collect_result(flat.bus.retained, FED)
        flat_avg = decrypt_result(secret_ctx, flat_blob)
        root_pointer, root_blob = collect_result(root.bus.retained, FED)
        assert root_pointer["round"] == round_no and "root_model" not in root_pointer
        assert claimed_updates(root_blob) == 6  # the root's sum holds all six updates
        # and the operator's status and rounds list say 6 updates (2 messages): they said
        # 2, below a quorum the round had met (a walkthrough)
        assert root.store.updates_of(round_no) == 6
        assert root.store.get_round(round_no).contributions == 2  # type: ignore[union-attr]
        for site in hierarchy.regions:
            pointer, blob = collect_result(site.bus.retained, FED)
            assert pointer["round"] == round_no and blob == root_blob
            # the root's name of the result, for the region's boxes to show (helper-43)
            assert pointer["root_model"] == f"round-{round_no}"
            got = decrypt_result(secret_ctx, blob)
            assert np.max(np.abs(got - flat_avg)) < 1e-5
            assert np.max(np.abs(got - expected)) < 1e-5
        # next rounds are built on the result everywhere
        for site in [root, *hierarchy.regions]:
            ann = latest_announce(site.bus.retained, FED)
            assert ann["round"] == round_no + 1 and ann["base_model"] == f"round-{round_no}"
    flat.store.close()


def test_partial_counts_as_its_updates_toward_quorum_and_replay_is_refused(
    hierarchy: Hierarchy, secret_ctx: FederationContext
) -> None:
    root, (site_a, _) = hierarchy.root, hierarchy.regions
    root.store.update_round(1, quorum=3)
    root.service.coordinator.current = root.store.get_round(1)
    vecs, counts = [vec(i) for i in range(3)], [120, 130, 140]
    send_round(site_a, vecs, counts)
    root.service.pump()
    assert root.service.coordinator.updates_summed() == 3
    assert root.store.get_round(1).contributions == 1  # type: ignore[union-attr]
    root.clock[0] += 61  # deadline: region-b silent, quorum 3 met by region-a's partial
    root.service.pump()
    _, blob = collect_result(root.bus.retained, FED)
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    site_a.service.pump()
    assert collect_result(site_a.bus.retained, FED)[1] == blob
    # the same partial replayed (same msg id) is dropped: nothing acked, nothing counted
    fwd = hierarchy.forwarders[0]
    acks_before = len(fwd.acks)
    partial_msg = fwd._state["forwarded"]["1"]["msg"]
    summed = StreamingSum(secret_ctx.public(), LENGTH)
    for v, n in zip(vecs, counts, strict=True):
        summed.add(encrypt_update(secret_ctx, v, n, COUNT_SCALE))
    partial_blob = summed.result().to_bytes()

    def resend(round_no: int, model: str, msg: str | None) -> None:
        for env in split_blob(partial_blob, site_a.service.signing_key, kind="partial",
                              fed=FED, sender="region-a", round=round_no, model=model,
                              msg=msg):
            fwd.root.publish(topics.update(FED, "region-a"), encode(env))
        root.service.pump()

    resend(1, "base", partial_msg)
    assert len(fwd.acks) == acks_before
    # under a fresh msg id: late for round 1, stale for round 2 (built on round-1)
    resend(1, "base", None)
    assert fwd.acks[-1].accepted is False and fwd.acks[-1].reason == "late"
    resend(2, "base", None)
    assert fwd.acks[-1].accepted is False and fwd.acks[-1].reason == "stale_version"
    assert root.store.get_round(2).contributions == 0  # type: ignore[union-attr]


def test_a_box_cannot_send_a_partial_nor_an_update_claiming_several(
    hierarchy: Hierarchy, secret_ctx: FederationContext, tmp_path: Path
) -> None:
    root = hierarchy.root
    box = ScriptedBox("sneaky", FED, secret_ctx, InMemoryTransport(root.bus, "sneaky"))
    DeviceRegistry(root.store).add("sneaky", bytes.fromhex(box.public_hex))
    root.service.refresh_keys()
    summed = StreamingSum(secret_ctx.public(), LENGTH)
    for i in range(2):
        summed.add(encrypt_update(secret_ctx, vec(i), 100, COUNT_SCALE))
    blob = summed.result().to_bytes()
    partial = split_blob(blob, box.key, kind="partial", fed=FED, sender="sneaky", round=1,
                         model="base")
    box.send(partial)
    root.service.pump()
    assert box.acks[-1]["reason"] == "malformed"
    assert "regional aggregator" in box.acks[-1]["detail"]
    box.send(box.envelopes(blob, 1, "base"))  # an "update" that sums two
    root.service.pump()
    assert box.acks[-1]["reason"] == "malformed" and "claims 2" in box.acks[-1]["detail"]
    assert root.store.get_round(1).contributions == 0  # type: ignore[union-attr]


def test_root_restart_rebuilds_a_sum_holding_a_partial(
    hierarchy: Hierarchy, secret_ctx: FederationContext
) -> None:
    root, (site_a, site_b) = hierarchy.root, hierarchy.regions
    vecs, counts = [vec(10 + i) for i in range(6)], [100 + i for i in range(6)]
    send_round(site_a, vecs[:3], counts[:3])
    root.service.pump()
    assert root.service.coordinator.updates_summed() == 3
    # restart the root on the same state dir: the partial is re-added, counted as 3
    root.store.close()
    root.store = Store(root.store.state_dir)
    key = root.service.signing_key
    root.service = AggregatorService(
        InMemoryTransport(root.bus, "agg-root-2"), root.store, secret_ctx.public(), key, FED,
        settings=RoundSettings(60, 2, COUNT_SCALE), clock=lambda: root.clock[0])
    root.service.start()
    assert root.service.coordinator.updates_summed() == 3
    send_round(site_b, vecs[3:], counts[3:])
    root.service.pump()
    site_a.service.pump()
    _, blob = collect_result(site_a.bus.retained, FED)
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
