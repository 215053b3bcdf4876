"""Whether the box has anything new to train on: the announce's ``min_new_samples``.

The aggregator announces how many enrolled samples a box must have added since the
update it last sent (``serve --min-new-samples``). A box below that sits the round out
and says so (log, client event, retained status) instead of retraining on the same
crops every round. A box that never sent an update, or that cannot count its samples,
always joins.

Samples are counted in the box's gallery database (``crops.created``), read-only and
by path, like the hot swap's ``GalleryRows``; the mark is the wall time at which the last
sent update's training job started, so crops enrolled while it trained count as new.
What the client remembers between runs (``client-state.json``) is kept here too.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from federation.files import write_atomic
from federation.messages import NO_NEW_SAMPLES as NO_NEW_SAMPLES  # the not_joining reason

log = logging.getLogger(__name__)



class SampleSource(Protocol):
    def crops_enrolled_since(self, since: float) -> int:
        """Enrolled crops (still held) added after unix time ``since``."""
        ...


class GallerySamples:
    """``SampleSource`` over the box's gallery database file (read-only)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)

    def crops_enrolled_since(self, since: float) -> int:
        # A connection per call: an announce is rare, and nothing is held open between.
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0)
        try:
            row = db.execute("SELECT COUNT(*) FROM crops WHERE created > ?",
                             (since,)).fetchone()
        finally:
            db.close()
        return int(row[0])


def find_sample_source(sink: object) -> SampleSource | None:
    """The gallery the box serves from, through its model sink (the hot swap reads it
    by path as ``rows``); None when there is none (then the box always joins)."""
    path = getattr(getattr(sink, "rows", None), "path", None)
    return GallerySamples(path) if isinstance(path, Path) and path.exists() else None


def sit_out_detail(need: int, samples: SampleSource | None, mark: float | None,
                   last_round: int) -> str | None:
    """Why the box sits this round out (None: it joins)."""
    if need <= 0 or samples is None or mark is None:
        return None
    try:
        new = samples.crops_enrolled_since(mark)
    except sqlite3.Error as exc:  # cannot tell: joining is what boxes did before
        log.warning("cannot count new samples (%s); joining the round", exc)
        return None
    if new >= need:
        return None
    return f"{new} new samples since round {last_round}, need {need}"


def load_client_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("%s is corrupt; starting with an empty client state", path)
        return {}
    return data if isinstance(data, dict) else {}


def save_client_state(path: Path, last_submitted: int, samples_mark: float | None,
                      previous_mark: float | None = None) -> None:
    """``previous_mark``: the mark before the last sent update, restored when the round it
    went to closes without a result (its samples were never aggregated)."""
    write_atomic(path, json.dumps({"last_submitted_round": last_submitted,
                                   "samples_mark": samples_mark,
                                   "previous_samples_mark": previous_mark}).encode(),
                 mode=0o600)


def samples_mark(state: dict[str, Any], key: str = "samples_mark") -> float | None:
    value = state.get(key)
    return float(value) if isinstance(value, (int, float)) else None
