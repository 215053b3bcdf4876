"""Frame sources for the box, chosen by a URI.

| URI                                   | source                                         |
|---------------------------------------|------------------------------------------------|
| ``/dev/video0``, ``0``, ``v4l2:1``    | a V4L2 camera (live: reconnects when it drops) |
| ``rtsp://...``, ``http(s)://...``,    | a network stream through FFmpeg (live)         |
| ``rtmp://...``                        |                                                |
| ``file:clip.mp4`` or ``clip.mp4``     | a video file, read once as fast as it decodes  |
|                                       | (``?live=1``: replayed as a camera, in real    |
|                                       | time, from the start again at its end)         |
| ``dir:frames/`` or ``frames/``        | an image folder played as frames, sorted by    |
|                                       | name (``?fps=5&loop=1``); emulated boxes, tests|
|                                       | (``?stills=1``: separate photos, not a clip's  |
|                                       | frames: each one counts as a sighting)         |

Every source is an iterator of :class:`Frame` ``(index, timestamp, bgr)`` and a context
manager. A video file's frames are stamped on the recording's own clock (the time of its
first frame plus index / its frame rate), however fast they are read: what is timed in
seconds (a visit's length, the second after which it is named, the second a face may
be away) is timed as it happened in front of the camera.

A live source whose read fails (camera unplugged, stream dropped) reopens with
exponential backoff: delays double from ``initial_delay`` up to ``max_delay`` and the
source gives up with :class:`SourceError` after ``max_attempts`` failed reopenings in a
row. Reconnections are logged and counted in :attr:`FrameSource.stats`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from edge.errors import ImageReadError
from edge.vision.frame_source import Backoff, FrameSource, SourceError
from edge.vision.image_header import FORMATS

log = logging.getLogger(__name__)

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https"})
KNOWN_SCHEMES = STREAM_SCHEMES | {"dir", "file", "v4l2"}


class FolderSource(FrameSource):
    """Images of a folder played as frames in name order, optionally paced and looped."""

    def __init__(self, uri: str, folder: Path, fps: float | None = None, loop: bool = False,
                 stills: bool = False):
        super().__init__(uri)
        if fps is not None and fps <= 0:
            raise SourceError(uri, f"fps must be positive, got {fps}")
        self.folder = folder
        self.fps = fps
        self.loop = loop
        # separate photos (a visit of one photo counts, a photo of someone else ends the
        # visit at once: edge.tracking.visits.STILLS), not the frames of one clip
        self.stills = stills
        self._files: list[Path] = []
        self._position = 0
        self._next_due = 0.0

    @property
    def nominal_fps(self) -> float | None:
        return self.fps

    def open(self) -> FolderSource:
        if not self.folder.is_dir():
            raise SourceError(self.uri, f"{self.folder} is not a directory", hint=(
                "check the path: dir:FOLDER plays a folder of images as a camera"))
        from edge.vision.image_files import scan

        try:
            found = scan([self.folder], recursive=False)  # the box's one rule (by content)
        except OSError as exc:
            raise SourceError(self.uri, f"cannot list {self.folder}: {exc.strerror}") from exc
        if not found.images:
            skipped = "".join(f"; skipped {path.name}: {reason}"
                              for path, reason in found.skipped[:3])
            raise SourceError(self.uri, f"no images in {self.folder}{skipped}",
                              hint=f"images are decided by content: {FORMATS}")
        if not self._files:  # a looping source lists (and names what it skips) once
            for path, reason in found.skipped:
                self.stats.skipped += 1
                log.warning("frame source %s: skipping %s: %s", self.uri, path, reason)
        self._files = found.images
        self._position = 0
        self._next_due = time.monotonic()
        return self

    def _pace(self) -> None:
        if self.fps is None:
            return
        now = time.monotonic()
        if self._next_due > now:
            time.sleep(self._next_due - now)
        self._next_due = max(self._next_due, now) + 1.0 / self.fps

    def _read(self) -> np.ndarray | None:
        from edge.vision.pipeline import read_image

        if not self._files:
            self.open()
        unreadable_in_a_row = 0
        while True:
            if self._position >= len(self._files):
                if not self.loop:
                    return None
                self._position = 0
            path = self._files[self._position]
            self._position += 1
            try:
                image = read_image(path)  # header and pixel cap checked, as for any photo
            except ImageReadError as exc:
                self.stats.skipped += 1
                log.warning("frame source %s: skipping %s: %s", self.uri, path, exc)
            else:
                self._pace()
                return image
            unreadable_in_a_row += 1
            if unreadable_in_a_row >= len(self._files):
                raise SourceError(self.uri, f"none of the images in {self.folder} can be read")


class VideoCaptureSource(FrameSource):
    """cv2.VideoCapture over a camera, a stream or a file; live ones reconnect."""

    def __init__(
        self,
        uri: str,
        target: str | int,
        kind: str,
        live: bool,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(uri)
        if kind not in ("camera", "stream", "file"):
            raise ValueError(f"unknown capture kind {kind!r}")
        self.target = target
        self.kind = kind
        self.live = live
        self.backoff = backoff or Backoff()
        self._capture: Any = None
        self._timeline: tuple[float, float] | None = None  # a file's start: wall, monotonic

    @property
    def nominal_fps(self) -> float | None:
        import cv2

        if self._capture is None:
            return None
        fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        return fps if 0 < fps < 1000 else None

    def _timestamp(self) -> float:
        """A file's frames on its own clock (and, replayed live, delivered on it)."""
        fps = self.nominal_fps if self.kind == "file" else None
        if fps is None:
            return time.time()
        if self._timeline is None:
            self._timeline = (time.time(), time.monotonic())
        offset = self._next_index / fps
        if self.live:
            delay = self._timeline[1] + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return self._timeline[0] + offset

    def _try_open(self) -> bool:
        import cv2

        self._release()
        # V4L2 for cameras (the default backend order may pick GStreamer and hang on a
        # missing device); FFmpeg for files and streams (RTSP over TCP/UDP, HTTP MJPEG)
        api = cv2.CAP_V4L2 if self.kind == "camera" else cv2.CAP_FFMPEG
        capture = cv2.VideoCapture(self.target, api)
        if not capture.isOpened():
            capture.release()
            return False
        self._capture = capture
        return True

    def open(self) -> VideoCaptureSource:
        if not self._try_open():
            raise SourceError(self.uri, self._open_failure_reason(), hint=self._open_hint())
        log.info("frame source %s opened", self.uri)
        return self

    def _open_failure_reason(self) -> str:
        if self.kind != "stream" and isinstance(self.target, str):
            if not Path(self.target).exists():
                return f"{self.target} does not exist"
            if Path(self.target).is_dir():
                return f"{self.target} is a directory"
        if self.kind == "stream" and isinstance(self.target, str):
            # FFmpeg's failure says nothing of why: the camera is asked (a wrong password
            # read as a dead camera, helper-58)
            from edge.vision.stream_probe import probe

            said = probe(self.target)
            if said is not None:
                return f"cannot be opened: {said}"
        return "cannot be opened (no such device/stream, unsupported format or codec)"

    def _open_hint(self) -> str:
        if self.kind == "camera":
            return "list cameras with `v4l2-ctl --list-devices`; is the box user in group 'video'?"
        if self.kind == "stream":
            return "check the stream URL, credentials and network (try it with ffprobe)"
        return "check the path and that the file is a video OpenCV/FFmpeg can decode"

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def close(self) -> None:
        self._release()

    def _read(self) -> np.ndarray | None:
        if self._capture is None:
            self.open()
        ok, image = self._capture.read()
        if ok and image is not None:
            return np.asarray(image)
        if not self.live:
            return None
        self._reconnect()
        ok, image = self._capture.read()
        if ok and image is not None:
            return np.asarray(image)
        raise SourceError(self.uri, "reopened but no frame could be read")

    def _reconnect(self) -> None:
        # a file replayed live comes to its end on every loop: that is the replay, not a
        # fault (helper-61: a 10 s clip logged 8,640 warnings a day)
        log.log(logging.DEBUG if self.kind == "file" else logging.WARNING,
                "frame source %s dropped after frame %d; reconnecting", self.uri,
                self._next_index)
        self._release()
        attempts = 0
        for delay in self.backoff.delays():
            time.sleep(delay)
            attempts += 1
            if self._try_open():
                self.stats.reconnects += 1
                log.info("frame source %s reconnected after %d attempt(s)", self.uri, attempts)
                return
            self.stats.failed_attempts += 1
            self.stats.last_error = "reopen failed"
            log.warning("frame source %s: reconnect attempt %d failed, next in up to %.1fs",
                        self.uri, attempts, min(delay * 2.0, self.backoff.max_delay))
        raise SourceError(
            self.uri,
            f"stream lost and {attempts} reconnect attempts failed",
            hint="check the camera/stream; the backoff is set by the source's Backoff",
        )


