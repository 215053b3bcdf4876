"""Structure-aware mutation fuzzing of the parsers that face hostile input.

    .venv/bin/python -m bench.fuzz [--inputs 100000] [--seed 1] [--flood 200000]

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
- ``config``: the aggregator's ``config.json`` (``aggregator.config.load_config``) and
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
import copy
import dataclasses
import gc
import hashlib
import json
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.chunking import Reassembler, split_blob
from federation.envelope import MAGIC, Envelope, canonical_json, decode, encode, verify_envelope
from federation.errors import FederationError
from federation.signing import KeyRing

SENDERS = ("box-a", "box-b", "box-c")


class Crash(AssertionError):
    """A target raised something it must not, or accepted what it must not."""


# --- generic byte mutator -------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        op = rng.randrange(8)
        if op == 0 and b:  # bit flip
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # interesting byte
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x22, 0x5C, 0x7B))
        elif op == 2:  # insert
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and b:  # delete a run
            i = rng.randrange(len(b))
            del b[i:i + rng.randrange(1, 17)]
        elif op == 4 and b:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 5 and corpus:  # splice with another sample
            other = rng.choice(corpus)
            i, j = rng.randrange(len(b) + 1), rng.randrange(len(other) + 1)
            b = b[:i] + bytearray(other[j:])
        elif op == 6 and len(b) >= 8:  # header length field
            b[4:8] = rng.choice((0, 1, len(b), len(b) - 8, 4096, 4097, 2**32 - 1)).to_bytes(
                4, "big", signed=False) if rng.random() < 0.9 else bytes(4)
        elif op == 7 and b:  # duplicate a run
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randrange(1, 33)]
    return bytes(b)


_WEIRD: tuple[Any, ...] = (None, True, False, 0, -1, 1, 2**53, 2**64, 1.5, -0.0, 1e308, "",
                           "x", "a/b", "+", "#", "\x00", "é" * 70, [], {}, [1], {"a": 1},
                           "0" * 64, "f" * 128, 1e-300)


def _weird(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(_WEIRD))  # fresh: a shared {} could end up inside itself


def mutate_value(rng: random.Random, value: Any) -> Any:
    if rng.random() < 0.5:
        return _weird(rng)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice((-1, 1, -value, 2**31, -(2**31)))
    if isinstance(value, float):
        return rng.choice((value * -1, value * 1e9, 0.0))
    if isinstance(value, str):
        return value[: rng.randrange(len(value) + 1)] + rng.choice(("", "/", "Z", " ", "\n"))
    return _weird(rng)


def mutate_mapping(rng: random.Random, data: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    for _ in range(rng.choice((1, 1, 2, 4))):
        target = out
        while True:  # descend into a nested section sometimes
            subs = [k for k, v in target.items() if isinstance(v, dict)]
            if not subs or rng.random() < 0.5:
                break
            target = target[rng.choice(subs)]
        op = rng.randrange(4)
        keys = list(target)
        if op == 0 and keys:
            k = rng.choice(keys)
            target[k] = mutate_value(rng, target[k])
        elif op == 1 and keys:
            del target[rng.choice(keys)]
        elif op == 2:
            target[rng.choice(("extra", "v", "kind", "fed", "sig", "__class__", ""))] = \
                _weird(rng)
        elif keys:
            a, b = rng.choice(keys), rng.choice(keys)
            target[a], target[b] = target[b], target[a]
    return out


# --- envelope target ------------------------------------------------------------------
class EnvelopeTarget:
    name = "envelope"

    def __init__(self, rng: random.Random, keys: dict[str, Ed25519PrivateKey]) -> None:
        self.keyring = KeyRing({s: k.public_key() for s, k in keys.items()})
        self.samples: list[Envelope] = []
        for i in range(24):
            sender = SENDERS[i % len(SENDERS)]
            blob = rng.randbytes(rng.choice((0, 1, 100, 3000)))
            self.samples += split_blob(blob, keys[sender], kind=rng.choice(
                ("update", "announce", "result", "partial")), fed="fuzzfed", sender=sender,
                round=rng.randrange(5), model=f"round-{i}", chunk_size=1024)
        self.corpus = [encode(e) for e in self.samples]

    def generate(self, rng: random.Random) -> bytes:
        choice = rng.random()
        if choice < 0.05:
            return rng.randbytes(rng.randrange(64))
        base = rng.choice(self.samples)
        if choice < 0.55:
            return mutate_bytes(rng, encode(base), self.corpus)
        header = mutate_mapping(rng, base.header())
        try:
            text = canonical_json(header) if rng.random() < 0.7 else json.dumps(header).encode()
        except (TypeError, ValueError):
            text = json.dumps(header, default=str).encode()
        return MAGIC + len(text).to_bytes(4, "big") + text + base.payload

    def run(self, data: bytes) -> str:
        try:
            env = decode(data)
        except FederationError:
            return "rejected"
        try:
            verify_envelope(env, self.keyring, fed="fuzzfed")
        except FederationError:
            return "decoded, refused"
        if not any(_same_signed(env, s) for s in self.samples):
            raise Crash(f"a mutated envelope verified but differs from what was signed: {env}")
        return "accepted (unchanged)"


def _same_signed(env: Envelope, sample: Envelope) -> bool:
    return env.header() == sample.header() and env.payload == sample.payload


# --- chunk reassembly target ----------------------------------------------------------
class ChunkTarget:
    name = "chunks"

    def __init__(self, rng: random.Random, keys: dict[str, Ed25519PrivateKey],
                 spool_dir: Path) -> None:
        from aggregator.spool import DiskReassembler

        self.keys = keys
        self.spool_dir = spool_dir
        self._disk_cls = DiskReassembler
        self.blobs: dict[str, bytes] = {}

    def generate(self, rng: random.Random) -> list[Envelope]:
        envs: list[Envelope] = []
        for _ in range(rng.randrange(1, 4)):
            sender = rng.choice(SENDERS)
            blob = rng.randbytes(rng.choice((1, 700, 5000, 20_000)))
            pieces = split_blob(blob, self.keys[sender], kind="update", fed="fuzzfed",
                                sender=sender, round=1, model="m",
                                chunk_size=rng.choice((512, 1024, 4096)))
            self.blobs[pieces[0].blob_sha256] = blob
            envs += pieces
        rng.shuffle(envs)
        out: list[Envelope] = []
        for env in envs:
            r = rng.random()
            if r < 0.1:
                out += [env, env]  # QoS 1 redelivery
            elif r < 0.2:
                out.append(_corrupt_chunk(rng, env))
            elif r < 0.25:
                continue  # lost: the blob never completes
            else:
                out.append(env)
        return out

    def run(self, envs: list[Envelope]) -> str:
        mem = Reassembler(max_blob_bytes=16_384, max_inflight_bytes=32_768, max_partials=8)
        disk = self._disk_cls(self.spool_dir, 16_384, 65_536)
        done = 0
        try:
            for env in envs:
                for target in (mem, disk):
                    try:
                        got = target.add(env)
                    except FederationError:
                        continue
                    if got is None:
                        continue
                    data = got.read_bytes() if isinstance(got, Path) else got
                    if isinstance(got, Path):
                        got.unlink()
                    if self.blobs.get(env.blob_sha256) != data:
                        raise Crash(f"reassembled a blob that is not the one its header "
                                    f"names ({env.msg}, {len(data)} bytes)")
                    done += 1
        finally:
            for key in list(disk.partials):
                disk.discard(*key)
        return f"{'some' if done else 'no'} blob completed"


def _corrupt_chunk(rng: random.Random, env: Envelope) -> Envelope:
    """A chunk whose header still hashes its own payload (so it passes the chunk hash):
    only the whole-blob checks can catch it."""
    payload = bytearray(env.payload or b"\x00")
    payload[rng.randrange(len(payload))] ^= 0xFF
    if rng.random() < 0.3:
        payload += b"x"
    fields: dict[str, Any] = {"payload": bytes(payload),
                              "chunk_sha256": hashlib.sha256(payload).hexdigest()}
    if rng.random() < 0.3:
        fields["count"] = env.count + rng.choice((1, -1 if env.count > 1 else 1))
        fields["index"] = min(env.index, fields["count"] - 1)
    return dataclasses.replace(env, **fields)


# --- config target --------------------------------------------------------------------
class ConfigTarget:
    name = "config"

    def __init__(self, workdir: Path) -> None:
        from edge.config import BoxConfig, render_box_config

        self.dir = workdir
        (workdir / "agg").mkdir(parents=True, exist_ok=True)
        self.agg_sample = {"fed": "fuzzfed", "key_id": "0" * 32, "aggregator_id": "aggregator",
                           "initial_model": "base", "count_scale": 64.0, "part_key": "",
                           "vector_length": 1000, "pki": {"ca_dir": "/tmp/ca"},
                           "broker": {"url": "mqtts://broker:8883"}}
        box = BoxConfig.model_validate({
            "box": {"device_id": "box-1", "fed": "fuzzfed", "data_dir": "/var/lib/fedface"},
            "camera": {"source": "/dev/video0"},
            "broker": {"url": "mqtts://broker:8883", "ca_file": "/c/ca.crt",
                       "cert_file": "/c/box.crt", "key_file": "/c/box.key"},
            "federation": {"key_id": "0" * 32, "secret_context": "/k/s.tenseal",
                           "device_key": "/k/device.key", "aggregator_key": "/k/agg.pub"}})
        self.box_sample = box.model_dump(mode="json")
        self.box_text = render_box_config(box).encode()
        self.agg_text = json.dumps(self.agg_sample, indent=2).encode()

    def generate(self, rng: random.Random) -> tuple[str, bytes]:
        which = rng.choice(("agg", "box"))
        r = rng.random()
        if which == "agg":
            if r < 0.5:
                return which, json.dumps(mutate_mapping(rng, self.agg_sample)).encode()
            return which, mutate_bytes(rng, self.agg_text, [self.box_text])
        if r < 0.5:
            return which, _to_toml(mutate_mapping(rng, self.box_sample)).encode()
        return which, mutate_bytes(rng, self.box_text, [self.agg_text])

    def run(self, item: tuple[str, bytes]) -> str:
        from aggregator.config import load_config
        from aggregator.store import StoreError
        from edge.config import ConfigError, load_box_config

        which, data = item
        if which == "agg":
            (self.dir / "agg" / "config.json").write_bytes(data)
            try:
                cfg = load_config(self.dir / "agg")
            except StoreError:
                return "rejected"
            if not (cfg.count_scale > 0 and _topic_safe(cfg.fed)
                    and _topic_safe(cfg.aggregator_id)):
                raise Crash(f"accepted an invalid aggregator config: {cfg}")
            return "accepted"
        path = self.dir / "edge.toml"
        path.write_bytes(data)
        try:
            box = load_box_config(path)
        except ConfigError:
            return "rejected"
        if not (_topic_safe(box.box.device_id) and _topic_safe(box.box.fed)
                and 1 <= box.box.threads <= 64 and box.broker.url.startswith("mqtt")):
            raise Crash(f"accepted an invalid box config: {box}")
        return "accepted"


def _topic_safe(value: str) -> bool:
    from federation.envelope import ID_RE

    return bool(ID_RE.match(value))


def _to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, body in data.items():
        if not isinstance(body, dict):
            lines.insert(0, f"{json.dumps(str(section))} = {_toml_scalar(body)}")
            continue
        lines.append(f"[{json.dumps(str(section))}]")
        for key, value in body.items():
            lines.append(f"{json.dumps(str(key))} = {_toml_scalar(value)}")
    return "\n".join(lines) + "\n"


def _toml_scalar(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and abs(value) < 1e300:
        return repr(value) if not isinstance(value, float) or value == value else "nan"
    if isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) else "{}"
    return json.dumps(str(value))


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
    from aggregator.spool import DiskReassembler

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
