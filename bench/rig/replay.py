"""A box's federation client over MQTT, and the signed rounds an attacker records and
replays to it (issue 15, attack 3): shared by ``bench.attacks.downgrade`` and its
integration test, so both replay the very same messages to the very same box."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np

from aggregator.rounds.publisher import Publisher
from aggregator.rounds.records import ResultReady
from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.crypto.bounds import ResultPolicy
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import StreamingSum, encrypt_update
from federation.crypto.signing import generate_signing_key
from federation.transport.mqtt import MqttTransport
from models.federated_parts import get_part

PART = get_part("embed_bn")

Recorded = queue.Queue[tuple[str, bytes]]


class ServedSink:
    """The box's model store, reduced to what it serves (version, part vector)."""

    def __init__(self, served: tuple[str, np.ndarray] | None) -> None:
        self.applied: list[tuple[str, np.ndarray]] = [served] if served else []

    def apply(self, version: str, vector: np.ndarray,
              reason: str = "federated result") -> None:
        self.applied.append((version, np.array(vector, copy=True)))

    def served_vector(self) -> tuple[str, np.ndarray] | None:
        return self.applied[-1] if self.applied else None


class Box:
    """Box ``box-1`` of federation ``fed``, on state directory ``state`` (the same one
    after a reboot), its model store serving ``served`` (None: the base model)."""

    def __init__(self, url: str, fed: str, ctx: FederationContext, agg_public: object,
                 state: Path, base: np.ndarray, served: tuple[str, np.ndarray] | None) -> None:
        self.events: queue.Queue[ClientEvent] = queue.Queue()
        self.sink = ServedSink(served)
        self.client = FederationClient(
            ClientConfig(fed, "box-1"),
            lambda will: MqttTransport(url, f"box-1-{state.name}", will=will),
            ctx, generate_signing_key(), agg_public,  # type: ignore[arg-type]
            NumpyDriftTrainer(PART, base, "box-1", 50), self.sink, state, base,
            on_event=self.events.put)
        self.client.start()

    def outcome(self, round_no: int, timeout: float = 60.0) -> ClientEvent | None:
        """The box's applied / result_rejected event for that round (None: neither)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                e = self.events.get(timeout=left)
            except queue.Empty:
                break
            if e.round == round_no and e.kind in ("applied", "result_rejected"):
                return e
        return None

    def stop(self) -> None:
        self.client.stop(timeout=5)


def round_blob(ctx: FederationContext, base: np.ndarray, round_no: int) -> bytes:
    """Two boxes' updates summed, as the aggregator sums them (real CKKS)."""
    total = StreamingSum(ctx.public(), base.size)
    for box in range(2):
        step = np.random.default_rng(round_no * 10 + box).normal(0, 1e-3, base.size)
        total.add(encrypt_update(ctx, (base + round_no * 1e-2 + step).astype(np.float32), 50))
    return total.result().to_bytes()


def publish_rounds(publisher: Publisher, ctx: FederationContext, base: np.ndarray,
                   box: Box, policy: ResultPolicy, rounds: int = 3) -> None:
    """Rounds 1 to ``rounds``, each signed and published and applied by ``box``."""
    previous = "base"
    for r in range(1, rounds + 1):
        publisher.result(ResultReady(r, f"round-{r}", previous, "sum.bin", ["a", "b"], policy),
                         round_blob(ctx, base, r), None)
        if (got := box.outcome(r)) is None or got.kind != "applied":
            raise RuntimeError(f"the box did not apply round {r}: {got}")
        previous = f"round-{r}"


def round_one(recorded: Recorded, fed: str) -> tuple[list[tuple[str, bytes]],
                                                     list[tuple[str, bytes]]]:
    """What an attacker recorded: round 1's chunks, and every model pointer in order."""
    chunks, pointers = [], []
    while not recorded.empty():
        topic, payload = recorded.get_nowait()
        if payload and topic.startswith(topics.result_filter(fed, 1)[:-1]):
            chunks.append((topic, payload))
        elif payload and topic == topics.model_latest(fed):
            pointers.append((topic, payload))
    return chunks, pointers
