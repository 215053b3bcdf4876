"""The emulated box: one process playing one or many devices over MQTT.

Each device has its own MQTT client and Ed25519 key and signs its own chunks. Per round
the process waits for the announce, has its update source (``bench.rig.box_updates``)
make every device's chunks, publishes them round-robin across devices (every update in
flight at once: the worst case for the aggregator's reassembly) or, with ``--spread S``,
each device at its own random moment within S seconds, waits for every device's ack and
prints one JSON report line (``{"round": ...}``). ``{"ready": true}`` comes first, after
any precomputation.

    python -m bench.rig.box --broker URL --keys DIR --devices box0,box1 \
        (--secret CTX [--mode plain] [--precompute] [--train-people N] | --updates DIR)

:class:`BoxProcesses` starts such processes for a bench and reads their reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.rig.box_updates import GeneratedUpdates, StoredUpdates
from bench.rig.procs import REPO, spawn_module, tmpdir
from bench.rig.state import FED, device_index
from models.federated_parts import DEFAULT_PART


class DeviceLinks:
    """The devices' MQTT clients; announces and acks as they arrive."""

    def __init__(self, url: str, devices: list[str]) -> None:
        from federation import topics
        from federation.transport.mqtt import MqttTransport

        self.topics, self.devices = topics, devices
        self.cond = threading.Condition()
        self.announces: dict[int, dict[str, Any]] = {}
        self.acks: dict[tuple[str, int], tuple[float, bool]] = {}
        self.links = {d: MqttTransport(url, f"bench-{d}", clean_start=True, max_queued=100_000)
                      for d in devices}
        for d, link in self.links.items():
            link.subscribe(topics.ack(FED, d), self._on_ack)
            assert link.wait_connected(30)

    def _on_ack(self, topic: str, payload: bytes) -> None:
        from federation.envelope import decode

        body = json.loads(decode(payload).payload)
        with self.cond:
            self.acks[(body["device"], body["round"])] = (time.time(), bool(body["accepted"]))
            self.cond.notify_all()

    def _on_announce(self, topic: str, payload: bytes) -> None:
        from federation.envelope import decode

        body = json.loads(decode(payload).payload)
        with self.cond:
            if body["state"] == "open":
                self.announces[body["round"]] = body
            self.cond.notify_all()

    def listen_for_rounds(self) -> None:
        self.links[self.devices[0]].subscribe(self.topics.announce(FED), self._on_announce)

    def wait_announce(self, r: int, timeout: float = 3600) -> dict[str, Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: r in self.announces, timeout), "no announce"
            return self.announces[r]

    def wait_acks(self, r: int, timeout: float = 3600) -> list[tuple[float, bool]]:
        with self.cond:
            ok = self.cond.wait_for(lambda: all((d, r) in self.acks for d in self.devices),
                                    timeout)
        assert ok, "acks missing"
        return [self.acks[(d, r)] for d in self.devices]

    def upload(self, chunks: dict[str, Sequence[bytes]], spread: float, t_start: float,
               rng: np.random.Generator, flush_every: int | None) -> tuple[int, int]:
        """Publish every device's chunks; returns (messages, bytes)."""
        n_msgs = n_bytes = 0

        def publish(d: str, c: int) -> None:
            nonlocal n_msgs, n_bytes
            data = chunks[d][c]
            self.links[d].publish(self.topics.update(FED, d), data)
            n_msgs += 1
            n_bytes += len(data)

        if spread > 0:  # each box uploads at its own moment, as training times differ
            offsets = dict(zip(self.devices, rng.uniform(0, spread, len(self.devices)),
                               strict=True))
            for d in sorted(self.devices, key=offsets.__getitem__):
                time.sleep(max(0.0, t_start + offsets[d] - time.time()))
                for c in range(len(chunks[d])):
                    publish(d, c)
        else:
            longest = max(len(m) for m in chunks.values())
            for c in range(longest):  # round-robin: every update in flight at once
                for d in self.devices:
                    if c < len(chunks[d]):
                        publish(d, c)
                if flush_every and c % flush_every == flush_every - 1:
                    self.flush()  # bounded client-side queues: wait for the broker's PUBACKs
        if flush_every:
            self.flush()
        return n_msgs, n_bytes

    def flush(self) -> None:
        for link in self.links.values():
            link.flush(600)

    def close(self) -> None:
        for link in self.links.values():
            link.close()


def box_main(ns: argparse.Namespace) -> None:
    from bench.rig.box_updates import StoredUpdates, make_trainers
    from federation.crypto.keys import load_secret_context, read_private_key

    devices = ns.devices.split(",")
    keys = {d: read_private_key(ns.keys / f"{d}.key") for d in devices}
    links = DeviceLinks(ns.broker, devices)
    source: GeneratedUpdates | StoredUpdates
    cache_root = tmpdir("bench-train-")
    try:
        if ns.updates is not None:
            source = StoredUpdates(ns.updates, devices, keys, ns.chunk_size)
        else:
            trainers = (make_trainers(ns.lfw, devices, ns.n_boxes, ns.train_people,
                                      ns.train_budget, ns.part, cache_root)
                        if ns.train_people else {})
            secret = load_secret_context(ns.secret) if ns.mode == "ckks" else None
            source = GeneratedUpdates(devices, keys, secret=secret, length=ns.length,
                                      chunk_size=ns.chunk_size, trainers=trainers,
                                      precompute_rounds=ns.rounds if ns.precompute else 0)
        run_rounds(ns, links, source)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    links.close()


