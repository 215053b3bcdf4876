"""Which published model version the next rounds build on: the latest, or a pinned one.

The operator pins a published round result (``fedface-aggregator models pin round-2``,
or ``models rollback`` = pin the version before the current base) when a newer result
turned out bad. The pin lives in the state db (meta table), so the CLI sets it while
``serve`` runs and the service reads it when it opens the next round; the round open at
that moment finishes on its own base.

Boxes learn the base from the announce (``base_model``, ``pinned``) and fetch the
weights the usual way: the ``model/latest`` pointer and the retained chunks under
``result/<r>/<i>``. Only ONE result is retained at a time, so when a round opens on a
base whose result is not the retained one, the service re-publishes that result
(``republish_base``) under its own round topic with a fresh message id (a box that
assembled that result earlier in its life would otherwise drop the chunks as
duplicates) and points ``model/latest`` at it. Which result is retained is recorded in
the meta table (``retained_result_round``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from aggregator.store import RoundRow, Store, StoreError

if TYPE_CHECKING:  # the publisher imports the coordinator, which imports this module
    from aggregator.publisher import Publisher

log = logging.getLogger(__name__)

PIN_KEY = "pinned_model"
RETAINED_KEY = "retained_result_round"


class PinError(ValueError):
    """A pin, unpin or rollback was refused; the message says why and what to do."""


def published(store: Store) -> list[RoundRow]:
    """Published round results, oldest first."""
    return [r for r in store.list_rounds() if r.status == "published" and r.result_model]


def _published_row(store: Store, version: str) -> RoundRow | None:
    return next((r for r in published(store) if r.result_model == version), None)


def pinned(store: Store) -> str | None:
    return store.get_meta(PIN_KEY) or None


def pin(store: Store, version: str) -> RoundRow:
    """Make ``version`` (a published result whose blob is on disk) the base of the next
    rounds."""
    row = _published_row(store, version)
    if row is None:
        known = ", ".join(r.result_model or "" for r in published(store)) or "none yet"
        raise PinError(f"{version!r} is not a published model version (published: {known}); "
                       "see `fedface-aggregator models list`")
    if row.sum_blob is None or not store.blob_path(row.sum_blob).is_file():
        raise PinError(f"the result of {version} (round {row.round}) is no longer on disk: "
                       "it cannot be served to boxes again")
    store.set_meta(PIN_KEY, version)
    log.info("model %s (round %d) pinned: the next rounds build on it", version, row.round)
    return row


def unpin(store: Store) -> str | None:
    """Back to the latest published version; returns the pin that was removed."""
    before = pinned(store)
    store.db.execute("DELETE FROM meta WHERE key=?", (PIN_KEY,))
    if before:
        log.info("model %s unpinned: the next rounds build on the latest result", before)
    return before


def rollback(store: Store) -> tuple[str, RoundRow]:
    """Pin the published version before the current base; returns (old base, new pin)."""
    rows = published(store)
    current = current_base_row(store)
    if current is None:
        raise PinError("no published model version yet: nothing to roll back")
    earlier = [r for r in rows if r.round < current.round]
    if not earlier:
        raise PinError(f"{current.result_model} is the first published version: there is "
                       "nothing before it (the pretrained model cannot be pinned)")
    return str(current.result_model), pin(store, str(earlier[-1].result_model))


def current_base_row(store: Store) -> RoundRow | None:
    """The published result the next round builds on (None: the initial model)."""
    name = pinned(store)
    row = _published_row(store, name) if name else None
    if name and row is None:
        log.error("pinned model %s is not a published version; using the latest", name)
    return row or store.latest_published()


def next_base(store: Store, initial_model: str) -> tuple[str, bool]:
    """(base model version of the next round, whether it is pinned)."""
    row = current_base_row(store)
    if row is None or row.result_model is None:
        return initial_model, False
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
    if row is None or (retained is not None and retained.round == row.round):
        return False
    if row.sum_blob is None or row.result_model is None:
        raise StoreError(f"round {row.round} is published but has no result blob")
    from aggregator.coordinator import ResultReady

    blob = store.read_blob(row.sum_blob)
    msg = hashlib.sha256(f"{row.result_sha256}:{opening_round}".encode()).hexdigest()[:32]
    event = ResultReady(row.round, row.result_model, row.base_model, row.sum_blob,
                        store.contributors(row.round))
    publisher.result(event, blob, retained, msg=msg, extra={"republished": True,
                                                            "for_round": opening_round})
    set_retained(store, row.round)
    log.info("re-published the result of round %d (%s) as the base of round %d",
             row.round, base, opening_round)
    return True
