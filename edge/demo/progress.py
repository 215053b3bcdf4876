"""The demo's view of its running boxes: their events (one JSON line each on stdout), a
block printed per finished round (wire, timings, each box's held-out identification
before -> after) and each box's history for the closing table."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.demo.box import EVENT_PREFIX
from edge.demo.table import BoxHistory
from edge.demo.table import pct as _pct


@dataclass
class BoxProc:
    name: str
    proc: subprocess.Popen[str]
    log_path: Path
    events: list[dict[str, Any]] = field(default_factory=list)


class Progress:
    """Collects box events and prints one block per finished round."""

    def __init__(self, boxes: list[str], rounds: int, out: Callable[[str], None]) -> None:
        self.boxes, self.rounds, self.out = boxes, rounds, out
        self.lock = threading.Condition()
        self.by_round: dict[int, dict[str, dict[str, dict[str, Any]]]] = {}
        self.enrolled: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, str] = {}
        self.trainer: dict[str, str] = {}
        self.printed: set[int] = set()
        self.started = time.time()

    def add(self, box: str, ev: dict[str, Any]) -> None:
        with self.lock:
            kind = str(ev.get("event"))
            if kind == "enrolled":
                self.enrolled[box] = ev
                acc = ev.get("accuracy")
                self.out(f"  {box} ({ev.get('camera', 'clean')} camera): enrolled "
                         f"{ev['people']} people ({ev['crops']} photos), {ev['heldout']} "
                         f"held-out; identification {_pct(acc)} with the pretrained model "
                         f"({ev['seconds']:.1f} s){_deployed(ev)}")
            elif kind == "skipped":  # a photo the box left out (no face, unreadable)
                self.out(f"  {box}: skipped {ev.get('file')} ({ev.get('what')}): "
                         f"{ev.get('reason')}")
            elif kind == "not_enrolled":
                self.out(f"  {box}: not enrolled: {ev.get('person')} (no enrolment photo "
                         "with a face; the lines above say why)")
            elif kind == "trainer":
                self.trainer[box] = ev["kind"]
                if ev["kind"] != "torch":
                    self.out(f"  {box}: WARNING: torch is not installed, so this box sends a "
                             "deterministic weight drift instead of real training "
                             "(pip install 'fedface[train]')")
            elif kind == "failed":
                self.failed[box] = ev.get("error", "?")
            elif kind == "error":
                self.failed[box] = f"round {ev.get('round')}: {ev.get('error', '?')}"
            elif "round" in ev:
                self.by_round.setdefault(int(ev["round"]), {}).setdefault(box, {})[kind] = ev
            self.lock.notify_all()

    def done_rounds(self) -> list[int]:
        """The rounds every box has finished, in order (a round abandoned because its
        base was found poisoned publishes nothing and never finishes)."""
        return [r for r in sorted(self.by_round) if self.round_done(r)]

    def round_done(self, r: int) -> bool:
        """Every box has applied round ``r``'s result or refused it (its canary)."""
        boxes = self.by_round.get(r, {})
        return len(boxes) == len(self.boxes) and all(
            "applied" in b or "result_rejected" in b for b in boxes.values())

    def print_ready(self) -> None:
        for r in sorted(self.by_round):
            if r not in self.printed and self.round_done(r):
                self.printed.add(r)
                self._print_round(r)

    def _print_round(self, r: int) -> None:
        boxes = self.by_round[r]
        # a box whose broker was away when it sealed its update said "queued" instead
        subs = [b.get("submitted") or b["queued"] for b in boxes.values()
                if "submitted" in b or "queued" in b]
        applied = [b["applied"] for b in boxes.values() if "applied" in b]
        starts = [b["joined"]["t"] for b in boxes.values() if "joined" in b]
        ends = [b.get("applied", b.get("result_rejected", {})).get("t", 0.0)
                for b in boxes.values()]
        up = sum(s["bytes"] for s in subs)
        down = sum(a["bytes"] for a in applied)
        enc = [s["encrypt_s"] for s in subs]
        train = [s["train_s"] for s in subs]
        fit = [s["fit_s"] for s in subs if "fit_s" in s]
        dec = [a["decrypt_s"] for a in applied]
        span = (max(ends) - min(starts)) if starts else 0.0
        updates = applied[0]["updates"] if applied else len(subs)
        self.out(
            f"round {r}: {updates} updates in | wire {_mb(up)} up + {_mb(down)} "
            f"down | train {_avg(train):.1f} s{_fit(fit)}, encrypt {_avg(enc):.2f} s, decrypt "
            f"{_avg(dec):.2f} s (mean per box) | round {span:.1f} s")
        for box in self.boxes:
            back = boxes[box].get("back_to_initial")
            # a box sent back to the pretrained model by this round's announce (the
            # federation dropped a poisoned result) starts the round from it
            before = self.served_after(box, 0 if back else r - 1)
            after = self.served_after(box, r)
            first = (f"back on the pretrained model ({back['previous']} was found "
                     "poisoned), then " if back else "")
            if "applied" in boxes[box]:
                what = f"{first}serves {boxes[box]['applied']['model']}"
            else:
                why = boxes[box]["result_rejected"].get("reason", "?")
                what = f"{first}REFUSED round {r}'s model ({why}), keeps its own"
            self.out(f"  {box}: {what}, held-out identification "
                     f"{_pct(before)} -> {_pct(after)}{_gain(before, after)}"
                     f"{_at(self.threshold_after(box, r))}"
                     f"{_strangers(self.strangers_after(box, r - 1), self.strangers_after(box, r))}"
                     f"{_own_check(boxes[box])}")

    def served_after(self, box: str, r: int) -> float | None:
        """Held-out identification of what ``box`` serves after round ``r`` (0: the
        pretrained model): a refused round leaves the box on what it served before, and
        a round whose announce sent the box back to the pretrained model on it."""
        return self._served_event(box, r).get("accuracy")

    def threshold_after(self, box: str, r: int) -> float | None:
        """The match threshold of what ``box`` serves after round ``r`` (its own)."""
        return self._served_event(box, r).get("threshold")

    def strangers_after(self, box: str, r: int) -> float | None:
        """Share of the box's strangers named as someone by what it serves after ``r``."""
        return self._served_event(box, r).get("strangers_named")

    def _served_event(self, box: str, r: int) -> dict[str, Any]:
        while r > 0:
            outcome = self.by_round.get(r, {}).get(box, {})
            if "applied" in outcome:
                return dict(outcome["applied"])
            if "back_to_initial" in outcome:
                break
            r -= 1
        return self.enrolled.get(box, {})

    def history(self) -> list[BoxHistory]:
        """Each box's held-out identification: pretrained, then after each round."""
        rows = []
        for box in self.boxes:
            enrolled = self.enrolled.get(box, {})
            after = [self.served_after(box, r) for r in self.done_rounds()]
            rows.append(BoxHistory(box, str(enrolled.get("camera", "clean")),
                                   int(enrolled.get("people", 0)),
                                   int(enrolled.get("heldout", 0)),
                                   enrolled.get("accuracy"), after,
                                   enrolled.get("strangers_named"),
                                   self.strangers_after(box, self.done_rounds()[-1])
                                   if self.done_rounds() else None,
                                   bool(enrolled.get("own_threshold", True))))
        return rows

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                self.print_ready()
                left = deadline - time.monotonic()
                if left <= 0 or self.failed:
                    return False
                self.lock.wait(min(left, 1.0))
            self.print_ready()
            return True


