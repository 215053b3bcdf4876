"""Recognition events: one JSON object per recognised (or unknown) face, one per line.

A line looks like::

    {"time": "2026-11-26T01:20:03.120Z", "ts": 1795655203.12, "frame": 41,
     "box": [104, 62, 88, 110], "name": "Ada_Lovelace", "score": 0.612,
     "model_version": "sface-2021dec", "person_id": 3, "det_score": 0.93}

``name`` is ``"unknown"`` when the best gallery score is under the match threshold
(``person_id`` is then null and ``score`` is still the best score seen).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import stat
import sys
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Protocol, TextIO

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


@dataclass(frozen=True)
class RecognitionEvent:
    ts: float  # seconds since the epoch, when the frame was captured
    frame: int
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels
    name: str  # enrolled name or "unknown"
    score: float  # cosine similarity with the closest enrolled person
    model_version: str
    person_id: int | None = None
    det_score: float | None = None

    @property
    def time(self) -> str:
        return iso_time(self.ts)

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"time": self.time}
        data.update(asdict(self))
        data["box"] = list(self.box)
        data["score"] = round(self.score, 4)
        if self.det_score is not None:
            data["det_score"] = round(self.det_score, 4)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def iso_time(ts: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC to the millisecond, "...Z"."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonEvent(Protocol):
    def to_json(self) -> str: ...


class EventWriter:
    """Writes events (these, or ``edge.tracking``'s visit events) as JSON lines, flushed
    per line so a tailing reader sees them live.

    A write that fails (a full disk, most often: helper-58's run died on it, its last
    line cut in half, and named '.' as the full disk) leaves the file as it was before
    that line, is said once at WARNING with the file, and the event waits in memory, up
    to ``MAX_HELD`` of them, to be written in order before the next one once the file
    takes it again. Recognition never stops for it; what is still held at ``close`` is
    said lost, with its number."""

    MAX_HELD = 10_000  # about 5 MB of visit events: hours of a busy kiosk

    def __init__(self, stream: TextIO, name: str | None = None) -> None:
        self._stream = stream
        self._name = name  # what the warnings call it (a file opened from an fd has none)
        self.written = 0
        self.dropped = 0  # beyond MAX_HELD while the file could not take them
        self._held: deque[str] = deque()
        self._failing, self._reason = False, ""
        self._fd: int | None = None
        try:  # a file of its own is written and cut back with system calls, whole lines
            fd = stream.fileno()
            if stream not in (sys.stdout, sys.__stdout__) and stat.S_ISREG(os.fstat(fd).st_mode):
                self._fd = fd
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    @property
    def name(self) -> str:
        return self._name or str(getattr(self._stream, "name", "the events stream"))

    @property
    def held(self) -> int:
        return len(self._held)

    def write(self, event: JsonEvent) -> None:
        self._held.append(event.to_json() + "\n")
        if len(self._held) > self.MAX_HELD:
            self._held.popleft()
            self.dropped += 1
        while self._held:
            if not self._write_line(self._held[0]):
                return
            self._held.popleft()
            self.written += 1
        if self._failing:
            self._failing = False
            log.warning("events are written to %s again%s", self.name,
                        f" ({self.dropped} older ones were dropped meanwhile)"
                        if self.dropped else "")

    def close(self) -> None:
        """Say what could not be written (the file is closed by its owner)."""
        if self._held or self.dropped:
            log.error("%d event(s) could not be written to %s and are lost (%s)",
                      len(self._held) + self.dropped, self.name, self._reason)

    def _write_line(self, line: str) -> bool:
        start = None
        try:
            if self._fd is None:
                self._stream.write(line)
                self._stream.flush()
                return True
            start = os.lseek(self._fd, 0, os.SEEK_END)
            data = line.encode()
            while data:
                data = data[os.write(self._fd, data):]
            return True
        except OSError as exc:
            if start is not None:
                with contextlib.suppress(OSError):  # no half line left in the file
                    os.ftruncate(self._fd, start)  # type: ignore[arg-type]
            self._reason = exc.strerror or str(exc)
            if not self._failing:
                self._failing = True
                where = os.path.dirname(os.path.abspath(self.name))
                log.warning("cannot write events to %s: %s (df -h %s); recognition goes "
                            "on and up to %d events wait to be written", self.name,
                            self._reason, where, self.MAX_HELD)
            return False
