"""Wires a Transport to the Coordinator.

Two threads, one rule each:

- the transport's delivery thread (``intake.on_update``, aggregator.intake.delivery)
  only does cheap, stateless work: topic + envelope parsing, federation/sender/signature
  checks against a key snapshot, and spooling the chunk to disk. It never touches SQLite
  or the running sum, and never publishes (a transport handler must not block on the
  transport);
- the worker (``pump``, below; its events are published by aggregator.rounds.events) owns
  the coordinator: it takes the completed updates waiting in the queue as one batch (group
  commit: checked, staged into the sum by the summing workers, stored with one fsync round
  and one SQLite commit, then acked), records rejections, acks, checks deadlines and
  publishes announce/result/pointer.

They meet in a queue of small items (a completed blob is a file path, not bytes): a backlog
costs disk, not memory; a batch's group commit fsyncs its blobs side by side. With ``serve
--intake-processes K`` (K >= 2, aggregator.intake.shards) the delivery thread's work runs
in K shard processes instead, each for its share of the devices; their items reach the
same queue, and the worker's acks go back to the shard that heard the device, which signs
and publishes them.

What an edge client sees (all payloads are signed envelopes, sender = aggregator id;
JSON bodies are one-chunk blobs):

- ``announce`` (retained, kind announce, round r, model = base version): JSON
  {round, base_model, state: open|closed, opened_at, deadline (unix s), quorum,
  count_scale, part_key, chunk_size, devices, pinned (the base is the operator's pinned
  version, aggregator.rounds.pins), min_new_samples (a box with fewer new enrolled samples
  since its last update sits the round out), key_id and key_epoch (the CKKS key updates
  must be encrypted under, aggregator.rounds.epochs)}. Re-published with a later deadline on
  an extension (aggregator.rounds.deadline); a failed or skipped round: r+1, same base.
  While the schedule (aggregator.rounds.schedule) holds the next round back, the latest
  round is announced with state closed and next_round_at (unix s).
- ``update/<device>``: the box's EncryptedUpdate chunked (kind update, round r, base_model).
- ``ack/<device>`` (kind ack): JSON {device, round, msg, accepted, reason, detail,
  current_round, contributions}, one per update message. Reasons: malformed,
  bad_signature, unknown_device (revoked: a never-registered id gets no ack at all,
  aggregator.intake.unknown), wrong_federation, integrity, oversized, stale_version,
  late, duplicate (already counted: treat as success), replay, not_open, unavailable
  (transient: resend, same msg id allowed). A revoked device heard from (an update, a
  status saying online) also gets the signed revocation notice (aggregator.intake.revoked).
- ``result/<r>/<i>`` (retained, kind result, model = result version ``round-<r>``):
  chunks of the summed EncryptedUpdate (self-contained: decrypt_average gives the
  federated weights). Only one result stays retained: the latest, or the pinned base.
- ``key/<device>`` (retained, kind key, round = key epoch): the current key epoch
  sealed to that device by the key holder, relayed at start (aggregator.rounds.epochs).
- ``model/latest`` (retained, kind result): JSON {round, model, base_model, msg,
  blob_sha256, blob_size, chunks, chunk_size, contributors, result_topic}; published
  after every result chunk, confirmed by the broker before the round is marked
  published. When a round opens on an older (pinned) base, that result is re-published
  (chunks under its own round, new msg id) with ``republished: true, for_round``.

May import: aggregator.state, aggregator.rounds, aggregator.intake, aggregator.regional,
federation.
"""

from __future__ import annotations

import errno
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.intake.delivery import (
    DeliveryIntake,
    Item,
    RateLimitedReport,
    Rejection,
    SpooledUpdate,
)
from aggregator.intake.presence import PresenceRecorder
from aggregator.intake.ratelimit import RATE_LIMITED, RateLimiter, count_dropped
from aggregator.intake.revoked import RevokedHeard, RevokedNotices
from aggregator.intake.shards import IntakeShards
from aggregator.intake.spool import DiskReassembler
from aggregator.intake.unknown import UnknownReport, report_unknown
from aggregator.intake.verdicts import StatusIntake, VerdictReport
from aggregator.rounds.accumulator import AccumulatorFactory, CkksAccumulatorFactory
from aggregator.rounds.coordinator import NOT_OPEN, UNAVAILABLE, Coordinator, RoundSettings
from aggregator.rounds.epochs import relay_sealed
from aggregator.rounds.events import ResultForwarder, RoundEventHandler
from aggregator.rounds.poison import DEFAULT_SETTLE_SECONDS, PoisonWatch
from aggregator.rounds.publisher import Publisher, ack_for
from aggregator.rounds.records import Decision, Submission
from aggregator.rounds.restored import recover_if_ahead
from aggregator.state.db import storage_failure
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from aggregator.state.upgrade import upgrade_stored_blobs
from federation import topics
from federation.crypto.ckks import FederationContext, require_public_only
from federation.crypto.packing import wire_widths
from federation.errors import UNKNOWN_DEVICE
from federation.memory import return_freed_memory
from federation.transport.base import Transport