def _own_check(outcome: dict[str, Any]) -> str:
    """The box's own before/after of the round, the figures `fedface-edge model status`
    and the kiosk show (the canary over its enrolment crops, which the round's model was
    trained on: the held-out photos are the fairer measure)."""
    event = outcome.get("applied") or outcome.get("result_rejected") or {}
    check = event.get("check")
    if not isinstance(check, dict):
        return "; own check: not compared (model status says why)"
    if "before" not in check:  # not compared, and why (too few enrolment photos)
        return f"; own check (model status): {check.get('reason', 'not compared')}"
    return (f"; own check (model status): {_pct(check['before'])} -> {_pct(check['after'])}"
            f" over {check['probes']} enrolment photos")


def _fit(fit: list[float]) -> str:
    """The part of the training time --train-budget bounds (edge.training.loop.fit: the
    class centres and the steps); the rest is the round's training process starting and,
    at a box's first round, its photos' trunk features."""
    return f" (optimising {_avg(fit):.1f} s of it: what --train-budget bounds)" if fit else ""


def _deployed(ev: dict[str, Any]) -> str:
    """Why a box's models will keep the deployed threshold (its enrolled event)."""
    if ev.get("own_threshold", True):
        return ""
    return (f"; its models keep the deployed threshold {ev['threshold']:.2f}: a model's own "
            f"needs {ev.get('threshold_needs', '?')}, this box has {ev['people']} people, "
            f"{ev.get('calibration_people', '?')} of them calibration people")


def _at(threshold: float | None) -> str:
    """The threshold the after-figure was named at: the served model's own."""
    return "" if threshold is None else f" at threshold {threshold:.3f}"


def _strangers(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return ""
    return f", strangers named {_pct(before)} -> {_pct(after)}"


def _gain(before: float | None, after: float | None) -> str:
    return "" if before is None or after is None else f" ({100 * (after - before):+.1f})"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _avg(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def read_events(box: BoxProc, progress: Progress) -> None:
    assert box.proc.stdout is not None
    for line in box.proc.stdout:
        if line.startswith(EVENT_PREFIX):
            try:
                ev = json.loads(line[len(EVENT_PREFIX):])
            except ValueError:
                continue
            box.events.append(ev)
            progress.add(box.name, ev)
    progress.add(box.name, {"event": "exited"})
