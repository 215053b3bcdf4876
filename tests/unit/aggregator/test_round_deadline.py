"""What a round's deadline without quorum leads to (aggregator.rounds.deadline): skipped
when nothing is new anywhere, reopened to every box when some sent and the others sat
out for want of new samples, else extended and then failed, as before; a box that
cannot join the round's base (it refused or rolled it back) is named, with what to do."""

from __future__ import annotations

from aggregator.rounds.deadline import (
    CLOSE,
    EXTEND,
    FAIL,
    OPEN_TO_ALL,
    SKIP,
    at_deadline,
    has_nothing_new,
)
from aggregator.state.db import RoundRow
from federation.messages import BASE_NOT_SERVED, NO_NEW_SAMPLES

BOXES = {"box-a", "box-b", "box-c"}
NEW = "no_new_samples"


def call(summed: int = 0, contributors: frozenset[str] = frozenset(),
         sat_out: dict[str, str] | None = None, min_new: int = 1, extensions: int = 0,
         quorum: int = 2) -> tuple[str, str]:
    decided = at_deadline(summed=summed, quorum=quorum, announced_min_new=min_new,
                          extensions=extensions, max_extensions=2, active=set(BOXES),
                          contributors=set(contributors), sat_out=dict(sat_out or {}),
                          base="round-3")
    return decided.action, decided.why


def test_nothing_new_anywhere_is_skipped_at_once() -> None:
    action, why = call(sat_out=dict.fromkeys(BOXES, NEW))
    assert action == SKIP
    assert why == "nothing new: box-a, box-b, box-c sat out (fewer new samples than 1)"
    # after extensions too, and a revoked box's old word does not matter (not active)
    assert call(sat_out={**dict.fromkeys(BOXES, NEW), "gone": NEW}, extensions=2)[0] == SKIP


def test_a_box_that_said_nothing_keeps_the_old_rule() -> None:
    """Offline or broken: it may still come, and a round it never sends to fails."""
    quiet = {"box-a": NEW, "box-b": NEW}
    action, why = call(sat_out=quiet)
    assert action == EXTEND and why.endswith("; waiting for word from box-c"), why
    action, why = call(sat_out=quiet, extensions=2)
    assert action == FAIL and why == (
        "0 update(s) < quorum 2; box-a, box-b sat out (fewer new samples than 1) after 2 "
        "extension(s); no word from box-c")


def test_a_box_on_another_key_is_named_not_silent() -> None:
    """A box provisioned from a bundle of another federation key sits every round out
    (`wrong_key`; `old_epoch` for a key of an earlier epoch): it counted as 'no word
    from', so every quiet night was extended and then failed instead of skipped."""
    sat = {"box-a": NEW, "box-b": NEW, "box-c": "wrong_key"}
    action, why = call(sat_out=sat)
    assert action == SKIP, why
    assert "box-c cannot join (wrong_key)" in why and "no word" not in why
    action, why = call(summed=1, contributors=frozenset({"box-a"}),
                       sat_out={"box-b": "old_epoch", "box-c": "old_epoch"}, extensions=2)
    assert action == FAIL and "no word" not in why, why
    assert "box-b cannot join (old_epoch), box-c cannot join (old_epoch)" in why


def test_newcomers_on_one_box_reopen_the_round_to_every_box() -> None:
    action, why = call(summed=1, contributors=frozenset({"box-a"}),
                       sat_out={"box-b": NEW, "box-c": NEW})
    assert action == OPEN_TO_ALL
    assert why == ("1 update(s) < quorum 2; box-b, box-c sat out (fewer new samples than "
                   "1): reopened to every box")
    # once: the reopened announce says min_new_samples 0 (a box still sitting out then
    # cannot join: its base is not what it serves, or it has not heard the reopening)
    assert call(summed=1, contributors=frozenset({"box-a"}), sat_out={"box-b": NEW},
                min_new=0)[0] == EXTEND
    assert call(summed=1, contributors=frozenset({"box-a"}), min_new=0,
                extensions=2)[0] == FAIL


