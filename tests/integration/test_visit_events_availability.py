"""Home Assistant sees when a box is gone: the visit publisher's availability topic, with
the broker's last will for a box that vanishes (helper-58: after ``kill -9`` of ``run``
during an unknown visit, the retained state kept "Unknown face" on for ever).

Real Mosquitto on a free port, real ``fedface-edge run`` processes, and a plain paho
subscriber (tests.support.mqtt_listener) standing for Home Assistant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge.tracking.mqtt_events import open_visit_publisher
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_listener import Listener

pytestmark = pytest.mark.mosquitto

PREFIX = "fedface/acme/lobby-1"
AVAILABILITY = f"{PREFIX}/availability"
Messages = list[tuple[str, bytes, bool]]


def _last(got: Messages, topic: str) -> bytes | None:
    return next((p for t, p, _ in reversed(got) if t == topic), None)


def _unknown_present(got: Messages) -> bool:
    state = _last(got, f"{PREFIX}/state")
    return state is not None and bool(json.loads(state)["unknown_present"])


def _retained(mosquitto: MosquittoBroker, count: int) -> Messages:
    """What a Home Assistant starting now would get: the retained messages (``count``:
    availability, state and the three discovery configs)."""
    listener = Listener("127.0.0.1", mosquitto.port, [f"{PREFIX}/#", "homeassistant/#"])
    try:
        return listener.collect_until(lambda got: len(got) >= count, timeout=10)
    finally:
        listener.close()


def _collect(listener: Listener, run: subprocess.Popen[bytes], log: Path,
             done: Callable[[Messages], bool]) -> Messages:
    """Messages until ``done``; the run's log if it ends or it takes too long."""
    got = listener.collect_until(lambda got: done(got) or run.poll() is not None, timeout=180)
    assert done(got), f"run exit {run.poll()}: {log.read_text()}"
    return got


def _start_run(data_dir: Path, frames: Path, mosquitto: MosquittoBroker,
               log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), "run", "--source",
         f"dir:{frames}?fps=10&loop=1", "--events", str(log.with_suffix(".jsonl")),
         "--mqtt-url", mosquitto.url, "--fed", "acme", "--box-id", "lobby-1"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=os.environ.copy())


def test_a_box_killed_during_an_unknown_visit_shows_unavailable_not_an_unknown_face(
        tmp_path: Path, lfw_dir: Path, mosquitto: MosquittoBroker) -> None:
    """A stranger in front of the camera (nobody is enrolled) until the box is killed
    with SIGKILL: the broker says "offline" for it (its last will), and every discovery
    config points Home Assistant at that topic, so "Unknown face" is unavailable, not
    on. Started again, the box says "online" and its state is current (no visitor yet);
    stopped cleanly (SIGTERM, as systemd does), it says "offline" itself."""
    frames, data_dir = tmp_path / "frames", tmp_path / "box"
    frames.mkdir()
    for k in range(1, 4):
        (frames / f"{k}.jpg").write_bytes(
            (lfw_dir / "Tony_Blair" / f"Tony_Blair_{k:04d}.jpg").read_bytes())
    listener = Listener("127.0.0.1", mosquitto.port, [f"{PREFIX}/#"])
    run = _start_run(data_dir, frames, mosquitto, tmp_path / "run-1.log")
    try:
        got = _collect(listener, run, tmp_path / "run-1.log",
                       lambda got: _unknown_present(got) and _last(got, AVAILABILITY) == b"online")
        run.kill()  # SIGKILL: no clean disconnect, no "offline" of its own
        run.wait(timeout=30)
        got += listener.collect_until(lambda more: _last(more, AVAILABILITY) is not None,
                                      timeout=30)
        assert _last(got, AVAILABILITY) == b"offline", got
    finally:
        listener.close()
        if run.poll() is None:
            run.kill()
    retained = _retained(mosquitto, 5)
    assert _last(retained, AVAILABILITY) == b"offline"
    assert _unknown_present(retained)  # the state as it was: unavailable hides it
    configs = [json.loads(p) for t, p, _ in retained if t.startswith("homeassistant/")]
    assert len(configs) == 3
    for config in configs:
        assert config["availability_topic"] == AVAILABILITY
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online", "offline")

    # started again: "online", and a state of its own; then a clean stop says "offline"
    listener = Listener("127.0.0.1", mosquitto.port, [f"{PREFIX}/#"])
    log = tmp_path / "run-2.log"
    run = _start_run(data_dir, frames, mosquitto, log)
    try:
        got = _collect(listener, run, log, lambda got: _last(got, AVAILABILITY) == b"online"
                       and any(t.endswith("/events") for t, _, _ in got))
        states = [json.loads(p) for t, p, retained in got
                  if t == f"{PREFIX}/state" and not retained]
        # its own state, before the stranger's visit; the visit count starts at 0 again
        assert (states[0]["unknown_present"], states[0]["visits"]) == (False, 0)
        run.send_signal(signal.SIGTERM)  # recognising: the frame loop stops it cleanly
        assert run.wait(timeout=60) == 0, log.read_text()
        got = listener.collect_until(lambda got: _last(got, AVAILABILITY) == b"offline",
                                     timeout=30)
        # published by the box as it stopped, not the broker's retained copy
        assert [r for t, _, r in got if t == AVAILABILITY] == [False]
    finally:
        listener.close()
        if run.poll() is None:
            run.kill()
    assert _last(_retained(mosquitto, 5), AVAILABILITY) == b"offline"


def test_a_reconnect_after_the_last_will_says_online_again(
        mosquitto: MosquittoBroker) -> None:
    """The broker publishes the last will whenever it loses the box without a clean
    disconnect (here: another client takes the box's client id, as a half-open
    connection replaced by a new one would); the box reconnects by itself and must say
    "online" again, or Home Assistant keeps it unavailable while it publishes visits."""
    listener = Listener("127.0.0.1", mosquitto.port, [AVAILABILITY])
    publisher = open_visit_publisher(mosquitto.url, "acme", "lobby-1")
    try:
        assert publisher.transport.wait_connected(10)
        listener.collect_until(lambda got: got and got[-1][1] == b"online")
        usurper = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="lobby-1-visits",
                              protocol=paho.MQTTv5)
        usurper.connect("127.0.0.1", mosquitto.port)
        usurper.loop_start()
        listener.collect_until(lambda got: got and got[-1][1] == b"offline")  # its will
        usurper.disconnect()
        usurper.loop_stop()
        listener.collect_until(lambda got: got and got[-1][1] == b"online")
        deadline = time.monotonic() + 10
        while publisher.transport.connects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.transport.connects >= 2
    finally:
        publisher.close()
        listener.close()
    assert _last(_retained(mosquitto, 5), AVAILABILITY) == b"offline"  # the clean stop's
