"""The ceiling of bench.aggregator.fleet_load's ratio on this machine: the same fleet and broker
against an aggregator that does NO work.

    .venv/bin/python -m bench.aggregator.fleet_floor [--boxes 100] [--rounds 6] [--receivers 1,2,3]

bench.aggregator.fleet_load compares the aggregator's ack rate with the rate at which the broker
takes a simultaneous burst of uploads from 100 emulated boxes, all on the same cores.
This bench asks how much of that gap any aggregator could close here: the real
Mosquitto and the same emulated boxes (bench.aggregator.fleet_load's, unchanged), but instead of
``fedface-aggregator serve``, R "null receivers": paho clients that hear the update
topics of their share of the devices (aggregator.intake.shards' split), decode each
envelope and ack it at once, signed, without verifying, storing or summing anything.
One of them announces the rounds. Printed per R: the boxes' upload time, the receivers'
last receipt and the boxes' last ack, and the ratio fleet_load prints (upload time /
time to the last ack), median over rounds 2..N (round 1 warms up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

from bench.rig.box_updates import write_updates
from bench.rig.broker import start_fleet_broker
from bench.rig.compare import reproduce
from bench.rig.procs import spawn_module, tmpdir
from bench.rig.session import RigSession
from bench.rig.state import FED


def receiver_main(ns: argparse.Namespace) -> None:
    """One null receiver: ack every update on arrival (no checks, no disk, no sum)."""
    from aggregator.intake.shards import shard_of
    from aggregator.rounds.publisher import Publisher
    from federation import topics
    from federation.crypto.keys import read_private_key
    from federation.envelope import decode
    from federation.messages import Ack, RoundAnnounce
    from federation.transport.mqtt import MqttTransport

    link = MqttTransport(ns.broker, f"null-receiver-{ns.index}", clean_start=True)
    signed = Publisher(link, read_private_key(ns.key), FED, "aggregator", chunk_size=1)
    cond = threading.Condition()
    heard: dict[int, int] = {}
    last: dict[int, float] = {}

    def publish(topic: str, kind: str, body: Ack | RoundAnnounce, round_no: int,
                retain: bool) -> None:
        signed.send(topic, kind, body, round_no, "base", retain)  # as the aggregator sends

    def on_update(topic: str, payload: bytes) -> None:
        env = decode(payload)
        device = topics.parse(topic).device
        assert device is not None
        publish(topics.ack(FED, device), "ack", Ack(True, device=device, round=env.round,
                                                    msg=env.msg, current_round=env.round,
                                                    contributions=0), env.round, False)
        with cond:
            last[env.round] = time.time()
            heard[env.round] = heard.get(env.round, 0) + 1
            cond.notify_all()

    mine = [f"box{i}" for i in range(ns.boxes) if shard_of(f"box{i}", ns.of) == ns.index]
    for device in mine:
        link.subscribe(topics.update(FED, device), on_update)
    assert link.wait_connected(30)
    time.sleep(0.5)  # every receiver subscribed before the first announce
    for r in range(1, ns.rounds + 1):
        if ns.index == 0:
            # only round, base and state matter to the emulated boxes (bench.aggregator.fleet_load)
            publish(topics.announce(FED), "announce", RoundAnnounce(
                r, "base", "open", deadline=time.time() + 600, quorum=1, count_scale=1.0,
                chunk_size=1024), r, True)
        with cond:
            while heard.get(r, 0) < len(mine):
                assert cond.wait(600), f"round {r}: updates missing"
        time.sleep(0.3)  # the boxes take their acks before the next announce
    print(json.dumps({"last": last}), flush=True)
    link.close()


def run(boxes_n: int, rounds: int, receivers: int, keys: Path, updates: Path) -> list[float]:
    from federation.crypto.keys import write_private_key
    from federation.crypto.signing import generate_signing_key

    with RigSession(f"floor-{receivers}-", boxes_n, keys=keys,
                    start_broker=start_fleet_broker, watch=False) as rig:
        null_key = rig.root / "null.key"
        write_private_key(null_key, generate_signing_key())
        boxes = rig.start_boxes([rig.fed.devices[0::2], rig.fed.devices[1::2]], rounds,
                                256 * 1024, updates=updates, flush_every=4)
        nulls = [rig.adopt(spawn_module(
            "bench.aggregator.fleet_floor", "receiver", "--broker", rig.url, "--key", str(null_key),
            "--index", str(k), "--of", str(receivers), "--boxes", str(boxes_n),
            "--rounds", str(rounds), stderr=None)) for k in range(receivers)]
        last: dict[int, float] = {}
        for proc in nulls:
            out, _ = proc.communicate(timeout=600)
            for r, t in json.loads(out.strip().splitlines()[-1])["last"].items():
                last[int(r)] = max(last.get(int(r), 0.0), t)
        lines = [x for per_proc in boxes.reports(60) for x in per_proc]
        ratios = []
        for r in range(2, rounds + 1):
            mine = [x for x in lines if x["round"] == r]
            start = min(x["t_start"] for x in mine)
            uploaded = max(x["t_uploaded"] for x in mine) - start
            acked = max(max(x["t_acks"]) for x in mine) - start
            ratios.append(uploaded / acked)
            print(f"  round {r}: boxes uploaded in {1e3 * uploaded:.0f} ms, last receipt "
                  f"{1e3 * (last[r] - start):.0f} ms, last ack {1e3 * acked:.0f} ms, ratio "
                  f"{uploaded / acked:.2f}", flush=True)
        return ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("receiver")
    for name in ("--broker", "--key"):
        r.add_argument(name, required=True)
    for name in ("--index", "--of", "--boxes", "--rounds"):
        r.add_argument(name, type=int, required=True)
    p.add_argument("--boxes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--receivers", default="1,2,3")
    ns = p.parse_args()
    if ns.cmd == "receiver":
        receiver_main(ns)
        return
    from federation.crypto.keys import SECRET_CONTEXT_NAME, create_federation_keys
    from models.federated_parts import DEFAULT_PART, get_part

    work = tmpdir("floor-keys-")
    try:
        create_federation_keys(work / "keys")
        write_updates(work / "keys" / SECRET_CONTEXT_NAME, work / "updates", 6,
                      get_part(DEFAULT_PART).size)
        summary = []
        for n in (int(x) for x in ns.receivers.split(",")):
            print(f"{ns.boxes} boxes, all at once, {n} null receiver(s):", flush=True)
            ratios = run(ns.boxes, ns.rounds, n, work / "keys", work / "updates")
            summary.append((n, statistics.median(ratios), min(ratios), max(ratios)))
        print("\nnull receivers  ratio (upload time / time to last ack), median [min, max]")
        for n, med, lo, hi in summary:
            print(f"{n:>14}  {med:.2f} [{lo:.2f}, {hi:.2f}]")
        print("A receiver that does no work bounds what the real aggregator can reach in "
              "this bench on this machine (bench.aggregator.fleet_load prints the real one).")
        print(reproduce("bench.aggregator.fleet_floor"))
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
