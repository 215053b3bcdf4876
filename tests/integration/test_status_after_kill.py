"""A box killed hard, seen by the operator: a real Mosquitto, a real `fedface-aggregator
serve` process and a real box process (FederationClient) that applies round 1's result
after it connected, then is killed with SIGKILL. The broker publishes the box's last
will, built at its connect (model base, time of then); `fedface-aggregator status` must
show the model the box last reported (round-1) and since when it is offline (when serve
heard the will), not the will's model and time."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from federation import topics
from federation.envelope import decode
from federation.messages import DeviceStatus
from federation.transport.base import RetainAware
from tests.support.broker import MosquittoBroker
from tests.support.federation_rig import AGGREGATOR, FED, Federation, wait_for
from tests.support.mqtt_clients import connect

pytestmark = pytest.mark.mosquitto

REPO = Path(__file__).resolve().parents[2]
BOX = "box-k"


def _operator_status(fed: Federation, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGGREGATOR, "status", "--state", str(fed.agg_state), "--wait",
                           "1.0", *extra], capture_output=True, text=True, check=True)


def _device(fed: Federation) -> dict:
    (device,) = json.loads(_operator_status(fed, "--json").stdout)["device_status"]
    return device


@dataclass
class Running:
    fed: Federation
    box: subprocess.Popen[bytes]
    heard: queue.Queue[tuple[DeviceStatus, bool]]  # the box's statuses, and if retained


@contextmanager
def box_under_serve(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Running]:
    """serve (round 2 opens after round 1 and stays open: the box trains no more, serve
    runs on) and a real box process, with a watcher of the box's status topic."""
    fed = Federation.create(tmp_path / "fed", mosquitto.url, [BOX])
    heard: queue.Queue[tuple[DeviceStatus, bool]] = queue.Queue()
    watcher = connect(mosquitto.url, "watcher", clean_start=True)
    watcher.subscribe(topics.status(FED, BOX), RetainAware(
        lambda _t, payload, retained: heard.put((DeviceStatus.from_json(
            decode(payload).payload), retained))))
    box_log = (tmp_path / "box.log").open("w")
    box = None
    try:
        fed.start_aggregator(quorum=1, rounds=2, deadline=600)
        box = subprocess.Popen(
            [sys.executable, "-m", "tests.support.status_box_child", str(fed.root),
             mosquitto.url, BOX, str(fed.secret_context)],
            cwd=REPO, stdout=box_log, stderr=subprocess.STDOUT)
        yield Running(fed, box, heard)
    finally:
        if box is not None and box.poll() is None:
            box.kill()
            box.wait()
        box_log.close()
        watcher.close()
        fed.stop()


def test_a_box_killed_hard_shows_its_last_model_and_offline_since(
        tmp_path: Path, mosquitto) -> None:
    with box_under_serve(tmp_path, mosquitto) as run:
        fed, box, heard = run.fed, run.box, run.heard
        online: list[DeviceStatus] = []

        def reported_round_1() -> bool:
            while not heard.empty():
                status, _ = heard.get_nowait()
                if status.state == "online":
                    online.append(status)
            return any(s.model == "round-1" for s in online)

        wait_for(reported_round_1, 180, "the box to report round-1 online", fed)
        assert online[0].model == "base"  # its will was built before: it says base
        # the broker sent serve that status before the will it publishes next (one topic)
        killed_at = time.time()
        box.send_signal(signal.SIGKILL)
        assert box.wait(10) == -signal.SIGKILL

        def will_heard() -> bool:
            while not heard.empty():
                status, retained = heard.get_nowait()
                if status.state == "offline":
                    assert not retained  # a will is published live to subscribers
                    assert status.model == "base" and status.ts is not None \
                        and status.ts < killed_at  # stale: model and time of the connect
                    return True
            return False

        wait_for(will_heard, 60, "the broker to publish the box's last will", fed)
        device = _device(fed)
        deadline = time.monotonic() + 30
        while device.get("offline_since") is None and time.monotonic() < deadline:
            time.sleep(0.5)
            device = _device(fed)
        assert device["state"] == "offline", device
        assert device["model"] == "round-1", device  # not the will's "base"
        assert device["last_reported"] is True
        assert killed_at - 1 <= device["offline_since"] <= time.time(), device
        assert device["since"] == device["offline_since"]
        assert device["last_online"] is not None and device["last_online"] < killed_at
        text = _operator_status(fed).stdout
        row = next(line for line in text.splitlines() if line.startswith(BOX))
        assert row.split()[2:4] == ["offline", "round-1"], text
        assert f"{BOX} offline since " in text, text
        assert "round-1 is the last model it reported" in text, text
        assert fed.aggregator is not None and fed.aggregator.poll() is None  # serve runs on
        fed.stop()
        assert "serve stopped (SIGTERM)" in fed.aggregator_log()  # a stop is said


