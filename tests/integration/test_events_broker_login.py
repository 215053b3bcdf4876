"""An events broker that wants a login (Mosquitto with a password_file): a wrong password
is said once as what it is, naming the broker, the user and the password file (never the
password), not as a network problem (helper-58: `Not authorized` at every retry, then
"the events broker ... is not reachable yet"); the right one logs in; a password file
other users may read is used with a warning, as the kiosk's TLS key is."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.tracking.mqtt_events import open_visit_publisher
from federation.transport.mqtt import MqttTransport
from tests.support.broker import MosquittoBroker, free_port
from tests.support.mqtt_listener import Listener

pytestmark = pytest.mark.mosquitto

USER, PASSWORD = "fedface", "s3cret-Right-pass"
WRONG = "an-0ld-Wrong-pass"


@pytest.fixture
def auth_broker(tmp_path: Path,
                mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """Mosquitto on a free port that lets in ``USER`` with ``PASSWORD`` only."""
    users = tmp_path / "mosquitto-users"
    users.touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(users), USER, PASSWORD], check=True,
                   capture_output=True)
    port = free_port()
    return mosquitto_factory(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                             f"password_file {users}\n", port=port)


def _password_file(path: Path, password: str, mode: int) -> Path:
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


def test_run_says_once_that_the_events_broker_refused_the_login(
        tmp_path: Path, lfw_dir: Path, auth_broker: MosquittoBroker) -> None:
    from edge.config import BoxConfig
    from edge.provision import render_box_config

    frames, data_dir = tmp_path / "frames", tmp_path / "box"
    frames.mkdir()
    for k in range(1, 4):
        (frames / f"{k}.jpg").write_bytes(
            (lfw_dir / "Tony_Blair" / f"Tony_Blair_{k:04d}.jpg").read_bytes())
    data_dir.mkdir(mode=0o700)
    # group-readable, as a hand-made file often is: used, with a warning
    password_file = _password_file(tmp_path / "mqtt-password", WRONG, 0o640)
    unused = str(tmp_path / "not-used-by-run")
    config = BoxConfig.model_validate({
        "box": {"device_id": "lobby-1", "fed": "acme", "data_dir": str(data_dir)},
        "camera": {"source": f"dir:{frames}?fps=2&loop=1"},
        "broker": {"url": "mqtts://broker.invalid:8883", "ca_file": unused,
                   "cert_file": unused, "key_file": unused},
        "federation": {"key_id": "0" * 32, "secret_context": unused, "device_key": unused,
                       "aggregator_key": unused},
        "events": {"mqtt_url": auth_broker.url, "username": USER,
                   "password_file": str(password_file)},
    })
    (data_dir / "edge.toml").write_text(render_box_config(config))
    events_file = tmp_path / "visits.jsonl"
    # 16 frames at 2 a second: paho retries the login at 1, 3 and 7 s
    run = subprocess.run(
        [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), "run",
         "--max-frames", "16", "--events", str(events_file)],
        capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert run.returncode == 0, run.stderr
    said = [line for line in run.stderr.splitlines() if "refused the login" in line]
    assert len(said) == 2, run.stderr  # once as it happened, once at exit with the count
    assert f"the MQTT broker {auth_broker.url} is reachable but refused the login of user "\
           f"'{USER}' (Not authorized)" in said[0]
    assert f"the password in {password_file}" in said[0]
    assert "recognition goes on" in said[0]
    assert "closing with" in said[1] and "never delivered" in said[1]
    assert "not reachable" not in run.stderr  # it is reachable: not a network problem
    assert "lost (" not in run.stderr  # no "connection lost" after every refused retry
    assert f"the MQTT password file {password_file} is readable by other users (mode 0640)" \
        in run.stderr
    assert WRONG not in run.stderr and PASSWORD not in run.stderr
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [e["name"] for e in events if e["event"] == "visit_ended"] == ["unknown"]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_refused_login_is_said_once_at_error_then_retried_quietly(
        auth_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture,
        protocol: str) -> None:
    """The transport's side, both MQTT versions (3.1.1's return code 5 is mapped to
    MQTT 5's "not authorized"): one ERROR however often paho tries again, and no
    "connection lost" after each refused CONNACK."""
    caplog.set_level(logging.DEBUG, logger="federation.transport")
    transport = MqttTransport(auth_broker.url, "box-x", username=USER, password=WRONG,
                              clean_start=True, protocol=protocol, reconnect_max_delay=1,
                              login_hint="check the password file /etc/x")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(
                "refused" in r.getMessage() for r in caplog.records) < 3:
            time.sleep(0.1)
        assert not transport.connected
        assert transport.refusals.login and transport.refusals.reason == "Not authorized"
    finally:
        transport.close()
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) >= 3, [r.getMessage() for r in caplog.records]
    assert [r.levelno for r in refused] == [logging.ERROR] + [logging.DEBUG] * (
        len(refused) - 1)
    assert "check the password file /etc/x" in refused[0].getMessage()
    assert not [r for r in caplog.records if "lost (" in r.getMessage()
                and r.levelno >= logging.WARNING]
    assert WRONG not in caplog.text


def test_the_right_password_file_logs_in_without_a_warning(
        tmp_path: Path, auth_broker: MosquittoBroker,
        caplog: pytest.LogCaptureFixture) -> None:
    password_file = _password_file(tmp_path / "mqtt-password", PASSWORD, 0o600)
    publisher = open_visit_publisher(auth_broker.url, "acme", "lobby-1", username=USER,
                                     password_file=password_file)
    try:
        assert publisher.transport.wait_connected(10)
        assert publisher.transport.flush(10)
    finally:
        publisher.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    listener = Listener("127.0.0.1", auth_broker.port, ["fedface/acme/lobby-1/#"],
                        login=(USER, PASSWORD))
    try:
        got = listener.collect_until(lambda got: len(got) >= 2, timeout=10)
    finally:
        listener.close()
    assert dict((t, p) for t, p, _ in got)["fedface/acme/lobby-1/availability"] == b"offline"

