"""What the kiosk shows of the recent past: recognitions and unknown-face alerts.

Both are small bounded rings in memory, newest first, each entry with a JPEG thumbnail
of the aligned face crop. Memory only, on purpose: the kiosk's history is for the staff
on duty, not a face archive (the JSON-lines events of ``fedface-edge run`` are the log).

- A known person seen again within ``recent_merge_s`` of their last sighting updates that
  entry (last time, count, best score) instead of filling the list with one line per
  frame, and the entry moves to the top: the list stays newest first by the time it
  shows.
- An unknown face (per frame), or an unknown visit by its fused vector (per visit), joins
  an existing unknown *track* when its embedding is close to one of the track's recent
  embeddings (cosine >= ``track_similarity``) and the track was seen within
  ``alert_cooldown_s``; only a face or visit that starts a new track raises a new alert
  (a stranger pacing in front of the kiosk is one alert, "3 visits").
  Embeddings rather than box overlap define a track, because a fixed camera sees
  different people at the same spot one after the other.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from edge.tracking.visit_events import ENDED, IDENTIFIED, VisitEvent

TRACK_EMBEDDINGS = 5  # recent embeddings kept per unknown track (pose changes)
# Frames in flight when a person is removed finish well within this (a frame is ~20-50 ms;
# the engine reloads the gallery on the next frame); short, as a re-enrolled person may
# get the same id back.
REMOVAL_GRACE_S = 3.0


@dataclass(frozen=True)
class Sighting:
    """One face seen in one frame, as the worker hands it over."""

    name: str | None  # None: unknown
    person_id: int | None
    score: float
    crop: np.ndarray = field(repr=False)  # 112x112 BGR
    embedding: np.ndarray = field(repr=False)
    best_name: str | None = None  # closest enrolled person, even under the threshold


@dataclass(frozen=True)
class Entry:
    """A recognition or an alert as shown on the page."""

    id: int
    name: str | None
    person_id: int | None
    score: float
    first_seen: float
    last_seen: float
    count: int
    thumbnail: bytes = field(repr=False)
    acknowledged: bool = False
    best_name: str | None = None  # an alert's closest enrolled person (score is theirs)
    # an alert keeps the face crop it shows, so staff can enrol that person from it
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)
    enrolled_as: str | None = None  # set when staff enrolled an alert's face
    visits: bool = False  # per-visit kiosk: count is visits, not frames

    @property
    def seen(self) -> str:
        if self.visits:
            return f"{self.count} visit" + ("s" if self.count != 1 else "")
        return f"{self.count}x"

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "score": round(self.score, 3),
                "best_name": self.best_name, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "count": self.count,
                "acknowledged": self.acknowledged, "enrolled_as": self.enrolled_as,
                "seen": self.seen}


@dataclass
class _Track:
    alert_id: int
    last_seen: float
    embeddings: deque[np.ndarray]


def thumbnail_jpeg(crop: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode a face thumbnail")
    return buf.tobytes()


class ActivityLog:
    """Thread-safe rings of recognitions and alerts (the worker writes, web handlers read)."""

    def __init__(
        self,
        recent_size: int = 30,
        alert_size: int = 30,
        recent_merge_s: float = 10.0,
        alert_cooldown_s: float = 60.0,
        track_similarity: float = 0.363,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recent_merge_s = recent_merge_s
        self.alert_cooldown_s = alert_cooldown_s
        self.track_similarity = track_similarity
        self._clock = clock
        self._recent: deque[Entry] = deque(maxlen=recent_size)
        self._alerts: deque[Entry] = deque(maxlen=alert_size)
        self._tracks: list[_Track] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        # person id -> when removed: a frame already in flight when staff removed them
        # still carries their name; for a moment its sightings are dropped
        self._removed: dict[int, float] = {}
        self.unknown_sightings = 0  # every unknown face seen (alerts are far fewer)
        self._visit_entries: dict[str, int] = {}  # open visit -> its entry (per-visit kiosk)
        # unacknowledged alerts pushed out of the full ring: still counted on the badge
        # until staff acknowledge all (a busy lobby must not hide alerts by their number)
        self._unacked_dropped = 0

    # --- writing (worker thread) --------------------------------------------------------

    def record(self, sightings: Sequence[Sighting], when: float | None = None) -> None:
        now = self._clock() if when is None else when
        with self._lock:
            for s in sightings:
                if s.name is not None:
                    self._record_known(s, now)
                else:
                    self.unknown_sightings += 1
                    self._record_unknown(s, now)

    @staticmethod
    def _bump(entry: Entry, s: Sighting, now: float) -> Entry:
        better = s.score > entry.score
        return replace(entry, last_seen=now, count=entry.count + 1,
                       score=max(entry.score, s.score),
                       thumbnail=thumbnail_jpeg(s.crop) if better else entry.thumbnail)

    def _record_known(self, s: Sighting, now: float) -> None:
        self._removed = {p: t for p, t in self._removed.items()
                         if now - t <= REMOVAL_GRACE_S}
        if s.person_id in self._removed:
            return
        for index, entry in enumerate(self._recent):
            if entry.person_id == s.person_id and now - entry.last_seen <= self.recent_merge_s:
                _to_front(self._recent, index, self._bump(entry, s, now))
                return
        self._recent.appendleft(Entry(next(self._ids), s.name, s.person_id, s.score, now, now,
                                      1, thumbnail_jpeg(s.crop)))

    def _find_track(self, embedding: np.ndarray, now: float) -> _Track | None:
        self._tracks = [t for t in self._tracks if now - t.last_seen <= self.alert_cooldown_s]
        best: tuple[float, _Track | None] = (self.track_similarity, None)
        for track in self._tracks:
            score = max(float(np.dot(e, embedding)) for e in track.embeddings)
            if score >= best[0]:
                best = (score, track)
        return best[1]

    def _record_unknown(self, s: Sighting, now: float) -> None:
        embedding = np.asarray(s.embedding, dtype=np.float32)
        track = self._find_track(embedding, now)
        if track is not None:
            track.last_seen = now
            track.embeddings.append(embedding)
            for index, entry in enumerate(self._alerts):
                if entry.id == track.alert_id:
                    # a repeat is not news: count it, but do not un-acknowledge the alert;
                    # the face shown (and enrolled from) stays the one first seen
                    bumped = self._bump(entry, s, now)
                    closest = s.best_name if s.score > entry.score else entry.best_name
                    self._alerts[index] = replace(bumped, thumbnail=entry.thumbnail,
                                                  best_name=closest)
                    return
            return  # the alert scrolled out of the ring; its track still mutes repeats
        entry = Entry(next(self._ids), None, None, s.score, now, now, 1, thumbnail_jpeg(s.crop),
                      best_name=s.best_name, crop=np.array(s.crop, copy=True))
        self._raise(entry)
        self._tracks.append(_Track(entry.id, now, deque([embedding], maxlen=TRACK_EMBEDDINGS)))

    def record_visit(self, event: VisitEvent) -> None:
        """The per-visit kiosk: one entry per visit (a known person's visits within
        ``recent_merge_s`` share one line, ``count`` counting visits) and one alert per
        unknown visit, each with the visit's best crop."""
        with self._lock:
            if event.event == IDENTIFIED and event.crop is not None:
                self._identified(event, event.crop)
            elif event.event == ENDED:
                entry_id = self._visit_entries.pop(event.visit, None)
                if entry_id is not None and event.crop is not None:
                    self._visit_ended(entry_id, event, event.crop)

    def _identified(self, event: VisitEvent, crop: np.ndarray) -> None:
        now, score = event.ts, event.score or 0.0
        if event.person_id is None:  # unknown: an alert per stranger, not per visit
            self.unknown_sightings += 1
            vector = None if event.vector is None else np.asarray(event.vector, np.float32)
            track = None if vector is None else self._find_track(vector, now)
            if track is not None and vector is not None:  # back within alert_cooldown_s
                for index, entry in enumerate(self._alerts):
                    if entry.id == track.alert_id:  # a repeat is not news: counted only
                        track.last_seen = now
                        track.embeddings.append(vector)
                        self._alerts[index] = replace(entry, last_seen=now,
                                                      count=entry.count + 1)
                        self._visit_entries[event.visit] = entry.id
                        return
            entry = Entry(next(self._ids), None, None, score, now, now, 1,
                          thumbnail_jpeg(crop), best_name=event.best_name,
                          crop=np.array(crop, copy=True), visits=True)
            self._raise(entry)
            if vector is not None:
                self._tracks.append(_Track(entry.id, now,
                                           deque([vector], maxlen=TRACK_EMBEDDINGS)))
            self._visit_entries[event.visit] = entry.id
            return
        self._removed = {p: t for p, t in self._removed.items()
                         if now - t <= REMOVAL_GRACE_S}
        if event.person_id in self._removed:
            return
        for index, entry in enumerate(self._recent):
            if entry.person_id == event.person_id and now - entry.last_seen <= self.recent_merge_s:
                _to_front(self._recent, index,
                          replace(entry, last_seen=now, count=entry.count + 1,
                                  score=max(entry.score, score), thumbnail=thumbnail_jpeg(crop)))
                self._visit_entries[event.visit] = entry.id
                return
        entry = Entry(next(self._ids), event.name, event.person_id, score, now, now, 1,
                      thumbnail_jpeg(crop), visits=True)
        self._recent.appendleft(entry)
        self._visit_entries[event.visit] = entry.id

    def _raise(self, alert: Entry) -> None:
        if len(self._alerts) == self._alerts.maxlen and not self._alerts[-1].acknowledged:
            self._unacked_dropped += 1
        self._alerts.appendleft(alert)

    def _visit_ended(self, entry_id: int, event: VisitEvent, crop: np.ndarray) -> None:
        for ring in (self._recent, self._alerts):
            for index, entry in enumerate(ring):
                if entry.id == entry_id:  # the visit's final best view, and when it left
                    ended = replace(entry, last_seen=max(entry.last_seen, event.ts),
                                    thumbnail=thumbnail_jpeg(crop))
                    if ring is self._recent:
                        _to_front(ring, index, ended)
                    else:  # alerts stay in the order they were raised: news first
                        if event.person_id is not None and entry.enrolled_as is None:
                            # enrolled while in view (at the camera): the visit ends
                            # named, and its alert is dealt with (helper-44)
                            ended = replace(ended, acknowledged=True, enrolled_as=event.name)
                        ring[index] = ended
                        for track in self._tracks:  # the cooldown runs from their leaving
                            if track.alert_id == entry_id:
                                track.last_seen = max(track.last_seen, event.ts)
                    return

    # --- reading (web handlers) ---------------------------------------------------------

    def recent(self) -> list[Entry]:
        with self._lock:
            return list(self._recent)

    def alerts(self) -> list[Entry]:
        with self._lock:
            return list(self._alerts)

    def unacknowledged(self) -> int:
        with self._lock:
            return self._unacked_dropped + sum(1 for a in self._alerts if not a.acknowledged)

    def alert(self, entry_id: int) -> Entry | None:
        with self._lock:
            return next((a for a in self._alerts if a.id == entry_id), None)

    def thumbnail(self, entry_id: int) -> bytes | None:
        with self._lock:
            for entry in itertools.chain(self._recent, self._alerts):
                if entry.id == entry_id:
                    return entry.thumbnail
        return None

    # --- staff actions ------------------------------------------------------------------

    def acknowledge_all(self) -> int:
        with self._lock:
            count, self._unacked_dropped = self._unacked_dropped, 0
            for index, entry in enumerate(self._alerts):
                if not entry.acknowledged:
                    self._alerts[index] = replace(entry, acknowledged=True)
                    count += 1
            return count

    def acknowledge(self, entry_id: int) -> bool:
        """One alert dealt with (False: it is no longer kept, or was already)."""
        with self._lock:
            for index, entry in enumerate(self._alerts):
                if entry.id == entry_id and not entry.acknowledged:
                    self._alerts[index] = replace(entry, acknowledged=True)
                    return True
            return False

    def mark_enrolled(self, entry_id: int, name: str) -> None:
        """Staff enrolled an alert's face: the alert is dealt with."""
        with self._lock:
            for index, entry in enumerate(self._alerts):
                if entry.id == entry_id:
                    self._alerts[index] = replace(entry, acknowledged=True, enrolled_as=name)

    def enrolled(self, name: str, is_them: Callable[[list[np.ndarray]], list[bool]]) -> int:
        """Someone was enrolled: the open alerts whose face ``is_them`` (judged outside
        the lock: it embeds) are dealt with, enrolled as ``name``. An alert stayed open,
        'closest ... 0.16', after its stranger was enrolled from photos (helper-53)."""
        with self._lock:
            open_alerts = [(e.id, e.crop) for e in self._alerts if e.crop is not None
                           and not e.acknowledged and e.enrolled_as is None]
        if not open_alerts:
            return 0
        verdicts = is_them([crop for _, crop in open_alerts])
        theirs = {i for (i, _), yes in zip(open_alerts, verdicts, strict=True) if yes}
        with self._lock:
            for index, entry in enumerate(self._alerts):
                if entry.id in theirs and entry.enrolled_as is None:
                    self._alerts[index] = replace(entry, acknowledged=True, enrolled_as=name)
        return len(theirs)

    def forget_person(self, person_id: int) -> int:
        """Drop a removed person's recognitions (their face must not linger on screen)."""
        with self._lock:
            self._removed[person_id] = self._clock()
            kept = [e for e in self._recent if e.person_id != person_id]
            removed = len(self._recent) - len(kept)
            self._recent.clear()
            self._recent.extend(kept)
            return removed


def _to_front(ring: deque[Entry], index: int, entry: Entry) -> None:
    """Replace the entry at ``index`` by ``entry``, moved to the top (newest first)."""
    del ring[index]
    ring.appendleft(entry)