def test_a_broker_restart_is_not_taken_for_every_box_vanishing(
        tmp_path: Path, mosquitto) -> None:
    """Mosquitto publishes every connected box's will as it shuts down, before it drops
    serve's own connection: serve logged each box as gone without a clean stop and
    `status` showed it offline. serve holds a will for a few seconds and takes it back
    when its own link dropped meanwhile; the box comes back on its own status."""
    with box_under_serve(tmp_path, mosquitto) as run:
        fed, heard = run.fed, run.heard

        def states() -> list[str]:
            got = []
            while not heard.empty():
                got.append(heard.get_nowait()[0].state)
            return got

        wait_for(lambda: "online" in states(), 180, "the box's online status", fed)
        wait_for(lambda: _device(fed)["state"] == "online", 30, "status: box online", fed)
        mosquitto.restart()
        # said once serve's link dropped (it waited out the whole 45 s hold before)
        wait_for(lambda: "the broker went away" in fed.aggregator_log(), 20,
                 "serve to take the will back", fed)
        wait_for(lambda: _device(fed)["state"] == "online", 30, "status: box back", fed)
        seen = states()
        assert "offline" in seen, seen  # the broker did publish the will as it went
        log = fed.aggregator_log()
        assert "went offline without a clean stop" not in log, log
        assert f"last will(s) of {BOX} it published as it went" in log, log
        device = _device(fed)
        assert device["state"] == "online" and device["offline_since"] is None, device
        assert fed.aggregator is not None and fed.aggregator.poll() is None  # serve runs on


def test_with_the_broker_down_status_shows_each_box_s_last_known_state(
        tmp_path: Path, mosquitto) -> None:
    """A walkthrough stopped the broker: `status` showed every box as `unknown`, losing
    what the operator needs in an outage. Real serve, box and Mosquitto: the broker
    stops, and `status` shows the box at the last state serve heard, said to be that,
    with its age; still exit 2 and the broker error, for a monitor."""
    with box_under_serve(tmp_path, mosquitto) as run:
        fed = run.fed
        # round-1 applied: its model stays (round 2 stays open, the box trains no more)
        model = "round-1"
        wait_for(lambda: (_device(fed)["state"], _device(fed)["model"]) == ("online", model),
                 180, "status: box online on round-1", fed)
        mosquitto.stop()  # it publishes the box's will as it goes: serve takes it back

        def down() -> subprocess.CompletedProcess[str]:
            return subprocess.run([*AGGREGATOR, "status", "--state", str(fed.agg_state)],
                                  capture_output=True, text=True, timeout=60)

        status = down()
        deadline = time.monotonic() + 30  # serve takes the will back within a second
        while f"{BOX}: online (last known" not in status.stdout and \
                time.monotonic() < deadline:
            time.sleep(1)
            status = down()
        assert status.returncode == 2, status.stderr
        row = next(line for line in status.stdout.splitlines() if line.startswith(BOX))
        assert row.split()[2:4] == ["online", model], status.stdout
        said = next(line.strip() for line in status.stdout.splitlines()
                    if line.startswith(f"  {BOX}: "))
        assert said.startswith(f"{BOX}: online (last known: its online status of ") \
            and said.endswith(" ago; broker unreachable)"), status.stdout
        assert status.stderr.startswith("error: the boxes' live status is not shown: "
                                        "cannot reach the broker"), status.stderr
        as_json = subprocess.run([*AGGREGATOR, "status", "--json", "--state",
                                  str(fed.agg_state)], capture_output=True, text=True,
                                 timeout=60)
        (device,) = json.loads(as_json.stdout)["device_status"]
        assert device["state"] == "unknown" and device["model"] == model, device
        assert device["last_known"]["state"] == "online", device
