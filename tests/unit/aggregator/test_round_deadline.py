"""What a round's deadline without quorum leads to (aggregator.rounds.deadline): skipped
when nothing is new anywhere, reopened to every box when some sent and the others sat
out, else extended and then failed, as before."""

from __future__ import annotations

from aggregator.rounds.deadline import CLOSE, EXTEND, FAIL, OPEN_TO_ALL, SKIP, at_deadline

BOXES = {"box-a", "box-b", "box-c"}


def call(summed: int = 0, contributors: frozenset[str] = frozenset(),
         sat_out: frozenset[str] = frozenset(), min_new: int = 1, extensions: int = 0,
         quorum: int = 2) -> tuple[str, str]:
    decided = at_deadline(summed=summed, quorum=quorum, announced_min_new=min_new,
                          extensions=extensions, max_extensions=2, active=set(BOXES),
                          contributors=set(contributors), sat_out=set(sat_out))
    return decided.action, decided.why


def test_nothing_new_anywhere_is_skipped_at_once() -> None:
    action, why = call(sat_out=frozenset(BOXES))
    assert action == SKIP
    assert why == "nothing new: box-a, box-b, box-c sat out (fewer new samples than 1)"
    # after extensions too, and a revoked box's old word does not matter (not active)
    assert call(sat_out=frozenset({*BOXES, "gone"}), extensions=2)[0] == SKIP


def test_a_box_that_said_nothing_keeps_the_old_rule() -> None:
    """Offline or broken: it may still come, and a round it never sends to fails."""
    quiet = frozenset({"box-a", "box-b"})
    assert call(sat_out=quiet)[0] == EXTEND
    action, why = call(sat_out=quiet, extensions=2)
    assert action == FAIL and why == ("0 update(s) < quorum 2 after 2 extension(s); no word "
                                      "from box-c")


def test_newcomers_on_one_box_reopen_the_round_to_every_box() -> None:
    action, why = call(summed=1, contributors=frozenset({"box-a"}),
                       sat_out=frozenset({"box-b", "box-c"}))
    assert action == OPEN_TO_ALL
    assert why == ("1 update(s) < quorum 2; box-b, box-c sat out with nothing new: reopened "
                   "to every box")
    # once: the reopened announce says min_new_samples 0, so the next deadline is the
    # old rule (a box sitting out then cannot join: its base is not what it serves)
    assert call(summed=1, contributors=frozenset({"box-a"}), sat_out=frozenset({"box-b"}),
                min_new=0)[0] == EXTEND
    assert call(summed=1, contributors=frozenset({"box-a"}), min_new=0,
                extensions=2)[0] == FAIL


def test_quorum_closes_and_min_new_samples_zero_is_the_old_rule() -> None:
    assert call(summed=2, contributors=frozenset({"box-a", "box-b"}))[0] == CLOSE
    assert call(sat_out=frozenset(BOXES), min_new=0)[0] == EXTEND  # they cannot sit out
    assert call(sat_out=frozenset(BOXES), min_new=0, extensions=2)[0] == FAIL
