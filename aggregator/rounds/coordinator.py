"""The round state machine: plain Python over typed messages, no transport inside.

open (announce) -> collect (updates come in batches: each batch is checked and staged, its
valid updates stored with ONE group commit, then added to the in-memory running sum, then
acked; aggregator.state.store says why that order is crash-safe) -> close (the sum is
serialised once, as the result blob) (all devices its announce lists sent, or deadline with
quorum) -> result ready (the service publishes it) -> published -> next round, whose base
model version is the result's version.

At a deadline without quorum (aggregator.rounds.deadline) the round is extended, reopened
to every box, skipped (nothing new anywhere) or failed; a new round then opens on the same
base model, so boxes simply resend on the new announce.

Openings follow the operator's schedule (aggregator.rounds.schedule): until one is due
the latest round is re-announced closed with ``next_round_at``; ``tick`` opens it.
Time comes from an injected clock, so tests drive deadlines deterministically.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace

from aggregator.rounds.accumulator import Accumulator, AccumulatorBroken, AccumulatorFactory
from aggregator.rounds.admission import NOT_OPEN as NOT_OPEN  # re-exported: part of the reasons
from aggregator.rounds.admission import check, rebuild_sum
from aggregator.rounds.deadline import SKIP, at_deadline, expected_devices, extend, has_nothing_new
from aggregator.rounds.epochs import fail_if_old_key, under_earlier_key
from aggregator.rounds.pins import next_base
from aggregator.rounds.records import Announce, Decision, Event, ResultReady, Submission
from aggregator.rounds.restored import known_round
from aggregator.rounds.resume import fail_if_settings_changed, take_quorum
from aggregator.rounds.schedule import record_next_opening
from aggregator.rounds.settings import RoundSettings as RoundSettings  # re-exported: its callers
from aggregator.state.db import RoundRow, storage_failure
from aggregator.state.regions import region_ids
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import AcceptedUpdate, Store
from federation import errors
from federation.messages import CLOSED, OPEN, RoundAnnounce, result_version

log = logging.getLogger(__name__)

# Reasons beyond the federation's envelope-level ones: NOT_OPEN, and UNAVAILABLE
# (federation.errors, so that the delivery code need not import the coordinator).
UNAVAILABLE = errors.UNAVAILABLE


def announce_of(row: RoundRow) -> RoundAnnounce:
    """The announce stored with a round, as it was published (republished on restart)."""
    return RoundAnnounce.from_dict(row.announce)


class Coordinator:
    def __init__(self, store: Store, registry: DeviceRegistry, accumulators: AccumulatorFactory,
                 fed_id: str, settings: RoundSettings, initial_model: str = "base",
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.registry, self.accumulators = store, registry, accumulators
        self.fed_id, self.settings, self.initial_model, self.clock = (
            fed_id, settings, initial_model, clock)
        self.current: RoundRow | None = None
        self.sum: Accumulator | None = None
        self.next_opening: float | None = None  # set while the schedule holds a round back
        self.sat_out: dict[str, str] = {}  # device -> why its status says it sits out
        self.sat_out_before: dict[str, str] = {}  # the last round's, while a box says nothing

    # --- lifecycle --------------------------------------------------------------------
    def start(self, open_round: bool = True) -> list[Event]:
        """Resume from disk: results closed but not yet published come first, then the
        open round (with every update accepted before a crash) or a new one."""
        events: list[Event] = []
        removed = self.store.remove_stale_files()
        if removed:
            log.info("removed %d stale file(s): interrupted writes, blobs of finished rounds",
                     removed)
        for row in self.store.list_rounds():
            if row.status == "closed":
                events.append(self._result_event(row))
        latest = self.store.latest_round()
        if latest is not None and latest.status == "open" and self._of_old_key(latest):
            latest = self.store.get_round(latest.round)  # failed now: a new round follows
        if latest is not None and latest.status == "open":
            self.current = latest = take_quorum(self.store, latest, self.settings)
            self.sum = self._load_sum(latest)
            log.info("resumed round %d (base %s) with %d accepted update(s)", latest.round,
                     latest.base_model, latest.contributions)
            events.append(Announce(announce_of(latest)))
        elif not events and open_round:
            events.extend(self._open_when_due())
        return events

    def _of_old_key(self, row: RoundRow) -> bool:
        """Opened under an earlier key epoch (``keys install`` since), or announced with
        other settings than serve now has (aggregator.rounds.resume): failed now."""
        ann, s = announce_of(row), self.settings
        return fail_if_old_key(self.store, row, ann.key_id, s.key_id, s.key_epoch,
                               self.clock()) or fail_if_settings_changed(
            self.store, row, ann, s, self.clock())

    def _load_sum(self, row: RoundRow) -> Accumulator:
        return rebuild_sum(self.store, self.accumulators, row)

    def _open_when_due(self) -> list[Event]:
        """Open the next round now, or, while the schedule holds it back, announce the
        latest round closed with the time the next one opens (tick opens it then)."""
        latest = self.store.latest_round()
        now = self.clock()
        at = self.settings.schedule.next_opening(now, latest.opened_at if latest else None)
        if at <= now:
            self.next_opening = None
            record_next_opening(self.store, None)
            return [self._open_next()]
        said, self.next_opening = self.next_opening == at, at
        self.current = latest  # no round open: updates are late (or not_open) meanwhile
        if said:
            return []
        record_next_opening(self.store, at)  # for fedface-aggregator status
        log.info("next round opens at %s (%s)", time.strftime("%Y-%m-%d %H:%M:%S",
                 time.localtime(at)), self.settings.schedule.describe())
        if latest is None:
            return []
        return [Announce(replace(announce_of(latest), state=CLOSED, next_round_at=at))]

    def _open_next(self) -> Announce:
        # the latest published result, or the one the operator pinned (aggregator.rounds.pins)
        base, is_pinned = next_base(self.store, self.initial_model)
        round_no = known_round(self.store) + 1  # above an earlier copy's (rounds.restored)
        now = self.clock()
        deadline = now + self.settings.deadline_seconds
        announce = self._announce(round_no, base, deadline, now, is_pinned)
        if under_earlier_key(self.store, base, self.settings.key_id, self.settings.key_epoch):
            announce = replace(announce, min_new_samples=0)
            log.info("round %d rebuilds %s under the current key (epoch %d): open to every "
                     "box; boxes provisioned since the rotation cannot read %s and join the "
                     "round after", round_no, base, self.settings.key_epoch, base)
        self.store.insert_round(round_no, base, now, deadline, self.settings.quorum,
                                announce.to_dict())
        self.current = self.store.get_round(round_no)
        self.sum = self.accumulators.new()
        self.sat_out_before, self.sat_out = self.sat_out, {}
        log.info("round %d opened: base model %s, deadline in %.0f s, quorum %d, min new "
                 "samples %d", round_no, base, self.settings.deadline_seconds,
                 self.settings.quorum, announce.min_new_samples)
        return Announce(announce)

    def _announce(self, round_no: int, base: str, deadline: float, now: float,
                  pinned: bool) -> RoundAnnounce:
        s = self.settings
        return RoundAnnounce(
            round=round_no, base_model=base, state=OPEN, deadline=deadline, quorum=s.quorum,
            count_scale=s.count_scale, chunk_size=s.chunk_size, part_key=s.part_key,
            devices=tuple(sorted(self.registry.active_ids())),
            min_new_samples=s.min_new_samples, dp=s.dp, bounds=s.bounds, opened_at=now,
            pinned=pinned, key_id=s.key_id, key_epoch=s.key_epoch,
        )

    # --- updates ----------------------------------------------------------------------
    def submit(self, sub: Submission) -> Decision:
        return self.submit_batch([sub])[0]

    def submit_batch(self, subs: list[Submission]) -> list[Decision]:
        """Check, stage, store (ONE group commit) and add a batch of updates; a decision
        per update, in order. Accepted means durably stored AND in the sum: the caller
        acks only after this returns."""
        decisions: list[Decision | None] = [None] * len(subs)
        taken: dict[str, str] = {}  # device -> msg of this batch's updates (duplicates)
        todo: list[int] = []
        for i, sub in enumerate(subs):
            problem = check(self.store, self.registry, self.current, sub, taken)
            if problem is not None:
                decisions[i] = self._reject(sub, problem)
            else:
                taken[sub.device_id] = sub.msg_id
                todo.append(i)
        if todo:
            for i, decision in self._stage_and_store([subs[i] for i in todo]).items():
                decisions[todo[i]] = decision
        return [d if d is not None else Decision(False, UNAVAILABLE, "not decided")
                for d in decisions]

    def _stage_and_store(self, subs: list[Submission]) -> dict[int, Decision]:
        assert self.current is not None and self.sum is not None
        cur = self.current
        out: dict[int, Decision] = {}
        try:  # validates everything; the round's sum is untouched until commit_staged
            results = self.sum.stage_many([s.spooled or s.blob or b"" for s in subs])
        except AccumulatorBroken as exc:
            self._sum_lost(cur, exc)
            return {i: self._reject(s, Decision(False, UNAVAILABLE, "aggregator restarting its "
                                                "summing workers; resend"))
                    for i, s in enumerate(subs)}
        valid = []
        for i, (sub, rejected) in enumerate(zip(subs, results, strict=True)):
            if rejected is not None:
                out[i] = self._reject(sub, Decision(False, rejected.reason, rejected.detail))
            else:
                valid.append(i)
        if not valid:
            return out
        try:
            self.store.accept_updates(cur.round, [
                AcceptedUpdate(subs[i].device_id, subs[i].msg_id, subs[i].blob_sha256,
                               subs[i].spooled, None if subs[i].spooled else subs[i].blob)
                for i in valid], cur.contributions + 1, self.clock())
        except (OSError, sqlite3.Error) as exc:
            # Nothing of the batch was counted and the round's sum holds none of it.
            what = storage_failure(exc)
            log.error("round %d: could not store %d update(s) (%s); they are NOT counted, "
                      "the devices must resend", cur.round, len(valid), what)
            try:
                self.sum.discard_staged()
            except AccumulatorBroken as broken:
                self._sum_lost(cur, broken)
            for i in valid:
                out[i] = self._reject(
                    subs[i], Decision(False, UNAVAILABLE, f"aggregator storage: {what}"))
            return out
        self.current = self.store.get_round(cur.round)
        before = int(self.sum.count)
        try:
            self.sum.commit_staged()
        except Exception as exc:  # staging checked what += needs: a bug or a dead worker
            self._sum_lost(cur, exc)
        for i in valid:
            out[i] = Decision(True)
        # in box updates, as the quorum counts them: a region's partial counts as those
        # it sums (it said "accepted 1 update(s) (region-north), 2 in all")
        log.info("round %d: accepted %d update(s) (%s), %d in all", cur.round,
                 self.updates_summed() - before, ", ".join(
                     subs[i].device_id for i in valid[:5]) + (", ..." if len(valid) > 5
                                                               else ""),
                 self.updates_summed())
        return out

    def _sum_lost(self, cur: RoundRow, exc: Exception) -> None:
        """The in-memory sum cannot be trusted: rebuild it from the stored updates."""
        log.error("round %d: the running sum was lost (%s); rebuilding it from the accepted "
                  "updates on disk", cur.round, exc)
        row = self.store.get_round(cur.round)
        self.sum = self._load_sum(row if row is not None else cur)

    def _reject(self, sub: Submission, decision: Decision) -> Decision:
        self.record_rejection(
            sub.round, sub.device_id, decision.reason or "malformed", decision.detail
        )
        return decision

    def record_rejection(
        self, round_no: int | None, device_id: str | None, reason: str, detail: str
    ) -> None:
        """Log + count a rejection (also used by the service for envelope-level ones)."""
        log.warning(
            "rejected update from %s for round %s: %s (%s)", device_id, round_no, reason, detail
        )
        try:
            self.store.record_rejection(round_no, device_id, reason, detail)
        except (OSError, sqlite3.Error) as exc:  # counting must never stop the service
            log.error("could not count rejection %s: %s", reason, exc)

    # --- closing ----------------------------------------------------------------------
    def tick(self) -> list[Event]:
        """Close, extend or fail the open round as its devices and deadline dictate."""
        cur = self.current
        if cur is None or cur.status != "open":
            if self.next_opening is not None and self.clock() >= self.next_opening:
                return self._open_when_due()
            return []
        active = expected_devices(self.registry.active_ids(), announce_of(cur).devices)
        contributors = set(self.store.contributors(cur.round))
        # The quorum is a privacy floor, not a target: a "sum" of fewer updates (one box's
        # own, after the others were revoked) would be published readable to every box.
        # So even when every active device has sent, the round closes only at quorum.
        if active and active <= contributors and self.updates_summed() >= cur.quorum:
            return self._close(cur, "all active devices sent")
        if self.clock() < cur.deadline:
            return []
        call = at_deadline(summed=self.updates_summed(), quorum=cur.quorum, base=cur.base_model,
                           announced_min_new=announce_of(cur).min_new_samples,
                           extensions=cur.extensions, max_extensions=self.settings.max_extensions,
                           active=active, contributors=contributors, sat_out=self.sat_out,
                           regions=frozenset(region_ids(self.store)))
        if call.closes:
            return self._close(cur, call.why)
        if call.ends:
            log.log(logging.INFO if call.action == SKIP else logging.ERROR, "round %d %s: %s; "
                    "the next round opens on the schedule", cur.round, call.outcome, call.why)
            return self._fail(cur, call.label, call.why, status=call.outcome)
        announce = extend(self.store, cur, call, self.settings.deadline_seconds,
                          self.settings.max_extensions, self.registry.active_ids(), self.clock())
        self.current = self.store.get_round(cur.round)
        return [Announce(announce)]

    def heard_sitting_out(self, device: str, sitting: tuple[int, str] | None) -> None:
        """A box's status: it sits this round out, and why; or not (aggregator.intake.verdicts)."""
        cur = self.current
        if cur is not None and cur.status == "open" and sitting and sitting[0] == cur.round:
            self.sat_out[device] = sitting[1]
        else:
            self.sat_out.pop(device, None)
        if cur is not None and (sitting is None or sitting[0] >= cur.round):
            self.sat_out_before.pop(device, None)  # it spoke of this round

    def nothing_new(self) -> bool:
        """This aggregator's boxes have nothing new (aggregator.rounds.deadline)."""
        cur = self.current
        active = expected_devices(self.registry.active_ids(), announce_of(cur).devices) \
            if cur is not None and cur.status == "open" else set()
        return has_nothing_new(cur, summed=self.updates_summed(), active=active,
                               sat_out=self.sat_out, before=self.sat_out_before)

    def abandon(self, why: str) -> list[Event]:
        """Fail the open (or closed, unpublished) round now and open the next: its base
        was found poisoned (aggregator.rounds.poison), or a region's root builds on its
        initial model (aggregator.rounds.events)."""
        cur = self.current
        if cur is None or cur.status not in ("open", "closed"):
            return []
        log.error("round %d FAILED: %s; a new round follows", cur.round, why)
        return self._fail(cur, why, why)

    def _fail(self, cur: RoundRow, reason: str, detail: str, status: str = "failed"
              ) -> list[Event]:
        self.store.update_round(cur.round, status=status, closed_at=self.clock(),
                                close_reason=reason)
        self.store.drop_accepted(cur.round)
        if status == "failed":
            self.store.record_rejection(cur.round, None, "round_failed", detail)
        self.current = self.store.get_round(cur.round)  # failed: no longer takes updates
        self.sum = None
        return self._open_when_due()

    def updates_summed(self) -> int:
        """Box updates in the open round's sum: a regional partial counts as the updates
        it holds (EncryptedUpdate.n_updates), a box's update as one."""
        if self.sum is not None:
            return int(self.sum.count)
        return 0 if self.current is None else self.current.contributions

    def catch_up(self, why: str) -> list[Event]:
        """Close the open round now: a region whose root builds on another model
        publishes that for it (aggregator.rounds.events), its updates not forwarded."""
        cur = self.current
        if cur is None or cur.status != "open":
            return []
        return self._close(cur, why, empty=not self.updates_summed())

    def _close(self, cur: RoundRow, why: str, empty: bool = False) -> list[Event]:
        """Serialise the sum once, as the result blob, then mark the round closed."""
        assert self.sum is not None or empty
        model = result_version(cur.round)
        name = f"round-{cur.round}-result.bin"
        try:
            data = b"" if empty or self.sum is None else self.sum.to_bytes()
        except AccumulatorBroken as exc:  # a summing worker died: rebuild, close next tick
            self._sum_lost(cur, exc)
            return []
        try:
            self.store.write_blob(name, data)
            self.store.update_round(
                cur.round, status="closed", closed_at=self.clock(), close_reason=why,
                result_model=model, sum_blob=name,
            )
        except (OSError, sqlite3.Error) as exc:
            # The round stays open with every accepted update; the next tick retries.
            log.error("round %d: cannot store its result (%s); will retry", cur.round,
                      storage_failure(exc))
            self.store.blob_path(name).unlink(missing_ok=True)
            return []
        if cur.sum_blob is not None and cur.sum_blob != name:  # a legacy running sum
            self.store.blob_path(cur.sum_blob).unlink(missing_ok=True)
        row = self.store.get_round(cur.round)
        assert row is not None
        self.current = row
        self.sum = None
        log.info("round %d closed (%s) with %d update(s)", cur.round, why,
                 self.store.updates_of(cur.round))
        return [self._result_event(row)]

    def _result_event(self, row: RoundRow) -> ResultReady:
        assert row.sum_blob is not None and row.result_model is not None
        return ResultReady(row.round, row.result_model, row.base_model, row.sum_blob,
                           self.store.contributors(row.round), announce_of(row).result_policy())

    def result_published(
        self, round_no: int, sha256: str, size: int, chunks: int, msg_id: str, open_next: bool
    ) -> list[Event]:
        self.store.update_round(round_no, status="published", result_sha256=sha256,
                                result_size=size, result_chunks=chunks, result_msg=msg_id)
        log.info("round %d result published (%d bytes, %d chunks)", round_no, size, chunks)
        self.store.drop_accepted(round_no)  # the result holds their sum now
        latest = self.store.latest_round()
        if latest is not None and latest.round == round_no:
            self.current = self.store.get_round(round_no)
            if open_next:
                return self._open_when_due()
        return []
