"""The edge box's federation client: join rounds, send encrypted updates, apply results.

Threads, one job each:

- the transport's delivery thread (paho's network loop) only decodes envelopes and
  queues them: it never trains, encrypts, decrypts or publishes;
- the client's worker owns all state: it verifies aggregator signatures, decides to
  join a round, publishes (and re-publishes) updates from the outbox, reassembles,
  decrypts and validates results, and hands accepted weights to the ``ModelSink``;
- a training job per round runs the ``LocalTrainer``, encrypts, signs and chunks the
  update at a lower CPU priority (``nice``), so the recognition pipeline keeps its
  cores, and stores the update in the on-disk outbox BEFORE the first publish.

Updates in flight (the outbox, resends) are ``edge.federated.sender``'s; results being
fetched are ``edge.federated.result_fetch``'s. Both are driven by the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.federated.api import (
    ClientConfig,
    ClientEvent,
    EventCallback,
    ModelSink,
    TransportFactory,
)
from edge.federated.outbox import Outbox, PendingUpdate
from edge.federated.result_fetch import ResultFetcher
from edge.federated.revocation import REPROVISION, RevocationState, read_record, record_revocation
from edge.federated.round_gate import (
    NO_NEW_SAMPLES,
    SampleSource,
    find_sample_source,
    load_client_state,
    samples_mark,
    save_client_state,
    sit_out_detail,
)
from edge.federated.sealing import Sealer, check_average
from edge.federated.sender import TERMINAL_REJECTIONS, UpdateSender
from edge.federated.status import BoxStatus
from edge.federated.verdicts import RoundVerdicts
from edge.priority import lower_thread_priority
from edge.training.api import LocalTrainer
from federation import topics
from federation.crypto.ckks import FederationContext, require_secret
from federation.crypto.packing import EncryptedUpdate, decrypt_average
from federation.crypto.signing import KeyRing
from federation.envelope import Envelope, decode, verify_envelope
from federation.errors import FederationError
from federation.messages import (
    REVOKED_REASON,
    ModelPointer,
    RevocationNotice,
    RoundAnnounce,
    parse_ack_topic,
)
from federation.transport.base import Will

# The client's types live in edge.federated.api; they are named here too because the
# tests import them from the client.
__all__ = ["ClientConfig", "ClientEvent", "EventCallback", "FederationClient", "ModelSink",
           "TransportFactory"]

log = logging.getLogger(__name__)


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
    ) -> None:
        require_secret(context)  # a box must be able to decrypt results
        self.config = config
        self.context = context
        self.signing_key = signing_key
        self.keyring = KeyRing({config.aggregator_id: aggregator_key})
        self.trainer = trainer
        self.part = trainer.part
        self.sink = sink
        self.on_event = on_event
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.state_dir / "outbox")
        self.ledger_path = self.state_dir / "privacy-ledger.json"  # DP budget spent
        self._sealer = Sealer(trainer, context, signing_key, self.outbox, config.fed_id,
                              config.device_id, self.ledger_path)
        self.verdicts = RoundVerdicts(self.state_dir)  # what each round did for this box
        base = np.asarray(base_vector, dtype=np.float32).ravel()
        if base.size != self.part.size:
            raise ValueError(f"base vector has {base.size} values, part {self.part.key} has "
                             f"{self.part.size}")
        self.version = config.initial_model
        self.vector = base
        self._state_path = self.state_dir / "client-state.json"
        state = load_client_state(self._state_path)
        self._last_submitted = int(state.get("last_submitted_round", 0))
        # announce min_new_samples (edge.federated.round_gate): new enrolled crops are counted from
        # the start of the last sent update's training (None: never sent, always join)
        self.samples = samples if samples is not None else find_sample_source(sink)
        self._samples_mark = samples_mark(state)
        self._job_mark: float | None = None
        self._sat_out = (0, 0.0)  # (round, monotonic time) it last checked and sat out
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._announce: RoundAnnounce | None = None
        self._not_joining: dict[str, Any] = {}  # why the last open round was not joined
        self._job: threading.Thread | None = None
        self._job_round = 0
        self._was_connected = False
        self._connects_seen = 0
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.counters: dict[str, int] = {}
        t = topics
        fed, dev = config.fed_id, config.device_id
        self._topics = {
            "announce": t.announce(fed),
            "ack": t.ack(fed, dev),
            "latest": t.model_latest(fed),
            "update": t.update(fed, dev),
            "status": t.status(fed, dev),
        }
        sink_fields = getattr(sink, "status_fields", None)  # the hot swap has them
        self.status = BoxStatus(signing_key, fed, dev, self.ledger_path,
                                sink_fields if callable(sink_fields) else None)
        self.transport = transport_factory(Will(self._topics["status"], self._status_payload(
            "offline"), retain=True))
        self.sender = UpdateSender(
            self.outbox, lambda chunk: self.transport.publish(self._topics["update"], chunk),
            config.retry_seconds, self._count)
        self._results = ResultFetcher(
            fed, lambda topic: self.transport.subscribe(topic, self._on_message("result")),
            self.transport.unsubscribe)

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
        served = self._served_by_sink()
        if served is not None:  # resume on what the box serves (its model versions)
            self.version, self.vector = served
            log.info("resuming on federated model %s", self.version)
        self.sender.load()
        self.transport.subscribe(self._topics["announce"], self._on_message("announce"))
        self.transport.subscribe(self._topics["ack"], self._on_message("ack"))
        self.transport.subscribe(self._topics["latest"], self._on_message("latest"))
        self._worker = threading.Thread(target=self._run, name="federation-client", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Say offline (retained), stop the worker, close the transport. Pending updates
        stay in the outbox for the next start."""
        self._stop.set()
        self._queue.put(("stop", None))
        if self._worker is not None:
            self._worker.join(timeout)
        try:
            if self.transport.connected:
                self.transport.publish(self._topics["status"], self._status_payload("offline"),
                                       retain=True)
        except FederationError as exc:
            log.debug("could not publish offline status: %s", exc)
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
                self._count(exc.reason)
                log.warning("federation message refused (%s): %s", exc.reason, exc.message)
            except Exception:  # the worker must survive any one bad message or job
                self._count("internal")
                log.exception("federation client: unexpected error handling %s", kind)

    def _dispatch(self, kind: str, item: Any) -> None:
        if kind == "announce":
            self._handle_announce(item)
        elif kind == "ack":
            self._handle_ack(item)
        elif kind == "latest":
            self._handle_pointer(item)
        elif kind == "result":
            self._handle_result_chunk(item)
        elif kind == "job_done":
            self._handle_job_done(*item)
        elif kind == "bad":
            topic, exc = item
            raise FederationError(exc.reason, f"undecodable message on {topic}: {exc.message}")
        elif kind == "tick":
            self._tick()

    def _verify(self, env: Envelope, kind: str) -> None:
        if env.kind != kind:
            raise FederationError("malformed", f"expected a {kind} message, got {env.kind}")
        verify_envelope(env, self.keyring, fed=self.config.fed_id)

    # announce ------------------------------------------------------------------------
    def _handle_announce(self, env: Envelope) -> None:
        self._verify(env, "announce")
        ann = RoundAnnounce.from_json(env.payload)
        if self._announce is not None and ann.round < self._announce.round:
            return  # an old announce redelivered after a newer one
        self._announce = ann
        self.sender.drop_closed_rounds(ann.round if ann.open else ann.round + 1)
        self._maybe_join()

    def _maybe_join(self) -> None:
        ann = self._announce
        if ann is None or not ann.open or ann.round <= self._last_submitted:
            return
        if self._job is not None and self._job.is_alive():
            return
        if ann.part_key and ann.part_key != self.part.key:
            # A vector of another part would be summed with the wrong layout: never train
            # or send it. Said once per round, in the log, the events and the status.
            if self._not_joining.get("round") != ann.round:
                self._count("wrong_part")
                detail = (f"the federation trains part {ann.part_key}, this box is set up "
                          f"for {self.part.key}; set the box's federation part to "
                          f"{ann.part_key.split('@')[0]} (edge.toml [federation] part)")
                self._not_joining = {"reason": "wrong_part", "round": ann.round,
                                     "detail": detail}
                log.error("round %d: not joining: %s", ann.round, detail)
                self._emit("not_joined", ann.round, {"reason": "wrong_part", "detail": detail})
                self._publish_status()
            return
        self._not_joining = {}
        if ann.devices and self.config.device_id not in ann.devices:
            if self._count("not_listed") == 1:
                log.warning("round %d does not list this device (%s): not joining; is it "
                            "registered with the aggregator?", ann.round, self.config.device_id)
            return
        if ann.base_model != self.version:
            log.info("round %d is based on %s, this box has %s: waiting for that result",
                     ann.round, ann.base_model, self.version)
            return
        if self._sit_out(ann):
            return
        self._job_round = ann.round
        self._job_mark = time.time()  # crops enrolled from now on are new for next time
        self._emit("joined", ann.round, {"base_model": ann.base_model})
        global_vector = None if self.version == self.config.initial_model else self.vector.copy()
        self._job = threading.Thread(
            target=self._train_and_seal, args=(ann, global_vector, self.vector.copy()),
            name=f"federation-train-r{ann.round}", daemon=True,
        )
        self._job.start()

    # training job (own thread, lower priority) ----------------------------------------
    def _train_and_seal(self, ann: RoundAnnounce, global_vector: np.ndarray | None,
                        base_vector: np.ndarray) -> None:
        lower_thread_priority(self.config.train_niceness)
        try:
            pending, stats = self._sealer.seal(ann, global_vector, base_vector)
            self._queue.put(("job_done", (ann.round, pending, stats, None)))
        except Exception as exc:  # reported by the worker; the next announce retries
            self._queue.put(("job_done", (ann.round, None, {}, exc)))

    def _handle_job_done(self, round_no: int, pending: PendingUpdate | None,
                         stats: dict[str, Any], error: Exception | None) -> None:
        if error is not None or pending is None:
            self._count("train_failed")
            log.error("round %d: local update failed: %s", round_no, error)
            self._emit("error", round_no, {"error": str(error)})
            return
        self._last_submitted = max(self._last_submitted, round_no)
        self._samples_mark = self._job_mark
        self._save_state()
        self._emit("submitted", round_no, stats)
        log.info("round %d: update %s sealed (%d samples, %d bytes in %d chunks, encrypt "
                 "%.2f s)", round_no, pending.msg_id[:12], stats["n_samples"], stats["bytes"],
                 stats["chunks"], stats["encrypt_s"])
        self.sender.send_new(pending)

    def _tick(self) -> None:
        connected = self.transport.connected
        connects = int(getattr(self.transport, "connects", 0))
        reconnected = connected and (not self._was_connected or connects != self._connects_seen)
        self._was_connected, self._connects_seen = connected, connects
        if reconnected:
            self._publish_status()
        if connected:
            self.sender.resend_due(reconnected)
        if self._not_joining.get("reason") == NO_NEW_SAMPLES and (
                time.monotonic() - self._sat_out[1] >= 5.0):
            self._maybe_join()  # enrolled meanwhile? (a cheap count, every few seconds)

    def _sit_out(self, ann: RoundAnnounce) -> bool:
        """Sit the round out when too few samples are new (said once per round)."""
        detail = sit_out_detail(ann.min_new_samples, self.samples, self._samples_mark,
                                self._last_submitted)
        if detail is None:
            if self._sat_out[0] == ann.round:
                self._publish_status()  # the status no longer says it sits out
            return False
        first = self._sat_out[0] != ann.round
        self._sat_out = (ann.round, time.monotonic())
        self._not_joining = {"reason": NO_NEW_SAMPLES, "round": ann.round, "detail": detail}
        if first:
            log.info("round %d: sitting out (%s)", ann.round, detail)
            self.verdicts.record(ann.round, None, "sat_out", detail)
            self._emit("sitting_out", ann.round, {"reason": NO_NEW_SAMPLES, "detail": detail})
            self._publish_status()
        return True

    # ack -----------------------------------------------------------------------------
    def _handle_ack(self, env: Envelope) -> None:
        self._verify(env, "ack")
        ack = parse_ack_topic(env.payload)
        if isinstance(ack, RevocationNotice):
            self._handle_revocation(ack)
            return
        if ack.reason == REVOKED_REASON:
            return  # says revoked without being a notice: not acted on
        if ack.msg is None or ack.round is None:
            return
        # "duplicate": the aggregator already counted this update (our resend crossed
        # its ack), which is a success for the box
        if ack.accepted or ack.reason == "duplicate":
            self.sender.forget(ack.round, ack.msg)
            self._emit("acked", ack.round, {"msg": ack.msg, "duplicate": not ack.accepted})
            log.info("round %d: update %s accepted%s", ack.round, ack.msg[:12],
                     "" if ack.accepted else " (already counted)")
            return
        reason = ack.reason or "unknown"
        self._count(f"rejected_{reason}")
        if reason in TERMINAL_REJECTIONS:
            if self.sender.forget(ack.round, ack.msg):
                log.warning("round %d: update %s rejected (%s: %s); dropped from the outbox",
                            ack.round, ack.msg[:12], reason, ack.detail)
        else:
            log.warning("round %d: update %s not taken (%s: %s); will resend", ack.round,
                        ack.msg[:12], reason, ack.detail)
        self._emit("rejected", ack.round, {"msg": ack.msg, "reason": reason,
                                           "detail": ack.detail})

    def _handle_revocation(self, notice: RevocationNotice) -> None:
        """The aggregator's signed notice that this device was revoked: record it, say
        offline, stop the worker and close the connection for good (the broker is about to
        cut it and refuses the certificate from now on)."""
        if notice.device != self.config.device_id:
            return  # a notice for another device id (this box was re-provisioned)
        record_revocation(self.state_dir, self.config.device_id, source="notice",
                          revoked_at=notice.revoked_at, detail=notice.detail)
        log.error("this box was revoked by the federation (%s); it stops connecting: "
                  "re-provision under a new device id", notice.detail)
        self._emit("revoked", 0, {"revoked_at": notice.revoked_at, "detail": notice.detail})
        self._stop.set()
        try:
            self.transport.publish(self._topics["status"], self._status_payload("revoked"),
                                   retain=True)
        except FederationError as exc:
            log.debug("could not publish the revoked status: %s", exc)
        self.transport.close()

    # results -------------------------------------------------------------------------
    def _handle_pointer(self, env: Envelope) -> None:
        self._verify(env, "result")
        pointer = ModelPointer.from_json(env.payload)
        self.sender.drop_closed_rounds(pointer.round + 1)
        if pointer.model == self.version:
            return
        ann = self._announce
        if ann is not None and ann.part_key and ann.part_key != self.part.key:
            log.warning("result %s not fetched: the federation trains part %s, this box %s",
                        pointer.model, ann.part_key, self.part.key)
            return
        self._results.want(pointer)

    def _handle_result_chunk(self, env: Envelope) -> None:
        if not self._results.is_wanted(env):
            return  # another result's chunk, or a stale retained one: not even verified
        self._verify(env, "result")
        done = self._results.add(env)
        if done is None:
            return
        wanted, blob = done
        try:
            self._apply_result(wanted, blob)
        except FederationError as exc:
            self._count("result_rejected")
            log.error("result of round %d NOT applied (%s): %s; keeping model %s",
                      wanted.round, exc.reason, exc.message, self.version)
            self._emit("result_rejected", wanted.round, {"reason": exc.reason,
                                                         "detail": exc.message})
            canary = getattr(exc, "canary", None)
            self.verdicts.record(wanted.round, wanted.model,
                                 "refused" if canary is not None else "rejected",
                                 f"{exc.reason}: {exc.message}", canary)
            self._publish_status()  # the sink's refusal shows in the retained status

    def _apply_result(self, pointer: ModelPointer, blob: bytes) -> None:
        t0 = time.perf_counter()
        summed = EncryptedUpdate.from_bytes(blob, self.context)
        average = decrypt_average(self.context, summed)
        decrypt_s = time.perf_counter() - t0
        check_average(average, self.vector, self.part, self.config.max_relative_change)
        t1 = time.perf_counter()
        # The sink stores the version durably before serving it (edge.serving.versions); a
        # crash before its commit leaves the old version served, and the retained
        # result is fetched and applied again after the restart.
        self.sink.apply(pointer.model, average)
        swap_s = time.perf_counter() - t1
        previous = self.version
        self.version, self.vector = pointer.model, average
        log.info("applied federated model %s (round %d, %d update(s)); was %s", pointer.model,
                 pointer.round, summed.n_updates, previous)
        report = getattr(self.sink, "last_report", None)
        canary = getattr(report, "canary", None)
        self.verdicts.record(pointer.round, pointer.model, "applied",
                             canary.reason if canary is not None else
                             "no canary (nothing to compare on this box)", canary)
        self._publish_status()
        self._emit("applied", pointer.round, {
            "model": pointer.model, "previous": previous, "updates": summed.n_updates,
            "decrypt_s": decrypt_s, "swap_s": swap_s, "bytes": len(blob), "vector": average,
        })
        self._maybe_join()

    # status --------------------------------------------------------------------------
    def _status_payload(self, state: str) -> bytes:
        return self.status.payload(state, self.version, self._last_submitted,
                                   self._not_joining, self.verdicts.recent())

    def _publish_status(self) -> None:
        try:
            self.transport.publish(self._topics["status"], self._status_payload("online"),
                                   retain=True)
        except FederationError as exc:
            log.debug("status not published: %s", exc.message)

    # helpers -------------------------------------------------------------------------
    def _served_by_sink(self) -> tuple[str, np.ndarray] | None:
        served_vector = getattr(self.sink, "served_vector", None)
        if not callable(served_vector):
            return None
        served = served_vector()
        if served is None:
            return None
        version, vector = served
        vector = np.asarray(vector, dtype=np.float32).ravel()
        return (str(version), vector) if vector.size == self.part.size else None

    def _emit(self, kind: str, round_no: int, data: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(ClientEvent(kind, round_no, data))
        except Exception:
            log.exception("federation event callback failed")

    def _count(self, key: str) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    def _save_state(self) -> None:
        save_client_state(self._state_path, self._last_submitted, self._samples_mark)

    def privacy_report(self) -> dict[str, Any] | None:
        """Differential-privacy budget this box has spent (None: never sent a DP update)."""
        return self.status.privacy_report()

    @property
    def pending_updates(self) -> int:
        return len(self.outbox.stored())
