"""Structure-aware mutation fuzzing of the parsers that face hostile input.

    .venv/bin/python -m bench.federation.fuzz [--inputs 100000] [--seed 1] [--flood 200000]

Targets (each input is generated from valid samples by a seeded mutator: bit flips,
byte insertions/deletions, truncation, splicing, random bytes, and field-level
mutations of the JSON/TOML structure re-framed so the mutation reaches deep code):

- ``envelope``: ``federation.envelope.decode`` + ``verify_envelope`` on mutated signed
  envelopes. Allowed outcome: a FederationError, or an envelope whose signature
  verifies, in which case its header and payload must be exactly what was signed.
- ``chunks``: ``federation.chunking.Reassembler`` and the aggregator's disk
  ``DiskReassembler`` fed interleaved, duplicated, reordered and corrupted chunks of
  several blobs (and forged chunks with self-consistent chunk hashes). Allowed: a
  FederationError; every blob handed out must equal the original blob its header
  names (size and SHA-256 included).
- ``config``: the aggregator's ``config.json`` (``aggregator.state.config.load_config``) and
  the box's ``edge.toml`` (``edge.config.load_box_config``) from mutated files. Allowed:
  their ConfigError/StoreError; an accepted config must satisfy the documented
  constraints (ids are topic-safe, count_scale > 0, threads in 1..64...).

Any other exception is a crash: it is printed with the input (hex) and the run fails.
Then a flood: ``--flood`` first chunks of blobs that never complete, from a few signed
senders, into both reassemblers; Python heap (tracemalloc) and spool files must stay
bounded. No coverage guidance (atheris not used): the mutators are structure-aware.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common.fuzz_targets import (
    SENDERS,
    ChunkTarget,
    ConfigTarget,
    Crash,
    EnvelopeTarget,
)
from federation.chunking import Reassembler, split_blob


# --- driver ---------------------------------------------------------------------------
def fuzz(n_inputs: int, seed: int, workdir: Path,
         report: Callable[[str], None] = lambda _: None) -> dict[str, dict[str, int]]:
    """Run ``n_inputs`` generated inputs split across the targets; raise Crash on the
    first forbidden outcome. Returns outcome counts per target."""
    rng = random.Random(seed)
    keys = {s: Ed25519PrivateKey.generate() for s in SENDERS}
    targets: list[Any] = [EnvelopeTarget(rng, keys), ChunkTarget(rng, keys, workdir / "spool"),
                          ConfigTarget(workdir / "config")]
    shares = {"envelope": 0.6, "chunks": 0.1, "config": 0.3}
    stats: dict[str, dict[str, int]] = {}
    for target in targets:
        n = max(1, int(n_inputs * shares[target.name]))
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        for i in range(n):
            item = target.generate(rng)
            try:
                outcome = target.run(item)
            except Crash:
                raise
            except Exception as exc:
                raise Crash(f"{target.name} input {i} raised {type(exc).__name__}: {exc}\n"
                            f"input: {_show(item)}") from exc
            counts[outcome] = counts.get(outcome, 0) + 1
        counts["inputs"] = n
        stats[target.name] = counts
        report(f"{target.name}: {n} inputs in {time.perf_counter() - t0:.1f} s: {counts}")
    return stats


def _show(item: Any) -> str:
    if isinstance(item, bytes):
        return item[:400].hex()
    if isinstance(item, tuple):
        return f"{item[0]}: {item[1][:400]!r}"
    return repr(item)[:2000]


def flood(n_starts: int, workdir: Path) -> dict[str, float]:
    """First chunks of ``n_starts`` never-completing blobs from three senders into both
    reassemblers: peak Python heap and partials/spool files held at the end."""
    from aggregator.intake.spool import DiskReassembler

    keys = {s: Ed25519PrivateKey.generate() for s in SENDERS}
    template = {s: split_blob(b"x" * 8192, keys[s], kind="update", fed="fuzzfed", sender=s,
                              round=1, model="m", chunk_size=4096)[0] for s in SENDERS}
    mem = Reassembler(max_blob_bytes=1 << 20, max_inflight_bytes=4 << 20, max_partials=256)
    disk = DiskReassembler(workdir / "flood-spool", 1 << 20, 1 << 30)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    peaks = []
    for i in range(n_starts):
        payload = i.to_bytes(8, "big") * 512  # fresh 4 KiB per start, as on the wire
        env = dataclasses.replace(template[SENDERS[i % 3]], msg=f"{i:016x}", payload=payload,
                                  chunk_sha256=hashlib.sha256(payload).hexdigest())
        mem.add(env)
        disk.add(env)
        if i == n_starts // 4:
            gc.collect()  # count what is held, not garbage awaiting a collection
            peaks.append(tracemalloc.get_traced_memory()[0] - base)
    gc.collect()
    current, peak = (m - base for m in tracemalloc.get_traced_memory())
    tracemalloc.stop()
    files = sum(1 for _ in disk.dir.iterdir())
    return {"starts": n_starts, "peak_heap_mb": peak / 2**20,
            "heap_after_quarter_mb": (peaks[0] if peaks else current) / 2**20,
            "heap_end_mb": current / 2**20,
            "memory_partials": mem.partial_count, "memory_inflight_mb": mem.inflight_bytes / 2**20,
            "memory_evicted": mem.evicted, "disk_partials": len(disk.partials),
            "spool_files": files, "disk_evicted": disk.evicted}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--flood", type=int, default=200_000)
    ns = p.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)  # eviction warnings are expected by the flood
    with tempfile.TemporaryDirectory(prefix="fedface-fuzz-") as tmp:
        t0 = time.perf_counter()
        try:
            stats = fuzz(ns.inputs, ns.seed, Path(tmp),
                         report=lambda line: print(line, file=sys.stderr, flush=True))
        except Crash as exc:
            print(f"CRASH: {exc}")
            sys.exit(1)
        total = sum(s["inputs"] for s in stats.values())
        print(f"fuzz: {total:,} generated inputs, seed {ns.seed}, "
              f"{time.perf_counter() - t0:.0f} s: no crash, no invalid input accepted")
        for name, counts in stats.items():
            print(f"  {name:<9}" + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        f = flood(ns.flood, Path(tmp))
        print(f"flood: {f['starts']:,} chunk starts that never complete (3 senders): "
              f"Python heap held after the first quarter {f['heap_after_quarter_mb']:.1f} MB, "
              f"at the end {f['heap_end_mb']:.1f} MB, peak {f['peak_heap_mb']:.1f} MB; memory "
              f"reassembler holds {f['memory_partials']} partials / "
              f"{f['memory_inflight_mb']:.1f} MB ({f['memory_evicted']:,} evicted); disk spool "
              f"holds {f['disk_partials']} partials / {f['spool_files']} files "
              f"({f['disk_evicted']:,} evicted)")


if __name__ == "__main__":
    main()
