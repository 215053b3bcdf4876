"""Helpers for the federation end-to-end tests: a real ``fedface-aggregator serve``
process and in-process edge boxes (FederationClient over a real MQTT connection)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edge.federated.client import ClientConfig, ClientEvent, FederationClient, ModelSink
from edge.federated.epochs import EpochKeys
from edge.serving.sink import base_vector
from edge.training.api import LocalTrainer
from edge.training.drift import NumpyDriftTrainer
from federation.crypto.keys import (
    create_federation_keys,
    load_secret_context,
    read_public_key,
    write_private_key,
    write_public_key,
)
from federation.crypto.signing import generate_signing_key
from federation.transport.base import Will
from federation.transport.mqtt import MqttTransport
from models.federated_parts import FederatedPart, get_part
from models.registry import optimised_sface_path

FED = "e2e"
# 5,376 values: real CKKS and chunking, fast enough for several rounds in a test
PART = get_part("embed_bn")
AGGREGATOR = [str(Path(sys.executable).parent / "fedface-aggregator")]
EDGE_CLI = str(Path(sys.executable).parent / "fedface-edge")

_base_cache: dict[str, np.ndarray] = {}


def part_base_vector(part: FederatedPart = PART) -> np.ndarray:
    if part.key not in _base_cache:
        _base_cache[part.key] = base_vector(onnx.load(str(optimised_sface_path())), part)
    return _base_cache[part.key].copy()


def run_cli(*args: str) -> str:
    proc = subprocess.run([*AGGREGATOR, *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"fedface-aggregator {args[0]} failed: {proc.stderr}"
    return proc.stdout


class RecordingSink:
    """ModelSink that keeps every (version, vector) it is given, in order."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, np.ndarray]] = []
        self.reasons: list[str] = []  # what the box's model history would say of each
        self.back_to_initial: list[str] = []  # the reasons it was sent back to the base
        self._initial = True

    def apply(self, version: str, vector: np.ndarray,
              reason: str = "federated result") -> None:
        self.applied.append((version, np.array(vector, copy=True)))
        self.reasons.append(reason)
        self._initial = False

    def serve_initial(self, reason: str, block: bool = True) -> None:
        self.back_to_initial.append(reason)
        self._initial = True

    def served_vector(self) -> tuple[str, np.ndarray] | None:
        """What it serves: the last version applied (None: the base model)."""
        return None if self._initial else self.applied[-1]


@dataclass
class Box:
    name: str
    client: FederationClient
    sink: ModelSink
    events: list[ClientEvent] = field(default_factory=list)

    def event(self, kind: str, round_no: int) -> ClientEvent | None:
        for e in list(self.events):
            if e.kind == kind and e.round == round_no:
                return e
        return None


@dataclass
class Federation:
    root: Path
    broker_url: str
    secret_context: Path
    agg_state: Path
    aggregator: subprocess.Popen[bytes] | None = None
    boxes: dict[str, Box] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, broker_url: str, devices: list[str]) -> Federation:
        keys = create_federation_keys(root / "keys")
        agg_state = root / "aggregator"
        run_cli("init", "--fed", FED, "--state", str(agg_state), "--public-context",
                str(keys.public_context), "--part-key", PART.key, "--broker-url", broker_url)
        for dev in devices:
            key = generate_signing_key()
            write_private_key(root / f"{dev}.key", key)
            write_public_key(root / f"{dev}.pub", key.public_key())
            run_cli("devices", "add", dev, "--public-key", str(root / f"{dev}.pub"),
                    "--state", str(agg_state))
        return cls(root, broker_url, keys.secret_context, agg_state)

    def start_aggregator(self, quorum: int, rounds: int, deadline: float = 120.0) -> None:
        log = (self.root / "aggregator.log").open("wb")
        self.aggregator = subprocess.Popen(
            [*AGGREGATOR, "serve", "--state", str(self.agg_state), "--broker", self.broker_url,
             "--quorum", str(quorum), "--rounds", str(rounds), "--round-deadline",
             str(deadline), "--chunk-size", "16384", "--min-new-samples", "0"],
            stdout=log, stderr=subprocess.STDOUT)

    def start_box(self, name: str, trainer: LocalTrainer | None = None, n_samples: int = 50,
                  sink: ModelSink | None = None, retry_seconds: float = 30.0,
                  max_relative_change: float = 0.5, secret_context: Path | None = None,
                  epochs: EpochKeys | None = None) -> Box:
        from federation.crypto.keys import read_private_key

        base = part_base_vector()
        trainer = trainer or NumpyDriftTrainer(PART, base, name, n_samples, step=1e-2)
        sink = sink if sink is not None else RecordingSink()
        box_events: list[ClientEvent] = []

        def transport(will: Will) -> MqttTransport:
            return MqttTransport(self.broker_url, name, will=will, reconnect_max_delay=2)

        client = FederationClient(
            ClientConfig(FED, name, retry_seconds=retry_seconds,
                         max_relative_change=max_relative_change), transport,
            load_secret_context(secret_context or self.secret_context),
            read_private_key(self.root / f"{name}.key"),
            read_public_key(self.agg_state / "aggregator.pub"), trainer, sink,
            self.root / "boxes" / name, base, on_event=box_events.append, epochs=epochs,
        )
        box = Box(name, client, sink, box_events)
        self.boxes[name] = box
        client.start()
        return box

    def stop(self) -> None:
        for box in self.boxes.values():
            box.client.stop(timeout=5)
        if self.aggregator is not None and self.aggregator.poll() is None:
            self.aggregator.terminate()
            try:
                self.aggregator.wait(10)
            except subprocess.TimeoutExpired:
                self.aggregator.kill()
                self.aggregator.wait()

    def cli_box(self, name: str, lfw_dir: Path, people: int = 3) -> tuple[Path, list[str]]:
        """A box for a real ``fedface-edge join`` process: its data dir, with ``people``
        LFW people of three photos each enrolled, and the ``join`` command line."""
        faces = self.root / f"{name}-faces"
        chosen = [p for p in sorted(lfw_dir.iterdir()) if len(list(p.glob("*.jpg"))) >= 3]
        for person in chosen[:people]:
            (faces / person.name).mkdir(parents=True)
            for img in sorted(person.glob("*.jpg"))[:3]:
                shutil.copy(img, faces / person.name / img.name)
        data = self.root / f"{name}-data"
        subprocess.run([EDGE_CLI, "--data-dir", str(data), "enroll", "--from-dir", str(faces)],
                       check=True, capture_output=True)
        return data, [EDGE_CLI, "--data-dir", str(data), "join", "--broker", self.broker_url,
                      "--fed", FED, "--device-id", name, "--secret-context",
                      str(self.secret_context), "--device-key", str(self.root / f"{name}.key"),
                      "--aggregator-key", str(self.agg_state / "aggregator.pub"), "--part",
                      PART.name]

    def aggregator_log(self) -> str:
        path = self.root / "aggregator.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             fed: Federation | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    detail = f"\naggregator log tail:\n{fed.aggregator_log()}" if fed else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


class GatedTrainer:
    """Wraps a trainer; ``local_update`` waits until ``gate`` is set (test choreography)."""

    def __init__(self, inner: LocalTrainer) -> None:
        self.inner = inner
        self.part = inner.part
        self.gate = threading.Event()

    def local_update(self, global_vector: np.ndarray | None, round_no: int):
        self.gate.wait(60)
        return self.inner.local_update(global_vector, round_no)
