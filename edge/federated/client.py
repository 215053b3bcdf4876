"""The edge box's federation client: join rounds, send encrypted updates, apply results.

Threads, one job each:

- the transport's delivery thread (paho's network loop) only decodes envelopes and
  queues them: it never trains, encrypts, decrypts or publishes;
- the client's worker owns all state: it verifies aggregator signatures and routes each
  message to the part that owns it, publishes (and re-publishes) updates from the
  outbox and the box's status;
- a training job per round runs the ``LocalTrainer``, encrypts, signs and chunks the
  update at a lower CPU priority (``nice``), so the recognition pipeline keeps its
  cores, and stores the update in the on-disk outbox BEFORE the first publish.

This module is that orchestration only. The parts the worker drives: joining a round
and its training job (``edge.federated.joining``), updates in flight (the outbox,
resends: ``edge.federated.sender``), what an ack or a revocation notice means
(``edge.federated.acks``), and fetching, decrypting, checking and applying results
(``edge.federated.result_apply``). The types a caller hands in live in
``edge.federated.api`` and are re-exported here.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.federated.acks import AckHandler
from edge.federated.api import (
    ClientConfig,
    ClientEvent,
    ClientEvents,
    EventCallback,
    ModelSink,
    TransportFactory,
)
from edge.federated.epochs import EpochKeys
from edge.federated.high_water import HighWaterMark
from edge.federated.joining import RoundJoiner
from edge.federated.outbox import Outbox
from edge.federated.result_apply import ResultApplier
from edge.federated.result_fetch import ResultFetcher
from edge.federated.revocation import REPROVISION, RevocationState, read_record
from edge.federated.round_gate import SampleSource, find_sample_source
from edge.federated.sealing import Sealer
from edge.federated.sender import UpdateSender
from edge.federated.status import BoxStatus
from edge.federated.verdicts import RoundVerdicts
from edge.training.api import LocalTrainer
from federation import topics
from federation.crypto.ckks import FederationContext, require_secret
from federation.crypto.signing import KeyRing
from federation.envelope import Envelope, decode, verify_envelope
from federation.errors import FederationError
from federation.files import PRIVATE_DIR, make_dirs
from federation.messages import ModelPointer, RoundAnnounce
from federation.transport.base import Will

# The client's types live in edge.federated.api; they are named here too because the
# tests import them from the client.
__all__ = ["ClientConfig", "ClientEvent", "EventCallback", "FederationClient", "ModelSink",
           "TransportFactory"]

log = logging.getLogger(__name__)

# stop(): the longest it waits for a round's training job once its child is ended (an
# update being encrypted and stored at that moment is finished, not lost)
STOP_TRAINING_S = 5.0


class FederationClient:
    def __init__(
        self,
        config: ClientConfig,
        transport_factory: TransportFactory,
        context: FederationContext,
        signing_key: Ed25519PrivateKey,
        aggregator_key: Ed25519PublicKey,
        trainer: LocalTrainer,
        sink: ModelSink,
        state_dir: Path,
        base_vector: np.ndarray,
        on_event: EventCallback | None = None,
        samples: SampleSource | None = None,
        epochs: EpochKeys | None = None,
    ) -> None:
        require_secret(context)  # a box must be able to decrypt results
        self.config = config
        self.context = context
        self.signing_key = signing_key
        self.keyring = KeyRing({config.aggregator_id: aggregator_key})
        self.trainer = trainer
        self.part = trainer.part
        self.sink = sink
        self.events = ClientEvents(on_event)
        self.counters = self.events.counters
        self.state_dir = Path(state_dir)
        make_dirs(self.state_dir, PRIVATE_DIR)
        self.epochs = epochs  # takes the next key epoch sealed to this box (None: cannot)
        self.outbox = Outbox(self.state_dir / "outbox")
        self.ledger_path = self.state_dir / "privacy-ledger.json"  # DP budget spent
        self._sealer = Sealer(trainer, context, signing_key, self.outbox, config.fed_id,
                              config.device_id, self.ledger_path)
        self.verdicts = RoundVerdicts(self.state_dir)  # what each round did for this box
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._was_connected = False
        self._connects_seen = 0
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        fed, dev = config.fed_id, config.device_id
        self._topics = {"announce": topics.announce(fed), "ack": topics.ack(fed, dev),
                        "latest": topics.model_latest(fed), "update": topics.update(fed, dev),
                        "status": topics.status(fed, dev), "key": topics.key(fed, dev)}
        # the parts the worker drives; each reaches the transport only when called
        self.sender = UpdateSender(
            self.outbox, lambda chunk: self.transport.publish(self._topics["update"], chunk),
            config.retry_seconds, self.events.count,
            connected=lambda: self.transport.connected,
            on_sent=lambda pending: self._rounds.delivery.sent(pending))
        self._results = ResultApplier(  # the model the box has, and the results replacing it
            ResultFetcher(fed, lambda topic: self.transport.subscribe(
                topic, self._on_message("result")), lambda t: self.transport.unsubscribe(t)),
            context, self.part, sink, self.verdicts, self.events,
            version=config.initial_model, vector=base_vector,
            max_relative_change=config.max_relative_change, verify=self._verify,
            publish_status=self._publish_status, applied=lambda: self._rounds.maybe_join(),
            mark=HighWaterMark(self.state_dir))
        self._rounds = RoundJoiner(  # whether to join a round, and its training job
            config, self.part, self._sealer, self.sender, self._results,
            samples if samples is not None else find_sample_source(sink), self.verdicts,
            self.events, self.state_dir / "client-state.json",
            publish_status=self._publish_status,
            job_done=lambda *outcome: self._queue.put(("job_done", outcome)))
        self._acks = AckHandler(dev, self.state_dir, self.sender, self.events,
                                self._stop_revoked, self._rounds.update_refused)
        sink_fields = getattr(sink, "status_fields", None)  # the hot swap has them
        self.status = BoxStatus(signing_key, fed, dev, self.ledger_path,
                                sink_fields if callable(sink_fields) else None)
        self.transport = transport_factory(Will(self._topics["status"], self._status_payload(
            "offline"), retain=True))

    @property
    def version(self) -> str:
        """The federated model the box has (``config.initial_model``: the pretrained one)."""
        return self._results.version

    @property
    def vector(self) -> np.ndarray:
        return self._results.vector

    # --- lifecycle --------------------------------------------------------------------
    @property
    def revoked(self) -> RevocationState | None:
        """What this box recorded about its revocation (``edge.federated.revocation``), or None."""
        return read_record(self.state_dir)

    def start(self) -> None:
        revoked = self.revoked
        if revoked is not None:  # a revoked box does not loop on reconnecting
            log.error("%s: not connecting; %s", revoked.summary(), REPROVISION)
            self._stop.set()
            self.transport.close()
            return
        self._results.resume()  # on what the box serves (its model versions)
        self.sender.load()
        self.transport.subscribe(self._topics["announce"], self._on_message("announce"))
        self.transport.subscribe(self._topics["ack"], self._on_message("ack"))
        self.transport.subscribe(self._topics["latest"], self._on_message("latest"))
        if self.epochs is not None:
            self.transport.subscribe(self._topics["key"], self._on_message("key"))
        self._worker = threading.Thread(target=self._run, name="federation-client", daemon=True)
        self._worker.start()

    @property
    def training_round(self) -> int | None:
        """The round the box trains for now (its training job runs), else None."""
        return self._rounds.training_round

    def stop(self, timeout: float = 10.0) -> None:
        """End a round's training that runs (not sent), stop the worker, say offline
        (retained), close the transport. Pending updates stay in the outbox for the
        next start."""
        self._stop.set()
        self._queue.put(("stop", None))
        # the trainer's child is ended rather than waited for: the job thread then
        # finishes within a moment (STOP_TRAINING_S bounds an update being sealed)
        self._rounds.stop_training(min(timeout, STOP_TRAINING_S))
        if self._worker is not None:
            self._worker.join(timeout)
        try:
            if self.transport.connected:
                self.transport.publish(self._topics["status"], self._status_payload("offline"),
                                       retain=True)
        except FederationError as exc:
            log.debug("could not publish offline status: %s", exc)
        self.transport.close()

    def _stop_revoked(self) -> None:
        """Revoked (``edge.federated.acks``): say so, stop the worker, close for good."""
        self._stop.set()
        try:
            self.transport.publish(self._topics["status"], self._status_payload("revoked"),
                                   retain=True)
        except FederationError as exc:
            log.debug("could not publish the revoked status: %s", exc)
        self.transport.close()

    # --- delivery thread: decode and queue only ----------------------------------------
    def _on_message(self, kind: str) -> Callable[[str, bytes], None]:
        def handler(topic: str, payload: bytes) -> None:
            if not payload:  # a retained message being deleted
                return
            try:
                env = decode(payload)
            except FederationError as exc:
                self._queue.put(("bad", (topic, exc)))
                return
            self._queue.put((kind, env))

        return handler

    # --- worker -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, item = self._queue.get(timeout=self.config.tick_seconds)
            except queue.Empty:
                kind, item = "tick", None
            if kind == "stop":
                break
            try:
                self._dispatch(kind, item)
                if kind != "tick":
                    self._dispatch("tick", None)
            except FederationError as exc:
                self.events.count(exc.reason)
                log.warning("federation message refused (%s): %s", exc.reason, exc.message)
            except Exception:  # the worker must survive any one bad message or job
                self.events.count("internal")
                log.exception("federation client: unexpected error handling %s", kind)

    def _dispatch(self, kind: str, item: Any) -> None:
        if kind == "announce":
            self._verify(item, "announce")
            self._rounds.announced(RoundAnnounce.from_json(item.payload))
        elif kind == "ack":
            self._verify(item, "ack")
            self._acks.handle(item.payload)
        elif kind == "latest":
            self._handle_pointer(item)
        elif kind == "result":
            self._results.add_chunk(item)
        elif kind == "key":
            self._verify(item, "key")  # relayed by the aggregator; sealed by the key holder
            self._new_epoch(item.payload)
        elif kind == "job_done":
            self._rounds.job_done(*item)
        elif kind == "bad":
            topic, exc = item
            raise FederationError(exc.reason, f"undecodable message on {topic}: {exc.message}")
        elif kind == "tick":
            self._tick()

    def _verify(self, env: Envelope, kind: str) -> None:
        if env.kind != kind:
            raise FederationError("malformed", f"expected a {kind} message, got {env.kind}")
        verify_envelope(env, self.keyring, fed=self.config.fed_id)

    def _tick(self) -> None:
        connected = self.transport.connected
        connects = int(getattr(self.transport, "connects", 0))
        reconnected = connected and (not self._was_connected or connects != self._connects_seen)
        self._was_connected, self._connects_seen = connected, connects
        if self._results.follow_served() or reconnected:
            self._publish_status()
        if connected:
            self.sender.resend_due(reconnected)
        self._results.retry_unstored()
        self._rounds.recount()

    def _new_epoch(self, sealed: bytes) -> None:
        """A key epoch sealed to this box (edge.federated.epochs): encrypt and decrypt
        with the new context from now on; results of the old key are refused."""
        assert self.epochs is not None
        ctx = self.epochs.take(sealed, self.context)
        if ctx is None:
            return
        previous, self.context = self.context, ctx
        self._sealer = replace(self._sealer, context=ctx)
        self._results.context = ctx
        self.events.emit("key_epoch", 0, {"key_id": ctx.key_id, "epoch": ctx.epoch,
                                          "previous": previous.key_id})
        self._rounds.use_context(self._sealer)  # a round waiting for this key may start

    def _handle_pointer(self, env: Envelope) -> None:
        self._verify(env, "result")
        pointer = ModelPointer.from_json(env.payload)
        self.sender.drop_closed_rounds(pointer.round + 1)
        ann = self._rounds.announce
        self._results.follow(pointer, ann.part_key if ann is not None else None)

    # status --------------------------------------------------------------------------
    def _status_payload(self, state: str) -> bytes:
        return self.status.payload(state, self.version, self._rounds.last_submitted,
                                   self._rounds.not_joining, self.verdicts.recent())

    def _publish_status(self) -> None:
        try:
            self.transport.publish(self._topics["status"], self._status_payload("online"),
                                   retain=True)
        except FederationError as exc:
            log.debug("status not published: %s", exc.message)

    # helpers -------------------------------------------------------------------------
    def privacy_report(self) -> dict[str, Any] | None:
        """Differential-privacy budget this box has spent (None: never sent a DP update)."""
        return self.status.privacy_report()

    @property
    def pending_updates(self) -> int:
        return len(self.outbox.stored())
