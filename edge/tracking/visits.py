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

A visit's face stays checked: a track follows boxes, not people, so when someone else
takes a tracked face's place (steps into the spot the last person just left, within
``end_after_s``) the track would carry on under the first person's name, and an unknown
newcomer would raise no alert. So every view embedded for a visit is first judged
against the visit's fused vector (``same_person``: same person, someone else, unsure).
Two views in a row of someone else end the visit there and start one on the same track
from those two views; one alone ends nothing (a glitch: a passer-by caught for a frame).
The name is shown (``visible``) only while the face is confirmed: from a changed face
not yet checked, or a view of someone else or unsure, until a view is the visit's
person again, it is shown unconfirmed (None: "..." on the kiosk). Views are embedded
for the check when the aligned crop changes abruptly between detections (a 16x16 grey
thumbnail's correlation under ``CHANGE_BELOW``: rare for one person), at every
detection while in question, whatever their quality (the visit's best view may be the
previous person's: a newcomer's poorer views went unchecked, shown under that name),
and at least every ``recheck_seconds`` on a view at least half as good as the best.

A hot swap between two attempts is handled: attempts keep their crops, and the ones
embedded by another model version are re-embedded before fusion (vectors of two
versions are never mixed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edge.gallery.match import Match
from edge.serving.engine import Engine, ServingState
from edge.serving.events import UNKNOWN
from edge.tracking.quality import view_quality, view_thumbnail
from edge.tracking.same_person import CHANGE_BELOW, Verdict, judge
from edge.tracking.tracker import FaceTracker, Track
from edge.tracking.visit_events import ENDED, IDENTIFIED, STARTED, CropStore, VisitEvent
from edge.vision.align import align_face
from edge.vision.detect import Face

log = logging.getLogger(__name__)

# of the visit's best view: a worse view is not embedded for the periodic check alone
RECHECK_MIN_QUALITY = 0.5


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
    recheck_seconds: float = 3.0
    split_after: int = 2  # views in a row that are someone else's (one could be a glitch)
    every_view: bool = False  # check each view, however poor (separate photos: each is new)

    @classmethod
    def for_source(cls, source: object, **settings: Any) -> VisitSettings:
        """A folder of separate photos (``dir:...?stills=1``): one photo is a sighting, each
        is checked (embedded), and a photo of someone else ends the visit at once. A
        walkthrough's folder of 20 people, one photo each, gave 10 visits: a photo alike
        enough to the last was not re-checked, and one view of someone else was taken for
        a glitch, so every second person vanished into the previous visit."""
        base = cls(**settings)
        if getattr(source, "stills", False):
            return replace(base, min_hits=1, split_after=1, every_view=True)
        return base

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.max_attempts < 1 or self.min_hits < 1:
            raise ValueError("detect_every, max_attempts and min_hits must be at least 1")
        if self.better_by < 1.0:
            raise ValueError(f"better_by must be at least 1.0, got {self.better_by}")
        if self.recheck_seconds <= 0:
            raise ValueError(f"recheck_seconds must be positive, got {self.recheck_seconds}")


@dataclass(eq=False)
class Attempt:
    crop: np.ndarray
    quality: float
    vector: np.ndarray
    tag: str


@dataclass(frozen=True)
class Doubt:
    """A view that was someone else's, and where the visit stood before it."""

    attempt: Attempt
    frame: int
    ts: float
    frames_before: int
    last_ts_before: float
    last_frame_before: int
    last_box_before: tuple[int, int, int, int] | None


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
    fused: np.ndarray | None = None  # the attempts' fused vector, of ``model_version``
    matched_in: object = None  # the gallery snapshot ``match`` was found in
    frames: int = 0  # detections of this visit's face (a track may carry several visits)
    last_ts: float = 0.0
    previous_ts: float = 0.0
    # the frame and box of its latest detection, and of the one before: where a visit
    # ended by someone else's view stood (its ended event's frame and box)
    last_frame: int = -1
    previous_frame: int = -1
    last_box: tuple[int, int, int, int] | None = None
    previous_box: tuple[int, int, int, int] | None = None
    checked_ts: float = 0.0  # when a view of this visit was last embedded
    thumb: np.ndarray | None = None  # the latest view's thumbnail (CHANGE_BELOW)
    recheck: bool = False  # the view changed (or was unsure) since the last SAME verdict
    doubt: Doubt | None = None  # a view of someone else, waiting for a second one

    def seen(self, ts: float, frame: int) -> None:
        self.frames += 1
        self.previous_ts, self.last_ts = self.last_ts, ts
        self.previous_frame, self.last_frame = self.last_frame, frame
        self.previous_box, self.last_box = self.last_box, self._track_box()

    @property
    def confirmed(self) -> bool:
        """Is the latest view this visit's person, as far as the checks know?"""
        return not self.recheck and self.doubt is None

    @property
    def best_quality(self) -> float:
        return max((a.quality for a in self.attempts), default=0.0)

    @property
    def name(self) -> str | None:
        if self.match is None:
            return None
        return self.match.name if self.match.name is not None else UNKNOWN

    def box(self) -> tuple[int, int, int, int]:
        return self.last_box if self.last_box is not None else self._track_box()

    def _track_box(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.track.box
        return (round(x), round(y), round(w), round(h))


class VisitEngine:
    """Frames in, visit events out; ``embeddings`` and ``detections`` count the work done
    (``faces_detected``: the faces those detections found), ``rechecks`` the embeddings
    that only checked a visit's face, ``splits`` the visits ended by someone else."""

    def __init__(self, engine: Engine, settings: VisitSettings | None = None,
                 crops: CropStore | None = None) -> None:
        self.engine = engine
        self.settings = settings or VisitSettings()
        self.crops = crops
        self.tracker = FaceTracker(self.settings.min_iou, self.settings.end_after_s)
        self.visits: dict[int, Visit] = {}
        self.frames = 0
        self.detections = 0
        self.faces_detected = 0
        self.embeddings = 0
        self.rechecks = 0
        self.splits = 0
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
        self.faces_detected += len(faces)
        self._last_detection = frame
        step = self.tracker.update(faces, frame, ts)
        events: list[VisitEvent] = []
        for track in step.started:
            self.visits[track.track_id] = self._new_visit(track, frame, ts)
        wanted: list[tuple[Visit, np.ndarray, float, bool]] = []
        for track, face in step.matched:
            visit = self.visits[track.track_id]
            visit.seen(ts, frame)
            crop = align_face(bgr, face.landmarks)
            visit.recheck |= _view_changed(visit, crop) or self.settings.every_view
            quality = view_quality(face, crop).score
            better = len(visit.attempts) < self.settings.max_attempts and (
                not visit.attempts or quality > visit.best_quality * self.settings.better_by)
            # a view in question is checked whatever its quality: the best view may be the
            # previous person's (a newcomer's poorer views went unchecked, under that name)
            periodic = (ts - visit.checked_ts >= self.settings.recheck_seconds
                        and quality >= visit.best_quality * RECHECK_MIN_QUALITY)
            due = not visit.confirmed or periodic
            if better or due:
                wanted.append((visit, crop, quality, better))
        if wanted:
            vectors = state.embedder.embed([crop for _, crop, _, _ in wanted])
            self.embeddings += len(wanted)
            self.rechecks += sum(1 for *_, better in wanted if not better)
            for (visit, crop, quality, better), vector in zip(wanted, vectors, strict=True):
                attempt = Attempt(crop, quality, vector, state.tag)
                verdict = self._judge(visit, attempt, state) if visit.attempts else Verdict.SAME
                if verdict is Verdict.OTHER:
                    first = visit.doubt is None
                    if first:  # one view could be a glitch: wait for another (video)
                        visit.doubt = Doubt(attempt, frame, ts, visit.frames - 1,
                                            visit.previous_ts, visit.previous_frame,
                                            visit.previous_box)
                    if not first or self.settings.split_after <= 1:
                        events.extend(self._split(visit, attempt, state, frame, ts))
                    continue
                visit.checked_ts = ts
                if verdict is Verdict.UNSURE:  # shown unconfirmed, checked again, not fused
                    visit.recheck = True
                    continue
                visit.recheck, visit.doubt = False, None
                if better:
                    visit.attempts.append(attempt)
                    self._fuse(visit, state)
        for visit in self.visits.values():
            # announced once judged: a view of someone else is not the visit's second sight
            # (a visit started on it could end before its own start, on its one frame)
            if not visit.announced and visit.doubt is None and \
                    visit.frames >= self.settings.min_hits:
                visit.announced = True
                events.append(self._event(STARTED, visit, frame, ts))
            if visit.fused is not None and visit.matched_in is not state.gallery:
                # someone enrolled (or a model swapped in) since: named by the gallery of
                # now (a person enrolled at the camera stayed unknown until they left)
                self._fuse(visit, state)
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
        detection, their boxes predicted to the latest frame (``detect_every`` > 1). None
        also while the face is unconfirmed (``Visit.confirmed``): the frames after a
        detection are shown as that detection's check left them."""
        frame = self._last[0]
        shown = []
        for v in self.visits.values():
            if v.announced and v.track.last_seen == self._last_detection:
                x, y, w, h = v.track.predicted(frame)
                shown.append((v.visit_id, (round(x), round(y), round(w), round(h)),
                              v.name if v.identified and v.confirmed else None))
        return shown

    def _finish(self, track: Track, frame: int, ts: float) -> list[VisitEvent]:
        visit = self.visits.pop(track.track_id, None)
        if visit is None or not visit.announced:
            return []  # a detection seen too few times to be a visit
        events = [] if visit.identified else [self._identify(visit, frame, ts)]
        return [*events, self._end(visit, frame, ts)]

    def _new_visit(self, track: Track, frame: int, ts: float) -> Visit:
        return Visit(visit_id(ts, track), track, ts, frame, checked_ts=ts)

    def _judge(self, visit: Visit, attempt: Attempt, state: ServingState) -> Verdict:
        """Is the newly embedded view the visit's person (``same_person.judge``)?"""
        if visit.model_version != state.tag:
            self._fuse(visit, state)  # a hot swap since: compare within one version
        assert visit.fused is not None
        threshold = self.engine.threshold_for(state)
        alone = (state.gallery.identify_many(attempt.vector[None], threshold)[0]
                 if visit.match is not None else None)
        return judge(float(attempt.vector @ visit.fused), threshold, visit.match, alone,
                     self.settings.every_view)

    def _split(self, visit: Visit, attempt: Attempt, state: ServingState, frame: int,
               ts: float) -> list[VisitEvent]:
        """Someone else has taken the visit's face's place (two views in a row say so): end
        the visit where it stood before the first of them, and start one for the newcomer
        on the same track from those two views, announced at once (seen twice)."""
        doubt = visit.doubt
        assert doubt is not None
        self.splits += 1
        newcomer = Visit(visit_id(doubt.ts, visit.track), visit.track, doubt.ts, doubt.frame,
                         checked_ts=ts, thumb=visit.thumb,
                         frames=visit.frames - doubt.frames_before, last_ts=ts,
                         previous_ts=visit.last_ts, last_frame=frame,
                         previous_frame=visit.last_frame, last_box=visit.last_box,
                         previous_box=visit.previous_box)
        # the visit ends where it was last seen, not on the newcomer's frame and box
        visit.frames, visit.last_ts = doubt.frames_before, doubt.last_ts_before
        visit.last_frame, visit.last_box = doubt.last_frame_before, doubt.last_box_before
        events = self._finish(visit.track, visit.last_frame, visit.last_ts)
        log.debug("visit %s: a different person in its place: visit %s", visit.visit_id,
                  newcomer.visit_id)
        newcomer.attempts += [doubt.attempt] + ([attempt] if attempt is not doubt.attempt else [])
        self._fuse(newcomer, state)  # re-embeds the first view if a swap came between
        newcomer.announced = newcomer.frames >= self.settings.min_hits
        self.visits[visit.track.track_id] = newcomer
        started = [self._event(STARTED, newcomer, frame, ts)] if newcomer.announced else []
        return [*events, *started]

    def _fuse(self, visit: Visit, state: ServingState) -> None:
        stale = [a for a in visit.attempts if a.tag != state.tag]
        if stale:  # a hot swap since: re-embed with the serving model, never mix versions
            for attempt, vector in zip(stale, state.embedder.embed([a.crop for a in stale]),
                                       strict=True):
                attempt.vector, attempt.tag = vector, state.tag
        weights = np.array([a.quality for a in visit.attempts]) + 1e-6
        fused = (weights[:, None] * np.stack([a.vector for a in visit.attempts])).sum(axis=0)
        visit.fused = (fused / max(float(np.linalg.norm(fused)), 1e-12)).astype(np.float32)
        visit.match = state.gallery.identify_many(visit.fused[None],
                                                  self.engine.threshold_for(state))[0]
        visit.model_version, visit.matched_in = state.tag, state.gallery

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
        return self._event(ENDED, visit, frame, ts, duration=visit.last_ts - visit.started_ts,
                           frames=visit.frames)

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
                          crop=best.crop if best is not None and match is not None else None,
                          vector=visit.fused if match is not None else None)


def visit_id(ts: float, track: Track) -> str:
    """Unique on the box: the visit's start in ms (hex) and its track."""
    return f"{int(ts * 1000):x}-{track.track_id}"


def _view_changed(visit: Visit, crop: np.ndarray) -> bool:
    """Did the aligned face change abruptly since the visit's previous detection?"""
    thumb, visit.thumb = visit.thumb, view_thumbnail(crop)
    return thumb is not None and float(thumb @ visit.thumb) < CHANGE_BELOW
