"""A refusal seen by the operator: a real aggregator process and Mosquitto deliver a
federated result that wrecks the box's canary; the box refuses it, keeps serving its
model, and its retained status tells `fedface-aggregator status` why."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edge.gallery.store import Gallery
from edge.serving.sink import open_model_sink
from edge.training.api import LocalUpdate
from federation.verdicts import Verdict
from models.federated_parts import FederatedPart
from models.registry import optimised_sface_path
from tests.support.federation_rig import AGGREGATOR, PART, Federation, part_base_vector, wait_for
from tests.support.hot_swap import copy_box, wrecked

pytestmark = pytest.mark.mosquitto


class WreckingTrainer:
    """A broken box's training: the part's first tensor (conv_14 batch-norm scale) zeroed."""

    def __init__(self, part: FederatedPart, how: str = "zero", n_samples: int = 40) -> None:
        self.part, self.how, self.n_samples = part, how, n_samples

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        return LocalUpdate(wrecked(self.part, part_base_vector(self.part), self.how),
                           self.n_samples, 0.0)


def test_canary_refusal_reaches_the_operator_through_the_status_topic(
        tmp_path: Path, template: Path, mosquitto) -> None:
    box_dir = copy_box(template, tmp_path / "box")
    fed = Federation.create(tmp_path / "fed", mosquitto.url, ["box-w"])
    gallery = Gallery.open(box_dir)
    sink = open_model_sink(optimised_sface_path(), PART, box_dir / "models", gallery)
    try:
        fed.start_aggregator(quorum=1, rounds=1)
        # the plausibility check (result moves the weights by > 50%) would stop this
        # result first; a looser federation leaves it to the canary
        box = fed.start_box("box-w", trainer=WreckingTrainer(PART), sink=sink,
                            max_relative_change=2.0)
        wait_for(lambda: box.event("result_rejected", 1) is not None, 90,
                 "the box to refuse round 1's result", fed)
        event = box.event("result_rejected", 1)
        assert event is not None and event.data["reason"] == "canary_refused"
        assert sink.engine.state.model_version == "base"  # the old model keeps serving
        assert box.client.version == "base"

        def operator_status() -> dict:
            out = subprocess.run([*AGGREGATOR, "status", "--json", "--state",
                                  str(fed.agg_state), "--wait", "1.0"],
                                 capture_output=True, text=True, check=True).stdout
            return json.loads(out)["device_status"][0]

        deadline = time.monotonic() + 30
        device = operator_status()
        while (device.get("last_swap") or {}).get("event") != "refused" \
                and time.monotonic() < deadline:
            device = operator_status()
        swap = device["last_swap"]
        assert device["device_id"] == "box-w" and device["state"] == "online"
        assert swap["event"] == "refused" and swap["version"] == event.data["detail"].split()[1]
        assert "accuracy" in swap["reason"] or "collapsed" in swap["reason"]
        # The box's verdict on the round (issue 13.7): the canary's figures before and
        # after, in the operator's status and rounds show, and on the box itself.
        deadline = time.monotonic() + 30
        while not device.get("verdicts") and time.monotonic() < deadline:
            device = operator_status()
        (verdict,) = device["verdicts"]
        assert verdict["round"] == 1 and verdict["outcome"] == "refused"
        assert verdict["model"] == swap["version"]
        # why, in the canary's words (here its collapse check, which needs no probes)
        assert "collapsed" in verdict["reason"] or verdict["after"] < verdict["before"]
        text = subprocess.run([*AGGREGATOR, "status", "--state", str(fed.agg_state),
                               "--wait", "1.0"], capture_output=True, text=True,
                              check=True).stdout
        summary = Verdict.from_dict(verdict)
        assert summary is not None and summary.summary().startswith("round 1: refused")
        line = f"box-w {summary.summary()}"
        assert line in text, text
        shown = subprocess.run([*AGGREGATOR, "rounds", "show", "1", "--state",
                                str(fed.agg_state), "--wait", "1.0"], capture_output=True,
                               text=True, check=True).stdout
        assert line in shown, shown
        # the box keeps it (fedface-edge model status shows it: tests/e2e/test_journey.py)
        assert [v.summary() for v in box.client.verdicts.all()] == [summary.summary()]
        # kept on the box for the operator to inspect, 0600
        kept = list((box_dir / "models" / "refused").glob("*.npy"))
        assert len(kept) == 1 and kept[0].stat().st_mode & 0o777 == 0o600
    finally:
        fed.stop()
        sink.stop()
        sink.engine.close()
        gallery.close()


class RecordingTrainer:
    """An honest box's training that records what each round starts from."""

    def __init__(self, part: FederatedPart) -> None:
        self.part = part
        self.starts: dict[int, np.ndarray | None] = {}

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        self.starts[round_no] = None if global_vector is None else global_vector.copy()
        start = part_base_vector(self.part) if global_vector is None else global_vector
        return LocalUpdate(start.copy(), 1, 0.0)


