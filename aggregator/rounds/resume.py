"""A round left open by a ``serve`` that ran with other round settings.

Every box applies what the round's announce says (differential privacy, the bounds, the
count scale, the part). A restarted ``serve`` whose settings differ would otherwise
resume the open round with the old announce: a walkthrough restarted it with
``--dp-clip 0.5 --dp-noise 1`` and both boxes sent round 8 without any noise (their
ledgers start at round 9), and the reverse after a restart without DP. Such a round is
failed (its accepted updates dropped; the boxes count their samples as new again) and the
next opens with the settings the operator just gave; said once, in the log. The quorum
is no box's business: the resumed round takes the new one (``take_quorum``).

May import: aggregator.state, aggregator.rounds.settings, federation.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from aggregator.rounds.settings import RoundSettings
from aggregator.state.store import Store
from federation.messages import RoundAnnounce

if TYPE_CHECKING:
    from aggregator.state.db import RoundRow

log = logging.getLogger(__name__)

_POLICY = ("dp", "bounds", "count_scale", "part_key")  # what every box applies from it


def take_quorum(store: Store, row: RoundRow, settings: RoundSettings) -> RoundRow:
    """The open round ``row`` takes the quorum serve now runs with: a privacy floor the
    operator just set (a walkthrough restarted serve with --quorum 3 and the resumed
    round was published from 2 updates). Nothing a box applies changes, so the round and
    its accepted updates stay; its announce says the new quorum."""
    if row.quorum == settings.quorum:
        return row
    announce = replace(RoundAnnounce.from_dict(row.announce), quorum=settings.quorum)
    store.update_round(row.round, quorum=settings.quorum, announce=announce.to_dict())
    log.warning("round %d was opened with quorum %d; serve now runs with %d: the open round "
                "takes it", row.round, row.quorum, settings.quorum)
    taken = store.get_round(row.round)
    assert taken is not None
    return taken


def fail_if_settings_changed(store: Store, row: RoundRow, announce: RoundAnnounce,
                             settings: RoundSettings, now: float) -> bool:
    """Fail the open round ``row`` if ``settings`` would announce another
    policy than ``announce`` did; True if it was failed."""
    changed = [name for name in _POLICY if getattr(announce, name) != getattr(settings, name)]
    if not changed:
        return False
    why = f"serve restarted with other settings ({', '.join(changed)})"
    store.update_round(row.round, status="failed", closed_at=now, close_reason=why)
    store.drop_accepted(row.round)
    store.record_rejection(row.round, None, "round_failed", why)
    log.warning("round %d was announced with other %s than serve now runs with: round "
                "failed (%d accepted update(s) dropped), a new round follows with them",
                row.round, " and ".join(changed), row.contributions)
    return True
