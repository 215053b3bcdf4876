"""What an emulated box sends in a round, as a sequence of signed, encoded chunks:

- :class:`GeneratedUpdates`: the box makes its update in the round, as a box does: a
  synthetic vector (or the result of a real local training step, ``edge.training.trainer``),
  encrypted under the federation key (or raw float32 for the plaintext baseline), then
  ``federation.chunking.split_blob``;
- :class:`StoredUpdates`: K real encrypted updates made once before the run
  (:func:`write_updates`); device i sends update (i + r) mod K in round r, chunked once
  and signed per device as it is published (100 devices cannot each encrypt every round
  on two cores).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.rig.state import COUNT_SCALE, FED, box_vector, device_index


class GeneratedUpdates:
    def __init__(self, devices: list[str], keys: dict[str, Any], *, secret: Any, length: int,
                 chunk_size: int, trainers: dict[str, Any], precompute_rounds: int = 0) -> None:
        self.devices, self.keys, self.secret = devices, keys, secret
        self.length, self.chunk_size, self.trainers = length, chunk_size, trainers
        self.train_s: dict[str, float] = {}  # this round's training time per device
        # precompute: every round's update is encrypted before the aggregator even starts
        # (the orchestrator waits for "ready"), so no encryption falls inside a round.
        self.precomputed: dict[int, dict[str, bytes]] = {}
        for r in range(1, precompute_rounds + 1):
            self.precomputed[r] = {}
            for d in devices:
                vec, n = box_vector(device_index(d), r, length)
                self.precomputed[r][d] = (
                    self._encrypt(vec, n, COUNT_SCALE) if secret is not None else b"")

    def _encrypt(self, vec: np.ndarray, n: int, count_scale: float) -> bytes:
        from federation.crypto.packing import encrypt_update

        return encrypt_update(self.secret, vec, n, count_scale).to_bytes()

    def _blob(self, d: str, r: int, count_scale: float) -> bytes:
        if d in self.trainers:  # the box's real local training step, then its update
            update = self.trainers[d].local_update(None, r)
            vec, n = update.vector, update.n_samples
            self.train_s[d] = update.seconds
        else:
            vec, n = box_vector(device_index(d), r, self.length)
        if self.secret is not None:
            return self._encrypt(vec, n, count_scale)
        c_n = n / count_scale
        return np.append(vec * np.float32(c_n), np.float32(c_n)).astype("<f4").tobytes()

    def round(self, r: int, announce: dict[str, Any]) -> dict[str, Sequence[bytes]]:
        from federation.chunking import split_blob
        from federation.envelope import encode

        self.train_s.clear()
        blobs = self.precomputed.pop(r, {})
        out: dict[str, Sequence[bytes]] = {}
        for d in self.devices:
            blob = blobs.get(d) or self._blob(d, r, announce["count_scale"])
            envs = split_blob(blob, self.keys[d], kind="update", fed=FED, sender=d, round=r,
                              model=announce["base_model"], chunk_size=self.chunk_size)
            out[d] = [encode(e) for e in envs]
        return out


class _SignedChunks(Sequence[bytes]):
    """One device's copy of a stored update: each chunk signed when it is taken."""

    def __init__(self, piece: tuple[str, int, list[bytes], list[str]], device: str,
                 key: Any, r: int, base: str) -> None:
        self.piece, self.device, self.key, self.r, self.base = piece, device, key, r, base
        self.msg = uuid.uuid4().hex
        self.sent_at: float | None = None

    def __len__(self) -> int:
        return len(self.piece[2])

    def __getitem__(self, c: Any) -> Any:
        from federation.envelope import Envelope, encode, sign_envelope

        sha, size, parts, hashes = self.piece
        if self.sent_at is None:  # ts: the box's send time, as a box
            self.sent_at = time.time()
        env = Envelope(kind="update", fed=FED, sender=self.device, round=self.r,
                       model=self.base, msg=self.msg, blob_sha256=sha, blob_size=size,
                       index=c, count=len(parts), chunk_sha256=hashes[c], ts=self.sent_at,
                       payload=parts[c])
        return encode(sign_envelope(env, self.key))


class StoredUpdates:
    def __init__(self, updates: Path, devices: list[str], keys: dict[str, Any],
                 chunk_size: int) -> None:
        self.devices, self.keys = devices, keys
        meta = json.loads((updates / "meta.json").read_text())
        self.pieces = []
        for m in meta:  # chunk payloads + hashes shared by every device sending that blob
            blob = (updates / f"update-{m['index']}.bin").read_bytes()
            parts = [blob[i:i + chunk_size] for i in range(0, len(blob), chunk_size)]
            self.pieces.append((hashlib.sha256(blob).hexdigest(), len(blob), parts,
                                [hashlib.sha256(p).hexdigest() for p in parts]))
        self.train_s: dict[str, float] = {}

    def round(self, r: int, announce: dict[str, Any]) -> dict[str, Sequence[bytes]]:
        return {d: _SignedChunks(self.pieces[(device_index(d) + r) % len(self.pieces)], d,
                                 self.keys[d], r, announce["base_model"])
                for d in self.devices}


def write_updates(secret_path: Path, out: Path, k: int, length: int) -> list[dict[str, Any]]:
    """K real encrypted updates (different weights and sample counts), written to files."""
    from federation.crypto.keys import load_secret_context
    from federation.crypto.packing import encrypt_update

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


def stored_average(updates: Path, meta: list[dict[str, Any]], n: int,
                   round_no: int) -> np.ndarray:
    """The plaintext weighted average of what n devices sent in a round."""
    k = len(meta)
    picks = [(i + round_no) % k for i in range(n)]
    num = sum(meta[p]["n"] * np.load(updates / f"weights-{p}.npy").astype(np.float64)
              for p in picks)
    return np.asarray(num / sum(meta[p]["n"] for p in picks))


def make_trainers(lfw: Path, devices: list[str], n_boxes: int, people: int, budget: float,
                  part: str, cache_root: Path) -> dict[str, Any]:
    """One real edge trainer per device, each on its own LFW people (5 photos each),
    trunk features cached in ``cache_root`` before "ready" (a box caches them once, not
    every round)."""
    from bench.common.lfw import enrolment_crops
    from edge.training.trainer import TorchLocalTrainer, TrainConfig
    from models.federated_parts import get_part
    from models.registry import model_path

    crops = enrolment_crops(lfw, people * n_boxes, 5)
    chosen = sorted(crops)
    trainers = {}
    for d in devices:
        mine = {p: crops[p] for p in chosen[device_index(d)::n_boxes]}
        cache = cache_root / d
        # epochs high, budget fixed: every round trains for the same wall time
        config = TrainConfig(epochs=1000.0, time_budget_s=budget)
        # isolate=False: this process is the box's trainer already; the product's child
        # process (spawn + torch import per round) would add the same cost to both arms.
        trainer = TorchLocalTrainer(model_path("sface"), mine, cache, get_part(part),
                                    config=config, isolate=False)
        trainer.warm_features()  # computes and caches the trunk features
        trainers[d] = trainer
    return trainers
