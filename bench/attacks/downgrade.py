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
from pathlib import Path

import onnx

from aggregator.rounds.publisher import Publisher
from bench.rig.broker import start_mosquitto, stop_broker
from bench.rig.replay import PART, Box, publish_rounds, round_one
from edge.federated.client import ClientEvent
from edge.serving.sink import base_vector
from federation import topics
from federation.crypto.bounds import DEFAULT_MAX_SAMPLES, Bounds, ResultPolicy
from federation.crypto.ckks import new_secret_context
from federation.crypto.signing import generate_signing_key
from federation.transport.mqtt import MqttTransport
from models.registry import optimised_sface_path

FED = "downgrade"
POLICY = ResultPolicy(64.0, Bounds(DEFAULT_MAX_SAMPLES))


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
        box = Box(url, FED, ctx, agg_key.public_key(), state, base, None)
        try:
            publish_rounds(publisher, ctx, base, box, POLICY)
        finally:
            box.stop()
        served = box.sink.applied[-1]
        chunks, pointers = round_one(recorded, FED)
        for topic, payload in [*chunks, pointers[0]]:  # round 1, replayed, retained
            attacker.publish(topic, payload, retain=True, wait_timeout=10)
        rebooted = Box(url, FED, ctx, agg_key.public_key(), state, base, served)
        try:
            replay = rebooted.outcome(1)
            serving = rebooted.client.version
        finally:
            rebooted.stop()
        fresh = Box(url, FED, ctx, agg_key.public_key(), work / "fresh-state", base, None)
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