def _split_options(uri: str) -> tuple[str, dict[str, str]]:
    """``dir:frames?fps=5&loop=1`` -> ("dir:frames", {"fps": "5", "loop": "1"})."""
    if "?" not in uri:
        return uri, {}
    base, query = uri.split("?", 1)
    options = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    return base, options


def _flag(uri: str, options: dict[str, str], name: str) -> bool:
    value = options.pop(name, "0").lower()
    if value in ("1", "true", "yes", ""):
        return True
    if value in ("0", "false", "no"):
        return False
    raise SourceError(uri, f"option {name}={value!r} is not a boolean (use 1 or 0)")


def _fps(uri: str, options: dict[str, str]) -> float | None:
    if "fps" not in options:
        return None
    raw = options.pop("fps")
    try:
        return float(raw)
    except ValueError:
        raise SourceError(uri, f"option fps={raw!r} is not a number") from None


def _reject_leftovers(uri: str, options: dict[str, str], allowed: str) -> None:
    if options:
        raise SourceError(uri, f"unknown option(s) {', '.join(sorted(options))}",
                          hint=f"this source accepts: {allowed}")


def _scheme(base: str) -> str | None:
    if "://" in base:
        return base.split("://", 1)[0].lower()
    head, sep, _ = base.partition(":")
    # "dir:x", "file:x", "v4l2:0"; a one-letter head is a Windows drive, not a scheme
    if sep and len(head) > 1 and head.isalnum():
        return head.lower()
    return None


