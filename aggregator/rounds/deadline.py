"""What the coordinator does when a round's deadline passes without quorum.

Before ``--min-new-samples`` this was simple: extend (up to ``max_extensions`` times),
then fail. With it, boxes with nothing new sit rounds out and say so in their signed
status (``not_joining``, cleared the moment a box joins: aggregator.intake.verdicts),
and two cases are not failures:

- **Nothing new anywhere**: no update came and every active box that has not sent said
  it sits the round out. The round is ``skipped`` at its deadline (no extension: nobody
  is coming) and the next opens on the schedule, on the same base; no error. Retraining
  on the same faces every round is what this avoids: each federated model's threshold
  and top-1 stop gaining after the first rounds and strangers' false accepts creep up
  (README, "Each model's own threshold over many rounds").
- **Something new, too few boxes**: some boxes sent (they enrolled people) but fewer than
  the quorum, and others sat out. The round is re-announced once with a new deadline and
  ``min_new_samples`` 0, open to every box, so the boxes that sat out retrain once and
  the new people are federated instead of waiting for a night on which enough boxes
  enrol someone. This does not use up an extension (``max_extensions`` counts the waits
  for boxes that said nothing).

Otherwise, as before: extend while extensions are left, then fail. A round no box sent
to after its extensions, while some active box said nothing at all (offline, broken),
fails: the operator should hear of it. ``at_deadline`` decides (pure); ``extend`` stores
an extension's announce; the coordinator applies the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from aggregator.state.db import RoundRow
from aggregator.state.store import Store
from federation.messages import BASE_NOT_SERVED, NO_NEW_SAMPLES, RoundAnnounce

log = logging.getLogger(__name__)

CLOSE, EXTEND, OPEN_TO_ALL, SKIP, FAIL = "close", "extend", "open_to_all", "skip", "fail"


@dataclass(frozen=True)
class AtDeadline:
    action: str  # one of the five above
    why: str  # said in the log (a failed round's rejection detail)
    label: str = "no quorum"  # a skipped or failed round's close reason (`rounds list`)

    @property
    def closes(self) -> bool:
        """The round closes with its sum (quorum reached)."""
        return self.action == CLOSE

    @property
    def ends(self) -> bool:
        """The round ends without a result (skipped or failed)."""
        return self.action in (SKIP, FAIL)

    @property
    def outcome(self) -> str:
        """The round's status after a skip or a failure, as the log says it."""
        return "skipped" if self.action == SKIP else "failed"



def device_names(devices: Iterable[str], limit: int = 5) -> str:
    """``box-a, box-b and 3 more``: devices named in a log line, sorted, a few at most."""
    devices = set(devices)
    shown = sorted(devices)[:limit]
    more = len(devices) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def expected_devices(active: set[str], listed: Sequence[str]) -> set[str]:
    """The active devices a round waits for: those its announce lists. A box registered
    after the round opened is not listed and sits it out (edge.federated.joining) until
    an extension lists it, or the next round; a walkthrough's round failed at its
    deadline for "no word from" two such boxes. An announce listing none waits for all."""
    return active & set(listed) if listed else set(active)