def run_rounds(ns: argparse.Namespace, links: DeviceLinks,
               source: GeneratedUpdates | StoredUpdates) -> None:
    devices = links.devices
    print(json.dumps({"ready": True}), flush=True)
    links.listen_for_rounds()
    cpu_ready = time.process_time()  # the rounds' CPU, without start-up
    for r in range(1, ns.rounds + 1):
        announce = links.wait_announce(r)
        t_start = time.time()
        chunks = source.round(r, announce)
        prepare_s = time.time() - t_start
        rng = np.random.default_rng([r, device_index(devices[0])])  # per process and round
        n_msgs, n_bytes = links.upload(chunks, ns.spread, t_start, rng, ns.flush_every)
        t_uploaded = time.time()
        upload = {d: sum(len(m) for m in chunks[d]) for d in devices} if ns.updates is None \
            else {}
        sent = [getattr(chunks[d], "sent_at", None) or t_start for d in devices]
        del chunks
        acks = links.wait_acks(r)
        print(json.dumps({"round": r, "devices": len(devices), "t_start": t_start,
                          "t_uploaded": t_uploaded, "messages": n_msgs, "bytes": n_bytes,
                          "cpu_s": time.process_time() - cpu_ready, "pid": os.getpid(),
                          "t_acks": [t for t, _ in acks], "t_sent": sent,
                          "accepted": all(ok for _, ok in acks), "prepare_s": prepare_s,
                          "upload_bytes": upload,
                          "train_s": max(source.train_s.values(), default=0.0)}), flush=True)


class BoxProcesses:
    """Emulated box processes for a bench, one per device group; their report lines are
    read as they come: a box that prints into a pipe nobody reads blocks once the pipe
    buffer fills (about 49 rounds of 100 boxes), and the run hangs."""

    def __init__(self, groups: list[list[str]], args: list[str], logs: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.lines: list[list[dict[str, Any]]] = []
        for i, group in enumerate(g for g in groups if g):
            self.procs.append(spawn_module(
                "bench.rig.box", *args, "--devices", ",".join(group),
                stderr=(logs / f"boxes-{i}.log").open("w")))
        for proc in self.procs:
            assert proc.stdout is not None
            for line in proc.stdout:
                if '"ready"' in line:
                    break
            else:
                raise RuntimeError(f"box process died; see {logs}/boxes-*.log")
        self._threads = []
        for proc in self.procs:
            mine: list[dict[str, Any]] = []
            self.lines.append(mine)
            self._threads.append(threading.Thread(target=self._read, args=(proc, mine),
                                                  daemon=True))
            self._threads[-1].start()

    @staticmethod
    def _read(proc: subprocess.Popen[str], into: list[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith('{"round"'):
                into.append(json.loads(line))

    def reports(self, timeout: float) -> list[list[dict[str, Any]]]:
        """Each process's round reports, once it has ended after its last round. Not
        SIGTERM first: the result can be published before a box has read its last ack
        (a loaded machine), and a box stopped then never prints its report."""
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        for t in self._threads:
            t.join(30)
        return self.lines

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()


def box_args(url: str, keys: Path, rounds: int, chunk: int, **options: Any) -> list[str]:
    """The command-line options of a box process; ``options`` by their long names."""
    args = ["--broker", url, "--keys", str(keys), "--rounds", str(rounds),
            "--chunk-size", str(chunk)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (None, False):
            args += [flag, str(value)]
    return args


def main() -> None:
    b = argparse.ArgumentParser(description="emulated devices of a bench")
    b.add_argument("--broker", required=True)
    b.add_argument("--devices", required=True)
    b.add_argument("--keys", type=Path, required=True)
    b.add_argument("--rounds", type=int, default=1)
    b.add_argument("--chunk-size", type=int, default=256 * 1024)
    b.add_argument("--updates", type=Path, help="send these stored updates (write_updates)")
    b.add_argument("--secret", type=Path, help="make CKKS updates under this secret context")
    b.add_argument("--mode", choices=["ckks", "plain"], default="ckks")
    b.add_argument("--precompute", action="store_true", help="encrypt before the announce")
    b.add_argument("--length", type=int, default=1_000_000)
    b.add_argument("--spread", type=float, default=0.0)
    b.add_argument("--flush-every", type=int, default=None,
                   help="wait for the broker's PUBACKs after every N rows of chunks")
    b.add_argument("--n-boxes", type=int, default=1, help="boxes in the federation")
    b.add_argument("--train-people", type=int, default=0,
                   help="train for real (edge.training.trainer) on this many LFW people per box")
    b.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    b.add_argument("--train-budget", type=float, default=20.0, help="seconds of training")
    b.add_argument("--part", default=DEFAULT_PART, help="federated part trained (--train-people)")
    ns = b.parse_args()
    if ns.updates is None and ns.mode == "ckks" and ns.secret is None:
        b.error("--secret or --updates is required")
    box_main(ns)


if __name__ == "__main__":
    main()
