"""The update side of a round: whether the box joins an announced round, and its training job.

``RoundJoiner`` reads each verified announce (a redelivered older one is ignored) and
joins an open round only when the federation trains this box's part (said once per
round otherwise: log, event, ``not_joining`` in the status), the round lists this
device, it is based on a model the box has (``edge.federated.result_apply``: the one it
serves, or a result only its canary declined; an announce built on the initial model
takes a box that applied a since-poisoned result back to it first; one built on a
result the box refused or its technician rolled back is sat out, said in its verdict) and the
box has enough new samples (``edge.federated.round_gate``; a box below sits the round
out and re-counts every few seconds). Joining starts the training job in its own thread
at a lower CPU priority: it trains, encrypts, signs and chunks the update
(``edge.federated.sealing``) and hands the outcome back through the client's worker
queue; the worker then marks the round sent (``client-state.json``) and gives the update
to the sender. Kept apart from the client's threads (``edge.federated.client``), which
only route messages here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.federated.api import ClientConfig, ClientEvents
from edge.federated.delivery import DeliveryReport
from edge.federated.outbox import PendingUpdate
from edge.federated.result_apply import ResultApplier
from edge.federated.round_gate import (
    MAX_MARKS,
    NO_NEW_SAMPLES,
    BaseWait,
    SampleSource,
    load_client_state,
    load_marks,
    save_client_state,
    sit_out_detail,
)
from edge.federated.sealing import Sealer
from edge.federated.sender import UpdateSender
from edge.federated.verdicts import RoundVerdicts
from edge.priority import lower_thread_priority
from edge.training.api import TooFewPeople, TrainingStopped
from federation.messages import BASE_NOT_SERVED, RoundAnnounce, result_round
from models.federated_parts import FederatedPart

log = logging.getLogger(__name__)

RECOUNT_SECONDS = 5.0  # a box sitting out counts its new samples again this often


class RoundJoiner:
    def __init__(self, config: ClientConfig, part: FederatedPart, sealer: Sealer,
                 sender: UpdateSender, model: ResultApplier, samples: SampleSource | None,
                 verdicts: RoundVerdicts, events: ClientEvents, state_path: Path, *,
                 publish_status: Callable[[], None],
                 job_done: Callable[[int, PendingUpdate | None, dict[str, Any],
                                     Exception | None], None]) -> None:
        self.config = config
        self.part = part
        self._sealer = sealer
        self.sender = sender
        self.model = model  # the version and vector the box federates from
        self.samples = samples
        self.verdicts = verdicts
        self.events = events
        self._publish_status = publish_status
        self.delivery = DeliveryReport(verdicts, events, publish_status)  # sent or queued
        self._job_done = job_done  # the client: queue the job's outcome for the worker
        self._state_path = state_path
        state = load_client_state(self._state_path)
        self.last_submitted = int(state.get("last_submitted_round", 0))
        # announce min_new_samples (edge.federated.round_gate): new enrolled crops are counted from
        # the start of the training of the newest sent update the federation's model holds,
        # kept by round (none: never sent, or not to the model's rounds: always join)
        self._marks = load_marks(state)
        self._job_mark: float | None = None
        self._sat_out = (0, 0.0)  # (round, monotonic time) it last checked and sat out
        self._base_refused_round = 0  # the round last sat out as built on a refused model
        self._base_wait = BaseWait()  # a round waiting for its base's result
        self.announce: RoundAnnounce | None = None
        self.not_joining: dict[str, Any] = {}  # why the last open round was not joined
        self._job: threading.Thread | None = None
        self._job_round = 0

    def announced(self, ann: RoundAnnounce) -> None:
        """A verified announce."""
        if self.announce is not None and ann.round < self.announce.round:
            return  # an old announce redelivered after a newer one
        self.announce = ann
        self._sent_round_ended(ann)
        self._went_back(ann)
        self.sender.drop_closed_rounds(ann.round if ann.open else ann.round + 1)
        self.model.back_to_initial(ann)  # a federation gone back past every result
        self.maybe_join()

    def _sent_round_ended(self, ann: RoundAnnounce) -> None:
        """A later round built on an older base than the round this box last sent to:
        that round closed without a result (no quorum, or abandoned); or built on that
        round's result while it holds no update (a region's sum of a stale base: the box
        applied it, and its verdict said "applied" before this announce came, so that
        verdict does not stop it). Said once, in the verdicts the box's status and
        ``model status`` show, and the update's samples count as new again."""
        sent = self.last_submitted
        base_round = result_round(ann.base_model) or 0
        empty = base_round == sent and ann.base_model in self.model.holding_none
        if ann.round <= sent or (base_round >= sent and not empty):
            return
        verdict = self.verdicts.of_round(sent)
        if verdict is None or verdict.outcome not in (("submitted", "applied") if empty
                                                      else ("submitted", "queued")):
            return
        detail = (f"its result {ann.base_model} (served) holds no update of this box: its "
                  "region's sum was of a base the root had moved past; the samples count "
                  "as new again" if empty else
                  f"the round closed without a result; round {ann.round} opened on "
                  f"{ann.base_model}")
        log.info("round %d: %s", sent, detail)
        self.verdicts.record(sent, None, "no_result", detail)
        # the samples that update carried were never aggregated: new again (a box that
        # enrolled people for that round must not sit the next one out and lose them)
        self._marks.pop(sent, None)
        self._save_state()
        self._publish_status()

    def _went_back(self, ann: RoundAnnounce) -> None:
        """The round builds on a model older than rounds this box sent updates to: the
        federation went back to it (its aggregator restored from a backup, a poisoned
        round, the operator's pin or rollback), and what those rounds learnt is not in
        it. Their samples count as new again, from the mark of the newest round the
        model holds: else the box sat every round after out ("0 new samples since round
        13") and the federation stayed on the older model until someone enrolled
        (helper-57). The box's own rollback does not come here: rounds are not built on
        the version it goes back to."""
        base_round = 0 if ann.base_model == self.config.initial_model else \
            result_round(ann.base_model)
        if base_round is None:
            return
        # (the round's own update is never in its base: a re-announce of a round the box
        # sent to, extended or closed, is not a going back)
        lost = sorted(r for r in self._marks if base_round < r < ann.round)
        if not lost:
            return
        for r in lost:
            del self._marks[r]
        self._save_state()
        held = max(self._marks, default=0)
        log.info("round %d builds on %s, which holds no update this box sent to round%s %s "
                 "(the federation went back to it): their samples count as new again%s",
                 ann.round, ann.base_model, "s" if len(lost) > 1 else "",
                 ", ".join(map(str, lost)),
                 f", counted since round {held}" if held else "")

    def _save_state(self) -> None:
        rounds = sorted(self._marks)[-MAX_MARKS:]
        self._marks = {r: self._marks[r] for r in rounds}
        mark = self._marks[rounds[-1]] if rounds else None
        previous = self._marks[rounds[-2]] if len(rounds) > 1 else None
        save_client_state(self._state_path, self.last_submitted, mark, previous, self._marks)

    def update_refused(self, round_no: int, reason: str, detail: str) -> None:
        """The aggregator refused this box's update for good (edge.federated.acks): the
        verdict said "submitted (update ... sent)" until a later round's announce, and
        the samples it carried waited that long to count as new again (helper-50)."""
        verdict = self.verdicts.of_round(round_no)
        if round_no != self.last_submitted or verdict is None or \
                verdict.outcome not in ("submitted", "queued"):
            return
        self.verdicts.record(round_no, None, "no_result", f"the aggregator refused this "
                             f"box's update ({reason}: {detail}); its samples count as new "
                             "again")
        self._marks.pop(round_no, None)
        self._save_state()
        self._publish_status()

    def maybe_join(self) -> None:
        ann = self.announce
        if ann is None or not ann.open or ann.round <= self.last_submitted:
            return
        self._sent_round_ended(ann)  # its base may have been applied after the announce
        if self._job is not None and self._job.is_alive():
            return
        if ann.part_key and ann.part_key != self.part.key:
            # A vector of another part would be summed with the wrong layout: never train
            # or send it. Said once per round, in the log, the events and the status.
            if self.not_joining.get("round") != ann.round:
                self.events.count("wrong_part")
                detail = (f"the federation trains part {ann.part_key}, this box is set up "
                          f"for {self.part.key}; set the box's federation part to "
                          f"{ann.part_key.split('@')[0]} (edge.toml [federation] part)")
                self.not_joining = {"reason": "wrong_part", "round": ann.round,
                                    "detail": detail}
                log.error("round %d: not joining: %s", ann.round, detail)
                self.events.emit("not_joined", ann.round,
                                 {"reason": "wrong_part", "detail": detail})
                self._publish_status()
            return
        if self._wrong_epoch(ann):
            return
        self.not_joining = {}
        if ann.devices and self.config.device_id not in ann.devices:
            if self.events.count("not_listed") == 1:
                log.warning("round %d does not list this device (%s): not joining; a box "
                            "registered after the round opened joins when an extension "
                            "lists it, or the next round (else: is it registered with the "
                            "aggregator?)", ann.round, self.config.device_id)
            return
        vector = self.model.base_vector(ann.base_model)
        if vector is None:
            self._base_not_served(ann)
            return
        self._base_wait.clear()
        if self._sit_out(ann):
            return
        self._job_round = ann.round
        self._job_mark = time.time()  # crops enrolled from now on are new for next time
        self.events.emit("joined", ann.round, {"base_model": ann.base_model})
        global_vector = None if ann.base_model == self.config.initial_model else vector.copy()
        self._job = threading.Thread(
            target=self._train_and_seal, args=(ann, global_vector, vector.copy()),
            name=f"federation-train-r{ann.round}", daemon=True,
        )
        self._job.start()

    def use_context(self, sealer: Sealer) -> None:
        """A new key epoch (edge.federated.epochs): seal the next updates with it."""
        self._sealer = sealer
        self.maybe_join()

    def _wrong_epoch(self, ann: RoundAnnounce) -> bool:
        """A round of another CKKS key: an update under this box's key would be refused
        (wrong_key), so sit it out: the key is older (``old_epoch``: refused), or newer
        and its sealed bundle has not come yet. Said once per round."""
        key = self._sealer.context
        if not ann.key_id or ann.key_id == key.key_id:
            return False
        if self.not_joining.get("round") != ann.round:
            # the same epoch under another key: a bundle of another key of the federation
            reason = ("wrong_key" if ann.key_epoch == key.epoch else
                      "old_epoch" if ann.key_epoch < key.epoch else "key_epoch_pending")
            detail = (f"round announced under key {ann.key_id} epoch {ann.key_epoch}, this "
                      f"box is on key {key.key_id} epoch {key.epoch}" + {
                          "wrong_key": "; its key bundle is of another key: re-import the "
                          "federation's current one (fedface-edge provision --bundle)",
                          "key_epoch_pending": "; waiting for the new key sealed to this box",
                      }.get(reason, ""))
            self.events.count(reason)
            self.not_joining = {"reason": reason, "round": ann.round, "detail": detail}
            log.warning("round %d: not joining: %s", ann.round, detail)
            self.events.emit("not_joined", ann.round, {"reason": reason, "detail": detail})
            self._publish_status()
        return True

    def _base_not_served(self, ann: RoundAnnounce) -> None:
        """The round builds on a model the box lacks: its result is on the way, or the
        box refused it or its technician rolled it back (then the box sits the round out
        and says why once, replacing an earlier verdict such as "0 new samples")."""
        refusal = self.model.refusal_of(ann.base_model)
        if refusal is None:
            self._base_wait.waiting(ann, self.model.version)
            return
        self._base_wait.clear()
        detail = (f"built on {ann.base_model}, which this box does not serve: {refusal}; "
                  f"it serves {self.model.version} and joins again from the next result "
                  f"it accepts")
        self.not_joining = {"reason": BASE_NOT_SERVED, "round": ann.round, "detail": detail}
        if self._base_refused_round == ann.round:
            return
        self._base_refused_round = ann.round
        log.warning("round %d: sitting out: %s", ann.round, detail)
        self.verdicts.record(ann.round, None, "sat_out", detail)
        self.events.emit("sitting_out", ann.round, {"reason": BASE_NOT_SERVED,
                                                    "detail": detail})
        self._publish_status()

    def recount(self) -> None:
        """Every worker tick: a box sitting out for lack of new samples looks again every
        few seconds (enrolled meanwhile? a cheap count); a wait for a round's base result
        that lasts is said at WARNING, once."""
        if self.not_joining.get("reason") == NO_NEW_SAMPLES and (
                time.monotonic() - self._sat_out[1] >= RECOUNT_SECONDS):
            self.maybe_join()
        self._base_wait.check(self.announce,
                              lambda base: self.model.base_vector(base) is not None,
                              self.model.version)

    def _sit_out(self, ann: RoundAnnounce) -> bool:
        """Sit the round out when too few samples are new (said once per round)."""
        held = max(self._marks, default=0)  # the newest sent round the base holds
        detail = sit_out_detail(ann.min_new_samples, self.samples, self._marks.get(held),
                                held)
        if detail is None:
            if self._sat_out[0] == ann.round:
                self._publish_status()  # the status no longer says it sits out
            return False
        first = self._sat_out[0] != ann.round
        self._sat_out = (ann.round, time.monotonic())
        self.not_joining = {"reason": NO_NEW_SAMPLES, "round": ann.round, "detail": detail}
        if first:
            log.info("round %d: sitting out (%s)", ann.round, detail)
            self.verdicts.record(ann.round, None, "sat_out", detail)
            self.events.emit("sitting_out", ann.round,
                             {"reason": NO_NEW_SAMPLES, "detail": detail})
            self._publish_status()
        return True

    # training job (own thread, lower priority) ----------------------------------------
    @property
    def training_round(self) -> int | None:
        """The round whose training job runs now, else None."""
        return self._job_round if self._job is not None and self._job.is_alive() else None

    def stop_training(self, timeout: float) -> None:
        """The client stops: end the running round's training (the trainer's child is
        terminated, not waited for) and wait up to ``timeout`` s for its thread, so that
        an update being sealed reaches the outbox whole and the round's crops file is
        deleted. A half-trained round is not sent; a sealed one stays in the outbox."""
        stop = getattr(self._sealer.trainer, "stop", None)
        if not callable(stop):
            return  # a trainer that cannot be ended early is not waited for (as before)
        stop()
        if self._job is not None:
            self._job.join(timeout)

    def _train_and_seal(self, ann: RoundAnnounce, global_vector: np.ndarray | None,
                        base_vector: np.ndarray) -> None:
        lower_thread_priority(self.config.train_niceness)
        try:
            pending, stats = self._sealer.seal(ann, global_vector, base_vector)
            self._job_done(ann.round, pending, stats, None)
        except Exception as exc:  # reported by the worker; the next announce retries
            self._job_done(ann.round, None, {}, exc)

    def job_done(self, round_no: int, pending: PendingUpdate | None,
                 stats: dict[str, Any], error: Exception | None) -> None:
        """The training job's outcome, on the worker thread. A round announced while
        the job ran (its round abandoned, e.g. built on a poisoned result) is joined now:
        its announce found the job busy."""
        self._finish_job(round_no, pending, stats, error)
        if self.announce is not None and self.announce.round > round_no:
            self._went_back(self.announce)  # its round ended on an older base meanwhile
            self.maybe_join()

    def _finish_job(self, round_no: int, pending: PendingUpdate | None,
                    stats: dict[str, Any], error: Exception | None) -> None:
        if isinstance(error, TrainingStopped):  # the client is stopping: not a failure
            log.info("round %d: training ended unfinished (stopping); nothing sent", round_no)
            return
        if isinstance(error, TooFewPeople):
            # nothing to federate yet, as a box with no new samples: said in its status,
            # so the aggregator weighs it (a quiet night is skipped), not "error" at every
            # round while the aggregator waited for word from it (helper-42)
            self._sat_out = (round_no, time.monotonic())
            self.not_joining = {"reason": NO_NEW_SAMPLES, "round": round_no,
                                "detail": str(error)}
            log.warning("round %d: sitting out: %s", round_no, error)
            self.verdicts.record(round_no, None, "sat_out", str(error))
            self.events.emit("sitting_out", round_no, {"reason": NO_NEW_SAMPLES,
                                                       "detail": str(error)})
            self._publish_status()
            return
        if error is not None or pending is None:
            self.events.count("train_failed")
            log.error("round %d: local update failed: %s", round_no, error)
            self.events.emit("error", round_no, {"error": str(error)})
            return
        self.last_submitted = max(self.last_submitted, round_no)
        if self._job_mark is not None:
            self._marks[round_no] = self._job_mark
        self._save_state()
        log.info("round %d: update %s sealed (%d samples, %d bytes in %d chunks, encrypt "
                 "%.2f s)", round_no, pending.msg_id[:12], stats["n_samples"], stats["bytes"],
                 stats["chunks"], stats["encrypt_s"])
        # sent first: its verdict and event say whether it went out or is queued (it said
        # "submitted" while the broker was down); the verdict replaces a "sat out" said
        # before new people were enrolled in the same round
        self.delivery.sealed(round_no, stats, self.sender.send_new(pending))
