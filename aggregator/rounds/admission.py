"""What an update must pass before it is summed, and the rebuilding of an open round's sum
from its stored updates (on restart, or when a summing worker died)."""

from __future__ import annotations

import logging

from aggregator.rounds.accumulator import Accumulator, AccumulatorFactory
from aggregator.rounds.records import Decision, Submission
from aggregator.state.db import RoundRow
from aggregator.state.regions import kind_problem
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store, StoreError

log = logging.getLogger(__name__)

NOT_OPEN = "not_open"  # no round open with that number (future round, or none)
# Stored updates re-added per batch when a sum is rebuilt (memory: one staged sum each).
REBUILD_BATCH = 16


def check(store: Store, registry: DeviceRegistry, cur: RoundRow | None, sub: Submission,
          batch: dict[str, str]) -> Decision | None:
    """Why ``sub`` cannot be summed into the open round ``cur`` (None: it can).
    ``batch``: device -> msg of the updates already taken in the same group commit."""
    if registry.active_key(sub.device_id) is None:
        known = registry.get(sub.device_id) is not None
        return Decision(
            False, "unknown_device", "device revoked" if known else "device not registered"
        )
    try:
        problem = kind_problem(store, sub.device_id, sub.kind, sub.head())
    except OSError as exc:
        return Decision(False, "unavailable", f"cannot read the spooled update: {exc}")
    if problem is not None:
        return Decision(False, "malformed", problem)
    if cur is None or sub.round > cur.round:
        return Decision(False, NOT_OPEN, f"round {sub.round} is not open")
    if sub.round < cur.round:
        seen_in = store.device_contributed_msg(sub.device_id, sub.msg_id)
        if seen_in is not None:
            return Decision(
                False, "replay", f"update {sub.msg_id} was counted in round {seen_in}"
            )
        return Decision(
            False, "late", f"round {sub.round} is closed (current round {cur.round})"
        )
    if cur.status != "open":
        return Decision(False, "late", f"round {cur.round} is closed")
    prior_msg = batch.get(sub.device_id)
    if prior_msg is None:
        prior = store.contribution(cur.round, sub.device_id)
        prior_msg = None if prior is None else str(prior["msg_id"])
    if prior_msg is not None:
        return Decision(
            False,
            "duplicate",
            f"an update of this device (msg {prior_msg}) is already counted "
            f"in round {cur.round}",
        )
    if sub.model != cur.base_model:
        return Decision(
            False,
            "stale_version",
            f"update is based on {sub.model}, round {cur.round} on {cur.base_model}",
        )
    return None


def rebuild_sum(store: Store, accumulators: AccumulatorFactory, row: RoundRow) -> Accumulator:
    """The open round's sum rebuilt from disk: its accepted blobs re-added a batch at a
    time (memory stays bounded by models). A state dir written by an older version may
    also hold a running sum blob of its first contributions."""
    legacy = store.legacy_contributions(row.round)
    if row.sum_blob is not None and legacy:
        acc = accumulators.restore(store.read_blob(row.sum_blob), legacy)
    else:
        acc = accumulators.new()
    readded = legacy  # blobs re-added (a regional partial sums several updates)
    blobs = store.accepted_blobs(row.round)
    for start in range(0, len(blobs), REBUILD_BATCH):
        part = blobs[start:start + REBUILD_BATCH]
        results = acc.stage_many([store.accepted_path(name) for _, name in part])
        for (device, name), rejected in zip(part, results, strict=True):
            if rejected is not None:
                acc.discard_staged()
                raise StoreError(
                    f"round {row.round}: the accepted update of {device} ({name}) cannot be "
                    f"re-added ({rejected.detail}); the state directory is damaged"
                )
        acc.commit_staged()
        readded += len(part)
    if readded != row.contributions or acc.count < readded:
        raise StoreError(
            f"round {row.round}: rebuilt a sum of {readded} blob(s), the db counts "
            f"{row.contributions}; the state directory is damaged"
        )
    return acc
