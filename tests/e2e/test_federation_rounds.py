"""Federation end to end over a real Mosquitto: a real ``fedface-aggregator serve``
process, edge boxes running the real FederationClient (real CKKS, signatures, chunking,
outbox). The boxes' updates come from NumpyDriftTrainer (deterministic weight drift):
these tests are about transport, encryption and fault handling, not learning."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.gallery.store import Gallery
from edge.serving.sink import open_model_sink
from edge.training.drift import NumpyDriftTrainer
from federation.transport.mqtt import MqttTransport
from models.onnx_graph import read_initializers
from models.registry import optimised_sface_path
from tests.support.federation_rig import (
    PART,
    Federation,
    GatedTrainer,
    RecordingSink,
    part_base_vector,
    wait_for,
)

pytestmark = pytest.mark.mosquitto


def _oracle(fed: Federation, round_no: int) -> np.ndarray:
    vectors, counts = [], []
    for box in fed.boxes.values():
        # an update sealed while the broker was down was said "queued"
        sub = box.event("submitted", round_no) or box.event("queued", round_no)
        if sub is not None:
            vectors.append(sub.data["vector"])
            counts.append(sub.data["n_samples"])
    return np.average(np.stack(vectors).astype(np.float64), axis=0, weights=counts)


def test_three_boxes_three_rounds_equal_plaintext_fedavg(tmp_path: Path, mosquitto) -> None:
    names = ["box-a", "box-b", "box-c"]
    fed = Federation.create(tmp_path, mosquitto.url, names)
    try:
        fed.start_aggregator(quorum=3, rounds=3)
        for name, n in zip(names, (40, 90, 150), strict=True):
            fed.start_box(name, n_samples=n)
        # the version is set before the verdict is recorded and "applied" emitted: wait
        # for the event the checks below read, not only for the version
        wait_for(lambda: all(b.client.version == "round-3" and b.event("applied", 3)
                             for b in fed.boxes.values()), 90, "three rounds", fed)
        for r in (1, 2, 3):
            oracle = _oracle(fed, r)
            for box in fed.boxes.values():
                sub, applied = box.event("submitted", r), box.event("applied", r)
                assert sub is not None and applied is not None
                assert applied.data["updates"] == 3
                got = applied.data["vector"]
                assert got.shape == (PART.size,)
                assert float(np.max(np.abs(got - oracle))) < 1e-5, (box.name, r)
                # the oracle is not trivially equal to any single box's update
                assert float(np.max(np.abs(sub.data["vector"] - oracle))) > 1e-4
        for box in fed.boxes.values():
            # persisted (atomic) and handed to the sink, in order
            assert isinstance(box.sink, RecordingSink)
            served = box.sink.served_vector()
            assert served is not None and served[0] == "round-3"
            np.testing.assert_array_equal(served[1], box.client.vector)
            assert [v for v, _ in box.sink.applied] == ["round-1", "round-2", "round-3"]
            assert box.client.pending_updates == 0
    finally:
        fed.stop()


def test_broker_restart_mid_round_loses_nothing(tmp_path: Path, mosquitto) -> None:
    names = ["box-a", "box-b", "box-c"]
    fed = Federation.create(tmp_path, mosquitto.url, names)
    try:
        fed.start_aggregator(quorum=3, rounds=1)
        # boxes of a few hundred enrolment crops: the encrypted average's absolute error
        # is ~3e-5 / (sum(n) / count_scale) (federation.crypto.packing); with the 135 crops this
        # test had, that bound (1.4e-5) sat above the 1e-5 it checks and it failed 1 run in N
        fed.start_box("box-a", n_samples=120)
        fed.start_box("box-b", n_samples=240)
        gated = GatedTrainer(NumpyDriftTrainer(PART, part_base_vector(), "box-c", 180, 1e-2))
        c = fed.start_box("box-c", trainer=gated)
        wait_for(lambda: all(fed.boxes[n].event("acked", 1) for n in ("box-a", "box-b")), 30,
                 "two updates acked", fed)
        mosquitto.stop()  # broker gone mid-round: 2 of 3 updates in
        gated.gate.set()  # box-c finishes training while the broker is down
        # sealed while the broker is down: said queued, not submitted
        wait_for(lambda: c.event("queued", 1) is not None, 30, "box-c queued its update")
        assert c.event("submitted", 1) is None
        assert c.client.pending_updates == 1  # kept on disk, not lost
        outbox_files = list((tmp_path / "boxes" / "box-c" / "outbox").glob("*.upd"))
        assert len(outbox_files) == 1 and outbox_files[0].stat().st_mode & 0o777 == 0o600
        mosquitto.start()  # same port, persistent sessions and retained messages
        # wait for the "applied" event read below, not only the version set before it
        wait_for(lambda: all(b.client.version == "round-1" and b.event("applied", 1)
                             for b in fed.boxes.values()), 60,
                 "round 1 result on every box after the restart", fed)
        oracle = _oracle(fed, 1)
        for box in fed.boxes.values():
            applied = box.event("applied", 1)
            assert applied is not None and applied.data["updates"] == 3
            assert float(np.max(np.abs(applied.data["vector"] - oracle))) < 1e-5
        assert c.client.pending_updates == 0
        assert c.event("sent", 1) is not None  # said when it went out after the restart
        assert isinstance(c.client.transport, MqttTransport)
        assert c.client.transport.connects >= 2
    finally:
        fed.stop()


def test_box_offline_at_publication_gets_retained_result(tmp_path: Path, mosquitto) -> None:
    names = ["box-a", "box-b", "box-late"]
    fed = Federation.create(tmp_path, mosquitto.url, names)
    try:
        # box-late is registered but offline: the round closes at its deadline with quorum 2
        fed.start_aggregator(quorum=2, rounds=1, deadline=4.0)
        fed.start_box("box-a", n_samples=20)
        fed.start_box("box-b", n_samples=70)
        wait_for(lambda: all(fed.boxes[n].client.version == "round-1"
                             for n in ("box-a", "box-b")), 60, "round 1 on the online boxes", fed)
        assert fed.aggregator is not None
        fed.aggregator.wait(20)  # the aggregator is gone too: only retained messages remain
        sink = open_model_sink(optimised_sface_path(), PART, tmp_path / "late-models", None)
        late = fed.start_box("box-late", sink=sink)
        wait_for(lambda: late.client.version == "round-1", 60, "the late box to catch up")
        expected = fed.boxes["box-a"].client.vector
        np.testing.assert_array_equal(late.client.vector, expected)
        assert late.event("submitted", 1) is None  # it never trained for the closed round
        # the patched inference graph holds exactly the federated weights
        model = onnx.load_from_string(sink.served_model_bytes())
        patched = PART.flatten(read_initializers(model, PART.names))
        np.testing.assert_array_equal(patched, expected)
        assert sink.embedder is not None and sink.embedder.version.endswith("round-1")
    finally:
        fed.stop()


@pytest.mark.slow
def test_join_command_takes_part_in_a_round(tmp_path: Path, mosquitto, lfw_dir: Path) -> None:
    """``fedface-edge join`` as a real box process: enrolled gallery, torch trainer,
    update sent, federated model applied and the gallery re-embedded with it."""
    fed = Federation.create(tmp_path, mosquitto.url, ["box-a", "box-cli"])
    data, join = fed.cli_box("box-cli", lfw_dir)
    lines: list[str] = []
    proc = subprocess.Popen(join, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        fed.start_aggregator(quorum=2, rounds=1)
        fed.start_box("box-a", n_samples=30)
        wait_for(lambda: fed.boxes["box-a"].client.version == "round-1", 120,
                 "round 1 with the CLI box", fed)
        wait_for(lambda: any("round 1: applied" in line for line in lines), 30,
                 "the CLI box to apply round 1")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # still stop the aggregator: never leak it
            proc.kill()
            _, err = proc.communicate()
            err += "\n(join did not stop within 30 s of SIGTERM)"
        fed.stop()
    assert proc.returncode == 0, err
    assert fed.boxes["box-a"].event("applied", 1).data["updates"] == 2  # type: ignore[union-attr]
    assert (data / "models" / "sface-fed-round-1.weights.npz").is_file()
    with Gallery.open(data) as gallery:
        assert gallery.model_versions() == {"sface-fed-round-1": 9}
