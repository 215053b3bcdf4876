"""The kiosk's one recognition thread: capture -> pipeline -> gallery -> shared state.

Web handlers never run the pipeline on live frames: they read the latest ``LiveFrame``
(annotated JPEG plus the faces of that frame) and the ``ActivityLog``, both replaced or
updated under a lock by this thread alone. A slow or stalled browser therefore never
slows recognition, and recognition never waits for the web server.

A picture is only *live* while frames keep coming: a source that ended (a video file or
a folder played once), or that stopped delivering (camera unplugged, stream stalled:
the capture is then reconnecting inside its read), leaves its last frame behind. The
worker reports that as ``ended`` or ``lost`` (no new frame for ``stale_after_s``), the
page says so instead of showing the frozen frame as live, and enrolment refuses it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from edge.gallery.match import Match
from edge.gallery.store import Gallery, GalleryError
from edge.kiosk.activity import ActivityLog, Sighting
from edge.serving.events import UNKNOWN
from edge.tracking.visit_events import VisitEvent
from edge.tracking.visits import VisitEngine, VisitSettings
from edge.vision.frame_source import FrameSource, SourceError
from edge.vision.pipeline import FacePipeline, RecognisedFace

log = logging.getLogger(__name__)

KNOWN_COLOUR = (60, 200, 60)  # BGR
UNKNOWN_COLOUR = (40, 40, 230)
RETRY_SOURCE_S = 5.0
FINAL_STATES = frozenset({"ended", "stopped"})  # no frame will come any more
FIRST_IMAGE_GRACE_S = 5.0  # beyond stale_after_s, for the first image after opening
NOT_LIVE_STATES = {
    "starting": "Waiting for the first camera image.",
    "ended": "The video source ended: no more frames.",
    "lost": "Camera lost: no new image.",
    "reconnecting": "Camera unavailable.",
    "error": "Recognition stopped.",
    "stopped": "Recognition is stopped.",
}


@dataclass(frozen=True)
class LiveFrame:
    seq: int  # increases by one per processed frame
    frame_index: int
    timestamp: float
    jpeg: bytes = field(repr=False)
    faces: tuple[RecognisedFace, ...] = field(repr=False)  # of a fully recognised frame
    matches: tuple[Match, ...] = field(repr=False)
    in_view: tuple[tuple[str | None, float], ...] = ()  # (name or None: unknown, score)
    full: bool = True  # every face embedded and matched (else: visits only)
    identifying: int = 0  # faces in view whose visit is not identified yet

    def labels(self) -> list[dict[str, object]]:
        return [{"name": name, "score": round(score, 3)} for name, score in self.in_view]

    def caption(self) -> str:
        """Who is in view, as the page says it: named, unknown, or still being identified
        (a face boxed with "..." is someone, not nobody)."""
        said = [name or "unknown" for name, _ in self.in_view]
        if self.identifying:
            said.append(f"{self.identifying} being identified")
        return ", ".join(said) or "nobody"


@dataclass(frozen=True)
class WorkerStatus:
    state: str  # starting, running, lost, reconnecting, ended, error, stopped
    message: str = ""
    ms_per_frame: float = 0.0  # recognition time of one frame (smoothed)

    @property
    def live(self) -> bool:
        return self.state == "running"

    @property
    def reason(self) -> str:
        """Why the picture is not live ("" while it is)."""
        if self.live:
            return ""
        head = NOT_LIVE_STATES.get(self.state, "The camera is not live.")
        return f"{head[:-1]} ({self.message})." if self.message else head

    def notice(self, has_picture: bool) -> str:
        """What the staff read over a picture that is not live ("" while it is): that
        the picture is the last image, or that none ever came (a camera that never
        answered leaves no picture to be the last one)."""
        if self.live:
            return ""
        if has_picture:
            return f"NOT LIVE - {self.reason} The picture shown is the last image."
        if self.state == "starting":  # its reason already says no image came yet
            return f"NOT LIVE - {self.reason}"
        return (f"NOT LIVE - {self.reason} No image has come from the camera since the "
                "kiosk started.")


Mark = tuple[tuple[float, float, float, float], str, bool]  # box, label, known


def frame_marks(faces: Sequence[RecognisedFace], matches: Sequence[Match]) -> list[Mark]:
    return [(f.face.box, f"{m.name} {m.score:.2f}" if m.known else "UNKNOWN", m.known)
            for f, m in zip(faces, matches, strict=True)]


def visit_marks(visits: VisitEngine) -> list[Mark]:
    """Tracked faces: the visit's name once identified ("..." until then)."""
    return [(box, "..." if name is None else ("UNKNOWN" if name == UNKNOWN else name),
             name not in (None, UNKNOWN)) for _, box, name in visits.visible()]