def test_a_box_that_rolled_the_base_back_is_named_with_the_way_out() -> None:
    """A walkthrough's box rolled round-3 back; with quorum 2 of 2 boxes no round on
    round-3 could ever close, and serve said the box 'sat out with nothing new' and
    reopened the round to it, which could not help."""
    rolled = {"box-a": "base_not_served"}
    action, why = call(summed=1, contributors=frozenset({"box-b"}), sat_out=rolled,
                       quorum=3, extensions=2)
    assert action == FAIL and "box-a does not serve its base round-3: without them " \
        "the quorum of 3 cannot be met on round-3; fedface-aggregator models rollback" in why
    action, why = call(sat_out={**rolled, "box-b": NEW, "box-c": NEW})
    assert action == SKIP and why.startswith("nothing new: box-b, box-c sat out")
    action, why = call(sat_out=dict.fromkeys(BOXES, "base_not_served"))
    assert action == SKIP and why.startswith("no box can join: box-a, box-b, box-c")
    # reopening helps only boxes with nothing new
    assert call(summed=1, contributors=frozenset({"box-b"}),
                sat_out={"box-a": "base_not_served", "box-c": "base_not_served"},
                quorum=2)[0] == EXTEND


def test_quorum_closes_and_min_new_samples_zero_is_the_old_rule() -> None:
    assert call(summed=2, contributors=frozenset({"box-a", "box-b"}))[0] == CLOSE
    assert call(min_new=0)[0] == EXTEND
    assert call(min_new=0, extensions=2)[0] == FAIL


def row(status: str, close_reason: str | None = None) -> RoundRow:
    return RoundRow(1, "base", None, status, 0.0, 60.0, 2, 0, {}, 0, None, None,
                    close_reason, None, None, None, None)


def test_what_a_region_tells_its_root_about_its_boxes() -> None:
    """has_nothing_new: what a regional aggregator's status says to the root."""
    boxes = {"a", "b"}
    quiet = {"a": NO_NEW_SAMPLES, "b": NO_NEW_SAMPLES}
    assert has_nothing_new(row("open"), summed=0, active=boxes, sat_out=quiet)
    # one box has not said it sits out (it may be training), or one update is in
    assert not has_nothing_new(row("open"), summed=0, active=boxes,
                               sat_out={"a": NO_NEW_SAMPLES})
    assert not has_nothing_new(row("open"), summed=1, active=boxes, sat_out=quiet)
    # a box that does not serve the base is not "nothing new": it could not send anyway,
    # but the root's operator should hear of it as the region's does
    assert not has_nothing_new(row("open"), summed=0, active=boxes,
                               sat_out={"a": NO_NEW_SAMPLES, "b": BASE_NOT_SERVED})
    assert not has_nothing_new(row("open"), summed=0, active=set(), sat_out={})
    # between rounds: what the latest round ended as
    assert has_nothing_new(row("skipped", "nothing new"), summed=0, active=set(), sat_out={})
    for ended in (row("skipped", "no box can join"), row("failed", "no quorum"),
                  row("published")):
        assert not has_nothing_new(ended, summed=0, active=boxes, sat_out=quiet)
    assert not has_nothing_new(None, summed=0, active=boxes, sat_out=quiet)


def test_at_a_root_regions_sitting_out_are_not_reopened() -> None:
    """A root's re-announce does not reach a region's boxes: a region's partial below the
    quorum while the other regions have nothing new is extended, then failed (and the
    partial goes to the root's next round: aggregator.regional.forwarder). The root's log
    said 'reopened to every box', then '(fewer new samples than 0)'."""
    regions = frozenset(BOXES)
    decided = at_deadline(summed=2, quorum=3, announced_min_new=1, extensions=0,
                          max_extensions=1, active=set(BOXES), contributors={"box-a"},
                          sat_out={"box-b": NEW, "box-c": NEW}, regions=regions)
    assert decided.action == EXTEND and "reopened" not in decided.why
    assert call(summed=1, contributors=frozenset({"box-a"}), sat_out={"box-b": NEW},
                min_new=0)[1].endswith("box-b sat out (nothing new); waiting for word from box-c")
