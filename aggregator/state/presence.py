"""Each box's last online status as ``serve`` heard it, and when its last will came.

A box's last will (its "offline" status) is built when the box connects, so when the
broker publishes it for a box that vanished (kill -9, power loss) it carries the model
the box served then and the time of then. ``serve`` (aggregator.intake.presence) keeps
here the latest signature-checked online status of each box (``device_presence`` in
``state.db``) and, when a will older than it arrives live, the time it heard that will
(``offline_since``, the aggregator's clock). ``fedface-aggregator status``
(aggregator.operator) shows, for a box whose retained status is such a stale will,
the model, verdicts and last swap the box last reported, offline since that time. A box's
own clean stop (an offline status newer than the record) is kept too (``stopped_at``),
so that with the broker unreachable ``status`` shows each box's last known state
(``last_known``) rather than "unknown".

Times of a status are compared only with times of the same box's statuses (its own
clock); ``offline_since`` and ``heard_at`` are the aggregator's. ``observe`` (what a
status changes in the record) and ``shown`` (what the operator sees) are pure.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeGuard

from federation.errors import MALFORMED, FederationError
from federation.messages import DeviceStatus
from federation.verdicts import printable

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"


def last_swap_fields(value: Any) -> dict[str, Any] | None:
    """The box's last hot-swap event (swapped / refused / rolled_back), as plain scalars:
    a box reports there that it refused a federated model its canary rejected."""
    if not isinstance(value, dict):
        return None
    kept: dict[str, Any] = {}
    for key in ("event", "version", "reason"):
        if isinstance(value.get(key), str):
            kept[key] = printable(value[key], 300)
    if isinstance(value.get("at"), int | float) and not isinstance(value["at"], bool):
        kept["at"] = float(value["at"])
    return kept if "event" in kept else None


def status_entry(status: DeviceStatus, envelope_ts: float) -> dict[str, Any]:
    """What the operator sees of a box's (signature-checked) status: state, model, ts
    (the status's own time, else its envelope's), last swap and recent verdicts."""
    ts = float(envelope_ts if status.ts is None else status.ts)
    if not math.isfinite(ts):
        raise FederationError(MALFORMED, f"status time {ts!r} of {status.device!r}")
    return {"state": printable(status.state, 20), "model": printable(status.model, 100),
            "ts": ts, "last_swap": last_swap_fields(status.sink.get("last_swap")),
            # what each recent round did for the box (federation.verdicts)
            "verdicts": [asdict(v) for v in status.verdicts],
            "dp": dp_fields(status.dp), "release": status.release}


def dp_fields(value: Any) -> dict[str, Any] | None:
    """The box's differential-privacy budget as its status says it (its own ledger):
    epsilon spent, delta, rounds; None when absent or not plain finite numbers."""
    if not isinstance(value, dict):
        return None
    eps, delta, rounds = (value.get(k) for k in ("epsilon_total", "delta", "rounds"))
    if not (_finite(eps) and _finite(delta)) or isinstance(rounds, bool) \
            or not isinstance(rounds, int):
        return None
    return {"epsilon_total": float(eps), "delta": float(delta), "rounds": rounds}


def _finite(x: Any) -> TypeGuard[float]:
    return not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)


@dataclass(frozen=True)
class Heard:
    """A box's signature-checked status (``status_entry``) as ``serve`` heard it."""

    device: str
    entry: dict[str, Any]
    retained: bool  # sent from the broker's retained store, not published while listening
    at: float  # when serve heard it (the aggregator's clock)


@dataclass(frozen=True)
class PresenceRecord:
    """A box's last online status, and the will that came after it (if one did)."""

    device_id: str
    model: str
    reported_at: float  # the online status's own time (the box's clock)
    heard_at: float  # when serve heard it (the aggregator's clock)
    last_swap: dict[str, Any] | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    offline_since: float | None = None  # when serve heard the stale will (its clock)
    # that will's own time (the box's clock: its connect); kept when the will is taken back
    will_at: float | None = None
    # the box's own clean stop after that online status: its offline status's time (its
    # clock); kept in the row's ``status`` JSON
    stopped_at: float | None = None