def test_a_box_whose_canary_declines_a_result_still_federates_from_it(
        tmp_path: Path, template: Path, mosquitto) -> None:
    """A minority refusal is a serving decision, not a way out of the federation: the
    box keeps serving its own model but trains the next round from the declined result,
    so a quorum of every box is still met (before, it waited for a result it had
    already refused, and the federation stalled)."""
    box_dir = copy_box(template, tmp_path / "box")
    fed = Federation.create(tmp_path / "fed", mosquitto.url, ["box-w", "box-a"])
    gallery = Gallery.open(box_dir)
    sink = open_model_sink(optimised_sface_path(), PART, box_dir / "models", gallery)
    honest = RecordingTrainer(PART)
    try:
        fed.start_aggregator(quorum=2, rounds=3)  # every box must send, every round
        box = fed.start_box("box-w", trainer=honest, sink=sink, max_relative_change=2.0)
        # box-a's zeroed tensor outweighs box-w's update 1000 to 1: the average
        # collapses box-w's embeddings, so its canary declines it (box-a's sink takes
        # anything)
        other = fed.start_box("box-a", trainer=WreckingTrainer(PART, "zero", 1000),
                              max_relative_change=2.0)
        wait_for(lambda: box.event("result_rejected", 1) is not None, 90,
                 "box-w's canary to decline round 1's result", fed)
        event = box.event("result_rejected", 1)
        assert event is not None and event.data["reason"] == "canary_refused"
        wait_for(lambda: other.event("applied", 2) is not None, 120,
                 "round 2 to close with both boxes' updates and be published", fed)
        assert box.event("submitted", 2) is not None
        # the first two (round 3, of instant trainers, may be applied by now on a slow machine)
        (round_1, declined), (round_2, _) = other.sink.applied[:2]  # type: ignore[attr-defined]
        assert (round_1, round_2) == ("round-1", "round-2")
        start = honest.starts[2]
        assert start is not None
        np.testing.assert_array_equal(start, declined)  # trained from the declined result
        assert sink.engine.state.model_version == "base"  # but never served it
        assert box.client.version == "base"
        # A restart forgets nothing: the re-fetched round-2 result is refused as blocked
        # by its canary, and round 3 is trained from it too.
        wait_for(lambda: box.event("result_rejected", 2) is not None, 90,
                 "box-w's canary to decline round 2's result", fed)
        box.client.stop(timeout=5)
        fed.start_box("box-w", trainer=honest, sink=sink, max_relative_change=2.0)
        wait_for(lambda: other.event("applied", 3) is not None, 120,
                 "round 3 to close with the restarted box-w's update", fed)
        start = honest.starts[3]
        assert start is not None
        np.testing.assert_array_equal(start, other.sink.applied[1][1])  # type: ignore[attr-defined]
        assert sink.engine.state.model_version == "base"
    finally:
        fed.stop()
        sink.stop()
        sink.engine.close()
        gallery.close()
