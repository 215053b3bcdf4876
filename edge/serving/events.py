"""Recognition events: one JSON object per recognised (or unknown) face, one per line.

A line looks like::

    {"time": "2026-11-26T01:20:03.120Z", "ts": 1795655203.12, "frame": 41,
     "box": [104, 62, 88, 110], "name": "Ada_Lovelace", "score": 0.612,
     "model_version": "sface-2021dec", "person_id": 3, "det_score": 0.93}

``name`` is ``"unknown"`` when the best gallery score is under the match threshold
(``person_id`` is then null and ``score`` is still the best score seen).
"""

from __future__ import annotations

import json
import logging
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
    per line so a tailing reader sees them live."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.written = 0

    def write(self, event: JsonEvent) -> None:
        self._stream.write(event.to_json() + "\n")
        self._stream.flush()
        self.written += 1
