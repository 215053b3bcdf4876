"""What the aggregator service does with the coordinator's events: an ``Announce`` is
published (after re-publishing the round's base result if boxes need it), a
``ResultReady`` round's sum is published (through the regional forwarder first, in a
regional aggregator) and marked published once the broker confirmed it. A result the
broker did not confirm stays ``closed`` and is retried on every pump."""

from __future__ import annotations

import hashlib
import logging
import statistics
import threading
from dataclasses import replace
from typing import Protocol

from aggregator.rounds import pins as model_pins
from aggregator.rounds.coordinator import Coordinator, announce_of
from aggregator.rounds.publisher import Publisher
from aggregator.rounds.records import Announce, Event, ResultReady, RootResult
from aggregator.state.store import Store
from federation.errors import AWAITING_ROOT, ROOT_ON_INITIAL, TransportError
from federation.messages import CLOSED, RoundAnnounce, result_round

log = logging.getLogger(__name__)

# a region round closed without updates to publish the root's newer model (`rounds list`)
FOLLOWS_ROOT = "follows the root:"
# a region round whose sum was of a base the root had moved past (`rounds list`)
STALE_SUM = "its sum was of a stale base (the root moved on): the root's result, no update"


class ResultForwarder(Protocol):
    """A regional aggregator's link to the root (aggregator.regional.forwarder): hands
    the region's closed-round sum over and returns the root's result to publish."""

    def exchange(self, event: ResultReady, partial_blob: bytes) -> RootResult:
        """The root's result for this closed round (TransportError: not yet)."""
        ...

    def report_nothing_new(self, nothing_new: bool) -> None:
        """Tell the root whether this region's boxes have nothing new (it sits the
        root's open round out); called after every tick, says only what changed."""
        ...

    def root_moved_past(self, base_model: str) -> str | None:
        """The root's current model when it is not what this region's ``base_model``
        stands for (newer, or older after a pin at the root), its result in hand (None:
        not so)."""
        ...


