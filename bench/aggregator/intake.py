"""Aggregator intake cost per update, in one process, without a broker.

    .venv/bin/python -m bench.aggregator.intake [--updates 300] [--runs 3] [--length 0]

Where bench.aggregator.fleet_load measures the whole system (Mosquitto, emulated boxes and the
aggregator sharing the machine), this isolates the aggregator's own Python work, so that
a change to it can be measured on a noisy 2-core machine. What is real: the
``AggregatorService`` with its SQLite store, spool and group commit on a temporary
directory; real CKKS ciphertexts of the default federated part under a public-only
context; one Ed25519 key per device and signed envelopes; the sum in this process
(``--sum-workers 0``). Not real: the transport is the in-memory bus (no paho, no
sockets), and there are no box subscribers, so an ack costs its signing and encoding only.

Per run it times, per update: the delivery-thread handler (parse, rate limit, verify,
spool) over all updates, then the worker's pumps until the round closes (group commits,
CKKS staging and sum, signed acks, and once: closing the round and publishing its
result). The same updates go through twice in the same run: as one chunk each (what a
box sends for the default part) and in 64 kB chunks (the general reassembly path) as the
baseline. Medians over ``--runs``.

``--steps``: also the CPU of each step of one update on its own, the same update
repeated (medians of 7 batches of 200): envelope decode, Ed25519 verify, SHA-256 of the
chunk, unpacking the bit-packed ciphertexts and checking them as SEAL would on load
(``aggregator.rounds.ciphertext_sum``; TenSEAL itself once per new metadata, not
here), adding them to a running sum modulo the primes, and signing + encoding the ack.
(MQTT receive is not here: no broker.)
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aggregator.rounds.ciphertext_sum import CiphertextChecker
from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from bench.rig.compare import Measured, comparison, print_comparisons
from federation import topics
from federation.chunking import DEFAULT_CHUNK_SIZE, split_blob
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.packing import encrypt_update, parse_layout
from federation.crypto.signing import generate_signing_key, public_key_hex, verify
from federation.envelope import decode, encode
from federation.messages import Ack
from federation.transport.base import InMemoryBus, InMemoryTransport
from models.federated_parts import DEFAULT_PART, get_part

FED = "benchfed"
SMALL_CHUNK = 64 * 1024


def _one_run(secret: FederationContext, blob: bytes, n: int, chunk_size: int,
             root: Path) -> tuple[float, float]:
    """(delivery ms per update, pump ms per update) for n devices sending ``blob``."""
    state = root / f"state-{chunk_size}"
    state.mkdir()
    bus = InMemoryBus(synchronous=True)
    store = Store(state)
    try:
        keys = {f"box{i}": generate_signing_key() for i in range(n)}
        registry = DeviceRegistry(store)
        for device, key in keys.items():
            registry.add(device, bytes.fromhex(public_key_hex(key)))
        service = AggregatorService(
            InMemoryTransport(bus, "aggregator"), store, secret.public(), generate_signing_key(),
            FED, settings=RoundSettings(deadline_seconds=3600, quorum=n, count_scale=64.0),
            accumulators=None)
        service.start()
        announce = decode(bus.retained[topics.announce(FED)])
        messages = [
            (topics.update(FED, device), encode(env))
            for device, key in keys.items()
            for env in split_blob(blob, key, kind="update", fed=FED, sender=device,
                                  round=announce.round, model=announce.model,
                                  chunk_size=chunk_size)
        ]
        t0 = time.process_time()
        for topic, payload in messages:
            service.intake.on_update(topic, payload)  # what the MQTT thread calls
        t1 = time.process_time()
        while service.coordinator.current is not None and \
                service.coordinator.current.round == announce.round and \
                service.coordinator.current.status == "open":
            if service.pump() == 0:
                break
        t2 = time.process_time()
        accepted = store.counters()["accepted"]
        if accepted != n:
            raise SystemExit(f"only {accepted} of {n} updates were accepted")
        service.close()
        return 1e3 * (t1 - t0) / n, 1e3 * (t2 - t1) / n
    finally:
        store.close()


def _per_call_us(fn: Callable[[], object], batches: int = 7, calls: int = 200) -> float:
    times = []
    for _ in range(batches):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        times.append((time.process_time() - t0) / calls)
    return 1e6 * statistics.median(times)


def print_steps(secret: FederationContext, blob: bytes) -> None:
    """Each step of one update's intake on its own (see the module docstring)."""
    public = secret.public()
    key = generate_signing_key()
    (env,) = split_blob(blob, key, kind="update", fed=FED, sender="box0", round=1,
                        model="m", chunk_size=len(blob))
    payload = encode(env)
    layout = parse_layout(blob)
    cts = [memoryview(blob)[a:b] for a, b in layout.spans]
    sizes = [min(public.params.slots, layout.length + 1 - i * public.params.slots)
             for i in range(len(cts))]
    checker = CiphertextChecker(public)
    acc = [checker.load(ct, size, i) for i, (ct, size) in enumerate(zip(cts, sizes, strict=True))]
    loaded = [checker.load(ct, size, i) for i, (ct, size) in enumerate(zip(cts, sizes,
                                                                          strict=True))]
    ack = Ack(accepted=True, device="box0", round=1, msg=env.msg)

    def add() -> None:
        for a, v in zip(acc, loaded, strict=True):
            checker.add_into(a, v)

    steps = {
        "envelope decode (JSON, validation)": lambda: decode(payload),
        "Ed25519 verify (header's canonical JSON)": lambda: verify(
            key.public_key(), env.signing_bytes(), env.sig),
        "SHA-256 of the chunk": lambda: hashlib.sha256(env.payload).hexdigest(),
        f"unpack + check {len(cts)} ciphertexts": lambda: [
            checker.load(c, size, i) for i, (c, size) in enumerate(zip(cts, sizes, strict=True))],
        "add to the running sum (mod p, numpy)": add,
        "ack: sign and encode": lambda: [encode(e, validated=True) for e in split_blob(
            ack.to_json(), key, kind="ack", fed=FED, sender="aggregator", round=1,
            model="m", chunk_size=4096)],
    }
    print(f"\nper step, one update of {len(blob) / 1e3:.0f} kB (CPU us, median of 7 x 200):")
    for name, fn in steps.items():
        print(f"  {name:<40}{_per_call_us(fn):>8.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=300, help="devices, one update each")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--length", type=int, default=0, help="values per update (0: default part)")
    p.add_argument("--steps", action="store_true", help="also each step on its own")
    ns = p.parse_args()
    length = ns.length or get_part(DEFAULT_PART).size
    secret = new_secret_context()
    rng = np.random.default_rng(0)
    blob = encrypt_update(secret, rng.normal(0, 0.05, length).astype(np.float32), 50,
                          64.0).to_bytes()
    print(f"{ns.updates} updates of {length:,} values ({len(blob) / 1e3:.0f} kB), "
          f"{ns.runs} runs, sum in this process, CPU time of this process")
    rows: dict[str, list[tuple[float, float]]] = {"one chunk": [], "64 kB chunks": []}
    for _ in range(ns.runs):
        root = Path(tempfile.mkdtemp(prefix="fedface-intake-"))
        try:
            for name, size in (("one chunk", DEFAULT_CHUNK_SIZE), ("64 kB chunks", SMALL_CHUNK)):
                if name == "one chunk" and len(blob) > size:
                    raise SystemExit(f"{len(blob)} bytes do not fit one {size}-byte chunk")
                rows[name].append(_one_run(secret, blob, ns.updates, size, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'path':<14}{'delivery ms/upd':>17}{'pump ms/upd':>13}{'total':>8}"
          f"{'updates/CPU-s':>15}")
    totals = {}
    for name, runs in rows.items():
        delivery = statistics.median(r[0] for r in runs)
        pump = statistics.median(r[1] for r in runs)
        totals[name] = statistics.median(r[0] + r[1] for r in runs)
        print(f"{name:<14}{delivery:>17.3f}{pump:>13.3f}{totals[name]:>8.3f}"
              f"{1e3 / totals[name]:>15.0f}")
    one, small = ([r[0] + r[1] for r in rows[k]] for k in ("one chunk", "64 kB chunks"))
    print_comparisons("bench.aggregator.intake", [comparison(
        "CPU per update", Measured.of("one chunk", one), Measured.of("64 kB chunks", small),
        "ms", "{:.3f}")])
    if ns.steps:
        print_steps(secret, blob)


if __name__ == "__main__":
    main()