def at_deadline(*, summed: int, quorum: int, announced_min_new: int, extensions: int,
                max_extensions: int, active: set[str], contributors: set[str],
                sat_out: dict[str, str], base: str = "",
                regions: frozenset[str] = frozenset()) -> AtDeadline:
    """The round's deadline passed: ``summed`` box updates are in its sum; ``sat_out``:
    the devices whose status says they sit this round out, and why (``no_new_samples``,
    or ``base_not_served``: the box refused the round's base or rolled it back).
    ``regions``: the regional aggregators among the devices; reopening the round does not
    reach their boxes, so it is not tried for them. A box sitting out for another reason
    (``old_epoch``: a key of another epoch or federation) is named with it; it counted as
    silent, and every quiet night with such a box failed."""
    if summed >= quorum:
        return AtDeadline(CLOSE, f"deadline with quorum ({summed} update(s), quorum {quorum})")
    waiting = active - contributors
    nothing_new = {d for d in waiting if sat_out.get(d) == NO_NEW_SAMPLES}
    refusing = {d for d in waiting if sat_out.get(d) == BASE_NOT_SERVED}
    # sat out for a reason of their own that this round cannot change (a key of another
    # epoch or federation, another part): they did speak, so not "no word from"
    unable = {d for d in waiting if d in sat_out} - nothing_new - refusing
    silent = waiting - nothing_new - refusing - unable
    said = (f"{device_names(nothing_new)} sat out (" + (
        f"fewer new samples than {announced_min_new})" if announced_min_new > 0
        else "nothing new)") if nothing_new else "")
    if unable:
        said += ("; " if said else "") + ", ".join(
            f"{d} cannot join ({sat_out[d]})" for d in sorted(unable)[:5])
    if refusing:  # they cannot join a round on this base, whatever it is announced with
        said += (("; " if said else "") + f"{device_names(refusing)} "
                 f"{'does' if len(refusing) == 1 else 'do'} not serve its base {base}")
        if len(active) - len(refusing) < quorum:
            # what they serve may be a box's own fine-tune, which no pin can name: rollback
            # first (helper-52 was told to pin a local-... version the aggregator never had)
            said += (f": without them the quorum of {quorum} cannot be met on {base}; "
                     "fedface-aggregator models rollback (the version before it), or "
                     "models pin another published version they serve, or models pin base "
                     "(the pretrained model every box holds) (docs/operations.md, 'Model "
                     "versions')")
    if summed == 0 and (nothing_new or refusing or unable) and not silent:
        label = "nothing new" if nothing_new else "no box can join"
        return AtDeadline(SKIP, f"{label}: {said}", label)
    if summed > 0 and announced_min_new > 0 and nothing_new - regions:
        return AtDeadline(OPEN_TO_ALL, f"{summed} update(s) < quorum {quorum}; {said}: "
                                       f"reopened to every box")
    why = f"{summed} update(s) < quorum {quorum}" + (f"; {said}" if said else "")
    if extensions < max_extensions:  # whom it waits for (a walkthrough's log named only
        # the boxes that sat out, never the one it was waiting for)
        return AtDeadline(EXTEND, why + (f"; waiting for word from {device_names(silent)}"
                                         if silent and said else ""))
    return AtDeadline(FAIL, why + f" after {extensions} extension(s)" + (
        f"; no word from {device_names(silent)}" if silent else ""))


def has_nothing_new(cur: RoundRow | None, *, summed: int, active: set[str],
                    sat_out: dict[str, str], before: dict[str, str] | None = None) -> bool:
    """Whether this aggregator's boxes have nothing new to federate now: its open round
    holds no update and every active box sits it out for want of new samples, or, between
    rounds, the latest was skipped for that. A regional aggregator says so to its root
    (aggregator.regional.forwarder), which weighs it like a box's word: a night quiet in
    every region is skipped at the root too, not extended and failed. ``before``: what
    the boxes that have not yet spoken of the open round said of the one before it (a
    region said it had something new for the moment between its rounds, and a root
    deadline landing then extended instead of skipping)."""
    if cur is None:
        return False
    if cur.status != "open":
        return cur.status == "skipped" and cur.close_reason == "nothing new"
    before = before or {}
    return summed == 0 and bool(active) and all(
        sat_out.get(d, before.get(d)) == NO_NEW_SAMPLES for d in active)


def extend(store: Store, cur: RoundRow, call: AtDeadline, deadline_seconds: float,
           max_extensions: int, active: set[str], now: float) -> RoundAnnounce:
    """Store and return the round's announce with a later deadline, listing the devices
    ``active`` now (one registered since the round opened may join it; a revoked one is
    no longer listed); reopened to every box (``OPEN_TO_ALL``), it uses up no extension."""
    # from now when the deadline is long past: serve restarted after an upgrade window
    # reopened the round with a deadline already gone, extended it the same way and
    # failed it within 40 ms, with "no word from" a box that had had no time (helper-40)
    deadline = max(cur.deadline, now) + deadline_seconds
    announce = replace(RoundAnnounce.from_dict(cur.announce), deadline=deadline,
                       devices=tuple(sorted(active)))
    extensions = cur.extensions + 1
    if call.action == OPEN_TO_ALL:
        announce, extensions = replace(announce, min_new_samples=0), cur.extensions
    store.update_round(cur.round, deadline=deadline, extensions=extensions,
                       announce=announce.to_dict())
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deadline))
    if call.action == OPEN_TO_ALL:
        log.info("round %d: %s; deadline %s", cur.round, call.why, at)
    else:  # updates and quorum as `status` says them; the active devices could still send
        log.warning("round %d: deadline reached, %s (%d device(s) active): extended to %s "
                    "(extension %d of %d)", cur.round, call.why, len(active), at, extensions,
                    max_extensions)
    return announce
