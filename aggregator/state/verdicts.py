"""The boxes' verdicts on published rounds and the rounds found poisoned, in ``state.db``.

A box's signed status carries its verdicts on its recent rounds (federation.verdicts);
the service keeps each box's latest verdict per round (``round_verdicts``) so that
the refusals of a round survive a restart of the aggregator and can be shown to the
operator. A round found poisoned (aggregator.rounds.poison says when) gets a
``poisoned_rounds`` row and the status ``poisoned`` in the same transaction: it is
never a base again, across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aggregator.state.db import StateDB
from federation.verdicts import JUDGED  # verdicts on a result, not on what a box did

BUILT_ON = "built on the poisoned "  # the why of a round poisoned through its base


@dataclass(frozen=True)
class StoredVerdict:
    round: int
    device_id: str
    model: str
    outcome: str
    code: str
    reason: str
    at: float

    @property
    def refusal(self) -> bool:
        return self.outcome != "applied"


@dataclass(frozen=True)
class Poisoned:
    round: int
    at: float
    why: str
    recovered_to: str


def record_verdict(db: StateDB, v: StoredVerdict) -> bool:
    """Keep a box's verdict on a round (its latest one: a newer ``at`` replaces it).
    Returns True when it changed what is stored."""
    if v.outcome not in JUDGED:
        return False
    row = db.db.execute("SELECT outcome, code, at FROM round_verdicts WHERE round=? AND "
                        "device_id=?", (v.round, v.device_id)).fetchone()
    if row is not None and (float(row["at"]) >= v.at or
                            (row["outcome"], row["code"]) == (v.outcome, v.code)):
        return False
    db.db.execute("INSERT OR REPLACE INTO round_verdicts(round, device_id, model, outcome, "
                  "code, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (v.round, v.device_id, v.model[:100], v.outcome, v.code[:64],
                   v.reason[:300], v.at))
    return True


def verdicts_on(db: StateDB, round_no: int) -> list[StoredVerdict]:
    rows = db.db.execute("SELECT * FROM round_verdicts WHERE round=? ORDER BY at, device_id",
                         (round_no,))
    return [StoredVerdict(**dict(r)) for r in rows]


def mark_poisoned(db: StateDB, rounds: list[tuple[int, str]], recovered_to: str,
                  at: float) -> None:
    """Mark ``(round, why)`` poisoned, all in one transaction."""
    with db.transaction() as tx:
        for round_no, why in rounds:
            tx.execute("INSERT OR IGNORE INTO poisoned_rounds(round, at, why, recovered_to) "
                       "VALUES (?, ?, ?, ?)", (round_no, at, why[:500], recovered_to))
            tx.execute("UPDATE rounds SET status='poisoned' WHERE round=?", (round_no,))
            db._bump(tx, "rounds_poisoned")


def set_recovered_to(db: StateDB, rounds: list[int], model: str) -> None:
    db.db.executemany("UPDATE poisoned_rounds SET recovered_to=? WHERE round=?",
                      [(model, r) for r in rounds])


def poisoned(db: StateDB) -> dict[int, Poisoned]:
    rows = db.db.execute("SELECT * FROM poisoned_rounds ORDER BY round")
    return {int(r["round"]): Poisoned(**dict(r)) for r in rows}


def poisoned_summary(db: StateDB, round_no: int) -> dict[str, Any] | None:
    """What the operator is shown of a poisoned round: why, what the federation went
    back to, the refusals by reason, who refused and who contributed."""
    found = poisoned(db).get(round_no)
    if found is None:
        return None
    verdicts = verdicts_on(db, round_no)
    reasons: dict[str, int] = {}
    for v in verdicts:
        if v.refusal:
            reasons[v.code or v.outcome] = reasons.get(v.code or v.outcome, 0) + 1
    return {"round": round_no, "poisoned_at": found.at, "why": found.why,
            "recovered_to": found.recovered_to, "refusals": reasons,
            "refused_by": [v.device_id for v in verdicts if v.refusal],
            "applied_by": [v.device_id for v in verdicts if not v.refusal],
            "contributors": db.contributors(round_no)}


def suspects(db: StateDB) -> dict[str, Any] | None:
    """The devices that contributed to every round the boxes refused (rounds poisoned
    only because they were built on one are left out: any box may have sent to them).
    The aggregator sees no single update, so this intersection is all it can say about
    a culprit; every further poisoned round narrows it (docs/protocol.md)."""
    refused = [r for r, p in poisoned(db).items() if not p.why.startswith(BUILT_ON)]
    if not refused:
        return None
    common = set(db.contributors(refused[0]))
    for round_no in refused[1:]:
        common &= set(db.contributors(round_no))
    return {"rounds": refused, "devices": sorted(common)}
