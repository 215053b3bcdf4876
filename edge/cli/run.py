"""``fedface-edge run``: live recognition from a camera, stream, video or image folder."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edge.cli.context import box
from edge.cli.errors import EXIT_USAGE, CliError
from edge.cli.identify import ThresholdOption, warn_if_empty
from edge.cli.visit_outputs import (
    BoxIdOption,
    FedOption,
    MqttUrlOption,
    events_stream,
    visit_publisher,
    warn_if_another_camera,
)
from edge.serving.events import UNKNOWN

if TYPE_CHECKING:
    import numpy as np

    from edge.serving.recognizer import Recognition
    from edge.tracking.visit_events import VisitEvent
    from edge.tracking.visits import VisitEngine
    from edge.vision.frame_source import FrameSource

log = logging.getLogger(__name__)

HEAVY_MODULES = ("torch", "tensorflow", "jax")
REPORT_EVERY_S = 5.0
DEFAULT_DETECT_EVERY, DEFAULT_MAX_ATTEMPTS = 1, 6  # VisitSettings' own
KNOWN_COLOUR = (60, 200, 60)  # BGR
Mark = tuple[tuple[int, int, int, int], str, bool]  # box, label, known
UNKNOWN_COLOUR = (40, 40, 220)


class _Annotator:
    """Writes frames with boxes and names into a video, opened at the first frame."""

    def __init__(self, path: Path, fps: float) -> None:
        if path.suffix.lower() not in (".mp4", ".avi"):  # before OpenCV prints its own
            raise CliError(f"cannot write annotated video {path}: only .mp4 and .avi are "
                           "written", hint="use a path ending in .mp4 or .avi",
                           exit_code=EXIT_USAGE)
        self.path = path
        self.fps = fps
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def write(self, bgr: np.ndarray, marks: list[Mark]) -> None:
        import cv2

        if self._writer is None:
            codec = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
            self._size = (bgr.shape[1], bgr.shape[0])
            # faces and names: the owner's only, as the events' crops (helper-47 found
            # it 0644); made so before OpenCV writes into it, which keeps the mode
            with suppress(OSError):  # not writable: said just below
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
                os.chmod(self.path, 0o600)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*codec),
                                           self.fps, self._size)
            if not self._writer.isOpened():
                raise CliError(f"cannot write annotated video {self.path}",
                               hint="use a writable path ending in .mp4 or .avi",
                               exit_code=EXIT_USAGE)
        frame = bgr.copy()
        for (x, y, w, h), label, known in marks:
            colour = KNOWN_COLOUR if known else UNKNOWN_COLOUR
            cv2.rectangle(frame, (x, y), (x + w, y + h), colour, 2)
            cv2.putText(frame, label, (x, max(12, y - 6)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        if self._size is not None and (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size)  # a folder may mix sizes; video cannot
        self._writer.write(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class _Throughput:
    def __init__(self, per_visit: bool) -> None:
        self.started = time.monotonic()
        self.frames = 0
        self.faces = 0
        self.known = 0
        self.per_visit = per_visit
        self.visits = 0  # per visit: visits ended, and how many of them were named
        self.visits_named = 0
        self.stage_ms: dict[str, float] = {}
        self._last_report = self.started

    def add(self, marks: list[Mark], stage_ms: dict[str, float],
            faces: int | None = None) -> None:
        """One frame: ``marks`` drawn on it; ``faces`` detected on it (default: the marks;
        per visit a face is drawn only once its visit has started)."""
        self.frames += 1
        self.faces += len(marks) if faces is None else faces
        self.known += sum(1 for _, _, known in marks if known)
        for stage, ms in stage_ms.items():
            self.stage_ms[stage] = self.stage_ms.get(stage, 0.0) + ms

    def count(self, event: VisitEvent) -> None:
        if event.event == "visit_ended":  # edge.tracking.visit_events.ENDED
            self.visits += 1
            self.visits_named += event.name not in (None, UNKNOWN)

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last_report >= REPORT_EVERY_S:
            self._last_report = now
            return True
        return False

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        means = " ".join(f"{k} {v / max(self.frames, 1):.1f}" for k, v in self.stage_ms.items())
        # per visit, a frame's face is named only once its visit is identified: the
        # visits are what staff count (three events each in --events)
        seen = (f"{self.faces} faces ({self.known} known)" if not self.per_visit else
                f"{self.faces} faces, {self.visits} visit{'' if self.visits == 1 else 's'} "
                f"({self.visits_named} named as someone enrolled)")
        return (f"{self.frames} frames, {seen} in {elapsed:.1f} s: "
                f"{self.frames / elapsed:.1f} fps; mean ms/frame: {means}")


@contextmanager
def _stop_on_sigterm() -> Iterator[list[bool]]:
    """systemd stops the service with SIGTERM: finish the frame, flush, exit 0."""
    stop = [False]

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop[0] = True

    previous = None
    with suppress(ValueError):  # not the main thread (e.g. called from a test thread)
        previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield stop
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Option(
        "--source", help="Frame source: /dev/video0 or 0 (camera), rtsp://... or "
        "http(s)://... (stream), a video file, dir:FOLDER[?fps=N&loop=1&stills=1] (image "
        "folder; docs/operations.md, 'Frame sources'). "
        "Default: the box config's camera.source.", show_default=False)] = None,
    events: Annotated[str, typer.Option(
        "--events", help="Where to append the events as JSON lines (- for stdout): three "
        "per visit (visit_started, visit_identified, visit_ended), or with --per-frame one "
        "per face per frame.")] = "-",
    per_frame: Annotated[bool, typer.Option(
        "--per-frame", help="Recognise every face on every frame (no tracking): one event "
        "per face per frame.")] = False,
    detect_every: Annotated[int, typer.Option(
        "--detect-every", min=1, max=10, help="Per visit: detect on every N-th frame, track "
        "in between (2-3 on a Raspberry Pi; bench.edge.visits).")] = DEFAULT_DETECT_EVERY,
    max_attempts: Annotated[int, typer.Option(
        "--max-attempts", min=1, help="Per visit: at most this many embeddings of one "
        "visitor.")] = DEFAULT_MAX_ATTEMPTS,
    mqtt_url: MqttUrlOption = None,
    fed: FedOption = None,
    box_id: BoxIdOption = None,
    crops: Annotated[Path | None, typer.Option(
        "--crops", help="Folder for each visit's best face crop (PNG, 0600; kept 14 days, "
        "the newest 2,000 at most). Default: visits/ in the data dir.",
        show_default=False)] = None,
    annotate: Annotated[Path | None, typer.Option(
        "--annotate", help="Also write the frames with boxes and names to this video "
        "(.mp4 or .avi).", show_default=False)] = None,
    max_frames: Annotated[int | None, typer.Option(
        "--max-frames", min=1, help="Stop after N frames.", show_default=False)] = None,
    fps: Annotated[bool, typer.Option(
        "--fps", help="Report throughput and per-stage ms on stderr every 5 s.")] = False,
    threshold: ThresholdOption = None,
) -> None:
    """Recognise faces live, once per visit (a tracked face: started, identified, ended);
    write the events as JSON lines (--per-frame: one per face per frame)."""
    from edge.serving.events import EventWriter
    from edge.vision.capture import open_source

    if per_frame and (detect_every, max_attempts) != (DEFAULT_DETECT_EVERY,
                                                       DEFAULT_MAX_ATTEMPTS):
        raise CliError("--detect-every and --max-attempts are per-visit options; --per-frame "
                       "detects and recognises every face on every frame",
                       hint="drop one or the other")
    if source is None:
        camera = box(ctx).camera
        if camera is None:
            raise CliError("no frame source: pass --source (the box's edge.toml names no "
                           "camera.source to use)",
                           hint="e.g. --source /dev/video0 or --source dir:FOLDER")
        source = camera.source
    else:
        warn_if_another_camera(ctx, source)
    frame_source = open_source(source)
    stats = _Throughput(per_visit=not per_frame)
    with ExitStack() as stack:
        # open the source and the events file first: a wrong URI or path fails in
        # milliseconds, before the models load
        _open_when_ready(frame_source)
        stack.callback(frame_source.close)
        annotator = None
        if annotate is not None:  # a wrong suffix fails before an events file is made
            annotator = _Annotator(annotate, frame_source.nominal_fps or 10.0)
            stack.callback(annotator.close)
        writer = EventWriter(events_stream(stack, events), events if events != "-" else None)
        stack.callback(writer.close)  # says what a full disk kept out of the file
        publisher = None if per_frame else visit_publisher(ctx, stack, mqtt_url, fed, box_id)
        recognizer = box(ctx).recognizer(threshold)
        # follow hot swaps (the swap pointer) and enrolments made while running
        recognizer.engine.start_watcher()
        stack.callback(recognizer.engine.stop_watcher)
        warn_if_empty(ctx)
        stop = stack.enter_context(_stop_on_sigterm())
        visits = None if per_frame else _visit_engine(
            recognizer.engine, frame_source, detect_every, max_attempts,
            crops or box(ctx).settings.data_dir / "visits")
        try:
            for frame in frame_source:
                if visits is None:
                    recognitions = recognizer.recognise(frame.image)
                    for r in recognitions:
                        writer.write(r.event(frame.frame_index, frame.timestamp))
                    marks = [_mark(r) for r in recognitions]
                    stats.add(marks, recognizer.last_timings.as_ms())
                else:
                    started, detected = time.perf_counter(), visits.faces_detected
                    for event in visits.process(frame.image, frame.frame_index,
                                                frame.timestamp):
                        writer.write(event)
                        stats.count(event)
                        if publisher is not None:
                            publisher.publish(event)
                    marks = [(b, name or "...", name not in (None, UNKNOWN))
                             for _, b, name in visits.visible()]
                    stats.add(marks, {"total": (time.perf_counter() - started) * 1e3},
                              visits.faces_detected - detected)
                if annotator is not None:
                    annotator.write(frame.image, marks)
                if fps and stats.due():
                    typer.echo(stats.line(), err=True)
                if stop[0] or (max_frames is not None and stats.frames >= max_frames):
                    break
        except KeyboardInterrupt:
            log.info("interrupted: stopping after %d frames", stats.frames)
        if visits is not None:  # the visits still open end with the stream
            for event in visits.close():
                writer.write(event)
                stats.count(event)
                if publisher is not None:
                    publisher.publish(event)
    log.debug("heavy modules loaded in this process: %s",
              [m for m in HEAVY_MODULES if m in sys.modules] or "none")
    source_stats = frame_source.stats
    extra = ""
    if source_stats.reconnects or source_stats.failed_attempts or source_stats.skipped:
        extra = (f"; source: {source_stats.reconnects} reconnects, "
                 f"{source_stats.failed_attempts} failed attempts, "
                 f"{source_stats.skipped} unreadable frames skipped")
    typer.echo(stats.line() + extra, err=True)


def _mark(r: Recognition) -> Mark:
    return (r.box, f"{r.name} {r.match.score:.2f}", r.match.known)


LIVE_RETRY_MAX_S = 30.0  # the longest wait between two tries of a live source


def _open_when_ready(source: FrameSource) -> None:
    """Open ``source``; a live one that cannot be opened yet (an IP camera booting slower
    than the box after a power cut, a USB camera not plugged in) is tried again, its
    reason said each time, until it opens or the command is stopped, as the kiosk does
    (helper-58: run stopped at once, and systemd gave up after five starts). A file or
    a folder fails at once: waiting would not make it appear."""
    from edge.vision.frame_source import SourceError

    delay = 1.0
    while True:
        try:
            source.open()
            if delay > 1.0:  # after a wait: said, as its failures were
                typer.echo(f"video source {source.uri} is up", err=True)
            return
        except SourceError as exc:
            if not source.live:
                raise
            hint = f" ({exc.hint})" if delay == 1.0 and exc.hint else ""  # once
            typer.echo(f"warning: {exc.message}{hint}; trying again in {delay:.0f} s "
                       "(Ctrl-C stops)", err=True)
        time.sleep(delay)
        delay = min(delay * 2, LIVE_RETRY_MAX_S)


def _visit_engine(engine: Any, source: object, detect_every: int, max_attempts: int,
                  crops: Path) -> VisitEngine:
    from edge.tracking.visit_events import CropStore
    from edge.tracking.visits import VisitEngine, VisitSettings

    settings = VisitSettings.for_source(source, detect_every=detect_every,
                                        max_attempts=max_attempts)
    return VisitEngine(engine, settings, CropStore(crops))


def register(app: typer.Typer) -> None:
    app.command("run")(run)
