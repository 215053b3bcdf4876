"""Shared rig of the aggregator benchmarks: a real Mosquitto on a free port, the
aggregator service in its own process, scripted boxes in their own processes (real
CKKS ciphertexts from the federation API, or raw float32 for the plaintext baseline),
and a watcher that times rounds from announce to result pointer.

Run as a module for the child processes:
    python -m bench.aggregator_common agg --state DIR --broker URL --mode ckks|plain ...
    python -m bench.aggregator_common box --broker URL --fed F --devices a,b --keys DIR ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federation.packing import DEFAULT_COUNT_SCALE
from models.federated_parts import DEFAULT_PART

FED = "benchfed"
COUNT_SCALE = DEFAULT_COUNT_SCALE  # what the aggregator announces (single source of truth)
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path, max_queued: int = 100_000,
                    extra: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway Mosquitto for a bench (Nagle off, as the generated broker config)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence false\nset_tcp_nodelay true\nmax_queued_messages {max_queued}\n"
                    f"{extra}log_dest file {workdir}/mosquitto.log\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def box_vector(device_index: int, round_no: int, length: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(device_index * 1000 + round_no)
    return rng.normal(0, 0.1, length).astype(np.float32), 100 + 10 * device_index


# --- setup (orchestrator) ----------------------------------------------------------
@dataclass
class Federation:
    root: Path
    state: Path
    secret_path: Path
    key_dir: Path
    devices: list[str] = field(default_factory=list)


def make_federation(root: Path, n_devices: int) -> Federation:
    from aggregator.config import init_state
    from aggregator.registry import DeviceRegistry
    from aggregator.store import Store
    from federation.keys import create_federation_keys, write_private_key
    from federation.signing import generate_signing_key, public_key_hex

    files = create_federation_keys(root / "keys")
    state = root / "state"
    init_state(state, FED, files.public_context, count_scale=COUNT_SCALE)
    store = Store(state)
    fed = Federation(root, state, files.secret_context, root / "devices")
    for i in range(n_devices):
        dev = f"box{i}"
        key = generate_signing_key()
        write_private_key(fed.key_dir / f"{dev}.key", key)
        DeviceRegistry(store).add(dev, bytes.fromhex(public_key_hex(key)))
        fed.devices.append(dev)
    store.close()
    return fed


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.aggregator_common", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


class RoundWatcher:
    """Times each round: announce(r, open) seen -> model/latest(r) seen, one clock."""

    def __init__(self, url: str) -> None:
        from federation import topics
        from federation.mqtt import MqttTransport

        self.topics = topics
        self.opened: dict[int, float] = {}
        self.published: dict[int, float] = {}
        self.result_bytes: dict[int, int] = {}
        self.cond = threading.Condition()
        self.t = MqttTransport(url, "bench-watcher", clean_start=True)
        self.t.subscribe(topics.announce(FED), self._on_announce)
        self.t.subscribe(topics.model_latest(FED), self._on_pointer)
        self.t.subscribe(topics.result_filter(FED), self._on_result)
        self.results: dict[tuple[int, int], bytes] = {}
        assert self.t.wait_connected(10)

    def _on_announce(self, topic: str, payload: bytes) -> None:
        from federation.envelope import decode

        body = json.loads(decode(payload).payload)
        with self.cond:
            if body["state"] == "open":
                self.opened.setdefault(body["round"], time.perf_counter())
            self.cond.notify_all()

    def _on_pointer(self, topic: str, payload: bytes) -> None:
        from federation.envelope import decode

        body = json.loads(decode(payload).payload)
        with self.cond:
            self.published.setdefault(body["round"], time.perf_counter())
            self.cond.notify_all()

    def _on_result(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        parsed = self.topics.parse(topic)
        assert parsed.round is not None and parsed.index is not None
        with self.cond:
            self.result_bytes[parsed.round] = self.result_bytes.get(parsed.round, 0) + len(payload)
            self.results[(parsed.round, parsed.index)] = payload

    def wait_published(self, round_no: int, timeout: float) -> float:
        with self.cond:
            ok = self.cond.wait_for(lambda: round_no in self.published, timeout)
        if not ok:
            raise TimeoutError(f"round {round_no} not published in {timeout} s")
        return self.published[round_no] - self.opened[round_no]

    def result_blob(self, round_no: int) -> bytes:
        from federation.envelope import decode

        parts = sorted((i, p) for (r, i), p in self.results.items() if r == round_no)
        return b"".join(decode(p).payload for _, p in parts)

    def close(self) -> None:
        self.t.close()


def wait_ready(proc: subprocess.Popen[str], timeout_note: str = "box") -> None:
    """Block until a box process printed its ready line (after any precomputation)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"ready"' in line:
            return
    raise RuntimeError(f"{timeout_note} exited before it was ready: {proc.communicate()[1]}")


