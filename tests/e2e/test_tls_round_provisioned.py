"""Provisioned boxes complete a federation round over TLS, every part real and in its
own process: the TLS-only Mosquitto from the generated config (client certificates,
per-device ACL, CRL), `fedface-aggregator serve` with the aggregator's client
certificate, and two boxes provisioned exactly as a technician and an operator would
(key bundle -> `fedface-edge provision` -> `devices add --request` -> `provision
--install-reply`) running `fedface-edge join --config edge.toml` with the real torch
trainer on their enrolled LFW faces and the real hot swap."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import MosquittoBroker
from tests.support.provisioning import (
    FED,
    Federation,
    edge,
    model_dir,
    provision_box,
    start_federation,
)
from tests.support.tls_round import aggregator_log, serve, stop_process

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

EDGE = str(Path(sys.executable).parent / "fedface-edge")
PEOPLE = {"box-north": ("George_W_Bush", "Colin_Powell"),
          "box-south": ("Tony_Blair", "Donald_Rumsfeld")}
PHOTOS = 6  # 2 people x 6: 12 probes, enough for the canary to compare accuracy


@pytest.fixture
def fed(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> Federation:
    return start_federation(tmp_path, mosquitto_factory)


@pytest.fixture
def joins() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    yield procs
    for proc in procs.values():
        stop_process(proc, timeout=15)


def enrol(box: Path, lfw_dir: Path, people: tuple[str, ...]) -> None:
    for person in people:
        photos = sorted((lfw_dir / person).glob("*.jpg"))[:PHOTOS]
        code, out = edge(box, "enroll", person, *map(str, photos))
        assert code == 0, out


def join(box: Path) -> subprocess.Popen[bytes]:
    log = (box / "join.log").open("wb")
    return subprocess.Popen(
        [EDGE, "--data-dir", str(box), "--model-dir", str(model_dir()), "join", "--config",
         str(box / "edge.toml"), "--part", "embed_bn"], stdout=log, stderr=subprocess.STDOUT)


def log_of(box: Path) -> str:
    path = box / "join.log"
    return path.read_text(errors="replace")[-2500:] if path.exists() else ""


def model_status(box: Path) -> dict:
    code, out = edge(box, "model", "status", "--json")
    assert code == 0, out
    data: dict = json.loads(out)
    return data


def test_provisioned_boxes_complete_a_round_over_tls(
        fed: Federation, lfw_dir: Path, joins: dict[str, subprocess.Popen[bytes]]) -> None:
    boxes = {}
    for device, people in PEOPLE.items():
        boxes[device] = provision_box(fed, device, f"dir:{lfw_dir / people[0]}")
        enrol(boxes[device], lfw_dir, people)
    # Two intake processes: each shard's own TLS session (same certificate, CN
    # aggregator) must pass the broker's ACL for the update topics.
    agg = serve(fed, quorum=2, rounds=1, deadline=120, intake=2)
    try:
        for device, box in boxes.items():
            joins[device] = join(box)

        deadline = time.monotonic() + 150  # ~30 s on an idle 2-core machine
        while not all("round 1: applied" in log_of(b) for b in boxes.values()):
            exited = [d for d, p in joins.items() if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                raise AssertionError(
                    f"round 1 not applied by every box (exited: {exited})\n" + "\n".join(
                        f"--- {d}\n{log_of(b)}" for d, b in boxes.items())
                    + f"\n--- aggregator\n{aggregator_log(fed)}")
            time.sleep(0.2)
        agg.wait(30)  # --rounds 1: serve exits once the result is confirmed by the broker
        assert agg.returncode == 0, aggregator_log(fed)
        log = (fed.root / "aggregator.log").read_text()
        assert "intake shard 0 of 2" in log and "intake shard 1 of 2" in log, log[-3000:]
    finally:
        stop_process(agg)

    round_1 = json.loads(fed.aggregator("rounds", "show", "1", "--json", "--state",
                                        str(fed.state))[1])
    assert round_1["status"] == "published" and round_1["result_model"] == "round-1"
    assert sorted(round_1["contributors"]) == sorted(PEOPLE)
    for device, box in boxes.items():
        out = log_of(box)
        # over TLS, to the broker named in the config, with the config's certificate
        assert f"{device} joining federation {FED} via {fed.url}; model base" in out
        # each step's word, then its detail: "submitted (update of 12 samples sent)"
        steps = [ln.split(" (")[0] for ln in out.splitlines() if ln.startswith("round 1:")]
        assert steps == ["round 1: joined", "round 1: submitted", "round 1: acked",
                         "round 1: applied"], out
        status = model_status(box)  # the box's engine now serves the federated model
        assert status["current"]["version"] == "round-1", status
        swap = status["history"][-1]
        assert swap["event"] == "swapped"
        # validated on the box's own people before serving (not skipped: 12 probes)
        assert swap["canary"]["passed"] and not swap["canary"]["skipped"], swap["canary"]
        stored = json.loads((box / "models/current.json").read_text())
        assert stored["version"] == "round-1"
    # each box's retained status (signed, over its TLS connection) names the new model
    info = json.loads(fed.aggregator("status", "--json", "--state", str(fed.state),
                                     "--wait", "1.5")[1])
    models = {d["device_id"]: (d["state"], d["model"]) for d in info["device_status"]}
    assert models == {d: ("online", "round-1") for d in PEOPLE}
