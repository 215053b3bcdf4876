"""Issue 15, attack 3: the box's high-water mark (edge.federated.high_water) refuses a
replayed older round, across restarts, and still lets the operator's pinned rollback
(a re-published older result) through."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge.federated.high_water import MARK_FILENAME, STALE_ROUND, HighWaterMark
from federation.errors import FederationError
from federation.messages import ModelPointer, RoundAnnounce


def pointer(round_no: int, model: str | None = None, for_round: int | None = None
            ) -> ModelPointer:
    return ModelPointer(round_no, model or f"round-{round_no}", "m" * 32, "0" * 64, 10, 1,
                        republished=for_round is not None, for_round=for_round)


def refused(mark: HighWaterMark, p: ModelPointer) -> bool:
    try:
        mark.check(p)
    except FederationError as exc:
        assert exc.reason == STALE_ROUND
        return True
    return False


def test_a_replayed_older_round_is_refused_after_a_restart(tmp_path: Path) -> None:
    mark = HighWaterMark(tmp_path)
    assert not refused(mark, pointer(1))
    mark.advance(pointer(1))
    mark.advance(pointer(3))
    again = HighWaterMark(tmp_path)  # the box rebooted
    assert refused(again, pointer(1))
    assert refused(again, pointer(3))  # the same round again is not newer either
    assert refused(again, pointer(2))
    assert not refused(again, pointer(4))
    path = tmp_path / MARK_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["model"] == "round-3"


def test_the_operators_pinned_rollback_passes_and_its_replay_does_not(tmp_path: Path) -> None:
    mark = HighWaterMark(tmp_path)
    mark.advance(pointer(3))
    rollback = pointer(1, for_round=4)  # `models rollback`: round-1 re-published for round 4
    assert not refused(mark, rollback)
    mark.advance(rollback)
    assert not refused(mark, pointer(4))  # round 4's own result comes after its base
    assert refused(HighWaterMark(tmp_path), pointer(1, for_round=2))  # an older re-publish
    mark.advance(pointer(4))
    assert refused(HighWaterMark(tmp_path), rollback)


def test_the_served_model_raises_a_missing_or_damaged_mark(tmp_path: Path) -> None:
    """A box upgraded from a release without the mark (or a damaged file) starts from
    the round it serves; local versions (``fedface-edge train``) do not move it."""
    mark = HighWaterMark(tmp_path)
    mark.observe_served("local-20261205")
    assert not refused(mark, pointer(1))
    mark.observe_served("round-3")
    assert refused(mark, pointer(2))
    (tmp_path / MARK_FILENAME).write_text("{damaged")
    damaged = HighWaterMark(tmp_path)
    damaged.observe_served("round-3")
    assert refused(damaged, pointer(3))
    assert not refused(damaged, pointer(4))


@pytest.mark.parametrize("body", [{"position": [1]}, {"position": ["3", 1]}, [3, 1]])
def test_a_malformed_mark_is_not_trusted(tmp_path: Path, body: object) -> None:
    (tmp_path / MARK_FILENAME).write_text(json.dumps(body))
    assert HighWaterMark(tmp_path).mark == (0, 0)


def announce(round_no: int, base: str = "base", state: str = "open") -> RoundAnnounce:
    return RoundAnnounce(round_no, base, state, 0.0, 3, 1.0, 16384)


def base_refused(mark: HighWaterMark, ann: RoundAnnounce) -> bool:
    try:
        mark.check_base(ann)
    except FederationError as exc:
        assert exc.reason == STALE_ROUND
        return True
    return False


def test_going_back_to_an_announced_base_is_monotonic_too(tmp_path: Path) -> None:
    """Round 1 poisoned with no good result before it: round 3 builds on the initial
    model; the box that applied round-1 may go back for round 3's announce, never for
    round 1's announce replayed, and afterwards round-1's pointer is a replay."""
    mark = HighWaterMark(tmp_path)
    mark.advance(pointer(1))
    assert base_refused(mark, announce(1))  # round 1's own announce, replayed
    assert not base_refused(mark, announce(2))
    mark.advance_base(announce(3))
    again = HighWaterMark(tmp_path)
    assert again.mark == (3, 0) and again.model == "base"
    assert base_refused(again, announce(3)) and base_refused(again, announce(2))
    assert refused(again, pointer(1))
    assert not refused(again, pointer(3))  # round 3's own result comes after its base
