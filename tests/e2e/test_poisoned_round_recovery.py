"""Issue 15's attack 2 end to end: a registered box poisons round 2 (a count slot of
2047, or a ciphertext under another key with the federation's key id pasted in). A real
``fedface-aggregator serve`` process sums it (it cannot tell), real box clients refuse
the result and report it in their signed status; the aggregator marks the round
poisoned and the next round builds on round 1 again, with no command typed. The
operator's ``status`` and ``rounds show`` name the round and its contributors.

And the first round poisoned while one box applied it: there is no good result to
re-publish, the next round is announced on the initial model, and that box goes back to
the initial model itself and joins it (``edge.federated.result_apply.back_to_initial``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from bench.rig.poisoning import ATTACKS, HostileDevice, hostile_update
from edge.training.api import LocalUpdate
from edge.training.drift import NumpyDriftTrainer
from federation.crypto.keys import load_secret_context, read_private_key
from federation.crypto.packing import encrypt_update
from federation.messages import RoundAnnounce
from tests.support.federation_rig import (
    FED,
    PART,
    Federation,
    RecordingSink,
    part_base_vector,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.mosquitto

HONEST = ["box-a", "box-b", "box-c"]
ATTACKED = 2


@pytest.mark.parametrize("attack", ATTACKS)
def test_poisoned_round_is_recovered_without_an_operator(tmp_path: Path, mosquitto,
                                                         attack: str) -> None:
    fed = Federation.create(tmp_path, mosquitto.url, [*HONEST, "evil"])
    ctx = load_secret_context(fed.secret_context)
    base = part_base_vector()

    def evil_update(ann: RoundAnnounce) -> bytes:
        # a plausible update every round (so rounds close as soon as all have sent),
        # the hostile one in the round it attacks
        if ann.round == ATTACKED:
            return hostile_update(attack, ctx, PART.size, ann.count_scale)
        return encrypt_update(ctx, base, 50, ann.count_scale).to_bytes()

    evil = None
    try:
        # 3 published results: round 1, the poisoned round 2, then the good round after
        fed.start_aggregator(quorum=3, rounds=3)
        for name in HONEST:
            fed.start_box(name)
        evil = HostileDevice(mosquitto.url, FED, "evil", read_private_key(tmp_path / "evil.key"),
                             evil_update)
        boxes = [fed.boxes[n] for n in HONEST]
        wait_for(lambda: all(b.event("result_rejected", ATTACKED) for b in boxes), 90,
                 "every honest box to refuse the poisoned round", fed)
        reasons = {b.event("result_rejected", ATTACKED).data["reason"]  # type: ignore[union-attr]
                   for b in boxes}
        assert reasons <= {"out_of_range", "decrypt_failed"}, reasons
        # Round 3 was opened on the poisoned round-2 and is abandoned; round 4, built on
        # round-1, is the first round after the poisoning: recovered within one round.
        wait_for(lambda: all(b.event("applied", ATTACKED + 2) for b in boxes), 90,
                 "the first round after the poisoning to be applied", fed)
        for box in boxes:
            assert isinstance(box.sink, RecordingSink)
            assert [v for v, _ in box.sink.applied] == ["round-1", "round-4"], box.name
            joined = [e for e in box.events if e.kind == "joined"]
            assert [(e.round, e.data["base_model"]) for e in joined] == \
                [(1, "base"), (2, "round-1"), (4, "round-1")], box.name

        state = str(fed.agg_state)
        status = json.loads(run_cli("status", "--state", state, "--json", "--no-broker"))
        (poisoned,) = status["poisoned"]
        assert poisoned["round"] == ATTACKED and poisoned["recovered_to"] == "round-1"
        assert sorted(poisoned["contributors"]) == sorted([*HONEST, "evil"])
        assert sorted(poisoned["refused_by"]) == sorted(HONEST)
        assert sum(poisoned["refusals"].values()) == len(HONEST)
        # one poisoned round: every contributor is a suspect (more rounds narrow it)
        assert status["suspects"] == {"rounds": [ATTACKED],
                                      "devices": sorted([*HONEST, "evil"])}
        text = run_cli("status", "--state", state, "--no-broker")
        assert f"POISONED round {ATTACKED}" in text and "evil" in text, text
        show = json.loads(run_cli("rounds", "show", str(ATTACKED), "--state", state,
                                  "--json", "--no-broker"))
        assert show["status"] == "poisoned"
        assert show["poisoned"]["contributors"] == poisoned["contributors"]
        abandoned = json.loads(run_cli("rounds", "show", str(ATTACKED + 1), "--state", state,
                                       "--json", "--no-broker"))
        assert abandoned["status"] == "failed" and "poisoned" in abandoned["close_reason"]
        assert evil.sent.keys() >= {1, 2, 4}
    finally:
        if evil is not None:
            evil.close()
        fed.stop()


class FirstRoundLeaps:
    """An honest box's drift, with a leap in round 1: the average moves the weights by
    ~11% of their norm, which boxes whose plausibility limit is 5% refuse. ``slow``:
    training that round takes 3 s (as real training does), so the next round's announce
    comes while the box is still busy."""

    def __init__(self, name: str, slow: int | None = None) -> None:
        self.part = PART
        base = part_base_vector()
        self._leap = NumpyDriftTrainer(PART, base, name, 50, step=1.0)
        self._drift = NumpyDriftTrainer(PART, base, name, 50, step=1e-2)
        self._slow = slow

    def local_update(self, global_vector: np.ndarray | None, round_no: int) -> LocalUpdate:
        if round_no == self._slow:
            time.sleep(3.0)
        trainer = self._leap if round_no == 1 else self._drift
        return trainer.local_update(global_vector, round_no)


def test_a_poisoned_first_round_takes_the_box_that_applied_it_back(tmp_path: Path,
                                                                   mosquitto) -> None:
    fed = Federation.create(tmp_path, mosquitto.url, HONEST)
    try:
        fed.start_aggregator(quorum=3, rounds=2)
        applier, *refusers = HONEST  # box-a takes the leap; box-b and box-c refuse it
        # box-a trains round 2 (opened on round-1 before the refusals came) while round 2
        # is abandoned and the next round opens on the initial model
        fed.start_box(applier, trainer=FirstRoundLeaps(applier, slow=2))
        for name in refusers:
            fed.start_box(name, trainer=FirstRoundLeaps(name), max_relative_change=0.05)
        boxes = [fed.boxes[n] for n in HONEST]
        box_a = fed.boxes[applier]
        wait_for(lambda: box_a.event("applied", 1) is not None and all(
            fed.boxes[n].event("result_rejected", 1) for n in refusers), 90,
            "box-a to apply round 1 and the others to refuse it", fed)
        wait_for(lambda: any(e.kind == "back_to_initial" for e in box_a.events), 90,
                 "box-a to go back to the initial model", fed)
        (back,) = [e for e in box_a.events if e.kind == "back_to_initial"]
        assert back.data["previous"] == "round-1" and back.data["model"] == "base"
        after = back.round  # the first round opened on the initial model after poisoning
        wait_for(lambda: all(b.event("applied", after) for b in boxes), 90,
                 f"every box to apply round {after}", fed)
        sink = box_a.sink
        assert isinstance(sink, RecordingSink)
        assert [v for v, _ in sink.applied] == ["round-1", f"round-{after}"]
        assert len(sink.back_to_initial) == 1 and "round-1 was found poisoned" in \
            sink.back_to_initial[0]
        for box in boxes:  # every box trained round `after` from the initial model
            assert box.event("joined", after).data["base_model"] == "base"  # type: ignore[union-attr]
            assert box.client.version == f"round-{after}"
        state = str(fed.agg_state)
        first = json.loads(run_cli("rounds", "show", "1", "--state", state, "--json",
                                   "--no-broker"))
        assert first["status"] == "poisoned"
        assert first["poisoned"]["recovered_to"] == "base"
        shown = json.loads(run_cli("rounds", "show", str(after), "--state", state, "--json",
                                   "--no-broker"))
        assert (shown["status"], shown["base_model"]) == ("published", "base")
        assert sorted(shown["contributors"]) == sorted(HONEST)
    finally:
        fed.stop()
