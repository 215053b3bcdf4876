"""Recovery without an operator: a round the boxes refuse is marked poisoned, and the
federation goes back to the last good model by itself.

The aggregator cannot decrypt, so it cannot see that a sum wrapped around the CKKS
range (a box that sent a count slot of 2047) or holds a ciphertext under another key:
both are indistinguishable from good ciphertexts to it. Only the boxes can tell, when
they decrypt the published result. Each box's refusal reaches the aggregator as a
verdict in its signed, retained status (aggregator.intake.verdicts); the worker keeps
them (aggregator.state.verdicts) and judges the round here.

The rule (docs/protocol.md, "Poisoned rounds"). A published round is poisoned when more
active boxes refused it than applied it, and either

- a majority of the active boxes refused it (decided at once), or
- it was published at least ``settle_seconds`` ago (every online box has had time to
  judge it) and at least ``min(quorum, majority)`` active boxes refused it.

One box alone can never poison a round unless it is half of the fleet: it takes as many
boxes as the federation needs to publish anything (its quorum), or a majority. A
majority of the active boxes always suffices, so a quorum larger than the fleet still
recovers. Refusals that say nothing about the result's content are not counted
(``NOT_EVIDENCE``: a box refusing an older round than the one it has). Decrypting gives
every honest box the same sum, so on an overflow or a foreign ciphertext the honest
boxes agree; where they disagree (canaries on different people), the count decides.

Poisoning a round marks it (status ``poisoned``, persisted) and every published round
built on it; if the open round builds on a poisoned model it is failed and a new round
opens on the last good base (aggregator.rounds.pins: the newest good result, or the
pinned one, or the initial model); that result is re-published at once as the retained
one, so ``model/latest`` points at a good model again before the next round opens.
Boxes that sat out because their base was the poisoned round hold the last good model
already (they refused the bad one) and join the new round. With no good result (the
initial model) nothing is re-published: a box that applied the poisoned result goes
back to the initial model when it reads the new round's announce
(edge.federated.result_apply, ``back_to_initial``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from aggregator.rounds import pins
from aggregator.rounds.coordinator import Coordinator
from aggregator.rounds.publisher import Publisher
from aggregator.rounds.records import Event
from aggregator.state import verdicts as stored
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation.errors import FederationError
from federation.verdicts import Verdict

log = logging.getLogger(__name__)

# Refusal codes that are not evidence against a round's content, only about the box:
# it refused a round older than the newest it accepted (a replay, or a rollback it
# already has), or it does not hold the result's key yet (after a rotation, a box that
# reconnects may see the retained result before its sealed key bundle). A result's
# key id is always the aggregator's own (intake refuses updates under any other), so a
# foreign ciphertext shows as out_of_range, never as wrong_key.
NOT_EVIDENCE = frozenset({"stale_round", "wrong_key", "old_epoch", "key_epoch_pending"})
DEFAULT_SETTLE_SECONDS = 60.0
_TICK_EVERY = 1.0  # seconds between checks of the settle window


def judge(verdicts: Iterable[stored.StoredVerdict], active: set[str], quorum: int,
          age: float, settle_seconds: float) -> str | None:
    """Why the round is poisoned, or None (the rule of the module docstring)."""
    refused: dict[str, str] = {}
    applied: set[str] = set()
    for v in verdicts:
        if v.device_id not in active:
            continue  # a revoked box's word does not count
        if not v.refusal:
            applied.add(v.device_id)
        elif v.code not in NOT_EVIDENCE:
            refused[v.device_id] = v.code or v.outcome
    majority = len(active) // 2 + 1
    if not refused or len(refused) <= len(applied):
        return None
    codes = sorted(set(refused.values()))
    said = (f"{len(refused)} of {len(active)} active boxes refused it "
            f"({', '.join(codes)}), {len(applied)} applied it")
    if len(refused) >= majority:
        return said
    if age >= settle_seconds and len(refused) >= min(quorum, majority):
        return f"{said}, {age:.0f} s after its publication"
    return None


class PoisonWatch:
    """The worker's part: take verdict reports, judge, mark and recover. Returns the
    coordinator's events (the new round's announce) for the service to publish."""

    def __init__(self, store: Store, registry: DeviceRegistry, coordinator: Coordinator,
                 publisher: Publisher, *, settle_seconds: float = DEFAULT_SETTLE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.registry = registry
        self.coordinator = coordinator
        self.publisher = publisher
        self.settle_seconds = settle_seconds
        self.clock = clock
        self._next_tick = 0.0

    def report(self, device: str, verdicts: Iterable[Verdict]) -> list[Event]:
        """A device's verdicts (signature-checked by the intake)."""
        touched = set()
        for v in verdicts:
            row = self.store.get_round(v.round)
            # a verdict on exactly this round's published result (or, late, a poisoned one)
            if row is None or row.status not in ("published", "poisoned") \
                    or v.model is None or v.model != row.result_model:
                continue
            if stored.record_verdict(self.store, stored.StoredVerdict(
                    v.round, device, v.model, v.outcome, v.code, v.reason, v.at)):
                touched.add(v.round)
                if v.refusal:
                    log.warning("%s refused round %d (%s): %s", device, v.round,
                                v.code or v.outcome, v.reason)
        events: list[Event] = []
        for round_no in sorted(touched):
            events += self.check(round_no)
        return events

    def tick(self) -> list[Event]:
        """Every pump: a refused round whose settle window ended is judged again."""
        now = self.clock()
        if now < self._next_tick:
            return []
        self._next_tick = now + _TICK_EVERY
        rows = self.store.db.execute(
            "SELECT DISTINCT v.round FROM round_verdicts v JOIN rounds r ON r.round = v.round"
            " WHERE r.status = 'published' AND v.outcome != 'applied'").fetchall()
        events: list[Event] = []
        for (round_no,) in rows:
            events += self.check(int(round_no))
        return events

    def check(self, round_no: int) -> list[Event]:
        row = self.store.get_round(round_no)
        if row is None or row.status != "published":
            return []
        why = judge(stored.verdicts_on(self.store, round_no), self.registry.active_ids(),
                    row.quorum, self.clock() - (row.closed_at or row.opened_at),
                    self.settle_seconds)
        return [] if why is None else self.poison(round_no, why)

    def poison(self, round_no: int, why: str) -> list[Event]:
        """Mark ``round_no`` and the published rounds built on it poisoned; go back to
        the last good base (re-published now); fail an open round built on it."""
        rows = self.store.list_rounds()
        bad = {r.result_model for r in rows if r.round == round_no}
        marked = [(round_no, why)]
        for r in rows:  # oldest first: a chain of results built on the poisoned one
            if r.round > round_no and r.status == "published" and r.base_model in bad:
                marked.append((r.round, f"{stored.BUILT_ON}{r.base_model}"))
                bad.add(r.result_model)
        now = self.clock()
        stored.mark_poisoned(self.store, marked, "", now)
        good, _ = pins.next_base(self.store, self.coordinator.initial_model)
        stored.set_recovered_to(self.store, [r for r, _ in marked], good)
        log.error("round %d POISONED (%s); %s; the next round builds on %s",
                  round_no, why, ", ".join(f"round {r} too ({w})" for r, w in marked[1:])
                  or "no round built on it", good)
        latest = self.store.latest_round()
        opening = (latest.round if latest is not None else round_no) + 1
        self._retain_good(good, {r for r, _ in marked}, opening)
        cur = self.coordinator.current
        if cur is not None and cur.status == "open" and cur.base_model in bad:
            return self.coordinator.abandon(f"its base {cur.base_model} was found poisoned")
        return []

    def _retain_good(self, good: str, poisoned: set[int], opening: int) -> None:
        """``model/latest`` must not keep pointing boxes at a poisoned result."""
        retained = pins.retained_row(self.store)
        if retained is None or retained.round not in poisoned:
            return
        try:
            if pins.republish_base(self.store, self.publisher, good, opening):
                return
        except (OSError, FederationError) as exc:  # the next round's announce tries again
            log.error("cannot re-publish %s after poisoning round %d: %s", good,
                      retained.round, exc)
            return
        # No good result to go back to (the initial model): clear the retained result,
        # so a box that restarts does not fetch the poisoned one again.
        self.publisher.clear_result(retained)
        pins.set_retained(self.store, 0)
        log.info("cleared the retained result of the poisoned round %d; boxes keep %s",
                 retained.round, good)
