"""A state older than its federation: ``serve`` started on a state dir restored from a backup.

Boxes number their work by round, and drop an announce of a round at or below the last
they took part in as an old message redelivered (replay protection). So on a state dir
restored from an older copy, the aggregator's rounds (3, 4, ... again) went unheard by
boxes that had reached round 6: every round failed for want of a quorum, for ever, and
nothing said why (helper-50). The results published after the backup are lost with the
state that held their blobs; what the boxes say, signed, tells how far the federation got:
the rounds of their statuses' verdicts and sit-outs, and of their updates.

When a box speaks of a round beyond every round this state knows, the service:

- numbers its next rounds above it (meta ``round_floor``, read by the coordinator) and
  fails the round open now, whose number the boxes have passed;
- pins the newest result this state holds, or the initial model (aggregator.rounds.pins),
  so that boxes serving a later, lost result go back to it as after an operator's pin;
- marks the broker's retained result as unknown: the broker holds a lost round's result,
  not the one this state recorded, so the pinned base is re-published (the initial
  model: the pointer at the lost result is cleared, aggregator.rounds.pins);

and says so in one ERROR line naming what was lost and what the operator may do.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aggregator.rounds import pins
from aggregator.rounds.records import Event
from aggregator.rounds.settings import RoundSettings
from aggregator.state.store import Store

log = logging.getLogger(__name__)

FLOOR_KEY = "round_floor"


def round_floor(store: Store) -> int:
    """Rounds up to this number were run by an earlier copy of this state (0: none)."""
    raw = store.get_meta(FLOOR_KEY)
    return int(raw) if raw and raw.isdigit() else 0


def known_round(store: Store) -> int:
    latest = store.latest_round()
    return max(0 if latest is None else latest.round, round_floor(store))


def heard_round(store: Store, device: str, round_no: int, what: str, initial_model: str,
                key_id: str, applied_round: int = 0) -> bool:
    """``device`` (authenticated) spoke of round ``round_no`` (``what``: its update, its
    verdict, ...) and applied the result of ``applied_round``. True when that round is
    beyond this state: the recovery above is recorded and the caller fails the open
    round, so that the next one opens."""
    known = known_round(store)
    row = store.get_round(applied_round) if applied_round else None
    if row is not None and row.status == "open":
        # the box applied the result of a round this state still has open: the number
        # was used before, by a copy of this state now lost (a backup one round old, and
        # the round opened before the boxes' statuses came in: undetected, it failed at
        # its deadline and the boxes were later told their model was poisoned)
        round_no, known = max(round_no, applied_round), applied_round - 1
    elif round_no <= known:
        return False
    store.set_meta(FLOOR_KEY, str(round_no))
    newest = store.latest_published()
    version = initial_model if newest is None or newest.result_model is None \
        else newest.result_model
    try:
        pins.pin(store, version, key_id, initial_model, after_round=round_no)
    except pins.PinError as exc:  # e.g. its result is of an earlier key epoch
        log.warning("cannot pin %s (%s); pinning the initial model %s", version, exc,
                    initial_model)
        version = initial_model
        pins.pin(store, version, key_id, initial_model, after_round=round_no)
    pins.set_retained(store, pins.UNKNOWN_RETAINED)
    log.error(
        "%s's %s is of round %d, but this state knows rounds up to %d only: it is older "
        "than its federation (restored from a backup?). The results published after it "
        "are lost with the state that held them; rounds go on from round %d on %s, "
        "pinned: boxes serving a later result go back to it (docs/operations.md, "
        "\"Backing up and restoring\")", device, what, round_no, known, round_no + 1, version)
    return True


class Rounds(Protocol):
    """What the recovery needs of aggregator.rounds.coordinator (which imports this)."""

    store: Store
    settings: RoundSettings
    initial_model: str

    def abandon(self, why: str) -> list[Event]: ...


def recover_if_ahead(coordinator: Rounds, device: str, round_no: int, what: str,
                     applied_round: int = 0) -> list[Event]:
    """The service's hook (statuses and updates it heard): the open round's failure and
    the next round's opening, when ``round_no`` is beyond the coordinator's state."""
    if not heard_round(coordinator.store, device, round_no, what, coordinator.initial_model,
                       coordinator.settings.key_id, applied_round):
        return []
    return coordinator.abandon(f"{device}'s {what} is of round {round_no}: this state is "
                               "older than its federation")
