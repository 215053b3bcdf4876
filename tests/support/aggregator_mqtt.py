"""An aggregator process on a real broker: start it, watch what it retains, send boxes'
updates."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aggregator.state.config import init_state
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation import topics
from federation.crypto.ckks import FederationContext
from federation.crypto.keys import save_public_context
from federation.envelope import decode
from federation.transport.mqtt import MqttTransport
from tests.support.aggregator_boxes import ScriptedBox, envelope_json

FED = "fedmqtt"
LENGTH = 3000
COUNT_SCALE = 64.0
REPO = Path(__file__).resolve().parents[2]


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


def announce_open(msgs: dict[str, bytes]) -> bool:
    raw = msgs.get(topics.announce(FED))
    return raw is not None and envelope_json(raw)[1]["state"] == "open"


def result_complete(msgs: dict[str, bytes]) -> bool:
    raw = msgs.get(topics.model_latest(FED))
    if raw is None:
        return False
    p = envelope_json(raw)[1]
    return all(topics.result(FED, p["round"], i) in msgs for i in range(p["chunks"]))


def read_result(msgs: dict[str, bytes]) -> tuple[dict, bytes]:
    _, p = envelope_json(msgs[topics.model_latest(FED)])
    blob = b"".join(
        envelope_json_payload(msgs[topics.result(FED, p["round"], i)]) for i in range(p["chunks"])
    )
    return p, blob


def envelope_json_payload(raw: bytes) -> bytes:
    return decode(raw).payload


def serve_aggregator(state: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "serve", "--state", str(state), "--broker", url,
         "--chunk-size", "65536", "--min-new-samples", "0", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def send_update(box: ScriptedBox, ann: dict, vec: np.ndarray, n: int) -> None:
    blob = box.encrypted_blob(vec, n, ann["count_scale"])
    box.send(box.envelopes(blob, ann["round"], ann["base_model"], chunk_size=65536))


def setup_federation(
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
