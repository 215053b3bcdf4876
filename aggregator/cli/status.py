"""``fedface-aggregator status``: what the operator sees of the federation at a glance.

Devices (registry state, online/offline from their signed retained status; a box gone
without a clean stop: the last model it reported, offline since serve heard its will;
what each box said of its last rounds, and its differential-privacy budget), the open
round, recent results, poisoned rounds and suspects, a due key rotation and the
rejection counters. Everything but the boxes' live status comes from the state
directory, so a broker that cannot be reached still leaves the rest on screen (and the
command exits 2 after it, for a monitoring script), each box at its last known state as
``serve`` last heard it (aggregator.state.presence), said to be that.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from aggregator.cli.common import EXIT_ERROR, JsonOpt, StateOpt, local_time, one_line_errors
from aggregator.operator import OperatorError, device_statuses, revoked_since_key
from aggregator.regional.records import STATE_NAME, load_state
from aggregator.rounds import pins as model_pins
from aggregator.rounds.deadline import device_names
from aggregator.rounds.schedule import recorded_next_opening
from aggregator.state.config import load_config
from aggregator.state.presence import last_known, load_presence
from aggregator.state.registry import DeviceRegistry
from aggregator.state.serve_lock import serve_pid
from aggregator.state.store import Store
from aggregator.state.verdicts import poisoned, poisoned_summary, suspects
from federation.errors import FederationError
from federation.verdicts import Verdict

Opt = typer.Option
STALE_DEADLINE_S = 120.0  # serve retries a write a full disk refused for a while


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    return f"{_duration(max(0.0, time.time() - ts))} ago"


@one_line_errors
def status(
    state: StateOpt,
    as_json: JsonOpt = False,
    no_broker: Annotated[bool, Opt("--no-broker", help="skip device online/offline")] = False,
    wait: Annotated[float, Opt(help="seconds to collect retained statuses")] = 2.0,
) -> None:
    """Devices online/offline (their retained status / last will; a box gone without a
    clean stop: the last model it reported, offline since serve heard its will), the
    open round, recent results, rejection counters."""
    cfg = load_config(state)
    store = Store(state)
    live: dict[str, Any] = {}
    unreachable = None
    if cfg.broker is not None and not no_broker:
        try:
            live = device_statuses(cfg, store, wait)
        except OperatorError as exc:  # the rest is in the state dir: still show it
            unreachable = str(exc)
    # the broker down: what serve last heard of each box (the operator's need in an
    # outage; every box showed "unknown")
    known = ({device: last_known(r) for device, r in load_presence(store.db).items()}
             if unreachable is not None else {})
    devices = []
    for d in DeviceRegistry(store).list():
        lk = known.get(d.device_id)
        # its state stays "unknown"; model, since, verdicts and last swap are the last known
        st = live.get(d.device_id) or ({} if lk is None else {
            "model": lk["model"], "ts": lk["since"], "last_swap": lk["last_swap"],
            "verdicts": lk["verdicts"]})
        devices.append({"device_id": d.device_id, "registered": "active" if d.active else
                        "revoked", "state": st.get("state", "unknown" if live or unreachable
                                                   or not cfg.broker else "never seen"),
                        "dp": st.get("dp"),
                        "model": st.get("model"), "since": st.get("ts"),
                        "release": st.get("release"),
                        "last_swap": st.get("last_swap"), "verdicts": st.get("verdicts", []),
                        # gone without a clean stop: model, verdicts and last swap of its
                        # last online status, as serve recorded it (aggregator.state.presence)
                        "last_reported": bool(st.get("last_reported")),
                        "offline_since": st.get("offline_since"),
                        "last_online": st.get("last_online"),
                        # the broker unreachable: the state serve last heard, and since
                        "last_known": None if lk is None else {
                            k: lk[k] for k in ("state", "since", "how")}})
    latest = store.latest_round()
    # updates, not messages: a region's partial counts as the box updates it sums
    results = [{"round": r.round, "model": r.result_model, "updates": store.updates_of(r.round),
                "closed_at": r.closed_at}
               for r in store.list_rounds() if r.status == "published"][-5:]
    pid = serve_pid(state)
    info: dict[str, Any] = {
        "fed": cfg.fed, "key_id": cfg.key_id, "serve": {"running": pid is not None, "pid": pid},
        "open_round": None if latest is None or latest.status != "open" else {
            "round": latest.round, "base_model": latest.base_model, "deadline": latest.deadline,
            "contributions": latest.contributions, "updates": store.updates_of(latest.round),
            "quorum": latest.quorum,
            "contributors": store.contributors(latest.round)},
        # closed, its result not yet out: a region waiting for its root (helper-41: its
        # status said only "open round: none")
        "closed_round": None if latest is None or latest.status != "closed" else {
            "round": latest.round, "closed_at": latest.closed_at,
            "reason": latest.close_reason, "root_round": _awaited_root_round(state, latest.round)},
        "devices": {"active": sum(d["registered"] == "active" for d in devices),
                    "total": len(devices)},
        "device_status": devices, "recent_results": results, "counters": store.counters(),
        "next_base": model_pins.next_base(store, cfg.initial_model)[0],
        # while serve's schedule holds the next round back (aggregator.rounds.schedule)
        "next_round_at": None if latest is not None and latest.status == "open"
        else recorded_next_opening(store),
        "pinned": model_pins.pinned(store),
        # rounds the boxes refused, and who contributed to them (aggregator.rounds.poison)
        "poisoned": [poisoned_summary(store, r) for r in list(poisoned(store))[-5:]],
        "suspects": suspects(store),  # contributed to every refused round
        # revoked after the current key was installed: they can still decrypt results
        "key_rotation_due": revoked_since_key(store, state),
        "broker_checked": cfg.broker is not None and not no_broker and unreachable is None,
        "broker_unreachable": unreachable,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _print_status(info)
    if unreachable is not None:
        # after the rest: a monitoring script still sees the failure (a walkthrough's
        # status showed nothing at all while its broker was down)
        typer.echo(f"error: the boxes' live status is not shown: {unreachable}", err=True)
        raise typer.Exit(EXIT_ERROR)


def _awaited_root_round(state: Path, round_no: int) -> int | None:
    """The root round whose result a region's closed round waits for (None: no region)."""
    try:
        sent = load_state(state / STATE_NAME)["forwarded"].get(str(round_no)) or {}
    except FederationError:  # a damaged regional.json: the rest of the status goes on
        return None
    root_round = sent.get("root_round")
    return root_round if isinstance(root_round, int) else None


