"""Issue 15, attack 3: downgrade after reboot, replayed on a real Mosquitto.

``python -m bench.attacks.downgrade [--quick]``. The aggregator's own publisher signs
rounds 1 to 3 (real CKKS sums); a box's federation client applies each. An MQTT client
that recorded round 1's pointer and chunks (any client can, on a broker without ACLs)
re-publishes them, retained, while the box is down. The box restarts on the same state
directory, serving round 3 (its model store is stood in by a sink that remembers what
it serves). The defence holds when the rebooted box refuses the replay (``stale_round``)
and keeps round 3, while a box that never had a newer round applies the very same
replayed messages (so they are genuine, validly signed ones). The old code path is gone
(the mark is not a knob), so the figure before the fix is issue 15's.
"""

from __future__ import annotations

import argparse
import queue
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from aggregator.rounds.publisher import Publisher
from aggregator.rounds.records import ResultReady
from bench.rig.broker import start_mosquitto, stop_broker
from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.serving.sink import base_vector
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.crypto.bounds import DEFAULT_MAX_SAMPLES, Bounds, ResultPolicy
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.packing import StreamingSum, encrypt_update
from federation.crypto.signing import generate_signing_key
from federation.transport.mqtt import MqttTransport
from models.federated_parts import get_part
from models.registry import optimised_sface_path

FED = "downgrade"
PART = get_part("embed_bn")
POLICY = ResultPolicy(64.0, Bounds(DEFAULT_MAX_SAMPLES))


class ServedSink:
    """The box's model store, reduced to what it serves (version, part vector)."""

    def __init__(self, served: tuple[str, np.ndarray] | None) -> None:
        self.applied: list[tuple[str, np.ndarray]] = [served] if served else []

    def apply(self, version: str, vector: np.ndarray) -> None:
        self.applied.append((version, np.array(vector, copy=True)))

    def served_vector(self) -> tuple[str, np.ndarray] | None:
        return self.applied[-1] if self.applied else None


class Box:
    def __init__(self, url: str, ctx: FederationContext, agg_public: object, state: Path,
                 base: np.ndarray, served: tuple[str, np.ndarray] | None) -> None:
        self.events: queue.Queue[ClientEvent] = queue.Queue()
        self.sink = ServedSink(served)
        self.client = FederationClient(
            ClientConfig(FED, "box-1"),
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


def _blob(ctx: FederationContext, base: np.ndarray, round_no: int) -> bytes:
    total = StreamingSum(ctx.public(), base.size)
    for box in range(2):
        step = np.random.default_rng(round_no * 10 + box).normal(0, 1e-3, base.size)
        total.add(encrypt_update(ctx, (base + round_no * 1e-2 + step).astype(np.float32), 50))
    return total.result().to_bytes()


def _connect(url: str, name: str) -> MqttTransport:
    t = MqttTransport(url, name)
    if not t.wait_connected(10):
        raise RuntimeError(f"{name} could not connect to {url}")
    return t


def _settle(client: MqttTransport, received: queue.Queue[tuple[str, bytes]], topic: str) -> None:
    """Publish probes until one comes back: the subscription is live at the broker."""
    for _ in range(100):
        client.publish(topic, b"probe", wait_timeout=10)
        try:
            while received.get(timeout=0.2)[1] != b"probe":
                pass
        except queue.Empty:
            continue
        while not received.empty():
            received.get_nowait()
        return
    raise RuntimeError("the recorder's subscription never became live")


def run(work: Path) -> dict[str, object]:
    proc, url = start_mosquitto(work / "broker")
    try:
        ctx = new_secret_context()
        agg_key = generate_signing_key()
        base = base_vector(onnx.load(str(optimised_sface_path())), PART)
        agg, attacker = _connect(url, "aggregator"), _connect(url, "attacker")
        recorded: queue.Queue[tuple[str, bytes]] = queue.Queue()
        attacker.subscribe(f"{topics.prefix(FED)}/#", lambda t, p: recorded.put((t, p)))
        _settle(attacker, recorded, f"{topics.prefix(FED)}/probe")
        publisher = Publisher(agg, agg_key, FED, "aggregator", chunk_size=16384)
        state = work / "box-state"
        box = Box(url, ctx, agg_key.public_key(), state, base, None)
        previous = "base"
        try:
            for r in (1, 2, 3):
                publisher.result(ResultReady(r, f"round-{r}", previous, "sum.bin", ["a", "b"],
                                             POLICY), _blob(ctx, base, r), None)
                if box.outcome(r) is None:
                    raise RuntimeError(f"the box did not apply round {r}")
                previous = f"round-{r}"
        finally:
            box.stop()
        served = box.sink.applied[-1]
        chunks, pointers = [], []
        while not recorded.empty():
            topic, payload = recorded.get_nowait()
            if payload and topic.startswith(topics.result_filter(FED, 1)[:-1]):
                chunks.append((topic, payload))
            elif payload and topic == topics.model_latest(FED):
                pointers.append((topic, payload))
        for topic, payload in [*chunks, pointers[0]]:  # round 1, replayed, retained
            attacker.publish(topic, payload, retain=True, wait_timeout=10)
        rebooted = Box(url, ctx, agg_key.public_key(), state, base, served)
        try:
            replay = rebooted.outcome(1)
            serving = rebooted.client.version
        finally:
            rebooted.stop()
        fresh = Box(url, ctx, agg_key.public_key(), work / "fresh-state", base, None)
        try:
            control = fresh.outcome(1)
        finally:
            fresh.stop()
        agg.close()
        attacker.close()
        return {"replay": replay, "serving": serving, "control": control,
                "served_before": served[0]}
    finally:
        stop_broker(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.attacks.downgrade",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="accepted for the suite (one run)")
    ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedface-downgrade-") as tmp:
        got = run(Path(tmp))
    replay, control = got["replay"], got["control"]
    assert replay is None or isinstance(replay, ClientEvent)
    assert control is None or isinstance(control, ClientEvent)
    refused = replay is not None and replay.kind == "result_rejected" and \
        replay.data.get("reason") == "stale_round"
    genuine = control is not None and control.kind == "applied"
    held = refused and got["serving"] == got["served_before"] and genuine
    print("downgrade after reboot (issue 15, attack 3): a box applied rounds 1-3, rebooted; "
          "round 1's signed pointer and chunks re-published (retained) on a real Mosquitto")
    print("  before (issue 15): the rebooted box applied the replay: round-3 -> round-1")
    outcome = "no verdict" if replay is None else (
        f"{replay.kind} ({replay.data.get('reason', '')})")
    print(f"  now: {outcome}; the rebooted box serves {got['serving']}")
    print(f"  control: a box that never had a newer round "
          f"{'applies' if genuine else 'does NOT apply'} the same replayed messages")
    print(f"  replayed old round refused after a reboot: {'HELD' if held else 'NOT HELD'}")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
