"""Helpers for the hierarchy-over-MQTT test: the real ``fedface-aggregator`` CLI and
``serve`` processes, and a watcher of one broker's federation topics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from federation import topics
from federation.chunking import split_blob
from federation.crypto.ckks import FederationContext
from federation.crypto.keys import write_public_key
from federation.crypto.packing import EncryptedUpdate
from federation.envelope import decode, encode
from federation.transport.mqtt import MqttTransport, TlsConfig
from tests.support.aggregator_boxes import ScriptedBox, envelope_json

AGGREGATOR = str(Path(sys.executable).parent / "fedface-aggregator")


def run_cli(*args: str) -> str:
    proc = subprocess.run([AGGREGATOR, *args], capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 0, f"fedface-aggregator {' '.join(args[:2])}: {proc.stderr}"
    return proc.stdout


class Serve:
    """One ``fedface-aggregator serve`` process, its output in a log file."""

    def __init__(self, log: Path, args: list[str]) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([AGGREGATOR, "serve", "--min-new-samples", "0", *args],
                                         stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log.name} still running after {timeout:.0f} s:\n"
                                 f"{self.text()[-3000:]}") from None

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class BrokerWatcher:
    """Every message of one federation on one broker: the latest payload per topic (the
    retained announce/result/pointer) and every ack body per device."""

    def __init__(self, url: str, client_id: str, fed: str, tls: TlsConfig | None = None
                 ) -> None:
        self.fed = fed
        self.latest: dict[str, bytes] = {}
        self.acks: dict[str, list[dict[str, Any]]] = {}
        self.cond = threading.Condition()
        self.transport = MqttTransport(url, client_id, clean_start=True, tls=tls)
        self.transport.subscribe(f"{topics.prefix(fed)}/#", self._on)
        assert self.transport.wait_connected(10), f"watcher cannot reach {url}"

    def _on(self, topic: str, payload: bytes) -> None:
        with self.cond:
            self.latest[topic] = payload
            if "/ack/" in topic and payload:
                self.acks.setdefault(topic.rsplit("/", 1)[1], []).append(
                    envelope_json(payload)[1])
            self.cond.notify_all()

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float,
             logs: Callable[[], str] = lambda: "") -> None:
        with self.cond:
            ok = self.cond.wait_for(predicate, timeout)
        assert ok, f"timed out after {timeout:.0f} s waiting for {what}\n{logs()[-4000:]}"

    def announce(self) -> dict[str, Any] | None:
        raw = self.latest.get(topics.announce(self.fed))
        return envelope_json(raw)[1] if raw else None

    def open_round(self, round_no: int) -> Callable[[], bool]:
        def check() -> bool:
            ann = self.announce()
            return ann is not None and ann["round"] == round_no and ann["state"] == "open"
        return check

    def pointer(self) -> dict[str, Any] | None:
        raw = self.latest.get(topics.model_latest(self.fed))
        return envelope_json(raw)[1] if raw else None

    def result_of(self, round_no: int) -> Callable[[], bool]:
        def check() -> bool:
            p = self.pointer()
            return p is not None and p["round"] == round_no and all(
                topics.result(self.fed, round_no, i) in self.latest for i in range(p["chunks"]))
        return check

    def result(self) -> tuple[dict[str, Any], bytes]:
        with self.cond:
            p = self.pointer()
            assert p is not None
            blob = b"".join(decode(self.latest[topics.result(self.fed, p["round"], i)]).payload
                            for i in range(p["chunks"]))
        return p, blob

    def acks_of(self, device: str) -> list[dict[str, Any]]:
        with self.cond:
            return list(self.acks.get(device, []))

    def close(self) -> None:
        self.transport.close()


def connected_box(url: str, device_id: str, secret: FederationContext, fed: str, *,
                  client_id: str = "", tls: TlsConfig | None = None) -> ScriptedBox:
    """A scripted box (its own fresh signing key) connected to one broker."""
    transport = MqttTransport(url, client_id or device_id, clean_start=True, tls=tls)
    box = ScriptedBox(device_id, fed, secret, transport)
    assert transport.wait_connected(10), f"{device_id} cannot reach {url}"
    return box


def register_box(tmp: Path, state: Path, box: ScriptedBox) -> None:
    """``devices add`` the box's public key at the aggregator whose state is ``state``."""
    pub = write_public_key(tmp / f"{box.device_id}.pub", box.key.public_key())
    run_cli("devices", "add", box.device_id, "--state", str(state), "--public-key", str(pub))


def send_update(box: ScriptedBox, ann: dict[str, Any], vec: np.ndarray, n: int) -> None:
    blob = box.encrypted_blob(vec, n, ann["count_scale"])
    box.send(box.envelopes(blob, ann["round"], ann["base_model"], chunk_size=65536))


def send_partial(box: ScriptedBox, blob: bytes, round_no: int, model: str) -> str:
    """A ``partial`` signed with the box's own key, under its own id; returns its msg id."""
    envs = split_blob(blob, box.key, kind="partial", fed=box.fed, sender=box.device_id,
                      round=round_no, model=model, chunk_size=65536)
    for env in envs:
        box.transport.publish(topics.update(box.fed, box.device_id), encode(env))
    return envs[0].msg


def n_updates(blob: bytes, public: Any) -> int:
    return int(EncryptedUpdate.from_bytes(blob, public).n_updates)


def status_json(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli("status", "--state", str(state), "--json",
                                              "--no-broker"))
    return data


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
