"""`fedface-aggregator serve` as a real process against a real Mosquitto: kill -9 mid-round
and restart, and a silent box with the round closing at its deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.state.config import init_state
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation import topics
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.keys import save_public_context
from federation.crypto.packing import plain_weighted_average
from federation.envelope import decode
from federation.transport.mqtt import MqttTransport
from tests.aggregator_boxes import ScriptedBox, decrypt_result, envelope_json
from tests.conftest import MosquittoBroker

pytestmark = pytest.mark.mosquitto

FED = "fedmqtt"
LENGTH = 3000
COUNT_SCALE = 64.0
REPO = Path(__file__).resolve().parents[1]


class RetainedWatcher:
    """Subscribes to the whole federation prefix and keeps the latest payload per topic."""

    def __init__(self, url: str, client_id: str) -> None:
        self.messages: dict[str, bytes] = {}
        self.cond = threading.Condition()
        self.transport = MqttTransport(url, client_id, clean_start=True)
        self.transport.subscribe(f"{topics.prefix(FED)}/#", self._on)
        assert self.transport.wait_connected(10)

    def _on(self, topic: str, payload: bytes) -> None:
        with self.cond:
            self.messages[topic] = payload
            self.cond.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, bytes]], bool], timeout: float = 60.0
    ) -> dict[str, bytes]:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.messages), timeout)
        assert ok, f"timed out; topics seen: {sorted(self.messages)}"
        return self.messages

    def announce(self) -> dict:
        return envelope_json(self.messages[topics.announce(FED)])[1]

    def close(self) -> None:
        self.transport.close()


def _announce_open(msgs: dict[str, bytes]) -> bool:
    raw = msgs.get(topics.announce(FED))
    return raw is not None and envelope_json(raw)[1]["state"] == "open"


def _result_complete(msgs: dict[str, bytes]) -> bool:
    raw = msgs.get(topics.model_latest(FED))
    if raw is None:
        return False
    p = envelope_json(raw)[1]
    return all(topics.result(FED, p["round"], i) in msgs for i in range(p["chunks"]))


def _result(msgs: dict[str, bytes]) -> tuple[dict, bytes]:
    _, p = envelope_json(msgs[topics.model_latest(FED)])
    blob = b"".join(
        envelope_json_payload(msgs[topics.result(FED, p["round"], i)]) for i in range(p["chunks"])
    )
    return p, blob


def envelope_json_payload(raw: bytes) -> bytes:
    return decode(raw).payload


@pytest.fixture(scope="module")
def secret_ctx() -> FederationContext:
    return new_secret_context()


def _setup(
    tmp_path: Path, secret_ctx: FederationContext, url: str, n_boxes: int
) -> tuple[Path, list[ScriptedBox]]:
    pub = save_public_context(tmp_path / "federation-public.tenseal", secret_ctx)
    state = tmp_path / "state"
    init_state(state, FED, pub, count_scale=COUNT_SCALE)
    boxes = [
        ScriptedBox(f"box{i}", FED, secret_ctx, MqttTransport(url, f"box{i}", clean_start=True))
        for i in range(n_boxes)
    ]
    store = Store(state)
    for box in boxes:
        DeviceRegistry(store).add(box.device_id, bytes.fromhex(box.public_hex))
        assert box.transport.wait_connected(10)
    store.close()
    return state, boxes


def _serve(state: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "serve", "--state", str(state), "--broker", url,
         "--chunk-size", "65536", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _send(box: ScriptedBox, ann: dict, vec: np.ndarray, n: int) -> None:
    blob = box.encrypted_blob(vec, n, ann["count_scale"])
    box.send(box.envelopes(blob, ann["round"], ann["base_model"], chunk_size=65536))


def test_kill_9_mid_round_then_restart_completes_with_every_acked_update(
    tmp_path: Path, mosquitto: MosquittoBroker, secret_ctx: FederationContext,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    state, boxes = _setup(tmp_path, secret_ctx, mosquitto.url, 3)
    watcher = RetainedWatcher(mosquitto.url, "watcher")
    rng = np.random.default_rng(7)
    vecs = [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in boxes]
    counts = [150, 240, 330]
    agg = _serve(state, mosquitto.url, "--round-deadline", "120", "--quorum", "3", "--rounds", "1")
    procs.append(agg)
    watcher.wait_for(_announce_open, 30)
    ann = watcher.announce()
    for box, vec, n in zip(boxes[:2], vecs[:2], counts[:2], strict=True):
        _send(box, ann, vec, n)
        acks = box.wait_acks(1, 30)
        assert acks and acks[0]["accepted"], acks
    agg.send_signal(signal.SIGKILL)
    first_out = agg.communicate(timeout=10)[0]
    # the third box sends while the aggregator is dead: its persistent session at the
    # broker queues the chunks for it
    _send(boxes[2], ann, vecs[2], counts[2])
    time.sleep(0.5)
    agg2 = _serve(state, mosquitto.url, "--round-deadline", "120", "--quorum", "3", "--rounds", "1")
    procs.append(agg2)
    out, _ = agg2.communicate(timeout=90)
    assert agg2.returncode == 0, out.decode()[-3000:]
    assert b"resumed round 1" in out and b"with 2 accepted update(s)" in out
    # no key material in the logs: the aggregator's own signing key never appears
    key_pem = (state / "aggregator.key").read_bytes()
    key_body = b"".join(key_pem.splitlines()[1:-1])
    assert key_body not in out and key_body not in first_out
    assert boxes[2].wait_acks(1, 10)[0]["accepted"]
    msgs = watcher.wait_for(_result_complete, 30)
    pointer, blob = _result(msgs)
    assert pointer["round"] == 1 and pointer["contributors"] == 3
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    watcher.close()
    for box in boxes:
        box.transport.close()


def test_silent_box_round_closes_at_the_deadline_with_quorum(
    tmp_path: Path, mosquitto: MosquittoBroker, secret_ctx: FederationContext,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    state, boxes = _setup(tmp_path, secret_ctx, mosquitto.url, 4)
    watcher = RetainedWatcher(mosquitto.url, "watcher")
    rng = np.random.default_rng(8)
    vecs = [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in range(3)]
    counts = [100, 200, 300]
    deadline_s = 4.0
    agg = _serve(state, mosquitto.url, "--round-deadline", str(deadline_s), "--quorum", "3",
                 "--rounds", "1")
    procs.append(agg)
    watcher.wait_for(_announce_open, 30)
    ann = watcher.announce()
    for box, vec, n in zip(boxes[:3], vecs, counts, strict=True):  # box3 stays silent
        _send(box, ann, vec, n)
    for box in boxes[:3]:
        assert box.wait_acks(1, 30)[0]["accepted"]
    msgs = watcher.wait_for(_result_complete, 30)
    closed_at = time.time()
    out, _ = agg.communicate(timeout=30)
    assert agg.returncode == 0, out.decode()[-3000:]
    assert closed_at >= ann["deadline"] - 0.5  # closed by the deadline, not before
    pointer, blob = _result(msgs)
    assert pointer["contributors"] == 3
    assert b"deadline with quorum (3/4)" in out
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    watcher.close()
    for box in boxes:
        box.transport.close()
