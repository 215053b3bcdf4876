"""A technician's `model rollback` while `join` runs reaches the operator: the box's
retained status names the model it serves now, without waiting for the next round (the
operator's MODEL column kept the version rolled back from)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from edge.gallery.store import Gallery
from edge.serving.sink import open_model_sink
from models.registry import optimised_sface_path
from tests.support.federation_rig import AGGREGATOR, PART, Federation, wait_for
from tests.support.hot_swap import copy_box, open_swapper

pytestmark = pytest.mark.mosquitto


def test_a_rollback_while_join_runs_reaches_the_operator(tmp_path: Path, template: Path,
                                                         mosquitto) -> None:
    box_dir = copy_box(template, tmp_path / "box")
    fed = Federation.create(tmp_path / "fed", mosquitto.url, ["box-r"])
    gallery = Gallery.open(box_dir)
    sink = open_model_sink(optimised_sface_path(), PART, box_dir / "models", gallery)
    try:
        fed.start_aggregator(quorum=1, rounds=2)
        box = fed.start_box("box-r", sink=sink)
        wait_for(lambda: box.event("applied", 2) is not None, 120,
                 "the box to apply round 2", fed)

        def operator_model() -> str | None:
            out = subprocess.run([*AGGREGATOR, "status", "--json", "--state",
                                  str(fed.agg_state), "--wait", "1.0"],
                                 capture_output=True, text=True, check=True).stdout
            return json.loads(out)["device_status"][0]["model"]

        wait_for(lambda: operator_model() == "round-2", 30, "the operator to see round-2", fed)
        # the technician, in another process: `fedface-edge model rollback`
        technician = open_swapper(box_dir)
        technician.rollback()
        technician.engine.close()
        wait_for(lambda: sink.served.version == "round-1", 30,
                 "join's hot swap to follow the rollback", fed)
        started = time.monotonic()
        wait_for(lambda: operator_model() == "round-1", 30,
                 "the operator's status to show the rolled-back model", fed)
        assert time.monotonic() - started < 30
        assert box.client.version == "round-1"  # and the next round builds on it
    finally:
        fed.stop()
        sink.engine.close()
        gallery.close()
