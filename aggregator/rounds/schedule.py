"""When the next round may open: the operator's round schedule (``serve --round-interval``,
``--round-window``).

Two rules, both optional: at least ``interval`` seconds between two round openings, and
openings only inside a daily window of the aggregator host's local time (e.g.
``01:00-05:00``, or ``22:00-02:00`` across midnight). A round that is open when its
window ends runs to its close as usual; the window only gates openings.

The schedule itself is not stored: the last opening is the latest round's ``opened_at``
in the state db, so a restarted aggregator keeps the schedule (it waits out the rest of
the interval instead of opening at once). What is stored is the time ``serve`` will open
the next round while the schedule holds it back (``record_next_opening``), for
``fedface-aggregator status``, a separate process that does not know the schedule.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.state.store import Store

_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_DAY = 24 * 60


@dataclass(frozen=True)
class DailyWindow:
    start: int  # minutes after local midnight
    end: int  # exclusive; < start: the window crosses midnight

    @classmethod
    def parse(cls, text: str) -> DailyWindow:
        m = _WINDOW.match(text.strip())
        if m is None:
            raise ValueError(f"round window {text!r}: expected HH:MM-HH:MM, e.g. 01:00-05:00")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2 != 0):
            raise ValueError(f"round window {text!r}: not a time of day")
        start, end = h1 * 60 + m1, (h2 * 60 + m2) % _DAY
        if start == end:
            raise ValueError(f"round window {text!r} is empty (leave it unset for any time)")
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:" \
               f"{self.end % 60:02d}"

    def contains(self, t: float) -> bool:
        local = dt.datetime.fromtimestamp(t)
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def next_start(self, t: float) -> float:
        """The first opening of the window at or after ``t`` (local time)."""
        local = dt.datetime.fromtimestamp(t)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0)
        for days in range(3):  # today's start may be past: tomorrow's is not
            start = (day + dt.timedelta(days=days, minutes=self.start)).timestamp()
            if start >= t:
                return start
        raise AssertionError("unreachable: a window starts every day")


@dataclass(frozen=True)
class RoundSchedule:
    interval: float = 0.0  # seconds between two round openings (0: back to back)
    window: DailyWindow | None = None

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ValueError("round interval must be >= 0 seconds")

    @property
    def back_to_back(self) -> bool:
        return self.interval == 0 and self.window is None

    def next_opening(self, now: float, last_opened: float | None) -> float:
        """The earliest time >= ``now`` at which a round may open (``now``: at once)."""
        if self.back_to_back:
            return now
        # min(): a clock set back (NTP) must not hold rounds back until it catches up
        t = now if last_opened is None else max(now, min(last_opened, now) + self.interval)
        if self.window is not None and not self.window.contains(t):
            t = self.window.next_start(t)
        return t

    def describe(self) -> str:
        parts = []
        if self.interval:
            parts.append(f"at least {self.interval:.0f} s between round openings")
        if self.window is not None:
            parts.append(f"rounds open only between {self.window} (local time)")
        return "; ".join(parts) or "rounds back to back"


NEXT_OPENING_KEY = "next_round_at"  # state db meta


def record_next_opening(store: Store, at: float | None) -> None:
    """When serve opens the next round (None: one is open, or opens at once)."""
    store.set_meta(NEXT_OPENING_KEY, "" if at is None else repr(float(at)))


def recorded_next_opening(store: Store) -> float | None:
    raw = store.get_meta(NEXT_OPENING_KEY)
    try:
        return float(raw) if raw else None
    except ValueError:  # written by this module only; a damaged value shows nothing
        return None
