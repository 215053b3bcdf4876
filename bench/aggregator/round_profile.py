"""Where the time of one encrypted round goes, step by step, for one box's update.

    .venv/bin/python -m bench.aggregator.round_profile [--length 1000000] [--runs 3]

Each step is timed on its own in this process (one core; medians of --runs) with the
code the product runs: box encryption and serialisation, chunk signing and envelope
encoding, delivery through a real Mosquitto (started here), the aggregator's per-chunk
work (decode, signature check, spool write) and reassembly, its deserialisation of the
ciphertexts (prepare), the homomorphic add (commit), making the update durable (fsync
+ rename + SQLite commit), the result serialisation at round close, and the box's
decryption of the result. The plaintext baseline of the same steps is the float32 path
of bench.federation.he_overhead (numbers there).
"""

from __future__ import annotations

import argparse
import hashlib
import queue
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from aggregator.intake.spool import DiskReassembler
from aggregator.rounds.accumulator import CkksAccumulator
from aggregator.state.store import Store
from bench.rig.broker import start_mosquitto
from bench.rig.compare import Measured, comparison, print_comparisons
from federation import topics
from federation.chunking import split_blob
from federation.crypto.ckks import new_secret_context
from federation.crypto.packing import (
    DEFAULT_COUNT_SCALE,
    EncryptedUpdate,
    StreamingSum,
    decrypt_average,
    encrypt_update,
)
from federation.crypto.signing import generate_signing_key, verify
from federation.envelope import decode, encode
from federation.files import write_atomic
from federation.transport.mqtt import MqttTransport


class Steps:
    """``with steps("name"): ...`` adds the block's wall time to that step's list."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.times.setdefault(name, []).append(time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=256 * 1024)
    ns = p.parse_args()
    secret = new_secret_context()
    public = secret.public()
    key = generate_signing_key()
    rng = np.random.default_rng(0)
    vec = rng.normal(0, 0.1, ns.length).astype(np.float32)
    root = Path(tempfile.mkdtemp(prefix="round-profile-"))
    broker, url = start_mosquitto(root / "mosquitto")
    rx = MqttTransport(url, "profile-rx", clean_start=True)
    tx = MqttTransport(url, "profile-tx", clean_start=True)
    inbox: queue.Queue[bytes] = queue.Queue()
    rx.subscribe(topics.update_filter("prof"), lambda t, pl: inbox.put(pl))
    assert rx.wait_connected(10) and tx.wait_connected(10)
    time.sleep(0.3)
    pub = key.public_key()
    step = Steps()
    try:
        for run in range(ns.runs):
            state = root / f"state{run}"
            state.mkdir()
            store = Store(state)
            store.insert_round(1, "base", 0.0, 1e12, 1, {})
            with step("box: encrypt (CKKS, 1 core)"):
                upd = encrypt_update(secret, vec, 200, DEFAULT_COUNT_SCALE)
            with step("box: pack ciphertexts into the blob"):
                blob = upd.to_bytes()
            with step("box: chunk + SHA-256 + Ed25519 sign"):
                envs = split_blob(blob, key, kind="update", fed="prof", sender="box0", round=1,
                                  model="base", chunk_size=ns.chunk_size)
            with step("box: encode envelopes"):
                msgs = [encode(e) for e in envs]
            with step("broker: publish -> delivered (loopback Mosquitto)"):
                for m in msgs:
                    tx.publish(topics.update("prof", "box0"), m)
                received = [inbox.get(timeout=60) for _ in msgs]
            spool = DiskReassembler(state / "spool", 1 << 30, 1 << 33)
            ready = None
            with step("agg: decode + verify + spool + reassemble"):
                for raw in received:
                    env = decode(raw)
                    verify(pub, env.signing_bytes(), env.sig)
                    ready = spool.add(env) or ready
            assert ready is not None
            with step("agg: read reassembled blob"):
                data = ready.read_bytes()
            acc = CkksAccumulator(public, None)
            with step("agg: deserialise ciphertexts (prepare)"):
                prepared = acc.prepare(data)
            with step("agg: fsync + rename + SQLite commit"):
                store.accept_update(1, "box0", "00" * 16, hashlib.sha256(data).hexdigest(), 1,
                                    0.0, spooled=ready)
            with step("agg: first update becomes the sum"):
                acc.commit(prepared)
            second = acc.prepare(data)
            with step("agg: homomorphic add (+=)"):
                acc.commit(second)
            with step("agg: serialise the sum (round close)"):
                result = acc.to_bytes()
            with step("agg: write + fsync result"):
                store.write_blob("result.bin", result)
            with step("agg: chunk + sign + encode result"):
                for e in split_blob(result, key, kind="result", fed="prof", sender="agg",
                                    round=1, model="round-1", chunk_size=ns.chunk_size):
                    encode(e)
            # The previous design, for comparison: every accepted update re-serialised and
            # fsync'ed the whole running sum before its ack.
            running = StreamingSum(public, ns.length)
            running.add(EncryptedUpdate.from_bytes(data, public))
            with step("agg, previous design: add + serialise + write the running sum"):
                running.add(EncryptedUpdate.from_bytes(data, public))
                write_atomic(state / "running.bin", running.result().to_bytes(), mode=0o644)
            del running
            with step("box: decrypt + average the result"):
                decrypt_average(secret, EncryptedUpdate.from_bytes(result, secret))
            store.close()
            del prepared, second, acc
    finally:
        rx.close()
        tx.close()
        broker.kill()
    now_steps = ("agg: deserialise ciphertexts (prepare)", "agg: fsync + rename + SQLite commit",
                 "agg: homomorphic add (+=)")
    per_update = sum(statistics.median(step.times[k]) for k in now_steps)
    previous = statistics.median(
        step.times["agg, previous design: add + serialise + write the running sum"])
    now_runs = [sum(run) for run in zip(*(step.times[k] for k in now_steps), strict=False)]
    print(f"\none encrypted update of {ns.length:,} values ({len(blob) / 1e6:.1f} MB, "
          f"{len(msgs)} chunks), median of {ns.runs} runs, seconds")
    for name, values in step.times.items():
        print(f"  {name:64} {statistics.median(values):7.3f}")
    print(f"aggregator cost per accepted update: {per_update:.3f} s now (prepare + store + add; "
          f"the store's fsync overlaps prepare in the service), {previous:.3f} s before")
    print_comparisons("bench.aggregator.round_profile", [comparison(
        "aggregator cost per accepted update", Measured.of("now", now_runs), Measured.of(
            "previous design", step.times[
                "agg, previous design: add + serialise + write the running sum"]),
        "s", "{:.3f}")])


if __name__ == "__main__":
    main()
