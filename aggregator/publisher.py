"""Everything the aggregator sends: signed announce, ack, result chunks, model pointer.

Every payload is a signed envelope (sender = the aggregator id); JSON bodies travel as
one-chunk blobs, result blobs in ``chunk_size`` pieces. See service.py for the fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.state_db import RoundRow
from federation import topics
from federation.chunking import split_blob
from federation.envelope import encode
from federation.errors import FederationError
from federation.transport import Transport

if TYPE_CHECKING:  # at run time only their attributes are read: an intake shard signs
    # acks with this module without loading the coordinator (and TenSEAL with it)
    from aggregator.coordinator import Decision, ResultReady

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 60.0  # seconds to wait for the broker's PUBACK of a result pointer


@dataclass(frozen=True)
class PublishedResult:
    sha256: str
    size: int
    chunks: int
    msg: str


@dataclass(frozen=True)
class Ack:
    """One decided ack, before signing (small and picklable: the service hands it to the
    intake shard that heard the update, which signs and publishes it)."""

    device: str
    round: int  # the envelope's round (0: the update's round is unknown)
    model: str
    body: dict[str, Any]


def ack_for(device: str, round_no: int | None, msg: str | None, d: Decision,
            current: RoundRow | None) -> Ack:
    body = {
        "device": device,
        "round": round_no,
        "msg": msg,
        "accepted": d.accepted,
        "reason": d.reason,
        "detail": d.detail,
        "current_round": None if current is None else current.round,
        "contributions": None if current is None else current.contributions,
    }
    return Ack(device, round_no or 0, "" if current is None else current.base_model, body)


class Publisher:
    def __init__(
        self,
        transport: Transport,
        signing_key: Ed25519PrivateKey,
        fed_id: str,
        aggregator_id: str,
        chunk_size: int,
    ) -> None:
        self.transport = transport
        self.signing_key = signing_key
        self.fed_id = fed_id
        self.aggregator_id = aggregator_id
        self.chunk_size = chunk_size

    def _confirmed(self, topic: str, payload: bytes, retain: bool) -> None:
        """Publish and wait for the broker's PUBACK. One client's QoS 1 messages reach
        the broker in order, so the PUBACK of a result's last message confirms the whole
        result before the round is marked published."""
        self.transport.publish(topic, payload, retain=retain, wait_timeout=CONFIRM_TIMEOUT)

    def json(
        self,
        topic: str,
        kind: str,
        body: dict[str, Any],
        round_no: int,
        model: str,
        retain: bool,
        confirm: bool = False,
    ) -> None:
        data = json.dumps(body, sort_keys=True).encode()
        for env in split_blob(
            data, self.signing_key, kind=kind, fed=self.fed_id, sender=self.aggregator_id,
            round=round_no, model=model, chunk_size=max(len(data), 1),
        ):
            if confirm:
                self._confirmed(topic, encode(env), retain)
            else:
                self.transport.publish(topic, encode(env), retain=retain)

    def ack(
        self, device: str, round_no: int | None, msg: str | None, d: Decision,
        current: RoundRow | None,
    ) -> None:
        self.send_ack(ack_for(device, round_no, msg, d, current))

    def send_ack(self, ack: Ack) -> None:
        """Sign and publish an ack decided here or, for an intake shard, by the service."""
        try:
            self.json(topics.ack(self.fed_id, ack.device), "ack", ack.body, ack.round,
                      ack.model, False)
        except FederationError as exc:  # e.g. a device id that is not a valid topic level
            log.warning("cannot ack %s: %s", ack.device, exc)

    def announce(self, round_no: int, base: str, payload: dict[str, Any]) -> None:
        closing = payload.get("state") != "open"  # the last message before exiting
        self.json(topics.announce(self.fed_id), "announce", payload, round_no, base, True, closing)
        log.info("announced round %d (state %s)", round_no, payload.get("state"))

    def result(
        self, event: ResultReady, blob: bytes, previous: RoundRow | None,
        msg: str | None = None, extra: dict[str, Any] | None = None,
    ) -> PublishedResult:
        """Result chunks (retained), then the model/latest pointer (retained, confirmed),
        then the previous round's retained chunks are cleared. ``msg``/``extra``: a
        re-publication of an older result (``aggregator.model_pins``)."""
        sha = hashlib.sha256(blob).hexdigest()
        msg = msg or sha[:32]  # deterministic: a republish after a crash is the same message
        envs = split_blob(
            blob, self.signing_key, kind="result", fed=self.fed_id, sender=self.aggregator_id,
            round=event.round, model=event.model, chunk_size=self.chunk_size, msg=msg,
        )
        for env in envs:
            self.transport.publish(
                topics.result(self.fed_id, event.round, env.index), encode(env), retain=True
            )
        pointer = {
            "round": event.round,
            "model": event.model,
            "base_model": event.base_model,
            "msg": msg,
            "blob_sha256": sha,
            "blob_size": len(blob),
            "chunks": len(envs),
            "chunk_size": self.chunk_size,
            "contributors": len(event.contributors),
            "result_topic": topics.result_filter(self.fed_id, event.round),
            **(extra or {}),
        }
        self.json(topics.model_latest(self.fed_id), "result", pointer, event.round, event.model,
                  True, confirm=True)
        if previous is not None and previous.round != event.round and previous.result_chunks:
            for index in range(previous.result_chunks):  # only the latest result stays retained
                self.transport.publish(
                    topics.result(self.fed_id, previous.round, index), b"", retain=True
                )
        return PublishedResult(sha, len(blob), len(envs), msg)
