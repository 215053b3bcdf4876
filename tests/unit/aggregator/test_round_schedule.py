"""The operator's round schedule (aggregator.rounds.schedule; issue 13.6): a minimum interval
between round openings and a daily window hold, survive an aggregator restart (the last
opening is in the state db), and a round nobody joins still fails as before; the
announce tells boxes the minimum of new samples."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.cli.status import _next_opening
from aggregator.rounds.coordinator import RoundSettings
from aggregator.rounds.schedule import DailyWindow, RoundSchedule, recorded_next_opening
from aggregator.state.store import Store
from federation import topics
from federation.crypto.ckks import FederationContext
from federation.transport.base import InMemoryBus
from tests.support.aggregator_boxes import latest_announce
from tests.support.aggregator_rig import FED, LENGTH, Rig, make_rig, make_service, registered_boxes


def _settings(deadline: float = 60, **schedule: object) -> RoundSettings:
    return RoundSettings(deadline_seconds=deadline, quorum=2, count_scale=64.0, max_extensions=1,
                         schedule=RoundSchedule(**schedule),  # type: ignore[arg-type]
                         min_new_samples=3)


def _local(day: int, hour: int, minute: int = 0) -> float:
    return dt.datetime(2026, 3, day, hour, minute).timestamp()


def _rig_at(tmp_path: Path, secret_ctx: FederationContext, settings: RoundSettings,
            start: float) -> Rig:
    """Like make_rig (two boxes), with the service started at ``start``."""
    bus = InMemoryBus(synchronous=True)
    store = Store(tmp_path)
    boxes = registered_boxes(bus, store, secret_ctx, 2)
    clock = [start]
    service = make_service(bus, store, secret_ctx.public(), settings, clock)
    service.start()
    return Rig(bus, store, service, boxes, clock)


def _run_round(rig: Rig) -> int:
    """Every box sends to the open round; returns the round published."""
    ann = latest_announce(rig.bus.retained, FED)
    assert ann["state"] == "open", ann
    rng = np.random.default_rng(ann["round"])
    for box in rig.boxes:
        blob = box.encrypted_blob(rng.normal(0, 0.5, LENGTH).astype(np.float32), 100,
                                  ann["count_scale"])
        box.send(box.envelopes(blob, ann["round"], ann["base_model"]))
        rig.service.pump()
        assert box.acks[-1]["accepted"] is True, box.acks[-1]
    row = rig.store.get_round(ann["round"])
    assert row is not None and row.status == "published"
    return int(ann["round"])


def test_the_interval_holds_between_openings_and_survives_a_restart(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    settings = _settings(interval=3600.0)
    rig = make_rig(tmp_path, secret_ctx, n_boxes=2, settings=settings)
    t0 = rig.clock[0]
    try:
        ann = latest_announce(rig.bus.retained, FED)
        assert ann["round"] == 1 and ann["min_new_samples"] == 3
        assert _run_round(rig) == 1  # published at once: the next round waits
        ann = latest_announce(rig.bus.retained, FED)
        assert (ann["round"], ann["state"], ann["next_round_at"]) == (1, "closed", t0 + 3600)
        # kept for fedface-aggregator status, a process that does not know the schedule
        assert recorded_next_opening(rig.store) == t0 + 3600
        assert "the next opens at " in _next_opening(time.time() + 3600)
        assert "(in 60m, the round schedule)" in _next_opening(time.time() + 3600.5)
        assert "is fedface-aggregator serve running?" in _next_opening(time.time() - 5)
        rig.clock[0] = t0 + 1800
        rig.service.pump()
        assert rig.store.latest_round().round == 1  # type: ignore[union-attr]
        # a restart half way through the interval does not open a round at once
        rig.reopen(settings, secret_ctx.public())
        assert rig.store.latest_round().round == 1  # type: ignore[union-attr]
        assert latest_announce(rig.bus.retained, FED)["state"] == "closed"
        # an update for the closed round meanwhile is refused, not counted
        box = rig.boxes[0]
        box.send(box.envelopes(box.encrypted_blob(np.zeros(LENGTH, np.float32), 1, 64.0), 1,
                               "base", msg="f" * 32))
        rig.service.pump()
        assert box.acks[-1]["accepted"] is False and box.acks[-1]["reason"] == "late"
        rig.clock[0] = t0 + 3599
        rig.service.pump()
        assert rig.store.latest_round().round == 1  # type: ignore[union-attr]
        rig.clock[0] = t0 + 3600
        rig.service.pump()
        ann = latest_announce(rig.bus.retained, FED)
        assert (ann["round"], ann["state"], ann["base_model"]) == (2, "open", "round-1")
        assert recorded_next_opening(rig.store) is None
        # a round nobody joins (nothing new anywhere) fails as before: deadline, one
        # extension, failed; the one after it opens an interval after ITS opening
        opened = rig.clock[0]
        for _ in range(2):
            rig.clock[0] += 61
            rig.service.pump()
        failed = rig.store.get_round(2)
        assert failed is not None and failed.status == "failed"
        assert rig.store.latest_round().round == 2  # type: ignore[union-attr]
        assert latest_announce(rig.bus.retained, FED)["next_round_at"] == opened + 3600
        rig.clock[0] = opened + 3600
        rig.service.pump()
        ann = latest_announce(rig.bus.retained, FED)
        assert (ann["round"], ann["state"], ann["base_model"]) == (3, "open", "round-1")
    finally:
        rig.store.close()


def test_rounds_open_only_inside_the_daily_window_also_after_a_restart(
    tmp_path: Path, secret_ctx: FederationContext
) -> None:
    settings = _settings(deadline=6 * 3600, window=DailyWindow.parse("01:00-05:00"))
    rig = _rig_at(tmp_path, secret_ctx, settings, _local(10, 12))
    try:
        assert rig.store.latest_round() is None  # noon: nothing opens
        assert topics.announce(FED) not in rig.bus.retained
        rig.clock[0] = _local(10, 23, 30)
        rig.reopen(settings, secret_ctx.public())  # a restart in the evening: still waits
        rig.service.pump()
        assert rig.store.latest_round() is None
        rig.clock[0] = _local(11, 0, 59)
        rig.service.pump()
        assert rig.store.latest_round() is None
        rig.clock[0] = _local(11, 1, 0)
        rig.service.pump()
        assert latest_announce(rig.bus.retained, FED)["round"] == 1
        assert _run_round(rig) == 1
        # still inside the window, no interval: the next round opens at once
        assert latest_announce(rig.bus.retained, FED)["round"] == 2
        rig.clock[0] = _local(11, 5, 30)  # round 2 finishes after the window closed
        assert _run_round(rig) == 2
        ann = latest_announce(rig.bus.retained, FED)
        assert (ann["round"], ann["state"], ann["next_round_at"]) == (2, "closed",
                                                                      _local(12, 1))
        rig.clock[0] = _local(12, 0, 30)
        rig.reopen(settings, secret_ctx.public())
        assert rig.store.latest_round().round == 2  # type: ignore[union-attr]
        rig.clock[0] = _local(12, 1, 0)
        rig.service.pump()
        assert latest_announce(rig.bus.retained, FED)["round"] == 3
    finally:
        rig.store.close()


def test_window_and_interval_arithmetic() -> None:
    night = DailyWindow.parse("22:00-02:00")  # across midnight
    assert night.contains(_local(10, 23)) and night.contains(_local(11, 1, 59))
    assert not night.contains(_local(11, 2)) and not night.contains(_local(11, 12))
    assert night.next_start(_local(11, 12)) == _local(11, 22)
    assert str(night) == "22:00-02:00" and str(DailyWindow.parse("1:00-24:00")) == "01:00-00:00"
    for bad in ("1-5", "25:00-01:00", "01:00-01:00", "01:60-02:00"):
        with pytest.raises(ValueError):
            DailyWindow.parse(bad)
    both = RoundSchedule(interval=7200.0, window=DailyWindow.parse("01:00-05:00"))
    # last opened 04:00: the interval ends at 06:00, after the window: next day 01:00
    assert both.next_opening(_local(11, 4, 30), _local(11, 4)) == _local(12, 1)
    assert both.next_opening(_local(11, 2), _local(11, 1)) == _local(11, 3)
    assert RoundSchedule().next_opening(5.0, 4.0) == 5.0
    # a clock set back must not hold rounds back until it catches up
    assert RoundSchedule(interval=60).next_opening(1000.0, 5000.0) == 1060.0
    with pytest.raises(ValueError):
        RoundSchedule(interval=-1)
