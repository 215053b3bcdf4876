"""Issue 15's attack 2, as a registered box would mount it: a round whose sum is out of
range (a count slot of 2047), or a ciphertext under another key with the federation's
key id pasted in. Used by ``bench.attacks.overflow`` and the end-to-end test.

- ``overflow_update`` / ``foreign_key_update``: the hostile update's bytes. Both pass
  every check the aggregator can make (it holds no key: a ciphertext under another key
  or one that will overflow the sum looks like any other), so both are summed;
- ``HostileDevice``: a registered device over MQTT that sends a plausible update
  every round, and the hostile one in the round it attacks;
- ``PointerWatch``: when ``model/latest`` named which model (the recovery's clock);
- ``operator_view``: what ``fedface-aggregator status`` and ``rounds show`` tell.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.rig.procs import REPO
from federation import topics
from federation.chunking import split_blob
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.packing import encrypt_update
from federation.envelope import decode, encode
from federation.messages import ModelPointer, RoundAnnounce
from federation.transport.mqtt import MqttTransport

ATTACKS = ("overflow", "foreign_key")


def overflow_update(ctx: FederationContext, length: int, count_scale: float) -> bytes:
    """c*n = 2047: inside the CKKS range on its own (the box-side budget check of
    ``encrypt_update`` is skipped with headroom 1, as a hostile box would), so any honest
    update added to it wraps the sum around."""
    return encrypt_update(ctx, np.zeros(length, np.float32), int(2047 * count_scale),
                          count_scale, headroom=1).to_bytes()


def foreign_key_update(ctx: FederationContext, length: int, count_scale: float,
                       weights: np.ndarray | None = None) -> bytes:
    """An honest-looking update encrypted under another secret key of the same CKKS
    parameters, with this federation's key id in its header."""
    other = new_secret_context(ctx.params)
    w = np.zeros(length, np.float32) if weights is None else weights
    update = encrypt_update(other, w, 50, count_scale)
    return replace(update, key_id=ctx.key_id).to_bytes()


def hostile_update(kind: str, ctx: FederationContext, length: int,
                   count_scale: float) -> bytes:
    if kind == "overflow":
        return overflow_update(ctx, length, count_scale)
    if kind == "foreign_key":
        return foreign_key_update(ctx, length, count_scale)
    raise ValueError(f"unknown attack {kind!r}: {', '.join(ATTACKS)}")


class HostileDevice:
    """Sends, for each open round announced, ``update(announce)``'s bytes as a signed,
    chunked update of this device (announces are read unverified: the attacker only
    needs the round number and base)."""

    def __init__(self, url: str, fed: str, device_id: str, signing_key: Any,
                 update: Callable[[RoundAnnounce], bytes | None]) -> None:
        self.fed, self.device_id, self.key, self.update = fed, device_id, signing_key, update
        self.sent: dict[int, float] = {}  # round -> when sent (monotonic)
        self._announces: queue.Queue[RoundAnnounce | None] = queue.Queue()
        self.transport = MqttTransport(url, device_id, clean_start=True)
        self.transport.subscribe(topics.announce(fed), self._on_announce)
        self._thread = threading.Thread(target=self._run, name=f"hostile-{device_id}",
                                        daemon=True)
        self._thread.start()

    def _on_announce(self, topic: str, payload: bytes) -> None:
        if payload:  # publishing from the delivery thread could block it: queue
            self._announces.put(RoundAnnounce.from_json(decode(payload).payload))

    def _run(self) -> None:
        while (ann := self._announces.get()) is not None:
            if not ann.open or ann.round in self.sent:
                continue
            blob = self.update(ann)
            if blob is None:
                continue
            for env in split_blob(blob, self.key, kind="update", fed=self.fed,
                                  sender=self.device_id, round=ann.round,
                                  model=ann.base_model, chunk_size=ann.chunk_size):
                self.transport.publish(topics.update(self.fed, self.device_id), encode(env))
            self.sent[ann.round] = time.monotonic()

    def close(self) -> None:
        self._announces.put(None)
        self._thread.join(10)
        self.transport.close()


class PointerWatch:
    """When ``model/latest`` pointed at what (monotonic time, round, model, republished)."""

    def __init__(self, url: str, fed: str) -> None:
        self.seen: list[tuple[float, int, str, bool]] = []
        self.changed = threading.Condition()
        self.transport = MqttTransport(url, f"pointer-watch-{time.monotonic_ns()}",
                                       clean_start=True)
        self.transport.subscribe(topics.model_latest(fed), self._on)

    def _on(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        p = ModelPointer.from_json(decode(payload).payload)
        with self.changed:
            self.seen.append((time.monotonic(), p.round, p.model, p.republished))
            self.changed.notify_all()

    def first(self, model: str, after: float = 0.0) -> float | None:
        with self.changed:
            return next((t for t, _, m, _ in self.seen if m == model and t >= after), None)

    def close(self) -> None:
        self.transport.close()


@dataclass
class Outcome:
    """One attack's timeline (seconds from the poisoned result's publication)."""

    attack: str
    poisoned_round: int
    good_base_again_s: float | None = None  # model/latest points at a good model again
    good_round: int | None = None  # the first round built on it, applied by every box
    good_round_s: float | None = None
    failed_rounds: list[int] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # `status --json`
    show: dict[str, Any] = field(default_factory=dict)  # `rounds show N --json`


def aggregator_cli(*args: str) -> str:
    """``fedface-aggregator`` of this checkout (``python -m``, from the repository)."""
    proc = subprocess.run([sys.executable, "-m", "aggregator.cli", *args], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"fedface-aggregator {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def operator_view(state: Path, round_no: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the operator sees, without a broker: ``status`` and ``rounds show``."""
    status = json.loads(aggregator_cli("status", "--state", str(state), "--json",
                                       "--no-broker"))
    show = json.loads(aggregator_cli("rounds", "show", str(round_no), "--state", str(state),
                                     "--json", "--no-broker"))
    return status, show