def observe(record: PresenceRecord | None, heard: Heard) -> PresenceRecord | None:
    """The record after ``heard``; None when it changes nothing.

    - an online status newer than the record replaces it (the same status again, as on
      every reconnect of either side, changes nothing); one published live while the
      box is recorded offline replaces it whatever its time: the box is back;
    - an offline status published live (the broker's will for a vanished box) that is
      older than the recorded online status marks the box offline since now, keeping
      that status's model, verdicts and last swap; the will taken back (``will_at``
      kept, ``offline_since`` cleared: the broker went away) heard again before the
      box's next online status is the broker's redelivery of it. A retained one says
      nothing about when the box went;
    - an offline status newer than the record is the box's own clean stop, which its
      retained status shows as it is: kept as ``stopped_at`` (the last known state while
      the broker cannot be reached), the record's online status left as it was.
    """
    e = heard.entry
    if e.get("state") == ONLINE:
        back = record is not None and not heard.retained and (
            record.offline_since is not None or record.stopped_at is not None)
        if record is not None and e["ts"] <= record.reported_at and not back:
            return None
        return PresenceRecord(heard.device, e["model"], e["ts"], heard.at, e.get("last_swap"),
                              list(e.get("verdicts") or ()))
    if (e.get("state") == OFFLINE and not heard.retained and record is not None
            and record.offline_since is None and e["ts"] < record.reported_at
            and e["ts"] != record.will_at):
        return replace(record, offline_since=heard.at, will_at=e["ts"])
    if (e.get("state") == OFFLINE and record is not None and e["ts"] > record.reported_at
            and e["ts"] != record.stopped_at):
        return replace(record, stopped_at=e["ts"])
    return None


def last_known(record: PresenceRecord) -> dict[str, Any]:
    """A box's last known state as serve heard it, for ``status`` while the broker
    cannot be reached: offline since serve heard its stale will, offline since its clean
    stop, or online since its last online status (each box's own times but the will's);
    ``model``, ``verdicts`` and ``last_swap`` those of its last online status."""
    if record.offline_since is not None:
        state, since, how = OFFLINE, record.offline_since, "last_will"
    elif record.stopped_at is not None:
        state, since, how = OFFLINE, record.stopped_at, "stopped"
    else:
        state, since, how = ONLINE, record.reported_at, "online_status"
    return {"state": state, "since": since, "how": how, "model": record.model,
            "last_swap": record.last_swap, "verdicts": record.verdicts}


def shown(entry: dict[str, Any] | None, record: PresenceRecord | None) -> dict[str, Any] | None:
    """What the operator sees of a box: its retained status ``entry`` (``status_entry``),
    unless that is an offline will older than the online status serve recorded: then
    the model, verdicts and last swap of that status (``last_reported``), ``ts`` and
    ``offline_since`` the time serve heard the will (None: serve was not listening)."""
    if (entry is None or record is None or entry.get("state") != OFFLINE
            or not isinstance(entry.get("ts"), float) or entry["ts"] >= record.reported_at):
        return entry
    return {**entry, "model": record.model, "last_swap": record.last_swap,
            "verdicts": record.verdicts, "ts": record.offline_since,
            "offline_since": record.offline_since, "last_online": record.reported_at,
            "will_at": entry["ts"], "last_reported": True}


# --- the device_presence table (aggregator.state.db) -----------------------------------
def save_presence(db: sqlite3.Connection, r: PresenceRecord) -> None:
    status = json.dumps({"last_swap": r.last_swap, "verdicts": r.verdicts,
                         **({} if r.stopped_at is None else {"stopped_at": r.stopped_at})},
                        sort_keys=True)
    db.execute("INSERT OR REPLACE INTO device_presence(device_id, model, reported_at, "
               "heard_at, status, offline_since, will_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (r.device_id, r.model, r.reported_at, r.heard_at, status, r.offline_since,
                r.will_at))


def load_presence(db: sqlite3.Connection) -> dict[str, PresenceRecord]:
    """Every box's record; a damaged row is left out (logged), not fatal."""
    records: dict[str, PresenceRecord] = {}
    for row in db.execute("SELECT device_id, model, reported_at, heard_at, status, "
                          "offline_since, will_at FROM device_presence"):
        try:
            status = json.loads(row[4])
            stopped = status.get("stopped_at")
            records[str(row[0])] = PresenceRecord(
                str(row[0]), str(row[1]), float(row[2]), float(row[3]),
                last_swap_fields(status.get("last_swap")),
                [v for v in status.get("verdicts") or () if isinstance(v, dict)],
                None if row[5] is None else float(row[5]),
                None if row[6] is None else float(row[6]),
                None if stopped is None else float(stopped))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("device presence row of %r unreadable, ignored: %s", row[0], exc)
    return records