log = logging.getLogger(__name__)

DEFAULT_MAX_BLOB_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_SPOOL_BYTES = 8 * 1024 * 1024 * 1024
# One group commit takes at most this many updates / blob bytes: its fsyncs and commit
# (~10-20 ms) amortised over many small updates; 1M-value updates (~25 MB) acked in ~1 s
MAX_BATCH_UPDATES = 64
MAX_BATCH_BYTES = 256 * 1024 * 1024
_MAX_ITEMS_PER_PUMP = 4 * MAX_BATCH_UPDATES  # then deadlines and keys get their turn
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


class AggregatorService:
    """The aggregator: its delivery-thread intake (``intake``, aggregator.intake.delivery;
    the transport's thread calls ``intake.on_update``), its worker (``pump``, the only
    caller of ``events``, aggregator.rounds.events, and of ``intake.set_keys``/``forget``)."""

    def __init__(
        self,
        transport: Transport,
        store: Store,
        context: FederationContext,
        signing_key: Ed25519PrivateKey,
        fed_id: str,
        *,
        aggregator_id: str = "aggregator",
        settings: RoundSettings | None = None,
        initial_model: str = "base",
        vector_length: int | None = None,
        accumulators: AccumulatorFactory | None = None,
        max_rounds: int | None = None,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        clock: Callable[[], float] = time.time,
        rate_limiter: RateLimiter | None = None,
        poison_settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    ) -> None:
        # Refuse a secret context before anything else: the aggregator must never hold one.
        require_public_only(context)
        topics.prefix(fed_id)  # validates the id
        self.transport = transport
        self.store = store
        self.fed_id = fed_id
        self.aggregator_id = aggregator_id
        self.signing_key = signing_key
        # rounds announce the key (epoch) updates must be encrypted under
        self.settings = replace(settings or RoundSettings(), key_id=context.key_id,
                                key_epoch=context.epoch)
        upgrade_stored_blobs(store, wire_widths(context))  # before any sum is rebuilt
        self.registry = DeviceRegistry(store)
        self.coordinator = Coordinator(
            store, self.registry, accumulators or CkksAccumulatorFactory(context, vector_length),
            fed_id, self.settings, initial_model=initial_model, clock=clock)
        self.spool = DiskReassembler(store.state_dir / "spool", max_blob_bytes, max_spool_bytes)
        self.max_rounds = max_rounds
        self.finished = threading.Event()
        # Where the delivery thread (or the intake shards) and the worker meet.
        self._queue: queue.Queue[Item | VerdictReport | RevokedHeard] = queue.Queue()
        self.intake = DeliveryIntake(fed_id, self.spool, self._queue, rate_limiter)
        # the boxes' statuses: their verdicts on results, the evidence that a round is
        # poisoned (aggregator.rounds.poison), and their presence (aggregator.intake.presence)
        self.statuses = StatusIntake(fed_id, lambda: self.intake.keys, self._queue.put,
                                     PresenceRecorder(store.state_dir, clock=clock, link=lambda: (
                                         transport.connected, getattr(transport, "connects", 0))),
                                     revoked=lambda: self.intake.revoked)
        self.publisher = Publisher(transport, signing_key, fed_id, aggregator_id,
                                   self.settings.chunk_size)
        self.revoked_notices = RevokedNotices(self.registry, self.publisher)
        self.events = RoundEventHandler(store, self.coordinator, self.publisher,
                                        max_rounds=max_rounds, finished=self.finished)
        self.poison = PoisonWatch(store, self.registry, self.coordinator, self.publisher,
                                  settle_seconds=poison_settle_seconds, clock=clock)
        # The per-chunk work in K processes instead of this one's MQTT thread
        # (aggregator.intake.shards; None: K = 1).
        self.intake_shards: IntakeShards | None = None

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """Per-device token buckets checked before any signature/disk work (None: off)."""
        return self.intake.rate_limiter

    @property
    def forwarder(self) -> ResultForwarder | None:
        """Regional mode: the link to the root aggregator (aggregator.regional.forwarder)."""
        return self.events.forwarder

    @forwarder.setter
    def forwarder(self, forwarder: ResultForwarder | None) -> None:
        self.events.forwarder = forwarder

    @property
    def published_rounds(self) -> int:
        return self.events.published_rounds

    def refresh_keys(self) -> None:
        """Snapshot active device keys for the delivery thread, every pump: ``devices
        revoke`` (another process, same SQLite db) takes effect within one tick."""
        self.intake.set_keys(self.registry.list())

    # --- start / loop -----------------------------------------------------------------
    def start(self) -> None:
        self.refresh_keys()
        # Also with shards: updates that this client's persistent session holds from a
        # run without them, or that come while the shards start, are heard here; once
        # every shard is subscribed, the shards alone hear the update topics.
        self.transport.subscribe(topics.update_filter(self.fed_id), self.intake.on_update)
        self.transport.subscribe(topics.status_filter(self.fed_id), self.statuses.on_status)
        if self.intake_shards is not None:
            if self.intake_shards.start(
                    self._queue.put,
                    None if self.rate_limiter is None else self.rate_limiter.limits):
                self.transport.unsubscribe(topics.update_filter(self.fed_id))
            else:  # one intake rather than two hearing the same updates
                log.error("intake shards did not start; receiving updates in this process")
                self.intake_shards.close()
                self.intake_shards = None
        if self.max_rounds == 0:
            self.finished.set()
        # the current key epoch's sealed bundles (aggregator.rounds.epochs), before rounds
        relay_sealed(self.publisher, self.store, self.settings.key_id)
        self.events.handle(self.coordinator.start(open_round=not self.finished.is_set()))

    def pump(self, timeout: float = 0.0) -> int:
        """Process queued items (waiting up to ``timeout`` for the first): rejections one
        by one, completed updates in group-commit batches; then check deadlines (and tell
        the root whether this region has nothing new). Returns the items processed."""
        n = 0
        batch: list[SpooledUpdate] = []
        batch_bytes = 0
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                n += 1
                if isinstance(item, Rejection):
                    self._process_reject(item)
                elif isinstance(item, RateLimitedReport):
                    self._report_dropped(item.counts)
                elif isinstance(item, UnknownReport):
                    self._report_unknown(item)
                elif isinstance(item, VerdictReport):
                    self._hear_verdicts(item)
                elif isinstance(item, RevokedHeard):
                    self.revoked_notices.heard(item.device, "status")
                else:
                    batch.append(item)
                    batch_bytes += item.env.blob_size
                    if len(batch) >= MAX_BATCH_UPDATES or batch_bytes >= MAX_BATCH_BYTES:
                        self._process_batch(batch)
                        batch, batch_bytes = [], 0
                if n >= _MAX_ITEMS_PER_PUMP:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        if batch:
            self._process_batch(batch)
        if self.rate_limiter is not None:
            self._report_dropped(self.rate_limiter.drain())
        unknown = self.intake.unknown.drain()
        if unknown is not None:
            self._report_unknown(unknown)
        if self.intake_shards is not None:
            self.intake_shards.restart_dead()
        self.refresh_keys()
        self.events.retry_unpublished()
        self.events.handle(self.poison.tick())
        self.events.handle(self.coordinator.tick())
        self.events.after_tick()  # regional mode: what the root hears, and follows
        return n

    def run(self, stop: threading.Event, tick_seconds: float = 0.2) -> None:
        self.start()
        self.loop(stop, tick_seconds)

    def loop(self, stop: threading.Event, tick_seconds: float = 0.2) -> None:
        """Pump until ``stop`` is set or ``max_rounds`` results are published. A write
        the state disk cannot take (full) is logged and the service keeps answering: the
        failing step is retried on a later pump (a full disk stopped serve, and under
        systemd's restart limit for good)."""
        said = 0.0
        while not stop.is_set() and not self.finished.is_set():
            try:
                self.pump(timeout=tick_seconds)
            except (OSError, sqlite3.Error) as exc:
                if isinstance(exc, OSError) and exc.errno not in _STORAGE_ERRNOS:
                    raise  # not the disk's state: a bug, which serve's exit says
                if time.monotonic() - said > 60:
                    said = time.monotonic()
                    log.error("the state directory cannot be written (%s): serve keeps "
                              "running and retries; free space in %s", storage_failure(exc),
                              self.store.state_dir)
                stop.wait(1.0)

    def _hear_verdicts(self, item: VerdictReport) -> None:
        self.coordinator.heard_sitting_out(item.device, item.sitting_out)
        self.events.handle(recover_if_ahead(self.coordinator, item.device, item.latest_round,
                                            "status", item.applied_round))
        try:  # every status of the box carries its recent verdicts: the next one retries
            self.events.handle(self.poison.report(item.device, item.verdicts))
        except (OSError, sqlite3.Error) as exc:
            log.error("verdicts of %s not recorded (%s)", item.device, storage_failure(exc))
            self.statuses.forget(item.device)

    # --- worker -----------------------------------------------------------------------
    def _process_reject(self, item: Rejection) -> None:
        self.coordinator.record_rejection(item.round, item.device, item.reason, item.detail)
        if item.reason == UNAVAILABLE and item.device is not None and item.msg is not None:
            self._let_resend(item.device, item.msg)
        if item.device is not None:
            self._ack(item.device, item.round, item.msg, Decision(False, item.reason, item.detail))
            if item.reason == UNKNOWN_DEVICE:  # a revoked one is told so (signed)
                self.revoked_notices.heard(item.device, "update")

    def _process_batch(self, items: list[SpooledUpdate]) -> None:
        """One group commit: every decision is final (stored, in the sum) before the
        first ack of the batch goes out."""
        subs = [Submission(it.env.sender, it.env.round, it.env.model, it.env.msg,
                           it.env.blob_sha256, spooled=it.path, kind=it.env.kind)
                for it in items]
        try:
            # An accepted update's spool file is moved into the store (no second write).
            decisions = self.coordinator.submit_batch(subs)
        finally:
            for it in items:
                it.path.unlink(missing_ok=True)
        return_freed_memory()
        for it, decision in zip(items, decisions, strict=True):
            env = it.env
            if decision.reason == UNAVAILABLE:
                self._let_resend(env.sender, env.msg)
            elif decision.reason == NOT_OPEN:  # a round this state never ran?
                self.events.handle(recover_if_ahead(self.coordinator, env.sender, env.round,
                                                    "update"))
            self._ack(env.sender, env.round, env.msg, decision)
        acked = time.time()
        for it, decision in zip(items, decisions, strict=True):
            if decision.accepted:  # a box clock ahead of ours must not give negative ages
                self.events.record_ack_wait(it.env.round, max(0.0, acked - it.env.ts))
        self.events.handle(self.coordinator.tick())

    def _let_resend(self, device: str, msg: str) -> None:
        """After a transient failure the device may resend the SAME message: let it in
        (at whichever intake heard it)."""
        self.intake.forget(device, msg)
        if self.intake_shards is not None:
            self.intake_shards.forget(device, msg)

    def close(self) -> None:
        """Stop intake shards, presence recorder, summing workers (not transport, store)."""
        self.statuses.close()
        if self.intake_shards is not None:
            self.intake_shards.close()
        self.coordinator.accumulators.close()

    def _ack(self, device: str, round_no: int | None, msg: str | None, d: Decision) -> None:
        ack = ack_for(device, round_no, msg, d, self.coordinator.current)
        if self.intake_shards is None or not self.intake_shards.ack(ack):
            self.publisher.send_ack(ack)

    def _report_dropped(self, counts: dict[str, tuple[int, int]]) -> None:
        """Rate-limited messages (``RateLimiter.drain``, here or in an intake shard): one log
        line, counted rejection and ack per device per report period, however many."""
        for device, (msgs, nbytes) in counts.items():
            detail = (f"{msgs} message(s), {nbytes} bytes over the per-device rate limit "
                      "dropped; slow down and resend")
            self.coordinator.record_rejection(None, device, RATE_LIMITED, detail)
            try:
                count_dropped(self.store, msgs)
            except Exception as exc:  # counting must never stop the service
                log.error("cannot count rate-limited messages: %s", exc)
            self._ack(device, None, None, Decision(False, RATE_LIMITED, detail))

    def _report_unknown(self, report: UnknownReport) -> None:
        """Unregistered senders (aggregator.intake.unknown), once per pump."""
        report_unknown(self.store, report, self.intake.unknown.limits.report_seconds)

    # --- status -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cur = self.coordinator.current
        return {"fed": self.fed_id, "round": None if cur is None else cur.as_dict(),
                "counters": self.store.counters(), "devices": sorted(self.intake.keys),
                "published_this_run": self.published_rounds}

    # --- for the tests written against the mixins: the parts' state under its old names
    def _on_update(self, topic: str, payload: bytes) -> None:
        """What the MQTT thread calls (``intake.on_update``)."""
        self.intake.on_update(topic, payload)

    @property
    def _finished_msgs(self) -> OrderedDict[tuple[str, str], None]:
        return self.intake._finished_msgs

    @property
    def _ack_waits(self) -> dict[int, list[float]]:
        return self.events.ack_waits