def stop(proc: subprocess.Popen[str], timeout: float = 10) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Output of a box that ends by itself after its last round. Not SIGTERM first: the
    result can be published before the box has read its last ack (a loaded machine),
    and a box stopped then never prints its report."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return stop(proc, 10)


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON line in output: {text[-2000:]}")


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- child: aggregator -------------------------------------------------------------
def agg_main(ns: argparse.Namespace) -> None:
    from aggregator.accumulator import PlainAccumulatorFactory
    from aggregator.config import load_config
    from aggregator.coordinator import RoundSettings
    from aggregator.runner import build_service

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(ns.state)
    settings = RoundSettings(ns.deadline, ns.quorum, cfg.count_scale, "", ns.chunk_size, 0)
    service, transport = build_service(ns.state, cfg, settings, ns.broker, "bench-agg",
                                       ns.rounds)
    if ns.mode == "plain":  # same service, same chunking/signing/persistence; numpy sum
        service.coordinator.accumulators = PlainAccumulatorFactory(ns.length + 1)
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    threading.Thread(target=_log_rss, args=(stop_event,), daemon=True).start()
    service.start()
    service.loop(stop_event)
    transport.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak_kb / 1024}), flush=True)


def _log_rss(stop_event: threading.Event) -> None:
    log = logging.getLogger("bench.rss")
    while not stop_event.wait(1.0):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        log.info("rss %.0f MB", pages * os.sysconf("SC_PAGE_SIZE") / 2**20)


# --- child: boxes ------------------------------------------------------------------
def box_main(ns: argparse.Namespace) -> None:
    from federation import topics
    from federation.chunking import split_blob
    from federation.envelope import decode, encode
    from federation.keys import load_secret_context, read_private_key
    from federation.mqtt import MqttTransport
    from federation.packing import encrypt_update

    secret = load_secret_context(ns.secret) if ns.mode == "ckks" else None
    devices = ns.devices.split(",")
    keys = {d: read_private_key(Path(ns.keys) / f"{d}.key") for d in devices}
    cond = threading.Condition()
    announces: dict[int, dict[str, Any]] = {}
    acks: dict[tuple[str, int], dict[str, Any]] = {}
    links = {d: MqttTransport(ns.broker, f"bench-{d}", clean_start=True) for d in devices}

    def on_announce(topic: str, payload: bytes) -> None:
        body = json.loads(decode(payload).payload)
        with cond:
            if body["state"] == "open":
                announces[body["round"]] = body
            cond.notify_all()

    def on_ack(topic: str, payload: bytes) -> None:
        body = json.loads(decode(payload).payload)
        with cond:
            acks[(body["device"], body["round"])] = body
            cond.notify_all()

    for d, link in links.items():
        link.subscribe(topics.ack(FED, d), on_ack)
        assert link.wait_connected(10)
    # --precompute: every round's update is encrypted before the aggregator even starts
    # (the orchestrator waits for "ready"), so no encryption falls inside a round.
    trainers = _make_trainers(ns, devices) if ns.train_people else {}
    train_s: dict[str, float] = {}  # this round's training time per device
    precomputed: dict[int, dict[str, bytes]] = {}
    if ns.precompute:
        for r in range(1, ns.rounds + 1):
            precomputed[r] = {}
            for d in devices:
                vec, n = box_vector(int(d[3:]), r, ns.length)
                precomputed[r][d] = (encrypt_update(secret, vec, n, COUNT_SCALE).to_bytes()
                                     if secret is not None else b"")
    print(json.dumps({"ready": True}), flush=True)
    links[devices[0]].subscribe(topics.announce(FED), on_announce)
    for round_no in range(1, ns.rounds + 1):
        def announced(r: int = round_no) -> bool:
            return r in announces

        def all_acked(r: int = round_no) -> bool:
            return all((d, r) in acks for d in devices)

        def make_blob(d: str, count_scale: float, r: int = round_no) -> bytes:
            if d in trainers:  # the box's real local training step, then its update
                update = trainers[d].local_update(None, r)
                vec, n = update.vector, update.n_samples
                train_s[d] = update.seconds
            else:
                vec, n = box_vector(int(d[3:]), r, ns.length)
            if secret is not None:
                return encrypt_update(secret, vec, n, count_scale).to_bytes()
            c_n = n / count_scale
            return np.append(vec * np.float32(c_n), np.float32(c_n)).astype("<f4").tobytes()

        blobs = precomputed.pop(round_no, {})
        with cond:
            assert cond.wait_for(announced, 600), "no announce"
            ann = announces[round_no]
        t0 = time.perf_counter()
        train_s.clear()
        per_device: dict[str, list[bytes]] = {}
        for d in devices:
            blob = blobs.get(d) or make_blob(d, ann["count_scale"])
            envs = split_blob(blob, keys[d], kind="update", fed=FED, sender=d, round=round_no,
                              model=ann["base_model"], chunk_size=ns.chunk_size)
            per_device[d] = [encode(e) for e in envs]
        prepare_s = time.perf_counter() - t0
        upload = {d: sum(len(p) for p in msgs) for d, msgs in per_device.items()}
        # Round-robin across devices: all updates in flight at once (worst case for the
        # aggregator's reassembly memory).
        longest = max(len(m) for m in per_device.values())
        for i in range(longest):
            for d, msgs in per_device.items():
                if i < len(msgs):
                    links[d].publish(topics.update(FED, d), msgs[i])
        del per_device
        with cond:
            ok = cond.wait_for(all_acked, 600)
        assert ok, "acks missing"
        accepted = all(acks[(d, round_no)]["accepted"] for d in devices)
        print(json.dumps({"round": round_no, "prepare_s": prepare_s, "accepted": accepted,
                          "upload_bytes": upload, "train_s": max(train_s.values(), default=0.0)}),
              flush=True)
    for link in links.values():
        link.close()


