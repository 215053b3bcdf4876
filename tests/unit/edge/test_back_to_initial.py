"""A poisoned round 1 with no good result before it: the next round is announced on the
initial model and there is no result to re-publish, so the box that applied round-1
goes back to the initial model itself (``ResultApplier.back_to_initial``) through its
hot swap (``HotSwapper.serve_initial``), unless the announce is a replayed old one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from edge.federated.api import ClientEvent, ClientEvents
from edge.federated.high_water import STALE_ROUND, HighWaterMark
from edge.federated.result_apply import ResultApplier
from edge.federated.verdicts import RoundVerdicts
from edge.serving.hot_swap import ModelRefused
from federation.messages import RoundAnnounce
from tests.support.federation_rig import PART, RecordingSink, part_base_vector
from tests.support.hot_swap import copy_box, open_swapper, perturbed


def announce(round_no: int, base: str = "base", state: str = "open") -> RoundAnnounce:
    return RoundAnnounce(round_no, base, state, 0.0, 3, 1.0, 16384)


def round_1_applied(tmp_path: Path) -> tuple[ResultApplier, RecordingSink, list[ClientEvent]]:
    """A box that applied round-1 (its sink serves it, its mark is at round 1)."""
    base = part_base_vector()
    sink, events = RecordingSink(), cast(list[ClientEvent], [])
    # the fetcher and the CKKS context are not used by what these tests call
    applier = ResultApplier(cast(Any, None), cast(Any, None), PART, sink,
                            RoundVerdicts(tmp_path), ClientEvents(events.append),
                            version="base", vector=base, max_relative_change=0.5,
                            verify=lambda env, kind: None, publish_status=lambda: None,
                            applied=lambda: None, mark=HighWaterMark(tmp_path))
    round_1 = base * 1.01
    sink.apply("round-1", round_1)
    applier.resume()  # as at start: on what the sink serves
    assert applier.version == "round-1" and applier.mark is not None
    assert applier.mark.mark == (1, 1)
    return applier, sink, events


def test_the_announce_of_the_round_after_the_poisoning_takes_the_box_back(
        tmp_path: Path) -> None:
    applier, sink, events = round_1_applied(tmp_path)
    applier.back_to_initial(announce(3))
    assert applier.version == "base"
    np.testing.assert_array_equal(applier.vector, part_base_vector())
    (reason,) = sink.back_to_initial
    assert "round-1 was found poisoned" in reason and "round 3" in reason
    assert sink.served_vector() is None  # the sink serves the initial model
    (event,) = [e for e in events if e.kind == "back_to_initial"]
    assert (event.round, event.data["previous"], event.data["model"]) == (3, "round-1", "base")
    assert HighWaterMark(tmp_path).mark == (3, 0)  # round-1's pointer is a replay now
    applier.back_to_initial(announce(3))  # delivered again: nothing more to do
    assert len(sink.back_to_initial) == 1


def test_a_replayed_old_announce_does_not_roll_the_box_back(tmp_path: Path) -> None:
    applier, sink, events = round_1_applied(tmp_path)
    for _ in range(2):
        applier.back_to_initial(announce(1))  # round 1's own announce, replayed
    assert applier.version == "round-1" and sink.served_vector() is not None
    assert sink.back_to_initial == [] and applier.events.counters[STALE_ROUND] == 1
    assert not [e for e in events if e.kind == "back_to_initial"]


@pytest.mark.parametrize("ann", [announce(3, state="closed"), announce(3, base="round-1"),
                                 announce(3, base="round-2")])
def test_only_an_open_round_on_the_initial_model_takes_the_box_back(
        tmp_path: Path, ann: RoundAnnounce) -> None:
    applier, sink, _ = round_1_applied(tmp_path)
    applier.back_to_initial(ann)
    assert applier.version == "round-1" and sink.back_to_initial == []



def test_the_hot_swap_serves_the_pretrained_model_again(template: Path,
                                                        tmp_path: Path) -> None:
    box = copy_box(template, tmp_path / "box")
    swapper = open_swapper(box)
    pretrained = swapper.engine.state.gallery.vectors.copy()
    swapper.apply("round-1", perturbed(swapper.base_vector(), 1, scale=1e-2))
    assert np.abs(swapper.engine.state.gallery.vectors - pretrained).max() > 1e-3
    report = swapper.serve_initial("the federation went back: round-1 was found poisoned")
    assert report is not None and swapper.version is None and swapper.served_vector() is None
    # the same pretrained embeddings, to the float noise of the split (trunk + tail) graph
    np.testing.assert_allclose(swapper.engine.state.gallery.vectors, pretrained, atol=1e-4)
    last = swapper.store.history()[-1]
    assert (last["event"], last["version"], last["previous"]) == \
        ("back_to_initial", "base", "round-1")
    assert "poisoned" in last["reason"]
    assert swapper.serve_initial("again") is None  # the pretrained model serves already
    with pytest.raises(ModelRefused) as blocked:
        swapper.apply("round-1", perturbed(swapper.base_vector(), 1, scale=1e-2))
    assert blocked.value.reason == "blocked"
    assert not blocked.value.declined_by_canary  # poisoned: the box never trains from it
    swapper.engine.close()
    restarted = open_swapper(box)  # the swap pointer names the pretrained model
    assert restarted.engine.state.model_version == "base"
    np.testing.assert_allclose(restarted.engine.state.gallery.vectors, pretrained, atol=1e-4)
    restarted.engine.close()
