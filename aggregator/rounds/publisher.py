"""Everything the aggregator sends: signed announce, ack, result chunks, model pointer.

Every payload is a signed envelope (sender = the aggregator id); control messages
(federation.messages) travel as one-chunk blobs, result blobs in ``chunk_size`` pieces.
"""

from __future__ import annotations

import hashlib
import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.rounds.records import Decision, OutgoingAck, PublishedResult, ResultReady
from aggregator.state.db import RoundRow
from federation import topics
from federation.chunking import one_envelope, split_blob
from federation.envelope import encode
from federation.errors import FederationError
from federation.messages import Ack, ModelPointer, RoundAnnounce
from federation.transport.base import Transport

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 60.0  # seconds to wait for the broker's PUBACK of a result pointer


# The control messages the aggregator signs and sends on its service topics
Message = RoundAnnounce | Ack | ModelPointer


def ack_for(device: str, round_no: int | None, msg: str | None, d: Decision,
            current: RoundRow | None) -> OutgoingAck:
    ack = Ack(d.accepted, d.reason, d.detail, device, round_no, msg,
              None if current is None else current.round,
              None if current is None else current.contributions)
    return OutgoingAck(round_no or 0, "" if current is None else current.base_model, ack)


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

    def send(
        self,
        topic: str,
        kind: str,
        message: Message,
        round_no: int,
        model: str,
        retain: bool,
        confirm: bool = False,
    ) -> None:
        """Sign and publish one control message as a one-chunk blob."""
        env = one_envelope(message.to_json(), self.signing_key, kind=kind, fed=self.fed_id,
                           sender=self.aggregator_id, round=round_no, model=model)
        payload = encode(env, validated=True)  # one_envelope's envelope is validated
        if confirm:
            self._confirmed(topic, payload, retain)
        else:
            self.transport.publish(topic, payload, retain=retain)

    def send_ack(self, ack: OutgoingAck) -> None:
        """Sign and publish an ack decided here or, for an intake shard, by the service."""
        try:
            self.send(topics.ack(self.fed_id, ack.device), "ack", ack.ack, ack.round,
                      ack.model, False)
        except FederationError as exc:  # e.g. a device id that is not a valid topic level
            log.warning("cannot ack %s: %s", ack.device, exc)

    def announce(self, ann: RoundAnnounce) -> None:
        closing = not ann.open  # the last message before exiting
        self.send(topics.announce(self.fed_id), "announce", ann, ann.round, ann.base_model,
                  True, closing)
        log.info("announced round %d (state %s)", ann.round, ann.state)

    def result(
        self, event: ResultReady, blob: bytes, previous: RoundRow | None,
        msg: str | None = None, for_round: int | None = None, root_model: str = "",
    ) -> PublishedResult:
        """Result chunks (retained), then the model/latest pointer (retained, confirmed),
        then the previous round's retained chunks are cleared. ``msg``/``for_round``: a
        re-publication of an older result as the base of round ``for_round``
        (``aggregator.rounds.pins``)."""
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
        pointer = ModelPointer(
            round=event.round, model=event.model, msg=msg, blob_sha256=sha,
            blob_size=len(blob), chunks=len(envs), base_model=event.base_model,
            contributors=len(event.contributors), chunk_size=self.chunk_size,
            result_topic=topics.result_filter(self.fed_id, event.round),
            republished=for_round is not None, for_round=for_round, policy=event.policy,
            root_model=root_model,
        )
        self.send(topics.model_latest(self.fed_id), "result", pointer, event.round, event.model,
                  True, confirm=True)
        if previous is not None and previous.round != event.round and previous.result_chunks:
            for index in range(previous.result_chunks):  # only the latest result stays retained
                self.transport.publish(
                    topics.result(self.fed_id, previous.round, index), b"", retain=True
                )
        return PublishedResult(sha, len(blob), len(envs), msg)

    def clear_pointer(self) -> None:
        """Delete the retained ``model/latest``: no box starting now fetches a result."""
        self._confirmed(topics.model_latest(self.fed_id), b"", True)

    def clear_result(self, row: RoundRow) -> None:
        """Delete a retained result (its chunks and the pointer at it): no result is
        retained, e.g. after the only one was found poisoned (aggregator.rounds.poison)."""
        self.clear_pointer()
        for index in range(row.result_chunks or 0):
            self.transport.publish(topics.result(self.fed_id, row.round, index), b"",
                                   retain=True)
