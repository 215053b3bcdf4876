"""Scores recognisers on generated kiosk videos against their ground truth, per visit.

A reported face belongs to the true visit whose face box contains its centre. A
visit's answer: the per-frame engine's is the majority of its frames' names; the
per-visit engine's is the final name of the track that covered most of its frames.
Top-1 counts enrolled visitors answered with their own name; a false accept is any
visit answered with a name that is not the visitor's (strangers must be "unknown").
Identity switches count changes of the name reported for a visit from frame to frame.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bench.common.kiosk_video import Box, KioskVideo

UNKNOWN = "unknown"


def visit_at(truth: list[tuple[int, Box]], box: Box) -> int | None:
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    inside = [visit for visit, (x, y, w, h) in truth if x <= cx <= x + w and y <= cy <= y + h]
    return inside[-1] if inside else None  # the nearest (drawn last) face wins


@dataclass
class VisitTally:
    """Per true visit: the names reported per frame and the tracks that reported them."""

    names: dict[int, list[str | None]] = field(default_factory=lambda: defaultdict(list))
    tracks: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, truth: list[tuple[int, Box]], box: Box, name: str | None,
            track: str | None = None) -> None:
        visit = visit_at(truth, box)
        if visit is None:
            return
        self.names[visit].append(name)
        if track is not None:
            self.tracks[visit][track] += 1


@dataclass
class Score:
    visits: int = 0
    enrolled: int = 0
    top1: int = 0
    false_accepts: int = 0
    switches: int = 0

    def add_visit(self, true_name: str, enrolled: bool, answer: str | None,
                  names: list[str | None]) -> None:
        self.visits += 1
        self.enrolled += enrolled
        self.top1 += enrolled and answer == true_name
        self.false_accepts += answer not in (None, UNKNOWN, true_name)
        said = [n for n in names if n is not None]
        self.switches += sum(1 for a, b in itertools.pairwise(said) if a != b)


def score_video(video: KioskVideo, tally: VisitTally, score: Score,
                final_names: dict[str, str] | None = None) -> None:
    """Adds the video's visits to ``score``; ``final_names`` (track -> name) marks the
    per-visit engine, whose answer is its main track's final name."""
    for plan in video.visits:
        names = tally.names.get(plan.visit, [])
        if final_names is None:
            said = Counter(n for n in names if n is not None)
            answer = said.most_common(1)[0][0] if said else None
        else:
            tracks = tally.tracks.get(plan.visit)
            answer = final_names.get(tracks.most_common(1)[0][0]) if tracks else None
        score.add_visit(plan.person, plan.enrolled, answer, names)