def open_source(uri: str, backoff: Backoff | None = None) -> FrameSource:
    """Build (not yet open) the frame source for ``uri``; raise SourceError if invalid."""
    uri = uri.strip()
    if not uri:
        raise SourceError(uri, "empty source URI", hint="e.g. /dev/video0, rtsp://..., dir:frames/")
    base, options = _split_options(uri)
    scheme = _scheme(base)
    if scheme is not None and scheme not in KNOWN_SCHEMES:
        raise SourceError(
            uri,
            f"unknown scheme {scheme!r}",
            hint="use /dev/videoN or N (camera), rtsp://, http(s)://, rtmp:// (stream), "
            "file:PATH or a video path, dir:PATH or an image folder",
        )
    if scheme in STREAM_SCHEMES:
        # options belong to the stream URL itself (e.g. ?channel=1): keep them
        return VideoCaptureSource(uri, uri, "stream", live=True, backoff=backoff)
    path_text = base.split(":", 1)[1] if scheme is not None else base
    if scheme == "v4l2" or path_text.isdigit() or path_text.startswith("/dev/video"):
        _reject_leftovers(uri, options, "none")
        target: str | int = int(path_text) if path_text.isdigit() else path_text
        return VideoCaptureSource(uri, target, "camera", live=True, backoff=backoff)
    path = Path(path_text).expanduser()
    if scheme == "dir" or path.is_dir():
        fps = _fps(uri, options)
        loop, stills = _flag(uri, options, "loop"), _flag(uri, options, "stills")
        _reject_leftovers(uri, options, "fps, loop, stills")
        return FolderSource(uri, path, fps=fps, loop=loop, stills=stills)
    if scheme == "file" or path.exists() or path.suffix:
        live = _flag(uri, options, "live")
        _reject_leftovers(uri, options, "live")
        return VideoCaptureSource(uri, str(path), "file", live=live, backoff=backoff)
    raise SourceError(
        uri,
        "no such file, directory or device",
        hint="use /dev/videoN or N (camera), rtsp://, http(s)://, file:PATH, dir:PATH",
    )
