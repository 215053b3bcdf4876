"""Fleet load: 100 emulated boxes per round through Mosquitto, next to 10 in the same run.

    .venv/bin/python -m bench.fleet_load [--fleets 10,100] [--rounds 3] [--distinct 6]
        [--length 1052928] [--procs 2]

What is real: a Mosquitto started here; the aggregator is the real ``fedface-aggregator
serve`` process with its summing worker processes (CPU time from the kernel: ``wait4``
rusage, which includes the reaped workers; peak RSS: a psutil poll of the process tree,
aggregator + workers, summed, next to the aggregator process's own ru_maxrss); every
device is its own MQTT client with its own Ed25519 key and signs its own chunks; the
ciphertexts are real CKKS encryptions under the federation key, of the default
federated part's length (``--length 0``: embed_bn, 5,376 values, ~0.13 MB per update)
or of ``--length`` values (1,052,928: the conv14 part, ~25 MB per update).

What is emulated (said again in the output): 100 boxes cannot each encrypt 1M values
every round on 2 cores, so ``--distinct`` real updates are encrypted ONCE before the
run and the devices send them in turn (device i, round r sends update (i + r) mod K).
The devices live as threads of ``--procs`` processes (one paho client each). Chunks of
all devices are published round-robin, so every update is in flight at once (the worst
case for the aggregator's reassembly).

``--spread S``: each box uploads at a random moment within S seconds of the announce
(training times differ between boxes) instead of all at once; the bench then also
shows whether the aggregator keeps pace with that arrival rate.

Per fleet size: round time (announce -> model/latest seen by a watcher), aggregator CPU
seconds and peak RSS, bytes and messages through the broker ($SYS counters) and sent by
the boxes, and the throughput comparison: the broker's delivery rate (updates the
broker took per second: round start to every box's last PUBACK) next to the
aggregator's summing throughput (updates acked per second: round start to the last
ack), their ratio, the aggregator's CPU seconds per update, the lag between the
broker having everything and the last ack, and each update's wait from upload to ack
(p50/p99/max). The aggregator keeps up when it acks at
>= 90% of the broker's delivery rate. The last round's result is decrypted and compared
with the plaintext weighted average.

Also the CPU per update of each side on the shared cores: the aggregator (all its
processes), the emulated boxes (their own process time over the rounds) and Mosquitto
(its /proc stat over the rounds). When all uploads come at once, their sum over a round
divided by the cores says how soon the machine can have done the round's work at all;
``--intake-processes K`` runs the service with K intake shards (aggregator.intake_shards),
and bench.fleet_floor runs the same burst against receivers that do no work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.aggregator_common import FED, REPO, RoundWatcher, start_mosquitto, tmpdir

COUNT_SCALE = 64.0


# --- orchestrator -----------------------------------------------------------------------
def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Queues deep enough for every chunk of a fleet in flight, $SYS counters each second."""
    return start_mosquitto(workdir, max_queued=1_000_000,
                           extra="max_inflight_messages 0\nsys_interval 1\n")


class SysCounters:
    """Mosquitto's $SYS byte/message totals (published every second)."""

    NAMES = ("bytes/received", "bytes/sent", "messages/received", "messages/sent")

    def __init__(self, url: str) -> None:
        from federation.mqtt import MqttTransport

        self.values: dict[str, int] = {}
        self.t = MqttTransport(url, "fleet-sys", clean_start=True)
        for name in self.NAMES:
            self.t.subscribe(f"$SYS/broker/{name}", self._on)
        assert self.t.wait_connected(10)

    def _on(self, topic: str, payload: bytes) -> None:
        self.values[topic.split("/broker/", 1)[1]] = int(payload)

    def snapshot(self) -> dict[str, int]:
        time.sleep(2.2)  # two $SYS periods: the totals include everything so far
        return dict(self.values)


def make_updates(secret_path: Path, out: Path, k: int, length: int) -> list[dict[str, Any]]:
    """K real encrypted updates (different weights and sample counts), written to files."""
    from federation.keys import load_secret_context
    from federation.packing import encrypt_update

    ctx = load_secret_context(secret_path)
    out.mkdir(parents=True, exist_ok=True)
    meta = []
    for i in range(k):
        rng = np.random.default_rng(1000 + i)
        w = rng.normal(0, 0.05, length).astype(np.float32)
        n = 100 + 25 * i
        t0 = time.perf_counter()
        blob = encrypt_update(ctx, w, n, COUNT_SCALE).to_bytes()
        (out / f"update-{i}.bin").write_bytes(blob)
        np.save(out / f"weights-{i}.npy", w)
        meta.append({"index": i, "n": n, "bytes": len(blob), "encrypt_s":
                     time.perf_counter() - t0})
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


