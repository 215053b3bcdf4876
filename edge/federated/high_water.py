"""Monotonic models: the newest federated round this box accepted, kept across restarts.

A signed pointer and its result stay valid forever (the aggregator's signature does not
expire), so on a broker without ACLs anyone can re-publish an old round's retained
pointer and chunks. A rebooted box that applied round 3 would then fetch, decrypt and
serve round 1: a downgrade by replay. The box refuses it: ``<federation dir>/
high-water.json`` (0600, atomic rename) holds the position of the newest result it
applied, and a pointer at or before it is refused as ``stale_round``.

Positions order the pointers the aggregator publishes: the result of round r is
``(r, 1)``; a pinned older result re-published as the base of round f (the operator's
``fedface-aggregator models pin`` / ``models rollback``, ``republished``/``for_round``)
is ``(f, 0)``: after round f-1's result, before round f's. So the operator's rollback
still reaches every box, while a replay of the old pointer (its old position) does not.

An open round's announce names the model it builds on, at ``(round, 0)`` too. When
every result since the initial model was poisoned (``aggregator.rounds.poison``) there
is no result to re-publish: the announce of the next round, built on the initial model,
is what takes a box that applied the poisoned result back (``check_base``/``advance_base``),
and an old announce replayed (its position at or before the mark) does not.

The box's own ``fedface-edge model rollback`` is a local, deliberate action on the
model store (``edge.serving.hot_swap``): it serves version N-1 and blocks N, and leaves
the mark where it is: the box still accepts only results newer than the newest it
accepted, and N-1 is not re-fetched (the box serves it already).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from federation.errors import FederationError
from federation.files import write_atomic
from federation.messages import ModelPointer, RoundAnnounce, result_round

log = logging.getLogger(__name__)

STALE_ROUND = "stale_round"
MARK_FILENAME = "high-water.json"

Position = tuple[int, int]


def position(pointer: ModelPointer) -> Position:
    """Where a pointer stands in the federation's sequence of published models."""
    if pointer.republished and pointer.for_round is not None:
        return (pointer.for_round, 0)
    return (pointer.round, 1)


def announce_position(ann: RoundAnnounce) -> Position:
    """Where the base an announce names stands: before the round's own result."""
    return (ann.round, 0)


def served_position(version: str) -> Position | None:
    """The position of a served version named by the aggregator ("round-N"), if any."""
    round_no = result_round(version)
    return (round_no, 1) if round_no is not None else None


class HighWaterMark:
    def __init__(self, federation_dir: Path) -> None:
        self.path = Path(federation_dir) / MARK_FILENAME
        self.mark: Position = (0, 0)
        self.model: str | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            pos = data["position"]
            if not (isinstance(pos, list) and len(pos) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in pos)):
                raise ValueError(f"position {pos!r} is not two integers")
            self.mark, self.model = (pos[0], pos[1]), data.get("model")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # what the box serves still raises the mark (observe_served at resume)
            log.error("%s unreadable (%s): the mark restarts from the served model",
                      self.path, exc)

    def check(self, pointer: ModelPointer) -> None:
        """Refuse (``stale_round``) a pointer at or before the newest accepted result."""
        pos = position(pointer)
        if pos <= self.mark:
            raise FederationError(STALE_ROUND, (
                f"{pointer.model} (round {pointer.round}"
                f"{f', re-published for round {pointer.for_round}' if pointer.republished else ''}"
                f") is not newer than {self.model or 'the newest result'} this box accepted "
                f"(position {self.mark[0]}.{self.mark[1]}): a replayed old result"))

    def check_base(self, ann: RoundAnnounce) -> None:
        """Refuse (``stale_round``) going back to an announce's base that is not newer
        than the newest result accepted: a replayed old announce."""
        if announce_position(ann) <= self.mark:
            raise FederationError(STALE_ROUND, (
                f"round {ann.round}'s announce (based on {ann.base_model}) is not newer than "
                f"{self.model or 'the newest result'} this box accepted (position "
                f"{self.mark[0]}.{self.mark[1]}): a replayed old announce"))

    def advance_base(self, ann: RoundAnnounce) -> None:
        """The box went back to an announce's base: nothing before it is applied again."""
        self._raise_to(announce_position(ann), ann.base_model)

    def advance(self, pointer: ModelPointer) -> None:
        """The pointer's result was applied: nothing at or before it is applied again."""
        self._raise_to(position(pointer), pointer.model)

    def observe_served(self, version: str) -> None:
        """At start: the served federated model is at or below the mark (a box upgraded
        from a release without the mark, or killed between its swap and this write)."""
        pos = served_position(version)
        if pos is not None:
            self._raise_to(pos, version)

    def _raise_to(self, pos: Position, model: str) -> None:
        if pos <= self.mark:
            return
        self.mark, self.model = pos, model
        body = {"position": list(pos), "model": model, "at": time.time()}
        try:
            write_atomic(self.path, json.dumps(body, sort_keys=True).encode(), mode=0o600)
        except OSError as exc:  # kept in memory; the served model raises it after a restart
            log.error("cannot persist the federated high-water mark %s: %s", pos, exc)
