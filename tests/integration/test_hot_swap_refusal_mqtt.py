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
from tests.support.hot_swap import copy_box, template_box, wrecked

pytestmark = pytest.mark.mosquitto


class WreckingTrainer:
    """A broken box's training: the part's first tensor (conv_14 batch-norm scale) zeroed."""

    def __init__(self, part: FederatedPart) -> None:
        self.part = part

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        return LocalUpdate(wrecked(self.part, part_base_vector(self.part), "zero"), 40, 0.0)


def test_canary_refusal_reaches_the_operator_through_the_status_topic(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path,
        mosquitto) -> None:
    box_dir = copy_box(template_box(tmp_path_factory.getbasetemp(), lfw_dir), tmp_path / "box")
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