def annotate(bgr: np.ndarray, marks: Sequence[Mark], width: int) -> np.ndarray:
    """A display copy of the frame, scaled to ``width``, with boxes and names drawn."""
    scale = width / float(bgr.shape[1])
    size = (width, max(1, round(bgr.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = cv2.resize(bgr, size, interpolation=interpolation)
    thickness = max(2, round(width / 320))
    font_scale = max(0.5, width / 900)
    for box, label, known in marks:
        x, y, w, h = (round(v * scale) for v in box)
        colour = KNOWN_COLOUR if known else UNKNOWN_COLOUR
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 2)
        top = max(0, y - th - base - 6)
        cv2.rectangle(canvas, (x, top), (x + tw + 8, top + th + base + 6), colour, -1)
        cv2.putText(canvas, label, (x + 4, top + th + 3), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale, (255, 255, 255), 2, cv2.LINE_AA)
    return canvas


class RecognitionWorker:
    """Reads ``source`` in its own thread until stopped; see the module docstring."""

    def __init__(
        self,
        source: FrameSource,
        pipeline: FacePipeline,
        gallery: Gallery,
        threshold: float,
        activity: ActivityLog,
        display_width: int = 640,
        jpeg_quality: int = 80,
        stale_after_s: float = 3.0,
        per_visit: bool = True,
        detect_every: int = 1,
        visit_sinks: Sequence[Callable[[VisitEvent], None]] = (),
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.gallery = gallery
        self.threshold = threshold
        self.activity = activity
        self.display_width = display_width
        self.jpeg_quality = jpeg_quality
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._latest: LiveFrame | None = None
        self._published = 0.0  # time.monotonic() when _latest was published
        self._opened = 0.0  # time.monotonic() when the source was last opened
        self._status = WorkerStatus("starting")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ms = 0.0
        self._seq = 0
        from edge.serving.current import open_engine

        # frames are served by the engine: the model the swap pointer names, followed
        # (with enrolments) by its watcher once started
        self.engine = open_engine(pipeline.detector, gallery.path, None,
                                  threads=pipeline.embedder.threads, threshold=threshold,
                                  base_embedder=pipeline.embedder)
        # per visit: faces are tracked and recognised once per visit; a frame is
        # recognised in full only when a camera enrolment asks for one (fresh_frame)
        self.visits = (VisitEngine(self.engine, VisitSettings.for_source(
            source, detect_every=detect_every)) if per_visit else None)
        # where else the visit events go (the events file, Home Assistant's broker)
        self.visit_sinks = tuple(visit_sinks)
        self._full_wanted = False

    @property
    def model_version(self) -> str:
        return self.engine.state.tag

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> RecognitionWorker:
        if self._thread is None:
            self.engine.start_watcher()
            self._thread = threading.Thread(target=self._run, name="kiosk-recognition",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.engine.stop_watcher()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("recognition thread still busy after %.0f s", timeout)
            else:  # whoever is in front of the camera now leaves with the kiosk
                self.close_visits()
            self._thread = None
        self._set_status("stopped")

    # --- shared state (read by web handlers) --------------------------------------------

    def latest(self) -> LiveFrame | None:
        with self._lock:
            return self._latest

    def status(self) -> WorkerStatus:
        with self._lock:
            return self._status_locked()

    def _status_locked(self) -> WorkerStatus:
        status = replace(self._status, ms_per_frame=self._ms)
        if status.state == "running":
            now = time.monotonic()
            if self._published >= self._opened:
                age = now - self._published
                if age > self.stale_after_s:
                    return WorkerStatus("lost", f"no new image for {age:.0f} s; camera "
                                        "unplugged or stream stalled?", self._ms)
            # a camera that opens and then delivers nothing is not live either; its first
            # image may take longer (a stream's first key frame, the first inference)
            elif now - self._opened > self.stale_after_s + FIRST_IMAGE_GRACE_S:
                return WorkerStatus("lost", f"no image for {now - self._opened:.0f} s since "
                                    "the camera opened; camera unplugged or stream stalled?",
                                    self._ms)
        return status

    def _fresh(self, after_seq: int, max_age: float) -> LiveFrame | None:
        latest = self._latest
        if latest is None or latest.seq <= after_seq or not self._status_locked().live:
            return None
        if not latest.full:
            return None
        return latest if time.monotonic() - self._published <= max_age else None

    def fresh_frame(self, after_seq: int, max_age: float, timeout: float) -> LiveFrame | None:
        """The latest frame if it is newer than ``after_seq``, live and at most ``max_age``
        seconds old; else the next such frame within ``timeout`` s; None if none comes."""
        deadline = time.monotonic() + timeout
        with self._new_frame:
            self._full_wanted = True  # per visit: recognise the next frame in full
            while True:
                found = self._fresh(after_seq, max_age)
                left = deadline - time.monotonic()
                if found is not None or left <= 0 or self._status.state in FINAL_STATES:
                    return found
                self._new_frame.wait(left)

    def _set_status(self, state: str, message: str = "") -> None:
        with self._lock:
            self._status = WorkerStatus(state, message, self._ms)
            self._new_frame.notify_all()

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.source:
                    with self._lock:
                        self._opened = time.monotonic()
                    self._set_status("running")
                    for frame in self.source:
                        self.process_frame(frame.frame_index, frame.timestamp, frame.image)
                        if self._stop.is_set():
                            return
                self.close_visits()  # nobody stays in front of a camera that is gone
                if not self.source.live:
                    self._set_status("ended")
                    log.info("kiosk source %s ended", self.source.uri)
                    return
            except SourceError as exc:
                log.warning("kiosk source: %s; retrying in %.0f s", exc, RETRY_SOURCE_S)
                self._set_status("reconnecting", f"camera unavailable: {exc.reason}")
            except Exception as exc:  # keep the kiosk up; the page shows what broke
                log.exception("kiosk recognition failed")
                self._set_status("error", f"recognition failed: {type(exc).__name__}: {exc}")
            self._stop.wait(RETRY_SOURCE_S)

    def close_visits(self) -> None:
        """End the open visits (their last events go to the activity log)."""
        if self.visits is not None:
            for event in self.visits.close():
                self._visit_event(event)

    def _visit_event(self, event: VisitEvent) -> None:
        self.activity.record_visit(event)
        for sink in self.visit_sinks:
            try:
                sink(event)
            except Exception:  # a full disk or a broken listener must not stop the page
                log.exception("visit event %s of %s not written", event.event, event.visit)

    def _identify(self, image: np.ndarray) -> tuple[list[RecognisedFace], list[Match] | None]:
        try:
            # one engine state for the whole frame: probe and gallery of the same model
            result = self.engine.recognise(image)
        except GalleryError as exc:
            self._set_status("error", str(exc))
            return [], None
        return result.faces, result.matches

    def process_frame(self, frame_index: int, timestamp: float, image: np.ndarray) -> None:
        """Recognise one frame and publish it (the thread calls this for every frame)."""
        started = time.perf_counter()
        with self._lock:
            full = self.visits is None or self._full_wanted
        faces, found = self._identify(image) if full else ([], [])
        identifying = 0
        matches = found if found is not None else [Match(None, 0.0, None) for _ in faces]
        in_view = tuple((m.name, m.score) for m in matches)
        marks = frame_marks(faces, matches)
        if self.visits is not None and found is not None:
            try:
                events = self.visits.process(image, frame_index, timestamp,
                                             [f.face for f in faces] if full else None)
            except GalleryError as exc:
                self._set_status("error", str(exc))
                events, found = [], None
            for event in events:
                self._visit_event(event)
            marks = visit_marks(self.visits)
            visible = self.visits.visible()
            in_view = tuple((None if n == UNKNOWN else n, 0.0) for _, _, n in visible
                            if n is not None)
            identifying = sum(1 for _, _, n in visible if n is None)
        elif found is not None:
            self.activity.record([Sighting(m.name, m.person_id, m.score, f.crop, f.embedding,
                                           m.best_name)
                                  for f, m in zip(faces, matches, strict=True)], when=timestamp)
        display = annotate(image, marks, self.display_width)
        ok, buf = cv2.imencode(".jpg", display, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        elapsed = time.perf_counter() - started
        with self._lock:
            self._seq += 1
            ms = elapsed * 1e3
            self._ms = ms if self._ms == 0 else 0.9 * self._ms + 0.1 * ms
            if ok:
                self._latest = LiveFrame(self._seq, frame_index, timestamp, buf.tobytes(),
                                         tuple(faces), tuple(matches), in_view, full,
                                         identifying)
                # every published frame keeps the camera live, recognised in full or not
                self._published = time.monotonic()
            if full:
                self._full_wanted = False
            if found is not None and self._status.state != "running":
                self._status = WorkerStatus("running", "", self._ms)
            self._new_frame.notify_all()
