"""Wires a Transport to the Coordinator.

Two threads, one rule each:

- the transport's delivery thread (``_on_update``) only does cheap, stateless work:
  topic + envelope parsing, federation/sender/signature checks against a key snapshot,
  and spooling the chunk to disk. It never touches SQLite or the running sum, and
  never publishes (a transport handler must not block on the transport);
- the worker (``pump``) owns the coordinator: it takes the completed updates waiting in
  the queue as one batch (group commit: checked, staged into the sum by the summing
  workers, stored with one fsync round and one SQLite commit, then acked), records
  rejections, acks, checks deadlines and publishes announce/result/pointer.

They meet in a queue of small items (a completed blob is a file path, not bytes), so a
backlog costs disk, not memory; a completed blob's fsync starts at once on a flusher
thread, so that the batch's group commit finds it already on disk.

What an edge client sees (all payloads are signed envelopes, sender = aggregator id;
JSON bodies are one-chunk blobs):

- ``announce`` (retained, kind announce, round r, model = base version): JSON
  {round, base_model, state: open|closed, opened_at, deadline (unix s), quorum,
  count_scale, part_key, chunk_size, devices, pinned (the base is the operator's pinned
  version, aggregator.model_pins)}. Re-published with a later deadline on an extension;
  a failed round is followed by an announce of round r+1, same base.
- ``update/<device>``: the box's EncryptedUpdate bytes chunked with kind update,
  round r, model = the announced base_model.
- ``ack/<device>`` (kind ack): JSON {device, round, msg, accepted, reason, detail,
  current_round, contributions}, one per update message. Reasons: malformed,
  bad_signature, unknown_device (also revoked), wrong_federation, integrity,
  oversized, stale_version, late, duplicate (already counted: treat as success),
  replay, not_open, unavailable (transient: resend, same msg id allowed).
- ``result/<r>/<i>`` (retained, kind result, model = result version ``round-<r>``):
  chunks of the summed EncryptedUpdate (self-contained: decrypt_average gives the
  federated weights). Only one result stays retained: the latest, or the pinned base.
- ``model/latest`` (retained, kind result): JSON {round, model, base_model, msg,
  blob_sha256, blob_size, chunks, chunk_size, contributors, result_topic}; published
  after every result chunk, confirmed by the broker before the round is marked
  published. When a round opens on an older (pinned) base, that result is re-published
  (chunks under its own round, new msg id) with ``republished: true, for_round``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aggregator import model_pins
from aggregator.accumulator import AccumulatorFactory, CkksAccumulatorFactory
from aggregator.coordinator import (
    UNAVAILABLE,
    Announce,
    Coordinator,
    Decision,
    Event,
    ResultReady,
    RoundSettings,
    Submission,
)
from aggregator.durable_io import fsync_file
from aggregator.publisher import Publisher
from aggregator.ratelimit import RATE_LIMITED, RateLimiter, count_dropped
from aggregator.registry import DeviceRegistry
from aggregator.spool import DiskReassembler
from aggregator.store import Store
from federation import topics
from federation.ckks import FederationContext, require_public_only
from federation.envelope import Envelope, decode
from federation.errors import (
    MALFORMED,
    UNKNOWN_DEVICE,
    WRONG_FEDERATION,
    FederationError,
    TransportError,
)
from federation.signing import verify
from federation.transport import Transport

log = logging.getLogger(__name__)

DEFAULT_MAX_BLOB_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_SPOOL_BYTES = 8 * 1024 * 1024 * 1024
_FINISHED_MEMORY = 4096  # (device, msg) pairs whose late chunks are dropped silently
# One group commit takes at most this many completed updates / blob bytes: enough to
# amortise its fsyncs and commit (~10-20 ms) over many small updates, while the acks
# of a batch of 1M-value updates (~25 MB each) still follow within about a second.
MAX_BATCH_UPDATES = 64
MAX_BATCH_BYTES = 256 * 1024 * 1024
_MAX_ITEMS_PER_PUMP = 4 * MAX_BATCH_UPDATES  # then deadlines and keys get their turn


@dataclass(frozen=True)
class _Reject:
    device: str | None
    round: int | None
    msg: str | None
    reason: str
    detail: str


@dataclass(frozen=True)
class _Ready:
    env: Envelope  # header of the blob's first chunk (payload dropped)
    path: Path


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    return fn


_MALLOC_TRIM = _load_malloc_trim()


def _return_freed_memory() -> None:
    """Give the freed buffers of the batch just added back to the OS.

    Each update passes through short-lived buffers (chunks, and with the in-process sum
    ~60 MB of blob, ciphertext slices and SEAL objects per 1M values). glibc keeps freed
    blocks in per-thread arenas, and with the delivery thread and the worker allocating
    alternately the arenas fragment:
    measured, peak RSS grew from ~200 MB (2 boxes) to ~440 MB (20 boxes) without this
    call although the live data stays one model.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _flush_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # the store's own fsync reports what matters
        fsync_file(path)


