"""Issue 13.1: a box that has federated keeps its federated model whatever command runs.

Before the fix every command but ``join`` opened its engine without the base model's
path, could not patch the federated weights into it, fell back to the pretrained model
and re-committed the box's swap pointer to it: the federated model was lost by running
``identify``. Here the real CLI runs as a subprocess, as a technician would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.gallery.store import DB_FILENAME, Gallery
from edge.serving.current import open_engine
from edge.serving.versions import SwapStore
from edge.vision.pipeline import FacePipeline
from tests.support.hot_swap import copy_box, lfw_people, open_swapper, perturbed, template_box


@pytest.fixture(scope="module")
def federated_box(tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path) -> Path:
    template = template_box(tmp_path_factory.getbasetemp(), lfw_dir)
    box = copy_box(template, tmp_path_factory.mktemp("fed") / "box")
    swapper = open_swapper(box)
    base = swapper.part.initial_vector(swapper.assets.base_weights)
    swapper.apply("round-1", perturbed(base, 1))
    swapper.engine.close()
    return box


def edge_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FEDFACE_DATA_DIR=str(data_dir))
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def model_state(data_dir: Path) -> tuple[str, list[str]]:
    out = edge_cli(data_dir, "model", "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    return status["current"]["version"], [e["event"] for e in status["history"]]


def a_photo(lfw_dir: Path) -> Path:
    return sorted(lfw_people(lfw_dir, 1, 5)[0].glob("*.jpg"))[-1]


def test_identify_serves_and_keeps_the_federated_model(federated_box: Path,
                                                        lfw_dir: Path) -> None:
    assert model_state(federated_box) == ("round-1", ["swapped"])
    out = edge_cli(federated_box, "identify", str(a_photo(lfw_dir)), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model_version"] != "sface-2021dec"  # the federated one
    assert "cannot serve model" not in out.stderr
    assert model_state(federated_box) == ("round-1", ["swapped"])
    weights = SwapStore(federated_box / "models").load()
    assert weights is not None and weights.current.model_file is not None
    assert (federated_box / "models" / weights.current.model_file).is_file()


def test_run_keeps_the_federated_model(federated_box: Path, lfw_dir: Path,
                                       tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "0001.jpg").write_bytes(a_photo(lfw_dir).read_bytes())
    out = edge_cli(federated_box, "run", "--source", f"dir:{frames}",
                   "--events", str(tmp_path / "events.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "cannot serve model" not in out.stderr
    assert model_state(federated_box) == ("round-1", ["swapped"])


def test_a_reader_that_cannot_load_a_version_leaves_it_to_the_box(
        federated_box: Path, tmp_path: Path) -> None:
    """The kiosk's and identify's engine (a reader, not the swap owner): even when the
    federated version cannot be loaded here it serves the base model in memory and the
    box's model versions stay as they are."""
    box = copy_box(federated_box, tmp_path / "box")
    pointer = SwapStore(box / "models").load()
    assert pointer is not None and pointer.current.model_file is not None
    (box / "models" / pointer.current.model_file).write_bytes(b"damaged")
    pipeline = FacePipeline.from_model_dir(threads=1)
    with Gallery.open(box):
        engine = open_engine(pipeline.detector, box / DB_FILENAME, None, threads=1,
                             threshold=0.4, base_embedder=pipeline.embedder)
        assert engine.state.model_version == "base"
        engine.close()
    after = SwapStore(box / "models").load()
    assert after is not None and after.current.version == "round-1"


def test_after_a_restart_the_client_resumes_on_what_the_box_serves(
        federated_box: Path, tmp_path: Path) -> None:
    """One store of model versions: the federation client keeps no copy of its own; a
    restarted box trains its next round from the served version's vector, which the
    swap store keeps next to the version's weights."""
    from edge.box import build_box
    from edge.config import EdgeSettings
    from edge.federated.client import ClientConfig
    from edge.training.api import LocalUpdate
    from federation.crypto.ckks import new_secret_context
    from federation.crypto.signing import generate_signing_key
    from federation.transport.base import InMemoryBus, InMemoryTransport

    box = build_box(EdgeSettings(data_dir=copy_box(federated_box, tmp_path / "box"),
                                 threads=1))
    sink = box.model_sink(box.part(), background=False)
    served = sink.served_vector()
    assert served is not None and served[0] == "round-1"

    class NoTraining:  # edge.training.api.LocalTrainer; no round runs in this test
        part = sink.part

        def local_update(self, global_vector: np.ndarray | None,
                         round_no: int) -> LocalUpdate:
            raise AssertionError("no round is announced here")

    bus = InMemoryBus()
    key = generate_signing_key()
    client = box.federation_client(
        ClientConfig("fed", "box-r"), lambda will: InMemoryTransport(bus, "box-r", will=will),
        new_secret_context(), key, key.public_key(), NoTraining(), sink)
    client.start()
    try:
        assert client.version == "round-1"
        np.testing.assert_array_equal(client.vector, served[1])
        base = sink.part.initial_vector(sink.assets.base_weights)
        assert not np.array_equal(client.vector, base)  # the federated one, not base
    finally:
        client.stop()
        box.close()
