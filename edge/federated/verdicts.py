"""The box's record of what each federated round did for it: applied, refused by the
canary (and why), rejected by its checks, or sat out.

Kept in ``<data dir>/federation/verdicts.json`` (0600, the last ``KEEP``); the recent
ones go into the box's signed status (federation.verdicts: the operator's ``status``
and ``rounds show``), and ``fedface-edge model status`` and the kiosk show them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from federation.files import write_atomic
from federation.verdicts import REPORTED, Verdict

log = logging.getLogger(__name__)

VERDICTS_FILENAME = "verdicts.json"
KEEP = 50


class RoundVerdicts:
    """The box's verdicts, newest last (one per round: a later verdict replaces it)."""

    def __init__(self, federation_dir: Path) -> None:
        self.path = Path(federation_dir) / VERDICTS_FILENAME

    def all(self) -> list[Verdict]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): starting a new list of verdicts", self.path, exc)
            return []
        items = raw if isinstance(raw, list) else []
        return [v for v in (Verdict.from_dict(item) for item in items) if v is not None]

    def of_round(self, round_no: int) -> Verdict | None:
        return next((v for v in reversed(self.all()) if v.round == round_no), None)

    def recent(self, n: int = REPORTED) -> list[Verdict]:
        return self.all()[-n:]

    def record(self, round_no: int, model: str | None, outcome: str, reason: str,
               canary: Any = None, code: str = "") -> Verdict:
        """Record a round's verdict; ``canary`` is an edge.serving.canary.CanaryResult or
        None; ``code``: the machine reason the aggregator counts (federation.verdicts)."""
        verdict = Verdict(round_no, model, outcome, reason, time.time(),
                          getattr(canary, "current", None), getattr(canary, "candidate", None),
                          int(getattr(canary, "probes", 0) or 0), code)
        kept = [v for v in self.all() if v.round != round_no]
        if outcome == "sat_out" and kept and (kept[-1].outcome, kept[-1].reason) == (
                outcome, reason):
            kept.pop()  # a quiet streak ("0 new samples since round 6") is one line: its latest
        kept = kept[-(KEEP - 1):]
        try:
            write_atomic(self.path, json.dumps([asdict(v) for v in [*kept, verdict]],
                                               sort_keys=True).encode(), mode=0o600)
        except OSError as exc:  # a full disk must not stop the federation client
            log.error("cannot record the verdict of round %d: %s", round_no, exc)
        return verdict