def make_state(root: Path, keys_dir: Path, n_devices: int) -> tuple[Path, Path]:
    from aggregator.config import init_state
    from aggregator.registry import DeviceRegistry
    from aggregator.store import Store
    from federation.keys import PUBLIC_CONTEXT_NAME, write_private_key
    from federation.signing import generate_signing_key, public_key_hex

    state, dev_keys = root / "state", root / "devices"
    init_state(state, FED, keys_dir / PUBLIC_CONTEXT_NAME, count_scale=COUNT_SCALE)
    store = Store(state)
    for i in range(n_devices):
        key = generate_signing_key()
        write_private_key(dev_keys / f"box{i}.key", key)
        DeviceRegistry(store).add(f"box{i}", bytes.fromhex(public_key_hex(key)))
    store.close()
    return state, dev_keys


class BoxReports:
    """Each box process's per-round report lines, read as they come: a box that prints
    into a pipe nobody reads blocks once the pipe buffer fills (about 49 rounds of
    100 boxes), and the run hangs waiting for a round that box never starts."""

    def __init__(self, procs: list[subprocess.Popen[str]]) -> None:
        self.lines: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(p,), daemon=True)
                         for p in procs]
        for t in self._threads:
            t.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith('{"round"'):
                self.lines.append(line)

    def collect(self, timeout: float) -> list[dict[str, Any]]:
        for t in self._threads:
            t.join(timeout)
        return [json.loads(line) for line in self.lines]


