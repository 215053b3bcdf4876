"""Visit events: three per visit (started, identified, ended), one JSON object per line.

Lines look like::

    {"event": "visit_started", "visit": "19a3c0e51f2-4", "time": "2026-12-06T00:10:03.120Z",
     "ts": 1796515803.12, "frame": 41, "box": [104, 62, 88, 110], "name": null, ...}
    {"event": "visit_identified", "visit": "19a3c0e51f2-4", ..., "name": "Ada_Lovelace",
     "score": 0.612, "person_id": 3, "attempts": 3, "best_crop": "/var/lib/.../visit-....png"}
    {"event": "visit_ended", "visit": "19a3c0e51f2-4", ..., "duration_s": 9.8, "frames": 294}

``name`` is ``"unknown"`` when the fused view is under the match threshold (the same
rule as for one frame); ``visit_ended`` repeats the final identity, which more
attempts after ``visit_identified`` may have refined. ``best_crop`` is a local path on
the box; the image itself never leaves it unless the box's config allows it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import cv2
import numpy as np

from edge.serving.events import iso_time
from federation.files import write_atomic

STARTED, IDENTIFIED, ENDED = "visit_started", "visit_identified", "visit_ended"
KINDS = (STARTED, IDENTIFIED, ENDED)


@dataclass(frozen=True)
class VisitEvent:
    event: str
    visit: str
    ts: float
    frame: int
    box: tuple[int, int, int, int]
    name: str | None = None  # enrolled name or "unknown"; None until identified
    score: float | None = None
    person_id: int | None = None
    best_name: str | None = None  # closest enrolled person, even under the threshold
    attempts: int = 0
    model_version: str | None = None
    best_crop: str | None = None
    duration_s: float | None = None
    frames: int | None = None
    # the best crop itself, and the visit's fused vector, for the box's own use (the
    # kiosk's list, its grouping of a stranger's visits); never serialised
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)
                                   if f.name not in ("crop", "vector")}
        data["time"] = iso_time(self.ts)
        data["box"] = list(self.box)
        if self.score is not None:
            data["score"] = round(self.score, 4)
        if self.duration_s is not None:
            data["duration_s"] = round(self.duration_s, 3)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


DEFAULT_MAX_CROPS = 2000  # about 60 MB of 112x112 PNGs: weeks of a busy kiosk's visits
# no older than the events that name them (logrotate keeps the events log 14 days)
DEFAULT_MAX_AGE_S = 14 * 24 * 3600.0


class CropStore:
    """Best crops of visits as PNG files, private to the box user (0600). Only the
    newest ``max_files``, none older than ``max_age_s``, are kept (checked at every
    save): the box is not a face archive."""

    def __init__(self, folder: Path, max_files: int = DEFAULT_MAX_CROPS,
                 max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        self.folder = Path(folder)
        self.max_files = max_files
        self.max_age_s = max_age_s

    def save(self, visit: str, crop: np.ndarray) -> Path:
        ok, png = cv2.imencode(".png", crop)
        if not ok:
            raise ValueError(f"cannot encode the crop of visit {visit}")
        path = write_atomic(self.folder / f"visit-{visit}.png", png.tobytes(), mode=0o600)
        self._prune()
        return path

    def _prune(self) -> None:
        dated = []
        for path in self.folder.glob("visit-*.png"):
            try:
                dated.append((path.stat().st_mtime, path))
            except FileNotFoundError:  # pruned by another process meanwhile
                continue
        dated.sort()
        too_old = time.time() - self.max_age_s
        surplus = max(0, len(dated) - self.max_files)
        for index, (mtime, path) in enumerate(dated):
            if index < surplus or mtime < too_old:
                path.unlink(missing_ok=True)
