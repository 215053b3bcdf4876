"""The fuzzed parsers' targets for bench.federation.fuzz: structure-aware mutators, and per target
a generator of inputs and the check of each outcome (see bench.federation.fuzz's docstring)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.chunking import Reassembler, split_blob
from federation.crypto.signing import KeyRing
from federation.envelope import MAGIC, Envelope, canonical_json, decode, encode, verify_envelope
from federation.errors import FederationError

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
        from aggregator.intake.spool import DiskReassembler

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
        from edge.config import BoxConfig
        from edge.provision import render_box_config

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
        from aggregator.state.config import load_config
        from aggregator.state.store import StoreError
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