def spawn_boxes(url: str, dev_keys: Path, updates: Path, devices: list[str], rounds: int,
                procs: int, chunk: int, spread: float) -> list[subprocess.Popen[str]]:
    out = []
    for p in range(procs):
        mine = devices[p::procs]
        if mine:
            out.append(subprocess.Popen(
                [sys.executable, "-m", "bench.fleet_load", "box", "--broker", url, "--keys",
                 str(dev_keys), "--updates", str(updates), "--devices", ",".join(mine),
                 "--rounds", str(rounds), "--chunk-size", str(chunk),
                 "--spread", str(spread)],
                cwd=REPO, stdout=subprocess.PIPE, text=True,
                stderr=(dev_keys.parent / f"boxes-{p}.log").open("w"),
                env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    for proc in out:
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"ready"' in line:
                break
        else:
            raise RuntimeError(f"box process died; see {dev_keys.parent}/boxes-*.log")
    return out


class AggregatorProcess:
    """``fedface-aggregator serve`` with an RSS poll; rusage from wait4 at exit."""

    def __init__(self, state: Path, url: str, n: int, rounds: int, log: Path,
                 sum_workers: int | None = None, intake: int = 1) -> None:
        import psutil

        exe = Path(sys.executable).parent / "fedface-aggregator"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--state", str(state), "--broker", url, "--quorum", str(n),
             "--rounds", str(rounds), "--round-deadline", "3600",
             "--intake-processes", str(intake),
             *([] if sum_workers is None else ["--sum-workers", str(sum_workers)])],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.ps = psutil.Process(self.proc.pid)
        self.max_rss = 0  # of the process tree: the aggregator and its summing workers
        self.cpu_at_open = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            try:
                procs = [self.ps, *self.ps.children(recursive=True)]
            except Exception:  # exited between two polls
                return
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except Exception:  # a worker exited between two calls
                    continue
            self.max_rss = max(self.max_rss, total)

    def mark_open(self) -> None:
        """CPU spent before round 1 opened (imports, context load): not summing work."""
        cpu = 0.0
        for proc in [self.ps, *self.ps.children(recursive=True)]:
            t = proc.cpu_times()
            cpu += t.user + t.system
        self.cpu_at_open = cpu

    def wait(self, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self._stop.set()
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.log.close()
                return {"cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime,
                        "rounds_cpu_s": usage.ru_utime + usage.ru_stime - self.cpu_at_open,
                        "main_rss_mb": usage.ru_maxrss / 1024,
                        "peak_rss_mb": self.max_rss / 2**20,
                        "exit": float(self.proc.returncode)}
            time.sleep(0.1)
        self.proc.kill()
        raise TimeoutError("the aggregator did not finish its rounds")


def run_fleet(n: int, rounds: int, keys_dir: Path, updates: Path, procs: int, chunk: int,
              meta: list[dict[str, Any]], sum_workers: int | None = None,
              spread: float = 0.0, intake: int = 1) -> dict[str, Any]:
    root = tmpdir(f"fleet-{n}-")
    broker, url = start_broker(root / "mosquitto")
    agg: AggregatorProcess | None = None
    boxes: list[subprocess.Popen[str]] = []
    try:
        state, dev_keys = make_state(root, keys_dir, n)
        devices = [f"box{i}" for i in range(n)]
        watcher = RoundWatcher(url)
        sys_counters = SysCounters(url)
        boxes = spawn_boxes(url, dev_keys, updates, devices, rounds, procs, chunk, spread)
        box_reports = BoxReports(boxes)
        before = sys_counters.snapshot()
        agg = AggregatorProcess(state, url, n, rounds, root / "aggregator.log", sum_workers,
                                intake)
        with watcher.cond:
            watcher.cond.wait_for(lambda: 1 in watcher.opened, 120)
        agg.mark_open()
        broker_cpu = _cpu_seconds(broker.pid)
        round_s = [watcher.wait_published(r, 3600) for r in range(1, rounds + 1)]
        broker_cpu = _cpu_seconds(broker.pid) - broker_cpu
        usage = agg.wait(600)
        after = sys_counters.snapshot()
        for b in boxes:
            b.wait(120)  # a box exits by itself after its last round's acks
        reports = box_reports.collect(30)
        blob = watcher.result_blob(rounds)
        error = _check_result(keys_dir, updates, blob, n, rounds, meta)
        watcher.close()
        sys_counters.t.close()
        result = _summarise(n, rounds, round_s, usage, before, after, reports, error, spread)
        per_proc: dict[int, float] = {}  # each box process's CPU over its rounds
        for x in reports:
            per_proc[x["pid"]] = max(per_proc.get(x["pid"], 0.0), x["cpu_s"])
        result["box_cpu_s_per_update"] = sum(per_proc.values()) / (n * rounds)
        result["broker_cpu_s_per_update"] = broker_cpu / (n * rounds)
        # the aggregator's own view of the same waits (its per-round log line)
        result["aggregator_says"] = [line.split(" INFO ")[-1] for line in
                                     (root / "aggregator.log").read_text().splitlines()
                                     if "age at ack" in line]
        return result
    finally:
        for p in boxes:
            if p.poll() is None:
                p.kill()
        if agg is not None and agg.proc.poll() is None:
            agg.proc.kill()
        broker.kill()
        broker.wait()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _check_result(keys_dir: Path, updates: Path, blob: bytes, n: int, round_no: int,
                  meta: list[dict[str, Any]]) -> float:
    from federation.keys import SECRET_CONTEXT_NAME, load_secret_context
    from federation.packing import EncryptedUpdate, decrypt_average

    ctx = load_secret_context(keys_dir / SECRET_CONTEXT_NAME)
    got = decrypt_average(ctx, EncryptedUpdate.from_bytes(blob, ctx))
    k = len(meta)
    picks = [(i + round_no) % k for i in range(n)]
    num = sum(meta[p]["n"] * np.load(updates / f"weights-{p}.npy").astype(np.float64)
              for p in picks)
    expected = num / sum(meta[p]["n"] for p in picks)
    return float(np.max(np.abs(got - expected)))


def _summarise(n: int, rounds: int, round_s: list[float], usage: dict[str, float],
               before: dict[str, int], after: dict[str, int], reports: list[dict[str, Any]],
               error: float, spread: float) -> dict[str, Any]:
    per_round = []
    # each update's wait: its first chunk handed to the client -> its ack received
    latency = sorted(a - t for x in reports for a, t in zip(x["t_acks"], x["t_sent"],
                                                             strict=True))
    for r in range(1, rounds + 1):
        mine = [x for x in reports if x["round"] == r]
        start = min(x["t_start"] for x in mine)
        uploaded = max(x["t_uploaded"] for x in mine)
        acks = sorted(t for x in mine for t in x["t_acks"])
        per_round.append({
            "updates": sum(x["devices"] for x in mine),
            "accepted": all(x["accepted"] for x in mine),
            "bytes": sum(x["bytes"] for x in mine), "messages": sum(x["messages"] for x in mine),
            "upload_s": uploaded - start, "last_ack_s": acks[-1] - start,
            "lag_s": acks[-1] - uploaded})
    med = {key: statistics.median(p[key] for p in per_round)
           for key in ("upload_s", "last_ack_s", "lag_s", "bytes", "messages")}
    return {
        "n": n, "rounds": rounds, "round_s": statistics.median(round_s), "round_all": round_s,
        "cpu_s": usage["cpu_s"], "peak_rss_mb": usage["peak_rss_mb"],
        "main_rss_mb": usage["main_rss_mb"],
        "all_accepted": all(p["accepted"] for p in per_round),
        "broker": {k: after.get(k, 0) - before.get(k, 0) for k in SysCounters.NAMES},
        "box_bytes_per_round": med["bytes"], "box_messages_per_round": med["messages"],
        "delivery_updates_per_s": n / med["upload_s"],
        "delivery_mb_per_s": med["bytes"] / med["upload_s"] / 1e6,
        "acked_updates_per_s": n / med["last_ack_s"],
        "acked_vs_delivery": med["upload_s"] / med["last_ack_s"],
        "agg_updates_per_cpu_s": n * rounds / usage["rounds_cpu_s"],
        "cpu_s_per_update": usage["rounds_cpu_s"] / (n * rounds),
        "rounds_cpu_s": usage["rounds_cpu_s"],
        "lag_s": med["lag_s"], "max_abs_error": error, "spread_s": spread,
        "ack_latency_ms": {"p50": 1e3 * latency[len(latency) // 2],
                           "p99": 1e3 * latency[min(len(latency) - 1, int(0.99 * len(latency)))],
                           "max": 1e3 * latency[-1]},
    }


def print_table(results: list[dict[str, Any]], meta: list[dict[str, Any]], length: int,
                procs: int) -> None:
    print(f"\nFleet load: {length:,}-value updates ({meta[0]['bytes'] / 1e6:.1f} MB each), "
          f"{results[0]['rounds']} rounds per fleet, one Mosquitto, the real "
          "`fedface-aggregator serve`")
    print(f"EMULATION: {len(meta)} distinct real CKKS updates were encrypted once before the "
          f"run; each emulated box (its own MQTT client and Ed25519 key, in {procs} "
          "processes) sends one of them per round, signed by itself.")
    hdr = (f"{'boxes':>6}{'round s':>9}{'agg CPU s*':>11}{'peak RSS MB**':>14}"
           f"{'box MB/round':>13}{'box msgs':>9}{'broker MB in/out':>18}{'broker msgs in/out':>20}")
    print(hdr)
    for r in results:
        b = r["broker"]
        rss = f"{r['peak_rss_mb']:.0f} ({r['main_rss_mb']:.0f})"
        print(f"{r['n']:>6}{r['round_s']:>9.1f}{r['rounds_cpu_s']:>11.1f}{rss:>14}"
              f"{r['box_bytes_per_round'] / 1e6:>13.1f}{r['box_messages_per_round']:>9.0f}"
              f"{b['bytes/received'] / 1e6:>9.0f}/{b['bytes/sent'] / 1e6:<8.0f}"
              f"{b['messages/received']:>10}/{b['messages/sent']:<9}")
    print("* aggregator CPU seconds (user+sys, its summing workers included) from round 1's "
          "announce to exit, all rounds")
    print("** peak RSS of the aggregator process tree (service + summing workers, summed); "
          "in brackets the service process alone (ru_maxrss)")
    print(f"\n{'boxes':>6}{'broker delivery':>22}{'aggregator summing':>21}{'ratio':>7}"
          f"{'CPU-s/update':>14}{'lag after upload':>18}{'max |err|':>11}")
    for r in results:
        print(f"{r['n']:>6}{r['delivery_updates_per_s']:>9.1f} upd/s {r['delivery_mb_per_s']:>4.0f}"
              f" MB/s{r['acked_updates_per_s']:>15.1f} upd/s{r['acked_vs_delivery']:>7.2f}"
              f"{r['cpu_s_per_update']:>14.4f}{r['lag_s']:>16.2f} s{r['max_abs_error']:>11.1e}")
    print("broker delivery: updates/s from round start to every box's last PUBACK; aggregator "
          "summing: updates/s from round start to the last ack (stored, summed, acked)")
    print("\nCPU per update, all rounds (everything shares this machine's cores):")
    cores = len(os.sched_getaffinity(0))
    for r in results:
        total = (r["cpu_s_per_update"] + r["box_cpu_s_per_update"]
                 + r["broker_cpu_s_per_update"])
        print(f"{r['n']:>6} boxes: aggregator {1e3 * r['cpu_s_per_update']:.2f} ms, emulated "
              f"boxes {1e3 * r['box_cpu_s_per_update']:.2f} ms, broker "
              f"{1e3 * r['broker_cpu_s_per_update']:.2f} ms; a round's CPU: "
              f"{1e3 * r['n'] * total / cores:.0f} ms of all {cores} cores (round closing "
              f"included), last ack {1e3 * r['n'] / r['acked_updates_per_s']:.0f} ms after "
              "the round started")
    spread = results[0]["spread_s"]
    print(f"\nuploads: {'all at once' if spread == 0 else f'spread at random over {spread:g} s'}"
          "; each update's wait from its upload to its ack, all rounds:")
    for r in results:
        lat = r["ack_latency_ms"]
        print(f"{r['n']:>6} boxes: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, "
              f"max {lat['max']:.0f} ms; the aggregator's log, last round: "
              f"{(r['aggregator_says'] or ['(no line)'])[-1]}")
    few, many = results[0], results[-1]
    growth = many["peak_rss_mb"] / few["peak_rss_mb"] - 1
    print(f"\npeak RSS {many['n']} vs {few['n']} boxes: {growth:+.1%} (target within 25%: "
          f"{'MET' if abs(growth) <= 0.25 else 'NOT MET'}); all updates accepted: "
          f"{all(r['all_accepted'] for r in results)}")
    for r in results:
        keeps_up = r["acked_vs_delivery"] >= 0.9
        verdict = (f"the aggregator keeps up with the broker (acks at "
                   f"{r['acked_vs_delivery']:.0%} of its delivery rate, last ack "
                   f"{r['lag_s']:.2f} s after the broker had every chunk)" if keeps_up else
                   f"the aggregator acks at {r['acked_vs_delivery']:.0%} of the broker's "
                   f"delivery rate, {r['lag_s']:.2f} s behind: it is the bottleneck")
        print(f"  {r['n']} boxes: {verdict}")


# --- child: emulated boxes ----------------------------------------------------------------
def box_main(ns: argparse.Namespace) -> None:
    from federation import topics
    from federation.envelope import Envelope, decode, encode, sign_envelope
    from federation.keys import read_private_key
    from federation.mqtt import MqttTransport

    meta = json.loads((ns.updates / "meta.json").read_text())
    blobs = [(ns.updates / f"update-{m['index']}.bin").read_bytes() for m in meta]
    pieces = []
    for blob in blobs:  # chunk payloads + hashes shared by every device sending that blob
        parts = [blob[i:i + ns.chunk_size] for i in range(0, len(blob), ns.chunk_size)]
        pieces.append((hashlib.sha256(blob).hexdigest(), len(blob), parts,
                       [hashlib.sha256(p).hexdigest() for p in parts]))
    devices = ns.devices.split(",")
    keys = {d: read_private_key(ns.keys / f"{d}.key") for d in devices}
    cond = threading.Condition()
    announces: dict[int, dict[str, Any]] = {}
    acks: dict[tuple[str, int], tuple[float, bool]] = {}
    links = {d: MqttTransport(ns.broker, f"fleet-{d}", clean_start=True, max_queued=100_000)
             for d in devices}

    def on_ack(topic: str, payload: bytes) -> None:
        body = json.loads(decode(payload).payload)
        with cond:
            acks[(body["device"], body["round"])] = (time.time(), bool(body["accepted"]))
            cond.notify_all()

    def on_announce(topic: str, payload: bytes) -> None:
        body = json.loads(decode(payload).payload)
        with cond:
            if body["state"] == "open":
                announces[body["round"]] = body
            cond.notify_all()

    for d, link in links.items():
        link.subscribe(topics.ack(FED, d), on_ack)
        assert link.wait_connected(30)
    links[devices[0]].subscribe(topics.announce(FED), on_announce)
    print(json.dumps({"ready": True}), flush=True)
    cpu_ready = time.process_time()  # the rounds' CPU, without start-up
    for r in range(1, ns.rounds + 1):
        def announced(r: int = r) -> bool:
            return r in announces

        def all_acked(r: int = r) -> bool:
            return all((d, r) in acks for d in devices)

        with cond:
            assert cond.wait_for(announced, 3600), "no announce"
            base = announces[r]["base_model"]
        t_start = time.time()
        plan = {}
        for d in devices:
            index = (int(d[3:]) + r) % len(pieces)
            plan[d] = (pieces[index], uuid.uuid4().hex)
        n_msgs = n_bytes = 0
        sent_at: dict[str, float] = {}

        def publish(d: str, c: int, plan: dict[str, Any] = plan, r: int = r,
                    base: str = base, sent_at: dict[str, float] = sent_at) -> None:
            nonlocal n_msgs, n_bytes
            (sha, size, parts, hashes), msg = plan[d]
            sent = sent_at.setdefault(d, time.time())  # ts: the box's send time, as a box
            env = Envelope(kind="update", fed=FED, sender=d, round=r, model=base, msg=msg,
                           blob_sha256=sha, blob_size=size, index=c, count=len(parts),
                           chunk_sha256=hashes[c], ts=sent, payload=parts[c])
            data = encode(sign_envelope(env, keys[d]))
            links[d].publish(topics.update(FED, d), data)
            n_msgs += 1
            n_bytes += len(data)

        if ns.spread > 0:  # each box uploads at its own moment, as training times differ
            rng = np.random.default_rng([r, int(devices[0][3:])])  # per process and round
            offsets = dict(zip(devices, rng.uniform(0, ns.spread, len(devices)), strict=True))
            for d in sorted(devices, key=offsets.__getitem__):
                time.sleep(max(0.0, t_start + offsets[d] - time.time()))
                for c in range(len(plan[d][0][2])):
                    publish(d, c)
        else:
            longest = max(len(p[2]) for p, _ in plan.values())
            for c in range(longest):  # round-robin: every update in flight at once
                for d in devices:
                    if c < len(plan[d][0][2]):
                        publish(d, c)
                if c % 4 == 3:  # bounded client-side queues: wait for the broker's PUBACKs
                    for link in links.values():
                        link.flush(600)
        for link in links.values():
            link.flush(600)
        t_uploaded = time.time()
        with cond:
            ok = cond.wait_for(all_acked, 3600)
        assert ok, "acks missing"
        print(json.dumps({"round": r, "devices": len(devices), "t_start": t_start,
                          "t_uploaded": t_uploaded, "messages": n_msgs, "bytes": n_bytes,
                          "cpu_s": time.process_time() - cpu_ready, "pid": os.getpid(),
                          "t_acks": [acks[(d, r)][0] for d in devices],
                          "t_sent": [sent_at[d] for d in devices],
                          "accepted": all(acks[(d, r)][1] for d in devices)}), flush=True)
    for link in links.values():
        link.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("box")
    b.add_argument("--broker", required=True)
    b.add_argument("--keys", type=Path, required=True)
    b.add_argument("--updates", type=Path, required=True)
    b.add_argument("--devices", required=True)
    b.add_argument("--rounds", type=int, default=1)
    b.add_argument("--chunk-size", type=int, default=256 * 1024)
    b.add_argument("--spread", type=float, default=0.0)
    p.add_argument("--fleets", default="10,100")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--distinct", type=int, default=6)
    p.add_argument("--length", type=int, default=0, help="values per update (0: the default part)")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--sum-workers", type=int, default=None,
                   help="serve --sum-workers (default: the service's own default)")
    p.add_argument("--chunk-size", type=int, default=256 * 1024)
    p.add_argument("--intake-processes", type=int, default=1,
                   help="serve --intake-processes (1: the service process receives updates)")
    p.add_argument("--spread", type=float, default=0.0,
                   help="seconds over which each round's uploads are spread at random (0: all "
                        "at once, the worst case)")
    ns = p.parse_args()
    if ns.cmd == "box":
        box_main(ns)
        return
    from federation.keys import SECRET_CONTEXT_NAME, create_federation_keys

    length = ns.length
    if length == 0:
        from models.federated_parts import DEFAULT_PART, get_part

        length = get_part(DEFAULT_PART).size
    work = tmpdir("fleet-keys-")
    create_federation_keys(work / "keys")
    print(f"encrypting {ns.distinct} real updates of {length:,} values...", file=sys.stderr,
          flush=True)
    meta = make_updates(work / "keys" / SECRET_CONTEXT_NAME, work / "updates", ns.distinct,
                        length)
    results = []
    for n in (int(x) for x in ns.fleets.split(",")):
        print(f"fleet of {n} boxes, {ns.rounds} rounds...", file=sys.stderr, flush=True)
        res = run_fleet(n, ns.rounds, work / "keys", work / "updates", ns.procs, ns.chunk_size,
                        meta, ns.sum_workers, ns.spread, ns.intake_processes)
        print(json.dumps(res), file=sys.stderr, flush=True)
        results.append(res)
    print_table(results, meta, length, ns.procs)
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
