"""Whether the box can join a round yet: new samples enough for the announce's
``min_new_samples``, and the result the round builds on at hand (``BaseWait``).

The aggregator announces how many enrolled samples a box must have added since the
update it last sent (``serve --min-new-samples``). A box below that sits the round out
and says so (log, client event, retained status) instead of retraining on the same
crops every round. A box that never sent an update, or that cannot count its samples,
always joins.

Samples are counted in the box's gallery database (``crops.created``), read-only and
by path, like the hot swap's ``GalleryRows``; the mark is the wall time at which the last
sent update's training job started, so crops enrolled while it trained count as new.
The mark of every update sent is kept by round (``marks``): when the federation goes
back to an older model (a restored aggregator, a poisoned round, an operator's pin or
rollback), the updates sent to the rounds after it are not in the model the next round
builds on, so the box counts its samples from the mark of the newest round that model
holds (none: it joins), not from its last update: else every box sat the rounds after a
restore out, "0 new samples", and the federation stayed on the older model (helper-57).
What the client remembers between runs (``client-state.json``) is kept here too.

A round built on a result the box has not applied yet waits for it: fetching,
decrypting and the canary take seconds at every round, so the wait is said at INFO when
it starts; every announce (a redelivery, an extension) and a job's end come back to it,
and it used to be said again each time. A wait that lasts is the box stuck (the result
does not reach it, or cannot be applied): said once at WARNING.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from federation.files import write_atomic
from federation.messages import NO_NEW_SAMPLES as NO_NEW_SAMPLES  # the not_joining reason
from federation.messages import RoundAnnounce

log = logging.getLogger(__name__)

MAX_MARKS = 64  # rounds whose marks are kept; a base older than all of them: the box joins


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
                      previous_mark: float | None = None,
                      marks: dict[int, float] | None = None) -> None:
    """``previous_mark``: the mark before the last sent update, restored when the round it
    went to closes without a result (its samples were never aggregated); ``marks``: the
    mark of each sent update by round (``load_marks``)."""
    state: dict[str, Any] = {"last_submitted_round": last_submitted,
                             "samples_mark": samples_mark,
                             "previous_samples_mark": previous_mark}
    if marks is not None:
        state["marks"] = {str(r): marks[r] for r in sorted(marks)[-MAX_MARKS:]}
    write_atomic(path, json.dumps(state).encode(), mode=0o600)


def load_marks(state: dict[str, Any]) -> dict[int, float]:
    """The mark of each update the box sent, by round, of the rounds whose results may
    still hold it. A state written before they were kept has the last two marks only:
    the last sent round's, and the one before it, taken as the round before."""
    raw = state.get("marks")
    if isinstance(raw, dict):
        marks: dict[int, float] = {}
        for key, value in raw.items():
            if isinstance(value, (int, float)) and str(key).isdigit():
                marks[int(key)] = float(value)
        return marks
    last = state.get("last_submitted_round")
    mark, previous = samples_mark(state), samples_mark(state, "previous_samples_mark")
    if not isinstance(last, int) or last <= 0 or mark is None:
        return {}
    if previous is None or previous == mark or last == 1:
        return {last: mark}
    return {last - 1: previous, last: mark}


def samples_mark(state: dict[str, Any], key: str = "samples_mark") -> float | None:
    value = state.get(key)
    return float(value) if isinstance(value, (int, float)) else None


# this long without the base's result, the box is stuck rather than fetching it
BASE_WAIT_WARN_SECONDS = 120.0


class BaseWait:
    def __init__(self) -> None:
        self._wait: tuple[int, str, float] | None = None  # round, base, monotonic start
        self._warned = False

    def waiting(self, ann: RoundAnnounce, version: str) -> None:
        """``ann`` builds on a result the box (serving ``version``) lacks: said once per
        round and base."""
        if self._wait is None or self._wait[:2] != (ann.round, ann.base_model):
            self._wait = (ann.round, ann.base_model, time.monotonic())
            self._warned = False
            log.info("round %d is based on %s, this box has %s: waiting for that result",
                     ann.round, ann.base_model, version)

    def clear(self) -> None:
        self._wait = None

    def check(self, announce: RoundAnnounce | None, has_base: Callable[[str], bool],
              version: str) -> None:
        """Every worker tick: the wait that lasts is said at WARNING, once; one that
        ended (the round closed, the result came) is forgotten."""
        wait = self._wait
        if wait is None or self._warned or \
                time.monotonic() - wait[2] < BASE_WAIT_WARN_SECONDS:
            return
        if announce is None or not announce.open or announce.round != wait[0] or \
                has_base(wait[1]):
            self._wait = None
            return
        self._warned = True
        log.warning("round %d is based on %s and this box still has %s after %.0f s: it "
                    "cannot join the round until that result reaches it and is applied "
                    "(fedface-edge model status)", wait[0], wait[1], version,
                    time.monotonic() - wait[2])
