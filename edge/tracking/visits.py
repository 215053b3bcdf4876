"""The per-visit engine: a visit is one tracked face; it is recognised once, not per frame.

Per frame (or every ``detect_every``-th frame, the tracker predicting in between):
detect, track, and for each tracked face judge the view (``quality``). A face is
embedded only when its track is new or the view is clearly better than the best one
embedded so far (``better_by``), at most ``max_attempts`` times per visit. The visit's
identity is the quality-weighted mean of its attempts' embeddings, matched against the
gallery by the one rule (``edge.gallery.match``), so a visit is named exactly when a
single frame with that vector would be. Three events per visit: started (after
``min_hits`` detections, so a one-frame false detection makes no visit), identified
(after ``settle_attempts`` attempts or ``settle_seconds``, whichever comes first) and
ended (unseen for ``end_after_s``), which carries the final identity.

A hot swap between two attempts is handled: attempts keep their crops, and the ones
embedded by another model version are re-embedded before fusion (vectors of two
versions are never mixed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from edge.gallery.match import Match
from edge.serving.engine import Engine, ServingState
from edge.serving.events import UNKNOWN
from edge.tracking.quality import view_quality
from edge.tracking.tracker import FaceTracker, Track
from edge.tracking.visit_events import ENDED, IDENTIFIED, STARTED, CropStore, VisitEvent
from edge.vision.align import align_face
from edge.vision.detect import Face

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisitSettings:
    detect_every: int = 1
    max_attempts: int = 6
    better_by: float = 1.3
    settle_attempts: int = 3
    settle_seconds: float = 1.0
    min_hits: int = 2
    end_after_s: float = 1.0
    min_iou: float = 0.2

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.max_attempts < 1 or self.min_hits < 1:
            raise ValueError("detect_every, max_attempts and min_hits must be at least 1")
        if self.better_by < 1.0:
            raise ValueError(f"better_by must be at least 1.0, got {self.better_by}")


@dataclass(eq=False)
class Attempt:
    crop: np.ndarray
    quality: float
    vector: np.ndarray
    tag: str


@dataclass(eq=False)
class Visit:
    visit_id: str
    track: Track
    started_ts: float
    started_frame: int
    attempts: list[Attempt] = field(default_factory=list)
    match: Match | None = None
    model_version: str | None = None
    announced: bool = False
    identified: bool = False
    crop_path: str | None = None
    saved_quality: float = 0.0

    @property
    def best_quality(self) -> float:
        return max((a.quality for a in self.attempts), default=0.0)

    @property
    def name(self) -> str | None:
        if self.match is None:
            return None
        return self.match.name if self.match.name is not None else UNKNOWN

    def box(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.track.box
        return (round(x), round(y), round(w), round(h))


class VisitEngine:
    """Frames in, visit events out; ``embeddings`` and ``detections`` count the work done."""

    def __init__(self, engine: Engine, settings: VisitSettings | None = None,
                 crops: CropStore | None = None) -> None:
        self.engine = engine
        self.settings = settings or VisitSettings()
        self.crops = crops
        self.tracker = FaceTracker(self.settings.min_iou, self.settings.end_after_s)
        self.visits: dict[int, Visit] = {}
        self.frames = 0
        self.detections = 0
        self.embeddings = 0
        self._last: tuple[int, float] = (0, 0.0)
        self._last_detection = -1  # frame index of the latest detection

    def process(self, bgr: np.ndarray, frame: int, ts: float,
                faces: list[Face] | None = None) -> list[VisitEvent]:
        """One frame's events. ``faces``: this frame's detections when the caller already
        ran the detector (the kiosk, on a frame it recognised in full for an enrolment)."""
        self.frames += 1
        self._last = (frame, ts)
        if faces is None and (self.frames - 1) % self.settings.detect_every:
            return [e for t in self.tracker.expire(ts) for e in self._finish(t, frame, ts)]
        state = self.engine.frame_state()
        faces = self.engine.detect(bgr) if faces is None else faces
        self.detections += 1
        self._last_detection = frame
        step = self.tracker.update(faces, frame, ts)
        events: list[VisitEvent] = []
        for track in step.started:
            self.visits[track.track_id] = Visit(f"{int(ts * 1000):x}-{track.track_id}",
                                                track, ts, frame)
        wanted: list[tuple[Visit, np.ndarray, float]] = []
        for track, face in step.matched:
            visit = self.visits[track.track_id]
            if not visit.announced and track.hits >= self.settings.min_hits:
                visit.announced = True
                events.append(self._event(STARTED, visit, frame, ts))
            if len(visit.attempts) >= self.settings.max_attempts:
                continue
            crop = align_face(bgr, face.landmarks)
            quality = view_quality(face, crop).score
            if not visit.attempts or quality > visit.best_quality * self.settings.better_by:
                wanted.append((visit, crop, quality))
        if wanted:
            vectors = state.embedder.embed([crop for _, crop, _ in wanted])
            self.embeddings += len(wanted)
            for (visit, crop, quality), vector in zip(wanted, vectors, strict=True):
                visit.attempts.append(Attempt(crop, quality, vector, state.tag))
                self._fuse(visit, state)
        for visit in self.visits.values():
            if visit.announced and not visit.identified and visit.attempts and (
                    len(visit.attempts) >= self.settings.settle_attempts
                    or ts - visit.started_ts >= self.settings.settle_seconds):
                events.append(self._identify(visit, frame, ts))
        for track in step.ended:
            events.extend(self._finish(track, frame, ts))
        return events

    def close(self) -> list[VisitEvent]:
        """End every open visit (the stream ended or the process is stopping)."""
        frame, ts = self._last
        events: list[VisitEvent] = []
        for track in self.tracker.close():
            events.extend(self._finish(track, frame, ts))
        return events

    def visible(self) -> list[tuple[str, tuple[int, int, int, int], str | None]]:
        """(visit id, box, current name or None) of the visits found by the latest
        detection, their boxes predicted to the latest frame (``detect_every`` > 1)."""
        frame = self._last[0]
        shown = []
        for v in self.visits.values():
            if v.announced and v.track.last_seen == self._last_detection:
                x, y, w, h = v.track.predicted(frame)
                shown.append((v.visit_id, (round(x), round(y), round(w), round(h)),
                              v.name if v.identified else None))
        return shown

    def _finish(self, track: Track, frame: int, ts: float) -> list[VisitEvent]:
        visit = self.visits.pop(track.track_id, None)
        if visit is None or not visit.announced:
            return []  # a detection seen too few times to be a visit
        events = [] if visit.identified else [self._identify(visit, frame, ts)]
        return [*events, self._end(visit, frame, ts)]

    def _fuse(self, visit: Visit, state: ServingState) -> None:
        stale = [a for a in visit.attempts if a.tag != state.tag]
        if stale:  # a hot swap since: re-embed with the serving model, never mix versions
            for attempt, vector in zip(stale, state.embedder.embed([a.crop for a in stale]),
                                       strict=True):
                attempt.vector, attempt.tag = vector, state.tag
        weights = np.array([a.quality for a in visit.attempts]) + 1e-6
        fused = (weights[:, None] * np.stack([a.vector for a in visit.attempts])).sum(axis=0)
        fused = (fused / max(float(np.linalg.norm(fused)), 1e-12)).astype(np.float32)
        visit.match = state.gallery.identify_many(fused[None],
                                                  self.engine.threshold_for(state))[0]
        visit.model_version = state.tag

    def _save_best(self, visit: Visit) -> None:
        if self.crops is None or not visit.attempts or visit.best_quality <= visit.saved_quality:
            return
        best = max(visit.attempts, key=lambda a: a.quality)
        try:
            visit.crop_path = str(self.crops.save(visit.visit_id, best.crop))
            visit.saved_quality = best.quality
        except (OSError, ValueError) as exc:  # a full disk must not stop recognition
            log.warning("visit %s: best crop not saved: %s", visit.visit_id, exc)

    def _identify(self, visit: Visit, frame: int, ts: float) -> VisitEvent:
        visit.identified = True
        self._save_best(visit)
        return self._event(IDENTIFIED, visit, frame, ts)

    def _end(self, visit: Visit, frame: int, ts: float) -> VisitEvent:
        self._save_best(visit)
        return self._event(ENDED, visit, frame, ts, duration=visit.track.last_ts
                           - visit.started_ts, frames=visit.track.hits)

    @staticmethod
    def _event(kind: str, visit: Visit, frame: int, ts: float, duration: float | None = None,
               frames: int | None = None) -> VisitEvent:
        match = visit.match if kind != STARTED else None
        best = max(visit.attempts, key=lambda a: a.quality) if visit.attempts else None
        return VisitEvent(kind, visit.visit_id, ts, frame, visit.box(),
                          name=visit.name if match is not None else None,
                          score=match.score if match is not None else None,
                          person_id=match.person_id if match is not None else None,
                          best_name=match.best_name if match is not None else None,
                          attempts=len(visit.attempts),
                          model_version=visit.model_version if match is not None else None,
                          best_crop=visit.crop_path if kind != STARTED else None,
                          duration_s=duration, frames=frames,
                          crop=best.crop if best is not None and match is not None else None)
