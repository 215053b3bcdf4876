"""A box whose federation went back to an older model (a restored aggregator, a poisoned
round, the operator's pin or rollback) counts the samples of the updates it sent to the
rounds after that model as new again: counted from its last update, every box sat the
rounds after a restore out ("0 new samples since round 13") and the federation stayed on
the older model until someone enrolled (helper-57). With nothing new relative to the
model a round builds on, the box still sits it out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from edge.federated.api import ClientConfig, ClientEvent, ClientEvents
from edge.federated.joining import RoundJoiner
from edge.federated.round_gate import save_client_state
from edge.federated.verdicts import RoundVerdicts
from federation.messages import CLOSED, OPEN, RoundAnnounce
from tests.support.federation_rig import PART


class Enrolled:
    """The box's gallery: crops by enrolment time."""

    def __init__(self, *times: float) -> None:
        self.times = times

    def crops_enrolled_since(self, since: float) -> int:
        return sum(1 for t in self.times if t > since)


def _joiner(tmp_path: Path, said: list[ClientEvent], by_round: bool = True) -> RoundJoiner:
    # sent rounds 12, 13 and 14; one person enrolled for round 13 (at 1500)
    save_client_state(tmp_path / "client-state.json", 14, 3000.0, 2000.0,
                      {12: 1000.0, 13: 2000.0, 14: 3000.0} if by_round else None)
    vector = np.zeros(PART.size, dtype=np.float32)
    model: Any = SimpleNamespace(  # the box serves whatever the round builds on
        back_to_initial=lambda ann: None, holding_none=set(), version="round-14",
        base_vector=lambda base: vector, refusal_of=lambda base: None)
    sealer: Any = SimpleNamespace(context=None, seal=lambda *a: ({}, {}))
    sender: Any = SimpleNamespace(drop_closed_rounds=lambda _: None)
    return RoundJoiner(ClientConfig("fed", "a"), PART, sealer, sender, model,
                       Enrolled(500.0, 1500.0), RoundVerdicts(tmp_path),
                       ClientEvents(said.append), tmp_path / "client-state.json",
                       publish_status=lambda: None, job_done=lambda *_: None)


def _announce(round_no: int, base: str, state: str = OPEN) -> RoundAnnounce:
    return RoundAnnounce(round_no, base, state, time.time() + 600, 2, 64.0, 262144,
                         part_key=PART.key, min_new_samples=1)


def _kinds(said: list[ClientEvent]) -> list[tuple[str, int]]:
    return [(e.kind, e.round) for e in said if e.kind in ("joined", "sitting_out")]


def test_a_pin_of_an_older_result_counts_the_later_rounds_samples_again(
        tmp_path: Path) -> None:
    said: list[ClientEvent] = []
    joiner = _joiner(tmp_path, said)
    joiner.announced(_announce(15, "round-12"))  # pinned, or restored, or round 13 poisoned
    assert _kinds(said) == [("joined", 15)]
    state = json.loads((tmp_path / "client-state.json").read_text())
    assert state["marks"] == {"12": 1000.0} and state["samples_mark"] == 1000.0


def test_with_nothing_new_since_the_model_a_round_builds_on_the_box_sits_out(
        tmp_path: Path) -> None:
    said: list[ClientEvent] = []
    joiner = _joiner(tmp_path, said)
    joiner.announced(_announce(14, "round-13", CLOSED))  # its own round, re-announced
    joiner.announced(_announce(15, "round-14"))
    assert _kinds(said) == [("sitting_out", 15)]
    assert said[-1].data["detail"] == "0 new samples since round 14, need 1"


def test_a_round_on_the_initial_model_is_joined(tmp_path: Path) -> None:
    said: list[ClientEvent] = []
    joiner = _joiner(tmp_path, said)
    joiner.announced(_announce(15, joiner.config.initial_model))  # `models pin base`
    assert _kinds(said) == [("joined", 15)]
    state = json.loads((tmp_path / "client-state.json").read_text())
    assert state["marks"] == {} and state["samples_mark"] is None


def test_a_state_written_before_the_marks_were_kept_by_round(tmp_path: Path) -> None:
    said: list[ClientEvent] = []
    joiner = _joiner(tmp_path, said, by_round=False)  # the last two marks only
    joiner.announced(_announce(15, "round-13"))  # round 14's update lost: 2000 counts
    assert _kinds(said) == [("sitting_out", 15)]
    assert said[-1].data["detail"] == "0 new samples since round 13, need 1"
