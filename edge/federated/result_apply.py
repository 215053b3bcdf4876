"""The result side of a round: the model this box federates from, and how a published
result replaces it.

``ResultApplier`` holds the box's current federated ``version`` and ``vector`` (the
pretrained part at first, or what the model sink serves after a restart). The client's
worker hands it every verified model pointer and every result chunk: a pointer to a
model the box does not have (and of the part it trains) is fetched
(``edge.federated.result_fetch``) unless it is not newer than the newest result the
box accepted (``edge.federated.high_water``: a replayed old round is refused as
``stale_round``, across restarts); the complete blob is decrypted and checked against
the round's bounds (``federation.crypto.packing.decrypt_within_bounds``: cap on the
count, clip of the change) and for plausibility (``edge.federated.sealing.check_average``)
BEFORE the canary, and handed to the ``ModelSink``, and what
became of it is recorded (``edge.federated.verdicts``), published in the box's status
and reported as a client event. A refused result keeps the old model; one that only
the box's canary declined (``declined``) is still the base the box trains the next
rounds from, so a minority refusal does not take the box out of the federation. An open
announce built on the initial model while the box has a federated result means the
federation went back to it (every result since was poisoned, ``aggregator.rounds.poison``,
and there is none to re-publish; or the operator pinned it, ``pinned`` in the announce):
``back_to_initial`` serves the initial model again through the sink, unless the announce
is a replayed old one (``edge.federated.high_water``).
Kept apart from the round loop (``edge.federated.client``), which only decides when to
call it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from edge.federated.api import ClientEvents, ModelSink
from edge.federated.high_water import STALE_ROUND, HighWaterMark, position
from edge.federated.result_fetch import ResultFetcher
from edge.federated.sealing import check_average
from edge.federated.verdicts import RoundVerdicts
from federation.crypto.ckks import FederationContext
from federation.crypto.packing import EncryptedUpdate, decrypt_within_bounds
from federation.envelope import Envelope
from federation.errors import FederationError
from federation.messages import ModelPointer, RoundAnnounce, result_round
from models.federated_parts import FederatedPart

log = logging.getLogger(__name__)

DECRYPT_FAILED = "decrypt_failed"  # a verdict's code when decrypting raised something else
STORE_RETRY_S = 60.0  # a result the box could not store (disk full) is tried again after


class ResultApplier:
    def __init__(self, fetcher: ResultFetcher, context: FederationContext, part: FederatedPart,
                 sink: ModelSink, verdicts: RoundVerdicts, events: ClientEvents, *,
                 version: str, vector: np.ndarray, max_relative_change: float,
                 verify: Callable[[Envelope, str], None], publish_status: Callable[[], None],
                 applied: Callable[[], None], mark: HighWaterMark | None = None) -> None:
        base = np.asarray(vector, dtype=np.float32).ravel()
        if base.size != part.size:
            raise ValueError(f"base vector has {base.size} values, part {part.key} has "
                             f"{part.size}")
        self.version = version
        self._served_seen: tuple[object, str] | None = None  # what follow_served last read
        self.vector = base
        # The newest result only this box's canary declined: the federation moved on to
        # it, so the box keeps training from it (its people stay in the federation and a
        # quorum of every box is still met) while serving ``version``.
        self.declined: tuple[str, np.ndarray] | None = None
        # results that hold no box's update (a region's round whose sum was of a base the
        # root had moved past: its pointer says 0 contributors): the round's senders
        # count their samples as new again (edge.federated.joining)
        self.holding_none: set[str] = set()
        self.initial = (version, base.copy())  # before ``resume``: the pretrained model
        self._replays_said: set[int] = set()  # announces refused as replays, logged once
        self.fetcher = fetcher
        self.context = context
        self.part = part
        self.sink = sink
        self.verdicts = verdicts
        self.events = events
        self.max_relative_change = max_relative_change
        self._verify = verify  # the client's: the aggregator's signature, this federation
        self._publish_status = publish_status
        self._applied = applied  # the client: a round based on the new model may be joined
        self.mark = mark  # the newest result accepted (None: no monotonic check)
        # a result the box could not store (its disk was full), and when to try again
        self._unstored: tuple[ModelPointer, bytes, float] | None = None

    def resume(self) -> None:
        """Resume on what the box serves (its model versions), if the sink says."""
        served = self._served_by_sink()
        if served is not None:
            self.version, self.vector = served
            log.info("resuming on federated model %s", self.version)
        if self.mark is not None:
            self.mark.observe_served(self.version)

    def follow(self, pointer: ModelPointer, announced_part: str | None) -> None:
        """A verified model pointer: fetch its result unless the box has that model or
        the federation trains another part (``announced_part``: the last announce's)."""
        if pointer.model in (self.version, self.declined and self.declined[0]):
            return
        if self._unstored is not None and pointer.round >= self._unstored[0].round:
            self._unstored = None  # fetched again (or overtaken): not retried from memory
        if announced_part and announced_part != self.part.key:
            log.warning("result %s not fetched: the federation trains part %s, this box %s",
                        pointer.model, announced_part, self.part.key)
            return
        try:
            self._check_mark(pointer)
        except FederationError as exc:
            self._refused_replay(pointer, exc)
            return
        self.fetcher.want(pointer)

    def _check_mark(self, pointer: ModelPointer) -> None:
        """Refuse a replayed old result (edge.federated.high_water), but not the very
        result the box accepted last when it no longer serves it and did not refuse or
        roll it back: its file was damaged and it fell back to the previous version, and
        the retained result it needs was refused as 'a replayed old result' (helper-38)."""
        if self.mark is None:
            return
        lost = (pointer.model == self.mark.model and pointer.model != self.version
                and position(pointer) == self.mark.mark and self.refusal_of(pointer.model) is None)
        if not lost:
            self.mark.check(pointer)

    def back_to_initial(self, ann: RoundAnnounce) -> None:
        """A verified announce: go back to the initial model when it builds on it while
        this box has a federated result, and it is newer than the newest result the box
        accepted (an old announce replayed must not roll the box back)."""
        initial, vector = self.initial
        if not ann.open or ann.base_model != initial or self.version == initial:
            return
        try:
            if self.mark is not None:
                self.mark.check_base(ann)
        except FederationError as exc:
            if ann.round not in self._replays_said:
                self._replays_said.add(ann.round)
                self.events.count(exc.reason)
                log.warning("round %d: NOT going back to %s (%s): %s; keeping model %s",
                            ann.round, initial, exc.reason, exc.message, self.version)
            return
        previous = self.version
        reason = (f"the federation went back to the initial model {initial}: round "
                  f"{ann.round} builds on it, " + (
                      "it was pinned at the aggregator (models pin, or a restored "
                      "state)" if ann.pinned
                      else f"{previous} was found poisoned"))
        serve_initial = getattr(self.sink, "serve_initial", None)
        try:
            if callable(serve_initial):
                # the hot swap: atomic, recorded in the model history; a result left for
                # a pin is not refused (helper-45: listed as refused, and a later pin of
                # it would have been refused by every box)
                serve_initial(reason, block=not ann.pinned)
            else:  # a sink that only takes versions
                self.sink.apply(initial, vector)
        except Exception as exc:  # keeps its model; the next announce tries again
            self.events.count("back_to_initial_failed")
            log.exception("round %d: cannot go back to %s: %s", ann.round, initial, exc)
            return
        if self.mark is not None:
            self.mark.advance_base(ann)
        self.version, self.vector = initial, vector.copy()
        log.warning("round %d: serving %s again: %s", ann.round, initial, reason)
        self.events.emit("back_to_initial", ann.round, {"model": initial,
                                                        "previous": previous,
                                                        "reason": reason})
        self._publish_status()

    def _refused_replay(self, pointer: ModelPointer, exc: FederationError) -> None:
        # No verdict: a replay says nothing about that round (its verdict stands).
        self.events.count(exc.reason)
        log.warning("result of round %d NOT fetched (%s): %s; keeping model %s",
                    pointer.round, exc.reason, exc.message, self.version)
        self.events.emit("result_rejected", pointer.round, {"reason": exc.reason,
                                                            "detail": exc.message})

    def add_chunk(self, env: Envelope) -> None:
        if not self.fetcher.is_wanted(env):
            return  # another result's chunk, or a stale retained one: not even verified
        self._verify(env, "result")
        done = self.fetcher.add(env)
        if done is None:
            return
        self._try_apply(*done)

    def retry_unstored(self) -> None:
        """Every tick: a result the box could not store (its disk was full) is applied
        again once ``STORE_RETRY_S`` passed; it was dropped, and the box waited for good
        for a base it never got (helper-38)."""
        if self._unstored is not None and time.monotonic() >= self._unstored[2]:
            wanted, blob, _ = self._unstored
            self._unstored = None
            if wanted.model != self.version:
                self._try_apply(wanted, blob)

    def _try_apply(self, wanted: ModelPointer, blob: bytes) -> None:
        try:
            self._apply(wanted, blob)
        except OSError as exc:  # not the result's fault: no verdict (it would count as a
            # refusal of the round at the aggregator), and the same blob is tried again
            self._unstored = (wanted, blob, time.monotonic() + STORE_RETRY_S)
            log.error("result of round %d not applied: the box cannot store it (%s); "
                      "serving %s meanwhile, trying again in %.0f s", wanted.round,
                      exc.strerror or exc, self.version, STORE_RETRY_S)
            self.events.emit("error", wanted.round, {"error": f"cannot store {wanted.model}: "
                                                     f"{exc.strerror or exc}"})
        except FederationError as exc:
            if exc.reason == STALE_ROUND:  # overtaken while its chunks came in
                self._refused_replay(wanted, exc)
                return
            # Whatever it was (a wrapped sum, ciphertexts under another key, the bounds,
            # the canary), the aggregator must hear it: it cannot decrypt, so the boxes'
            # refusals are its only evidence that a round is poisoned
            # (aggregator.rounds.poison).
            self._refused(wanted, exc)
            if self.declined is not None and self.declined[0] == wanted.model:
                self._applied()  # a round built on it may be joined

    def _refused(self, wanted: ModelPointer, exc: FederationError) -> None:
        code, detail = exc.reason, exc.message
        self.events.count("result_rejected")
        log.error("result of round %d NOT applied (%s): %s; keeping model %s",
                  wanted.round, code, detail, self.version)
        canary = getattr(exc, "canary", None)
        self.verdicts.record(wanted.round, wanted.model,
                             "refused" if canary is not None else "rejected",
                             f"{code}: {detail}", canary, code=code)
        # after the record: a listener may read the verdict (the demo prints it)
        self.events.emit("result_rejected", wanted.round, {"reason": code, "detail": detail})
        # at once, not with a later status: the retained status carries the verdict to
        # the operator and to the aggregator, which counts the refusals of the round
        self._publish_status()

    def _apply(self, pointer: ModelPointer, blob: bytes) -> None:
        self._check_mark(pointer)
        if pointer.contributors == 0 and not pointer.republished:
            self.holding_none.add(pointer.model)
        t0 = time.perf_counter()
        try:
            summed = EncryptedUpdate.from_bytes(blob, self.context)
            # the round's bounds, which the aggregator cannot check: the change only when
            # the box holds the result's base (a box joining late checks the count alone)
            base = self.base_vector(pointer.base_model)
            average = decrypt_within_bounds(self.context, summed, pointer.policy, base)
        except FederationError:
            raise
        except Exception as exc:  # TenSEAL or numpy on ciphertexts it cannot use: a refusal
            log.exception("result of round %d could not be decrypted", pointer.round)
            raise FederationError(DECRYPT_FAILED, f"{type(exc).__name__}: {exc}") from exc
        decrypt_s = time.perf_counter() - t0
        # one round's move: from the round's base when the box has it (a result built on
        # one its canary declined is measured from that, not from the older one served)
        check_average(average, base if base is not None else self.vector, self.part,
                      self.max_relative_change, pointer.policy, summed.n_updates)
        t1 = time.perf_counter()
        # The sink stores the version durably before serving it (edge.serving.versions); a
        # crash before its commit leaves the old version served, and the retained
        # result is fetched and applied again after the restart.
        reason = "federated result" + (
            f", the root's {pointer.root_model}" if pointer.root_model else "") + (
            f", sent again as the base of round {pointer.for_round}: the federation went "
            "back to it (an operator's pin, or an aggregator restored from a backup)"
            if pointer.republished and pointer.for_round else "")
        try:
            self.sink.apply(pointer.model, average, reason)
        except FederationError as exc:
            if getattr(exc, "declined_by_canary", False):
                self.declined = (pointer.model, average)
                log.warning("round %d: this box does not serve %s (its canary declined "
                            "it) but federates from it", pointer.round, pointer.model)
            raise
        self.declined = None
        if self.mark is not None:
            self.mark.advance(pointer)
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
        self.events.emit("applied", pointer.round, {
            "model": pointer.model, "previous": previous, "updates": summed.n_updates,
            "decrypt_s": decrypt_s, "swap_s": swap_s, "bytes": len(blob), "vector": average,
        })
        self._applied()

    def base_vector(self, version: str) -> np.ndarray | None:
        """The vector of ``version`` if the box can train from it: the model it serves,
        or the result its canary declined (None: the box lacks that model)."""
        self._follow_sink()
        if version == self.version:
            return self.vector
        if self.declined is not None and self.declined[0] == version:
            return self.declined[1]
        return None

    def refusal_of(self, version: str) -> str | None:
        """Why this box will not serve ``version``: it refused or rejected that result, or
        its technician rolled it back (the sink's blocked versions; None: the result has
        not come yet, or it is being checked)."""
        blocked = getattr(getattr(self.sink, "store", None), "blocked", None)
        entry = blocked().get(version) if callable(blocked) else None
        if isinstance(entry, dict):
            return str(entry.get("reason") or "refused")
        round_no = result_round(version)
        verdict = self.verdicts.of_round(round_no) if round_no else None
        if verdict is not None and verdict.model == version and \
                verdict.outcome in ("refused", "rejected"):
            return verdict.reason
        return None

    def follow_served(self) -> bool:
        """Between rounds too (the worker's tick): whether the box now federates from a
        model it serves that another process installed, e.g. `model rollback` while
        `join` runs, so that its status says what it serves (the operator's MODEL column
        kept the version rolled back from until the next round). Reads the vector only
        when the served version's name differs."""
        served = getattr(getattr(self.sink, "served", None), "version", None)
        seen = (served, self.version)
        if not isinstance(served, str) or served == self.version or seen == self._served_seen \
                or (self.declined is not None and self.declined[0] == served):
            return False
        # once per served version (and version of the box's): one it cannot federate from
        # (the pretrained model, a version of another part) is not read, nor warned
        # about, on every tick
        self._served_seen = seen
        before = self.version
        self._follow_sink()
        return self.version != before

    def _follow_sink(self) -> None:
        """What the box serves may have been moved by another process: `fedface-edge model
        rollback` while `join` runs (the sink follows the swap pointer). Federate from
        that, not from the version rolled back from, which the box now refuses: the rounds
        built on it are sat out, as the docs say (a walkthrough saw a box train round 21
        from the round-20 its technician had rolled back)."""
        served = self._served_by_sink()
        if served is None and self._sink_serves_pretrained():  # rolled back to it: no vector
            served = self.initial[0], self.initial[1].copy()
        if served is None or served[0] == self.version:
            return
        if self.declined is not None and self.declined[0] == served[0]:
            return
        log.warning("this box now serves %s, changed by another command on it (model "
                    "rollback, train --apply; was %s): it joins the rounds built on a version "
                    "it serves or accepts", served[0], self.version)
        self.version, self.vector = served

    def _sink_serves_pretrained(self) -> bool:
        """The hot swap serves the pretrained model (its served model has no file): a
        technician rolled the box's first federated version back (a walkthrough saw the
        box go on training from that version, unreported, and apply a later round)."""
        served = getattr(self.sink, "served", None)
        return served is not None and getattr(served, "model_file", "") is None

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
