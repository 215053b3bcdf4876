"""A box's verdicts on rounds: kept on the box, reported in its status, parsed strictly
by the operator's tools (federation.verdicts, edge.federated.verdicts)."""

from __future__ import annotations

import json
from pathlib import Path

from edge.federated.delivery import submitted_reason
from edge.federated.verdicts import KEEP, RoundVerdicts
from edge.serving.canary import CanaryResult
from federation.verdicts import REPORTED, Verdict, from_status, reported


def test_a_verdict_keeps_the_canary_figures_and_survives_a_restart(tmp_path: Path) -> None:
    canary = CanaryResult(True, False, "accuracy 91.7% -> 95.8%", 12, 0.917, 0.958)
    RoundVerdicts(tmp_path).record(1, "round-1", "applied", canary.reason, canary)
    RoundVerdicts(tmp_path).record(2, None, "sat_out", "0 new samples since round 1, need 1")
    (applied, sat_out) = RoundVerdicts(tmp_path).all()  # a new reader: from disk
    assert applied.summary() == "round 1: applied, canary 91.7% -> 95.8% (12 probes)"
    assert sat_out.summary() == "round 2: sat out (0 new samples since round 1, need 1)"
    assert (tmp_path / "verdicts.json").stat().st_mode & 0o777 == 0o600


def test_one_verdict_per_round_and_a_bounded_file(tmp_path: Path) -> None:
    store = RoundVerdicts(tmp_path)
    store.record(3, None, "sat_out", "nothing new")
    store.record(3, "round-3", "rejected", "result_out_of_range: ...")  # a later verdict
    assert [(v.round, v.outcome) for v in store.all()] == [(3, "rejected")]
    for n in range(KEEP + 10):
        store.record(10 + n, f"round-{10 + n}", "applied", "ok")
    assert len(store.all()) == KEEP and store.all()[-1].round == KEEP + 19
    assert len(reported(store.recent())) == REPORTED


def test_untrusted_verdicts_are_parsed_strictly() -> None:
    good = {"round": 4, "model": "round-4", "outcome": "refused", "reason": "ok\x1b[2J",
            "at": 1.0, "before": 0.9, "after": 0.5, "probes": 8}
    parsed = from_status([good, {**good, "round": True}, {**good, "outcome": "hacked"},
                          {**good, "round": "x"}, {**good, "before": 7}])
    assert from_status(["not a dict", good]) == [Verdict.from_dict(good)]
    assert len(from_status([good] * (REPORTED + 3))) == REPORTED  # a status stays small
    assert [v.round for v in parsed] == [4, 4]
    assert parsed[0].reason == "ok[2J"  # no escape sequence reaches a terminal
    assert parsed[1].before is None  # an accuracy outside 0-1 is dropped, not trusted
    assert from_status("nope") == [] and Verdict.from_dict(None) is None
    assert json.loads(json.dumps(reported(parsed)))[0]["outcome"] == "refused"


def test_a_refusal_carries_its_machine_reason_and_old_boxes_still_parse() -> None:
    refusal = Verdict(5, "round-5", "rejected", "out_of_range: count 2049.3", 1.0,
                      code="out_of_range")
    assert refusal.refusal and reported([refusal])[0]["code"] == "out_of_range"
    assert from_status(reported([refusal])) == [refusal]
    applied = Verdict(5, "round-5", "applied", "canary ok", 1.0)
    assert "code" not in reported([applied])[0]  # unset: the old wire bytes
    assert not applied.refusal
    # a box from before the code: its reason's prefix is the code, for refusals only
    old = {"round": 5, "model": "round-5", "outcome": "refused",
           "reason": "canary_refused: accuracy 90% -> 60%", "at": 1.0}
    assert from_status([old])[0].code == "canary_refused"
    assert from_status([{**old, "outcome": "applied"}])[0].code == ""
    # a code is a short identifier; anything else is dropped, not shown or counted
    assert from_status([{**old, "code": "x; rm -rf /\x1b"}])[0].code == "canary_refused"
    assert from_status([{**old, "code": "A" * 10, "reason": "free text"}])[0].code == ""


def test_a_quiet_streak_is_one_line(tmp_path: Path) -> None:
    """A federation skipping round after round (nobody enrols anyone): each round's
    `sat out (0 new samples since round 6, need 1)` replaces the previous one, so the
    box's list (and `model status`) keeps what happened before the streak."""
    store = RoundVerdicts(tmp_path)
    store.record(6, "round-6", "applied", "ok")
    for round_no in range(7, 7 + 2 * KEEP):
        store.record(round_no, None, "sat_out", "0 new samples since round 6, need 1")
    assert [(v.round, v.outcome) for v in store.all()] == [(6, "applied"),
                                                           (6 + 2 * KEEP, "sat_out")]
    store.record(200, None, "sat_out", "built on round-199, which this box does not serve")
    assert len(store.all()) == 3  # another reason is another line


def test_a_dp_round_s_verdict_does_not_carry_the_sample_count() -> None:
    """The box's status (signed, read by the aggregator) said `update of 30 samples sent`
    in a DP round, whose updates weigh every box equally so that the (data-dependent)
    count is not sent (a walkthrough found it). Under a cap, the verdict says the weight."""
    dp = submitted_reason({"n_samples": 30, "weighed_as": 64, "dp": {"epsilon_total": 4.0}})
    assert "30" not in dp and dp == ("update sent (differential privacy: equal weight, "
                                     "sample count not reported)")
    assert submitted_reason({"n_samples": 30, "weighed_as": 20}) == (
        "update of 30 samples sent, weighed as the federation's cap of 20")
    assert submitted_reason({"n_samples": 12, "weighed_as": 12}) == "update of 12 samples sent"