class RoundEventHandler:
    """Publishes the coordinator's events; the service's worker calls ``handle`` with
    them (and only the worker: nothing here is locked). ``finished`` is set once
    ``max_rounds`` results are published (None: never)."""

    def __init__(self, store: Store, coordinator: Coordinator, publisher: Publisher, *,
                 max_rounds: int | None, finished: threading.Event) -> None:
        self.store = store
        self.coordinator = coordinator
        self.publisher = publisher
        self.max_rounds = max_rounds
        self.finished = finished
        self.published_rounds = 0
        # Regional mode: a closed round's sum goes to the root aggregator as a partial,
        # and the root's result is what this region publishes (None: a root or lone one).
        self.forwarder: ResultForwarder | None = None
        self._unpublished: list[ResultReady] = []
        self._awaiting_said = 0  # the round whose wait for the root's result was logged
        # round -> each accepted update's age at its ack: from the box's send time (the
        # envelope's ts) to the ack, so time queued at the broker counts (logged when the
        # round's result is out: the operator's sign of an aggregator falling behind)
        self.ack_waits: dict[int, list[float]] = {}

    def after_tick(self) -> None:
        """Regional mode, after every tick: tell the root whether this region has
        anything new, and follow the root's current model. A region whose boxes sat a
        root round out kept its older model (a walkthrough's south served round-1 while
        north served the root's round-3) until its boxes next had something new, and
        then that round's sum was of a stale base; after a rollback at the root, every
        region kept building on the model rolled back from (helper-41). An open round
        whose base is not the root's current model now closes at once on it, which its
        boxes then serve: its updates, if any, are of a base the root no longer builds
        on and are not forwarded (their boxes send again, on the root's model)."""
        if self.forwarder is None:
            return
        self.forwarder.report_nothing_new(self.coordinator.nothing_new())
        cur = self.coordinator.current
        if cur is None or cur.status != "open":
            return
        current = self.forwarder.root_moved_past(cur.base_model)
        if current is not None and result_round(current) is None:
            self._follow_initial(f"round {cur.round}: the root builds on its initial model "
                                 f"{current}, this round on {cur.base_model}")
        elif current is not None:
            held = self.coordinator.updates_summed()
            log.info("round %d: the root's current model is its %s, not the one this "
                     "round's base %s stands for: the round closes and publishes it%s",
                     cur.round, current, cur.base_model,
                     f" ({held} update(s) of the old base NOT forwarded)" if held else "")
            self.handle(self.coordinator.catch_up(f"{FOLLOWS_ROOT} {current}"))

    def record_ack_wait(self, round_no: int, seconds: float) -> None:
        """An accepted update of ``round_no`` was acked ``seconds`` after its box sent it."""
        self.ack_waits.setdefault(round_no, []).append(seconds)

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Announce):
                self._announce(event.message)
            elif isinstance(event, ResultReady):
                try:
                    self._publish_result(event)
                except TransportError as exc:
                    if exc.reason == ROOT_ON_INITIAL:  # a region: no result will come
                        self._follow_initial(exc.message)
                        continue
                    # Stays 'closed' in the db; retried every pump until the broker confirms.
                    self._not_published(event, exc)
                    if event not in self._unpublished:
                        self._unpublished.append(event)

    def _follow_initial(self, why: str) -> None:
        """Regional mode: the root builds on its initial model (`models pin base` there),
        which has no result to publish. This region pins its own and fails its round
        (its updates are of another base): the next round opens on the initial model,
        which its boxes go back to, and reaches the root's. A later root result is
        followed as any, and the pin dropped when it is published (``_publish_result``).
        Regions waited for good, and a region pinned by hand was pulled back to the
        root's previous result at once (helper-43)."""
        initial = self.coordinator.initial_model
        # pinned anew each time: a pin of an earlier follow holds only up to its own
        # round, and a second `pin base` at the root looped the regions (helper-45)
        model_pins.pin(self.store, initial)
        log.warning("%s: this region follows it (its initial model pinned here too)", why)
        self.handle(self.coordinator.abandon(f"{FOLLOWS_ROOT} {initial} (pinned at the root)"))

    def _not_published(self, event: ResultReady, exc: TransportError) -> None:
        if exc.reason != AWAITING_ROOT:
            log.error("round %d result not confirmed by the broker (%s); will retry",
                      event.round, exc)
        elif event.round != self._awaiting_said:  # a region's normal wait: said once
            self._awaiting_said = event.round
            log.info("%s (asked again every few seconds; `fedface-aggregator status` at the "
                     "root shows its round)", exc.message)

    def retry_unpublished(self) -> None:
        """Publish again the results the broker did not confirm (every pump)."""
        pending, self._unpublished = self._unpublished, []
        self.handle(list(pending))

    def _announce(self, ann: RoundAnnounce) -> None:
        if ann.open:  # boxes must be able to fetch the base
            try:
                model_pins.republish_base(self.store, self.publisher, ann.base_model, ann.round)
            except (OSError, TransportError) as exc:  # boxes then wait; the round runs on
                log.error("round %d: cannot re-publish its base %s (%s)", ann.round,
                          ann.base_model, exc)
        self.publisher.announce(ann)

    def _log_ack_waits(self, round_no: int) -> None:
        """One line per round: each accepted update's age at its ack, from the box's send
        time (its envelope's ts; box clocks are NTP-synced) to the ack, so time queued at
        the broker counts. A p50 of a few tens of ms means the aggregator kept pace; a
        max that grows with the fleet means uploads queued at the broker behind it
        (or a box resent an old update from its outbox)."""
        waits = sorted(self.ack_waits.pop(round_no, []))
        for old in [r for r in self.ack_waits if r < round_no]:  # rounds that failed
            del self.ack_waits[old]
        if waits:
            log.info("round %d: %d update(s) acked this run, age at ack (box's send time to "
                     "ack) p50 %.0f ms, max %.0f ms", round_no, len(waits),
                     1e3 * statistics.median(waits), 1e3 * waits[-1])

    def _publish_result(self, event: ResultReady) -> None:
        previous = model_pins.retained_row(self.store)  # its retained chunks are cleared
        blob = self.store.read_blob(event.sum_blob)
        root_model = ""
        if self.forwarder is not None:  # regional: raises TransportError until the root's
            root = self.forwarder.exchange(event, blob)  # result is in (retried each pump)
            blob, root_model = root.blob, root.root_model
            if not root.included and event.contributors:
                # the pointer says no update is in it: the boxes that sent count their
                # samples as new again (edge.federated.joining)
                event = replace(event, contributors=[])
                self.store.update_round(event.round, close_reason=STALE_SUM)
        # a region publishes the root's blob, maybe one it published before (after a
        # rollback at the root): a message id of its own round, or its running boxes drop
        # the chunks as a duplicate of the earlier one (helper-41)
        msg = None if self.forwarder is None else hashlib.sha256(
            f"{hashlib.sha256(blob).hexdigest()}:{event.round}".encode()).hexdigest()[:32]
        done_result = self.publisher.result(event, blob, previous, msg=msg,
                                            root_model=root_model)
        del blob
        if self.forwarder is not None and model_pins.pinned(self.store) is not None:
            # a region follows the root: a pin of its initial model, set to follow the
            # root's, is done with once a root result is out (status kept asking the
            # operator to unpin it: helper-45); the next round builds on this one either way
            model_pins.unpin(self.store)
        model_pins.set_retained(self.store, event.round)
        self._log_ack_waits(event.round)
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
                self._announce(replace(announce_of(cur), state=CLOSED))
        self.handle(events)
