"""What every frame source is: an iterator of :class:`Frame` and a context manager, with
its reconnect schedule (:class:`Backoff`), its counters (:class:`SourceStats`) and its
one error (:class:`SourceError`). The sources themselves, and the URI that picks one,
are in ``edge.vision.capture``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

import numpy as np

from edge.errors import FedFaceError

# a query parameter that may carry a camera's secret (ONVIF and vendor stream URLs)
_SECRET_PARAM = re.compile(r"(?i)([?&][^=&#]*(?:pass|pwd|token|secret|auth|key)[^=&#]*=)[^&#]*")


def shown_uri(uri: str) -> str:
    """A source as logs, errors and screens show it: a stream's password
    (``rtsp://admin:pass@cam/...``, ``?password=...``) as ``***``. An IP camera's URL
    usually carries its credentials, and a log line or a pasted ``doctor`` output must
    not hand them on."""
    scheme, sep, rest = uri.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        userinfo, at, host = authority.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.partition(':')[0]}:***@{host}{slash}{path}"
        uri = f"{scheme}{sep}{rest}"
    return _SECRET_PARAM.sub(r"\1***", uri)


class SourceError(FedFaceError):
    """A frame source cannot be opened, or a live one was lost for good."""

    exit_code = 6

    def __init__(self, uri: str, reason: str, hint: str = "") -> None:
        super().__init__(f"video source {shown_uri(uri)!r}: {reason}", hint=hint)
        self.uri = shown_uri(uri)
        self.reason = reason


class Frame(NamedTuple):
    frame_index: int
    # seconds since the epoch: when the frame was read, or for a video file, when it was
    # taken had the recording started as it was opened
    timestamp: float
    image: np.ndarray  # BGR uint8, HxWx3


@dataclass(frozen=True)
class Backoff:
    """Reconnect schedule of a live source (seconds)."""

    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_attempts: int = 20

    def delays(self) -> Iterator[float]:
        delay = self.initial_delay
        for _ in range(self.max_attempts):
            yield delay
            delay = min(delay * 2.0, self.max_delay)


@dataclass
class SourceStats:
    frames: int = 0
    reconnects: int = 0  # successful reopenings after a drop
    failed_attempts: int = 0  # reopenings that failed (each one waited a backoff delay)
    skipped: int = 0  # unreadable images in a folder source
    last_error: str | None = field(default=None)


class FrameSource:
    """Base class: iterate frames, close when done (also as a context manager)."""

    uri: str  # as shown (``shown_uri``): the source opens its own target
    live: bool = False

    def __init__(self, uri: str) -> None:
        self.uri = shown_uri(uri)
        self.stats = SourceStats()
        self._next_index = 0

    @property
    def nominal_fps(self) -> float | None:
        """Frame rate the source announces (None if unknown)."""
        return None

    def open(self) -> FrameSource:
        return self

    def close(self) -> None:
        pass

    def _read(self) -> np.ndarray | None:
        raise NotImplementedError

    def _timestamp(self) -> float:
        return time.time()

    def _stamp(self, image: np.ndarray) -> Frame:
        frame = Frame(self._next_index, self._timestamp(), image)
        self._next_index += 1
        self.stats.frames += 1
        return frame

    def __iter__(self) -> Iterator[Frame]:
        while True:
            image = self._read()
            if image is None:
                return
            yield self._stamp(image)

    def __enter__(self) -> FrameSource:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