class AggregatorService:
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
    ) -> None:
        # Refuse a secret context before anything else: the aggregator must never hold one.
        require_public_only(context)
        topics.prefix(fed_id)  # validates the id
        self.transport = transport
        self.store = store
        self.fed_id = fed_id
        self.aggregator_id = aggregator_id
        self.signing_key = signing_key
        self.settings = settings or RoundSettings()
        self.registry = DeviceRegistry(store)
        self.coordinator = Coordinator(
            store,
            self.registry,
            accumulators or CkksAccumulatorFactory(context, vector_length),
            fed_id,
            self.settings,
            initial_model=initial_model,
            clock=clock,
        )
        self.spool = DiskReassembler(store.state_dir / "spool", max_blob_bytes, max_spool_bytes)
        self.max_rounds = max_rounds
        self.published_rounds = 0
        self.finished = threading.Event()
        self._queue: queue.Queue[_Reject | _Ready] = queue.Queue()
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._revoked: frozenset[str] = frozenset()
        self._finished_msgs: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._finished_lock = threading.Lock()
        self._unpublished: list[ResultReady] = []
        # fsyncs of completed blobs, started as they complete (they release the GIL)
        self._flusher = ThreadPoolExecutor(2, thread_name_prefix="spool-flush")
        self.publisher = Publisher(
            transport, signing_key, fed_id, aggregator_id, self.settings.chunk_size
        )
        # Per-device token buckets checked before any signature/disk work (None: off).
        self.rate_limiter = rate_limiter
        # Regional mode (aggregator.regional): a closed round's sum goes to the root
        # aggregator as a partial, and the root's result is what this region publishes.
        self.forwarder: Any = None

    # --- start / loop -----------------------------------------------------------------
    def start(self) -> None:
        self.refresh_keys()
        self.transport.subscribe(topics.update_filter(self.fed_id), self._on_update)
        if self.max_rounds == 0:
            self.finished.set()
        self._handle(self.coordinator.start(open_round=not self.finished.is_set()))

    def pump(self, timeout: float = 0.0) -> int:
        """Process queued items (waiting up to ``timeout`` for the first): rejections one
        by one, completed updates in group-commit batches; then check deadlines. Returns
        the number of items processed."""
        n = 0
        batch: list[_Ready] = []
        batch_bytes = 0
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                n += 1
                if isinstance(item, _Reject):
                    self._process_reject(item)
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
        self._report_rate_limited()
        self.refresh_keys()
        self._retry_unpublished()
        self._handle(self.coordinator.tick())
        return n

    def run(self, stop: threading.Event, tick_seconds: float = 0.2) -> None:
        self.start()
        self.loop(stop, tick_seconds)

    def loop(self, stop: threading.Event, tick_seconds: float = 0.2) -> None:
        """Pump until ``stop`` is set or ``max_rounds`` results are published."""
        while not stop.is_set() and not self.finished.is_set():
            self.pump(timeout=tick_seconds)

    def refresh_keys(self) -> None:
        """Snapshot active device keys for the delivery thread (swapped atomically).
        Every pump re-reads the registry, so `devices revoke` (another process, same
        SQLite db) takes effect within one tick."""
        devices = self.registry.list()
        self._revoked = frozenset(d.device_id for d in devices if not d.active)
        self._keys = {
            d.device_id: Ed25519PublicKey.from_public_bytes(d.public_key)
            for d in devices
            if d.active
        }

    # --- delivery thread --------------------------------------------------------------
    def _on_update(self, topic: str, payload: bytes) -> None:
        try:
            device = topics.parse(topic).device
        except FederationError as exc:
            self._queue.put(_Reject(None, None, None, exc.reason, exc.message))
            return
        try:
            env = decode(payload)
        except FederationError as exc:
            self._queue.put(_Reject(device, None, None, exc.reason, exc.message))
            return
        if self.rate_limiter is not None and device is not None and not (
                self.rate_limiter.allow(device, len(payload))):
            return  # counted by the limiter; logged and acked once per period (pump)
        key = (env.sender, env.msg)
        with self._finished_lock:
            if key in self._finished_msgs:
                return  # a redelivered chunk of an update already decided
        try:
            self._authenticate(device, env)
        except FederationError as exc:
            # Not proven to come from `device`: it must not discard, block or answer for
            # that device's genuine upload with the same message id (a forged chunk
            # could otherwise make the box drop its update as rejected). Counted and
            # logged only; a registered box with a wrong key shows in the counters.
            answer = device if exc.reason == UNKNOWN_DEVICE else None
            if answer is not None:
                self._remember(key)  # one answer per upload, not per chunk
            self._queue.put(_Reject(answer, env.round, env.msg, exc.reason,
                                    f"{exc.message} (claimed sender {env.sender!r} on the "
                                    f"topic of {device!r})"))
            return
        try:
            self._check_envelope(env)
            path = self.spool.add(env)
        except FederationError as exc:
            self.spool.discard(*key)
            self._remember(key)
            self._queue.put(_Reject(device, env.round, env.msg, exc.reason, exc.message))
            return
        except OSError as exc:
            self.spool.discard(*key)
            self._remember(key)
            log.error("cannot spool a chunk of %s from %s: %s", env.msg, device, exc)
            why = "disk full" if exc.errno == errno.ENOSPC else "I/O error"
            self._queue.put(
                _Reject(device, env.round, env.msg, UNAVAILABLE, f"spool write failed ({why})")
            )
            return
        if path is not None:
            self._remember(key)
            self._flusher.submit(_flush_quietly, path)
            self._queue.put(_Ready(Envelope(**{**env.header(), "payload": b""}), path))

    def _authenticate(self, device: str | None, env: Envelope) -> None:
        """The chunk is signed by the registered, active device whose topic it came on."""
        if env.sender != device:
            raise FederationError(MALFORMED, f"sender {env.sender!r} on the topic of {device!r}")
        key = self._keys.get(env.sender)
        if key is None:  # answered: only that id's own (unregistered) box can be misled
            why = "was revoked" if env.sender in self._revoked else "is not registered"
            raise FederationError(UNKNOWN_DEVICE, f"device {env.sender!r} {why}")
        verify(key, env.signing_bytes(), env.sig)

    def _check_envelope(self, env: Envelope) -> None:
        """What an authenticated chunk must be (answered: the device did send it)."""
        if env.fed != self.fed_id:
            raise FederationError(WRONG_FEDERATION, f"update for federation {env.fed!r}")
        if env.kind not in ("update", "partial"):  # partial: a regional aggregator's sum
            raise FederationError(MALFORMED, f"a {env.kind!r} message on an update topic")

    def _remember(self, key: tuple[str, str]) -> None:
        with self._finished_lock:
            self._finished_msgs[key] = None
            while len(self._finished_msgs) > _FINISHED_MEMORY:
                self._finished_msgs.popitem(last=False)

    def _forget(self, key: tuple[str, str]) -> None:
        """After a transient failure the device may resend the SAME message: let it in."""
        with self._finished_lock:
            self._finished_msgs.pop(key, None)

    # --- worker -----------------------------------------------------------------------
    def _process_reject(self, item: _Reject) -> None:
        self.coordinator.record_rejection(item.round, item.device, item.reason, item.detail)
        if item.reason == UNAVAILABLE and item.device is not None and item.msg is not None:
            self._forget((item.device, item.msg))
        if item.device is not None:
            self._ack(item.device, item.round, item.msg, Decision(False, item.reason, item.detail))

    def _process_batch(self, items: list[_Ready]) -> None:
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
        _return_freed_memory()
        for it, decision in zip(items, decisions, strict=True):
            env = it.env
            if decision.reason == UNAVAILABLE:
                self._forget((env.sender, env.msg))
            self._ack(env.sender, env.round, env.msg, decision)
        self._handle(self.coordinator.tick())

    def close(self) -> None:
        """Stop the flusher and the summing workers (the transport and store are the
        caller's)."""
        self._flusher.shutdown(wait=True)
        self.coordinator.accumulators.close()

    def _ack(self, device: str, round_no: int | None, msg: str | None, d: Decision) -> None:
        self.publisher.ack(device, round_no, msg, d, self.coordinator.current)

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Announce):
                self._announce(event.round, event.base_model, event.payload)
            elif isinstance(event, ResultReady):
                try:
                    self._publish_result(event)
                except TransportError as exc:
                    # Stays 'closed' in the db; retried every pump until the broker confirms.
                    log.error("round %d result not confirmed by the broker (%s); will retry",
                              event.round, exc)
                    if event not in self._unpublished:
                        self._unpublished.append(event)

    def _retry_unpublished(self) -> None:
        pending, self._unpublished = self._unpublished, []
        self._handle(list(pending))

    def _announce(self, round_no: int, base: str, payload: dict[str, Any]) -> None:
        if payload.get("state") == "open":  # boxes must be able to fetch the base
            try:
                model_pins.republish_base(self.store, self.publisher, base, round_no)
            except (OSError, TransportError) as exc:  # boxes then wait; the round runs on
                log.error("round %d: cannot re-publish its base %s (%s)", round_no, base, exc)
        self.publisher.announce(round_no, base, payload)

    def _publish_result(self, event: ResultReady) -> None:
        previous = model_pins.retained_row(self.store)  # its retained chunks are cleared
        blob = self.store.read_blob(event.sum_blob)
        if self.forwarder is not None:  # regional: raises TransportError until the root's
            blob = self.forwarder.exchange(event, blob)  # result is in (retried each pump)
        done_result = self.publisher.result(event, blob, previous)
        del blob
        model_pins.set_retained(self.store, event.round)
        self.published_rounds += 1
        done = self.max_rounds is not None and self.published_rounds >= self.max_rounds
        events = self.coordinator.result_published(
            event.round, done_result.sha256, done_result.size, done_result.chunks,
            done_result.msg, open_next=not done,
        )
        if done:
            self.finished.set()
            cur = self.store.get_round(event.round)
            if cur is not None and not events:
                self._announce(event.round, cur.base_model, dict(cur.announce, state="closed"))
        self._handle(events)

    def _report_rate_limited(self) -> None:
        """Rate-limited messages: one log line, one counted rejection and one ack per
        device per report period, however many messages were dropped."""
        if self.rate_limiter is None:
            return
        for device, (msgs, nbytes) in self.rate_limiter.drain().items():
            detail = (f"{msgs} message(s), {nbytes} bytes over the per-device rate limit "
                      "dropped; slow down and resend")
            self.coordinator.record_rejection(None, device, RATE_LIMITED, detail)
            try:
                count_dropped(self.store, msgs)
            except Exception as exc:  # counting must never stop the service
                log.error("cannot count rate-limited messages: %s", exc)
            self._ack(device, None, None, Decision(False, RATE_LIMITED, detail))

    # --- status -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cur = self.coordinator.current
        return {
            "fed": self.fed_id,
            "round": None if cur is None else cur.as_dict(),
            "counters": self.store.counters(),
            "devices": sorted(self._keys),
            "published_this_run": self.published_rounds,
        }
