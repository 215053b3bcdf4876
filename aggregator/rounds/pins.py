"""Which published model version the next round builds on: the latest, or a pinned one.

The operator pins a published round result (``fedface-aggregator models pin round-2``,
or ``models rollback`` = pin the version the current base was built on) when a newer
result turned out bad, or the initial (pretrained) model every box holds (``models pin
base``): the way out when no published result is one every needed box can serve (a box
provisioned after a key rotation cannot read a result of the earlier key). A pin resets
the head of the federation's model chain: the next round builds on the pinned version,
and the rounds after it on the newest result of a round opened after the pin (so
results of rounds opened before the pin, including the one open when it was set, are
never a base again). ``unpin`` drops the pin: the next
round builds on the newest published result, whatever its lineage.

The pin lives in the state db (meta table), so the CLI sets it while ``serve`` runs;
the service reads it when it opens its next round (the round open at that moment
finishes on its own base).

Boxes learn the base from the announce (``base_model``; ``pinned`` is true when it is
the pinned version) and fetch the weights the usual way: the ``model/latest`` pointer
and the retained chunks under ``result/<r>/<i>``. Only ONE result is retained at a
time, so when a round opens on a base whose result is not the retained one, the service
re-publishes that result (``republish_base``) under its own round topic with a fresh
message id (a box that assembled that result earlier in its life would otherwise drop
the chunks as duplicates) and points ``model/latest`` at it. Which result is retained
is recorded in the meta table (``retained_result_round``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from aggregator.rounds.publisher import Publisher
from aggregator.rounds.records import ResultReady
from aggregator.state.db import RoundRow
from aggregator.state.store import Store, StoreError
from federation.messages import RoundAnnounce

log = logging.getLogger(__name__)

PIN_KEY = "pinned_model"
RETAINED_KEY = "retained_result_round"
# the broker's retained result is one this state does not know (a state restored from a
# backup: a lost round's, aggregator.rounds.restored); retained_row() finds no row for it
UNKNOWN_RETAINED = -1


class PinError(ValueError):
    """A pin, unpin or rollback was refused; the message says why and what to do."""


def published(store: Store) -> list[RoundRow]:
    """Published round results, oldest first."""
    return [r for r in store.list_rounds() if r.status == "published" and r.result_model]


def _published_row(store: Store, version: str) -> RoundRow | None:
    return next((r for r in published(store) if r.result_model == version), None)


@dataclass(frozen=True)
class Pin:
    model: str
    after_round: int  # rounds up to this one (open when pinned) never give the base
    initial: bool = False  # the initial model, not a published result


def get_pin(store: Store) -> Pin | None:
    raw = store.get_meta(PIN_KEY)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Pin(str(data["model"]), int(data["after_round"]), bool(data.get("initial")))
    except (ValueError, KeyError, TypeError):
        log.error("the stored pin %r is unreadable; ignoring it (run models pin/unpin)", raw)
        return None


def pinned(store: Store) -> str | None:
    found = get_pin(store)
    return None if found is None else found.model


def pin(store: Store, version: str, key_id: str = "", initial_model: str = "base",
        after_round: int | None = None) -> RoundRow | None:
    """Make ``version`` (a published result whose blob is on disk, or ``initial_model``:
    returns None) the base of the next round; later rounds build on the results of
    rounds opened after this pin. With the federation's current ``key_id``: a result of
    an earlier key epoch is refused (no box holding the current key can decrypt it:
    every box would refuse it as wrong_key and sit the pinned rounds out).
    ``after_round``: the round the pin follows (default: the state's latest; a restored
    state's is the boxes', aggregator.rounds.restored)."""
    after = _after_round(store) if after_round is None else after_round
    if version == initial_model:
        store.set_meta(PIN_KEY, json.dumps({"model": version, "after_round": after,
                                            "initial": True}))
        log.info("the initial model %s pinned: round %d builds on it", version, after + 1)
        return None
    row = _published_row(store, version)
    if row is None:
        known = ", ".join(r.result_model or "" for r in published(store)) or "none yet"
        raise PinError(f"{version!r} is not a published model version (published: {known}); "
                       "see `fedface-aggregator models list`")
    was_key = str(row.announce.get("key_id") or "")
    if key_id and was_key and was_key != key_id:
        raise PinError(f"{version} (round {row.round}) is encrypted under key {was_key[:12]}, "
                       f"an earlier key epoch than the federation's {key_id[:12]}: no box can "
                       "decrypt it any more; pin a version published since the rotation")
    if row.sum_blob is None or not store.blob_path(row.sum_blob).is_file():
        raise PinError(f"the result of {version} (round {row.round}) is no longer on disk: "
                       "it cannot be served to boxes again")
    store.set_meta(PIN_KEY, json.dumps({"model": version, "after_round": after}))
    log.info("model %s (round %d) pinned: round %d builds on it", version, row.round, after + 1)
    return row


def _after_round(store: Store) -> int:
    latest = store.latest_round()
    return 0 if latest is None else latest.round


def unpin(store: Store) -> str | None:
    """Back to the latest published version; returns the pin that was removed."""
    before = pinned(store)
    store.db.execute("DELETE FROM meta WHERE key=?", (PIN_KEY,))
    if before:
        log.info("model %s unpinned: the next rounds build on the latest result", before)
    return before


def rollback(store: Store, key_id: str = "", initial_model: str = "base"
             ) -> tuple[str, str]:
    """Pin the version the current base was built on (a published result, or the
    initial model); returns (old base, new pin)."""
    current = current_base_row(store)
    if current is None:
        raise PinError(f"the next round builds on the initial model {initial_model} "
                       "already: nothing to roll back")
    parent = current.base_model
    if parent != initial_model and _published_row(store, parent) is None:
        raise PinError(f"{current.result_model} was built on {parent}, which is not a "
                       "published round result")
    pin(store, parent, key_id, initial_model)
    return str(current.result_model), parent


def current_base_row(store: Store) -> RoundRow | None:
    """The published result the next round builds on (None: the initial model)."""
    found = get_pin(store)
    if found is None:
        return store.latest_published()
    newer = [r for r in published(store) if r.round > found.after_round]
    if newer:
        return newer[-1]
    if found.initial:
        return None
    row = _published_row(store, found.model)
    if row is None:
        log.error("pinned model %s is not a published version; using the latest", found.model)
        return store.latest_published()
    return row


def next_base(store: Store, initial_model: str) -> tuple[str, bool]:
    """(base model version of the next round, whether it is the pinned version)."""
    row = current_base_row(store)
    if row is None or row.result_model is None:
        return initial_model, pinned(store) == initial_model
    return row.result_model, row.result_model == pinned(store)


def retained_row(store: Store) -> RoundRow | None:
    """The round whose result chunks are retained on the broker now."""
    value = store.get_meta(RETAINED_KEY)
    if value is None:  # a state dir from before pins: the latest result was retained
        return store.latest_published()
    return store.get_round(int(value))


def set_retained(store: Store, round_no: int) -> None:
    store.set_meta(RETAINED_KEY, str(round_no))


def republish_base(store: Store, publisher: Publisher, base: str, opening_round: int) -> bool:
    """Make ``base``'s result the retained one (chunks + model/latest), if it is not.

    Returns True when something was published. The message id is derived from the
    result and the round being opened: a restart re-sends the same message, while a
    box that assembled this result before (it was the latest once) sees a new one.
    """
    row = _published_row(store, base)
    retained = retained_row(store)
    if row is None and store.get_meta(RETAINED_KEY) == str(UNKNOWN_RETAINED):
        # the initial model on a restored state: the broker's pointer names a lost
        # round's result, which a box starting now would fetch and serve. Its chunks are
        # of rounds this state never saw (left retained, nothing points at them then).
        publisher.clear_pointer()
        set_retained(store, 0)
        log.info("round %d builds on the initial model %s: cleared the broker's pointer "
                 "at a result this state does not hold (restored from a backup)",
                 opening_round, base)
        return True
    if row is None and retained is not None:  # the initial model: no result to point at
        publisher.clear_result(retained)
        set_retained(store, 0)
        log.info("round %d builds on the initial model %s: cleared the retained result of "
                 "round %d (a box starting now must not fetch it)", opening_round, base,
                 retained.round)
        return True
    if row is None or (retained is not None and retained.round == row.round):
        return False
    if row.sum_blob is None or row.result_model is None:
        raise StoreError(f"round {row.round} is published but has no result blob")
    blob = store.read_blob(row.sum_blob)
    msg = hashlib.sha256(f"{row.result_sha256}:{opening_round}".encode()).hexdigest()[:32]
    policy = RoundAnnounce.from_dict(row.announce).result_policy()  # the round's own
    event = ResultReady(row.round, row.result_model, row.base_model, row.sum_blob,
                        store.contributors(row.round), policy)
    publisher.result(event, blob, retained, msg=msg, for_round=opening_round)
    set_retained(store, row.round)
    log.info("re-published the result of round %d (%s) as the base of round %d",
             row.round, base, opening_round)
    return True