def trained_part_size(part: str | None = None) -> int:
    """Values of the federated part the trainer trains (the update length with --train);
    default: the project's default part."""
    from models.federated_parts import DEFAULT_PART, get_part

    return get_part(part or DEFAULT_PART).size


def _make_trainers(ns: argparse.Namespace, devices: list[str]) -> dict[str, Any]:
    """One real edge trainer per device, each on its own LFW people (5 photos each),
    trunk features cached before "ready" (a box caches them once, not every round)."""
    from bench.common.lfw import enrolment_crops
    from edge.trainer import TorchLocalTrainer, TrainConfig
    from models.federated_parts import get_part
    from models.registry import model_path

    n_boxes = int(ns.n_boxes)
    crops = enrolment_crops(ns.lfw, ns.train_people * n_boxes, 5)
    people = sorted(crops)
    trainers = {}
    for d in devices:
        index = int(d[3:])
        mine = {p: crops[p] for p in people[index::n_boxes]}
        cache = tmpdir(f"bench-train-{d}-")
        # epochs high, budget fixed: every round trains for the same wall time
        config = TrainConfig(epochs=1000.0, time_budget_s=ns.train_budget)
        # isolate=False: this process is the box's trainer already; the product's child
        # process (spawn + torch import per round) would add the same cost to both arms.
        trainer = TorchLocalTrainer(model_path("sface"), mine, cache, get_part(ns.part),
                                    config=config, isolate=False)
        trainer.warm_features()  # computes and caches the trunk features
        trainers[d] = trainer
    return trainers


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("agg")
    a.add_argument("--state", type=Path, required=True)
    a.add_argument("--broker", required=True)
    a.add_argument("--mode", choices=["ckks", "plain"], default="ckks")
    a.add_argument("--rounds", type=int, default=1)
    a.add_argument("--quorum", type=int, default=2)
    a.add_argument("--deadline", type=float, default=600.0)
    a.add_argument("--length", type=int, default=1_000_000)
    a.add_argument("--chunk-size", type=int, default=256 * 1024)
    b = sub.add_parser("box")
    b.add_argument("--broker", required=True)
    b.add_argument("--devices", required=True)
    b.add_argument("--keys", required=True)
    b.add_argument("--secret", type=Path, required=True)
    b.add_argument("--mode", choices=["ckks", "plain"], default="ckks")
    b.add_argument("--precompute", action="store_true", help="encrypt before the announce")
    b.add_argument("--rounds", type=int, default=1)
    b.add_argument("--length", type=int, default=1_000_000)
    b.add_argument("--chunk-size", type=int, default=256 * 1024)
    b.add_argument("--n-boxes", type=int, default=1, help="boxes in the federation")
    b.add_argument("--train-people", type=int, default=0,
                   help="train for real (edge.trainer) on this many LFW people per box")
    b.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    b.add_argument("--train-budget", type=float, default=20.0, help="seconds of training")
    b.add_argument("--part", default=DEFAULT_PART, help="federated part trained (--train-people)")
    ns = p.parse_args()
    agg_main(ns) if ns.cmd == "agg" else box_main(ns)


if __name__ == "__main__":
    main()
