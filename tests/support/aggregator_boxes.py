"""Scripted edge boxes for the aggregator tests and benches: they encrypt real numpy
vectors with the federation secret context and sign real envelopes (the real edge
client lives in edge/ and is tested on its own)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from federation import topics
from federation.chunking import one_envelope, split_blob
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import EncryptedUpdate, decrypt_average, encrypt_update
from federation.crypto.signing import generate_signing_key, public_key_hex
from federation.envelope import Envelope, decode, encode
from federation.messages import NO_NEW_SAMPLES, DeviceStatus
from federation.transport.base import Transport
from federation.verdicts import Verdict


def envelope_json(payload: bytes) -> tuple[Envelope, dict[str, Any]]:
    env = decode(payload)
    return env, json.loads(env.payload)


@dataclass
class ScriptedBox:
    device_id: str
    fed: str
    secret: FederationContext
    transport: Transport
    acks: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = generate_signing_key()
        self.ack_event = threading.Condition()
        self.transport.subscribe(topics.ack(self.fed, self.device_id), self._on_ack)

    @property
    def public_hex(self) -> str:
        return public_key_hex(self.key)

    def _on_ack(self, topic: str, payload: bytes) -> None:
        _, body = envelope_json(payload)
        with self.ack_event:
            self.acks.append(body)
            self.ack_event.notify_all()

    def wait_acks(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        with self.ack_event:
            self.ack_event.wait_for(lambda: len(self.acks) >= n, timeout)
            return list(self.acks)

    def encrypted_blob(self, weights: np.ndarray, n_samples: int, count_scale: float) -> bytes:
        return encrypt_update(self.secret, weights, n_samples, count_scale).to_bytes()

    def envelopes(
        self, blob: bytes, round_no: int, model: str, chunk_size: int = 64 * 1024,
        fed: str | None = None, key: Any = None, msg: str | None = None,
    ) -> list[Envelope]:
        return split_blob(
            blob, key or self.key, kind="update", fed=fed or self.fed, sender=self.device_id,
            round=round_no, model=model, chunk_size=chunk_size, msg=msg,
        )

    def send(self, envs: list[Envelope]) -> None:
        for env in envs:
            self.transport.publish(topics.update(self.fed, self.device_id), encode(env))

    def send_raw(self, payload: bytes) -> None:
        self.transport.publish(topics.update(self.fed, self.device_id), payload)

    def say_status(self, sitting_out: int | None = None, model: str = "base",
                   verdicts: tuple[Verdict, ...] = ()) -> None:
        """Publish the box's signed, retained status: online, sitting round
        ``sitting_out`` out for want of new samples (None: not sitting out), with
        ``verdicts`` on the rounds' results."""
        not_joining = None if sitting_out is None else {"round": sitting_out,
                                                        "reason": NO_NEW_SAMPLES}
        body = DeviceStatus("online", self.device_id, model, time.time(),
                            not_joining=not_joining, verdicts=verdicts).to_json()
        env = one_envelope(body, self.key, kind="status", fed=self.fed,
                           sender=self.device_id, round=sitting_out or 0, model=model)
        self.transport.publish(topics.status(self.fed, self.device_id), encode(env),
                               retain=True)


def latest_announce(retained: dict[str, bytes], fed: str) -> dict[str, Any]:
    return envelope_json(retained[topics.announce(fed)])[1]


def collect_result(retained: dict[str, bytes], fed: str) -> tuple[dict[str, Any], bytes]:
    """The model/latest pointer and the result blob reassembled from retained chunks."""
    _, pointer = envelope_json(retained[topics.model_latest(fed)])
    parts = [
        decode(retained[topics.result(fed, pointer["round"], i)]).payload
        for i in range(pointer["chunks"])
    ]
    return pointer, b"".join(parts)


def decrypt_result(secret: FederationContext, blob: bytes) -> np.ndarray:
    return decrypt_average(secret, EncryptedUpdate.from_bytes(blob, secret))
