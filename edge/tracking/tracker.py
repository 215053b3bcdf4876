"""A small multi-face tracker: IoU between predicted and detected boxes, optimal assignment.

Why our own ~100 lines on ``lap`` rather than a packaged tracker (what pip would install
with each, checked with ``pip install --dry-run --report``): ``norfair==2.3.0`` brings
filterpy, scipy and rich and downgrades the box's numpy 2.4 to 1.26; ``trackers==2.6.1``
brings supervision, PyAV, scipy and ``opencv-python`` (the GUI build, beside our headless
one); ``filterpy==2.0.0`` brings scipy for a Kalman filter. A kiosk tracks a handful of
slowly moving faces: ``lap`` (Jonker-Volgenant, numpy only, compiled wheels for aarch64)
gives the optimal detection-to-track assignment, and a constant-velocity prediction of
each box (the centre moves, the size grows or shrinks) carries tracks across frames the
detector skips and through people crossing.

Cost: 0.19-0.21 ms per detection frame with 1-3 faces on one x86 core (3,000 updates in
a loop, 3 runs), about 3% of the per-visit engine's 6 ms per frame in
``bench.edge.visits`` (which includes it); nothing here touches pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lap
import numpy as np

from edge.vision.detect import Face

DEFAULT_MIN_IOU = 0.2
VELOCITY_SMOOTHING = 0.5  # weight of the newest displacement in the velocity estimate


@dataclass(eq=False)
class Track:
    """One tracked face. ``box`` is (x, y, w, h) in frame pixels, predicted on frames
    without a detection; ``velocity`` is its change per frame."""

    track_id: int
    box: np.ndarray
    first_frame: int
    last_seen: int  # frame of the latest matched detection
    last_ts: float
    hits: int = 1
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    face: Face | None = None  # the latest matched detection

    def predicted(self, frame: int) -> np.ndarray:
        box = self.box + self.velocity * (frame - self.last_seen)
        box[2:] = np.maximum(box[2:], 1.0)
        return box


@dataclass
class TrackStep:
    matched: list[tuple[Track, Face]]
    started: list[Track]
    ended: list[Track]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every (x, y, w, h) box in ``a`` with every one in ``b``: shape (len a, len b)."""
    ax1, ay1 = a[:, 0:1], a[:, 1:2]
    ax2, ay2 = ax1 + a[:, 2:3], ay1 + a[:, 3:4]
    bx1, by1 = b[:, 0], b[:, 1]
    bx2, by2 = bx1 + b[:, 2], by1 + b[:, 3]
    inter_w = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    inter_h = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = inter_w * inter_h
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.asarray(inter / np.maximum(union, 1e-9))


class FaceTracker:
    """Associates each frame's detections with tracks; ends a track unseen for
    ``max_missing_s`` seconds of frame time."""

    def __init__(self, min_iou: float = DEFAULT_MIN_IOU, max_missing_s: float = 1.0) -> None:
        if not 0.0 < min_iou < 1.0:
            raise ValueError(f"min_iou must be in (0, 1), got {min_iou}")
        self.min_iou = min_iou
        self.max_missing_s = max_missing_s
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, faces: list[Face], frame: int, ts: float) -> TrackStep:
        """One detection frame: match, start tracks for unmatched faces, end stale ones."""
        step = TrackStep([], [], [])
        unmatched = list(range(len(faces)))
        if self.tracks and faces:
            predicted = np.stack([t.predicted(frame) for t in self.tracks])
            boxes = np.array([f.box for f in faces], dtype=np.float64)
            cost = 1.0 - iou_matrix(predicted, boxes)
            _, rows, _ = lap.lapjv(cost, extend_cost=True, cost_limit=1.0 - self.min_iou)
            for t_index, f_index in enumerate(rows):
                if f_index < 0:
                    continue
                track, face = self.tracks[t_index], faces[f_index]
                self._observe(track, face, frame, ts)
                step.matched.append((track, face))
                unmatched.remove(int(f_index))
        for f_index in unmatched:
            face = faces[f_index]
            track = Track(self._next_id, np.array(face.box, dtype=np.float64), frame, frame, ts,
                          face=face)
            self._next_id += 1
            self.tracks.append(track)
            step.started.append(track)
            step.matched.append((track, face))
        step.ended = self.expire(ts)
        return step

    def expire(self, ts: float) -> list[Track]:
        """Tracks unseen for longer than ``max_missing_s`` (removed and returned)."""
        ended = [t for t in self.tracks if ts - t.last_ts > self.max_missing_s]
        self.tracks = [t for t in self.tracks if t not in ended]
        return ended

    def close(self) -> list[Track]:
        ended, self.tracks = self.tracks, []
        return ended

    @staticmethod
    def _observe(track: Track, face: Face, frame: int, ts: float) -> None:
        box = np.array(face.box, dtype=np.float64)
        gap = max(frame - track.last_seen, 1)
        moved = (box - track.box) / gap
        track.velocity = VELOCITY_SMOOTHING * moved + (1 - VELOCITY_SMOOTHING) * track.velocity
        track.box, track.last_seen, track.last_ts = box, frame, ts
        track.hits += 1
        track.face = face