def _deadline(at: float) -> str:
    left = at - time.time()
    if left >= 0:
        return f"deadline in {left:.0f}s"
    # serve closes, extends or fails a round within a second of its deadline: a deadline
    # long past means no serve runs on this state (status said "in 0s" for ever)
    return f"deadline {_duration(-left)} ago" + (
        " (is fedface-aggregator serve running?)" if left < -STALE_DEADLINE_S else "")


def _next_opening(at: float | None) -> str:
    if at is None:
        return ""
    when = local_time(at)
    left = at - time.time()
    if left < 0:  # serve records it and clears it when it opens the round
        return f"; the next was due at {when} (is fedface-aggregator serve running?)"
    return f"; the next opens at {when} (in {_duration(left)}, the round schedule)"


def _duration(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _print_status(info: dict[str, Any]) -> None:
    typer.echo(f"federation {info['fed']} (key {info['key_id']})")
    serve = info["serve"]
    typer.echo(f"serve: running (pid {serve['pid']})" if serve["running"] else
               "serve: NOT running: no round opens or closes until it does (sudo systemctl "
               "start fedface-aggregator)")
    if not info["device_status"]:
        typer.echo("no devices registered: fedface-aggregator devices add --request FILE")
    else:
        typer.echo(f"{'DEVICE':20s} {'REGISTRY':9s} {'STATUS':10s} {'MODEL':18s} SINCE")
    for d in info["device_status"]:
        state = (d.get("last_known") or d)["state"]  # the broker down: the last known
        typer.echo(f"{d['device_id']:20s} {d['registered']:9s} {state:10s} "
                   f"{d['model'] or '-'!s:18s} {_age(d['since'])}")
    for release, devices in _releases(info["device_status"]).items():
        typer.echo(f"release {release}: {device_names(devices, limit=8)}")
    # a revoked device's last verdicts and model are history: its REGISTRY column says it
    for d in (d for d in info["device_status"] if d["registered"] == "active"):
        if info.get("broker_unreachable") is not None:
            typer.echo(f"  {d['device_id']}: {_last_known(d.get('last_known'))}")
        if d.get("last_reported"):
            typer.echo(f"  {d['device_id']} {_gone(d)}")
        verdicts = [v for v in map(Verdict.from_dict, d.get("verdicts") or []) if v]
        # the box's own judgement of the last result it received, and what it did in
        # the latest round since (sat it out, sent its update, or saw it end without one)
        judged = [v for v in verdicts if v.judged]
        shown = ([judged[-1]] if judged else []) + \
            ([verdicts[-1]] if verdicts and not verdicts[-1].judged else [])
        for verdict in shown:
            typer.echo(f"  {d['device_id']} {verdict.summary()}")
        if d.get("dp"):  # the box's own ledger, in its signed status
            typer.echo(f"  {d['device_id']} {_dp(d['dp'])}")
        swap = d.get("last_swap") or {}
        if swap.get("event") == "refused" and not any(
                v.outcome == "refused" and v.model == swap.get("version") for v in verdicts):
            typer.echo(f"  {d['device_id']} REFUSED model {swap.get('version')} "
                       f"{_age(swap.get('at'))}: {swap.get('reason')}")
    cur = info["open_round"]
    typer.echo("open round: " + (f"{cur['round']} on {cur['base_model']}, "
                                 f"{cur['updates']}/{cur['quorum']} update(s), "
                                 + _deadline(cur['deadline'])
                                 if cur else "none" + _next_opening(info["next_round_at"])))
    closed = info.get("closed_round")
    if closed:
        typer.echo(f"round {closed['round']} closed {_age(closed['closed_at'])} "
                   f"({closed['reason']}), its result not published yet" + (
                       f": waiting for the root's result of its round {closed['root_round']}"
                       if closed["root_round"] is not None else ""))
    pin = info["pinned"]
    typer.echo(f"next round builds on: {info['next_base']}" + (
        "" if not pin else " (PINNED: fedface-aggregator models unpin to follow the latest)"
        if pin == info["next_base"] else f" (the line of rounds since {pin} was pinned: "
        "fedface-aggregator models unpin to follow the newest result of any round)"))
    for r in info["recent_results"]:
        typer.echo(f"result: round {r['round']} -> {r['model']} ({r['updates']} update(s), "
                   f"{_age(r['closed_at'])})")
    for p in info["poisoned"]:
        typer.echo(poisoned_lines(p))
    if info["suspects"]:
        s = info["suspects"]
        typer.echo(f"suspects (contributed to every refused round: "
                   f"{', '.join(map(str, s['rounds']))}): {', '.join(s['devices']) or 'none'}")
    if info["key_rotation_due"]:
        typer.echo(f"KEY ROTATION DUE: {', '.join(info['key_rotation_due'])} revoked after "
                   "the current key was installed, and can still decrypt every result: "
                   "rotate the key (docs/operations.md, 'Rotating the federation key')")
    if info["counters"]:  # a failed round was listed as one more "rejected" update (helper-42)
        typer.echo("counts since init (rejected.<reason>: updates or messages refused; "
                   "rounds failed: rounds that ended without a result, `rounds list`):")
    for name, value in info["counters"].items():
        typer.echo(f"  {'rounds failed' if name == 'rejected.round_failed' else name}: {value}")


def _releases(devices: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The software each active device that spoke runs, as its signed status says it: an
    upgrade's progress across the fleet (a box of an earlier release does not say)."""
    found: dict[str, list[str]] = {}
    for d in devices:
        if d["registered"] == "active" and d["state"] in ("online", "offline"):
            found.setdefault(d.get("release") or "not said (an earlier release)",
                             []).append(d["device_id"])
    return found


def _dp(dp: dict[str, Any]) -> str:
    return (f"differential privacy: epsilon {dp['epsilon_total']:.2f} spent over "
            f"{dp['rounds']} round(s) at delta {dp['delta']:g}")


def _last_known(known: dict[str, Any] | None) -> str:
    """A box's state while the broker cannot be reached: the last serve heard."""
    if known is None:
        return "unknown (serve has not heard from it; broker unreachable)"
    age = _age(known["since"])
    how = {"last_will": f"serve heard its last will {age}: it went away without a clean stop",
           "stopped": f"it stopped cleanly {age}"}.get(known["how"],
                                                       f"its online status of {age}")
    return f"{known['state']} (last known: {how}; broker unreachable)"


def _gone(d: dict[str, Any]) -> str:
    """A box whose retained status is its last will, older than its last online status
    serve recorded: it vanished (kill -9, power loss), and the will is from its connect."""
    when = (f"offline since {local_time(d['offline_since'])} (serve heard its last will)"
            if d.get("offline_since") is not None else
            "offline, since when is unknown (serve was not listening when its last will came)")
    return (f"{when}; {d['model']} is the last model it reported (in its online "
            f"status of {local_time(d.get('last_online'))}); it went away without a clean stop")


def poisoned_lines(p: dict[str, Any]) -> str:
    """A poisoned round for the operator: why, refusals by reason, who contributed."""
    reasons = ", ".join(f"{code} x{n}" for code, n in sorted(p["refusals"].items()))
    return (f"POISONED round {p['round']} ({_age(p['poisoned_at'])}): {p['why']}; went back "
            f"to {p['recovered_to']}\n  refusals: {reasons or '-'} (from "
            f"{', '.join(p['refused_by']) or '-'})\n  contributors: "
            f"{', '.join(p['contributors']) or '-'}")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
