"""Operator commands of ``fedface-aggregator``: init, status, devices, models, keys bundle.

Mounted on the app by ``aggregator.cli.main`` (``register``). Same error contract: one
``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from aggregator.cli import budget
from aggregator.cli.common import JsonOpt, StateOpt, local_time, one_line_errors, print_table
from aggregator.cli.models import models_app
from aggregator.operator import (
    DeviceRequest,
    OperatorError,
    create_key_bundle,
    device_statuses,
    read_request,
    register_device,
    revoke_device,
    revoked_since_key,
)
from aggregator.pki import authority as pki
from aggregator.pki import files as pki_files
from aggregator.pki import issue as pki_issue
from aggregator.rounds import pins as model_pins
from aggregator.rounds.schedule import recorded_next_opening
from aggregator.state.config import BrokerClientConfig, PkiConfig, init_state, load_config
from aggregator.state.registry import DeviceRegistry, RegistryError, load_public_key_bytes
from aggregator.state.store import Store
from aggregator.state.verdicts import poisoned, poisoned_summary, suspects
from federation.crypto.bounds import DEFAULT_MAX_SAMPLES
from federation.crypto.budget import Budget
from federation.crypto.fingerprint import request_fingerprint_lines, signing_key_fingerprint
from federation.crypto.keys import load_public_context
from federation.files import write_atomic
from federation.verdicts import Verdict

Opt = typer.Option


def _store(state: Path) -> Store:
    load_config(state)  # clear error if not initialised (or config.json invalid)
    return Store(state)


@one_line_errors
def init(
    fed: Annotated[str, Opt("--fed", help="federation id (a topic level)")],
    state: StateOpt,
    public_context: Annotated[Path, Opt("--public-context", help="public context file")],
    aggregator_id: str = "aggregator",
    initial_model: Annotated[str, Opt(help="model version round 1 builds on")] = "base",
    count_scale: Annotated[float, Opt(help="c = 1/count_scale (federation-wide)")] = 0,
    part_key: Annotated[str, Opt(help="federated parameter set key")] = "",
    vector_length: Annotated[int, Opt(help="values per update; 0 = first update")] = 0,
    ca_dir: Annotated[Path | None, Opt(help="federation CA dir (created if it has none)")] = None,
    broker_dir: Annotated[Path | None, Opt(help="broker dir the CRL is copied to")] = None,
    broker_pid_file: Annotated[Path | None, Opt(help="revoke SIGHUPs this broker pid")] = None,
    broker_reload: Annotated[str, Opt(help="command that reloads the broker")] = "",
    broker_url: Annotated[str, Opt(help="mqtts://host:port for `serve` and `status` (their "
                                   "default, with the three files below)")] = "",
    broker_ca: Annotated[Path | None, Opt(help="CA certificate for --broker-url")] = None,
    broker_cert: Annotated[Path | None, Opt(help="aggregator client certificate")] = None,
    broker_key: Annotated[Path | None, Opt(help="its private key")] = None,
    boxes: budget.BoxesOpt = 0,
    regions: budget.RegionsOpt = budget.REGIONS,
    max_samples: budget.MaxSamplesOpt = DEFAULT_MAX_SAMPLES,
    max_value: budget.MaxValueOpt = budget.MAX_VALUE,
    precision: budget.PrecisionOpt = budget.PRECISION,
    min_samples: budget.MinSamplesOpt = budget.MIN_SAMPLES,
) -> None:
    """Create the aggregator's state: config, public context copy, signing key (0600),
    and (with --ca-dir) the federation CA. With --boxes (the declared size), the
    federation's CKKS set must hold it (else refused) and its budget and count_scale are
    recorded (docs/protocol.md, "Parameter policy")."""
    if not public_context.is_file():
        raise OperatorError(
            f"{public_context}: CKKS public context not found; create the federation's keys "
            "with `fedface-aggregator keys create --out DIR` (where the secret context may "
            "live, not here) and pass --public-context DIR/federation-public.tenseal")
    # stored absolute: serve, status and revoke run from any directory (systemd: the state)
    broker_dir, broker_pid_file, broker_ca, broker_cert, broker_key = (
        None if p is None else p.resolve()
        for p in (broker_dir, broker_pid_file, broker_ca, broker_cert, broker_key))
    kwargs: dict[str, Any] = {"aggregator_id": aggregator_id, "initial_model": initial_model,
                              "part_key": part_key, "vector_length": vector_length or None}
    if count_scale:
        kwargs["count_scale"] = count_scale
    size = budget.declared_size(boxes, regions, max_samples, max_value, precision, min_samples)
    held: Budget | None = None
    if size is not None:
        held = budget.check_context(load_public_context(public_context).params, size)
        if count_scale and count_scale != held.count_scale:
            raise ValueError(f"--count-scale {count_scale:g} differs from the budget's "
                             f"{held.count_scale:g} for the declared size; leave it out")
        kwargs["count_scale"] = held.count_scale
        kwargs["budget"] = held.to_dict()
    if ca_dir is not None:
        if not (ca_dir / pki_files.CA_KEY).exists():
            pki.create_ca(ca_dir, fed)
            typer.echo(f"created federation CA {ca_dir / pki_files.CA_CERT}")
        elif pki.load_ca(ca_dir).fed_id not in ("", fed):
            raise pki.PkiError(f"the CA in {ca_dir} belongs to another federation")
        kwargs["pki"] = PkiConfig(ca_dir=ca_dir.resolve(), broker_dir=broker_dir,
                                  broker_pid_file=broker_pid_file,
                                  broker_reload_command=shlex.split(broker_reload))
    if broker_url:
        kwargs["broker"] = BrokerClientConfig(url=broker_url, ca_file=broker_ca,
                                              cert_file=broker_cert, key_file=broker_key)
    cfg = init_state(state, fed, public_context, **kwargs)
    typer.echo(f"initialised federation {cfg.fed} (key {cfg.key_id}) in {state}")
    for line in budget.budget_lines(held) if held is not None else ():
        typer.echo(line)
    typer.echo(f"  give {state / 'aggregator.pub'} to every box (it verifies announcements)")
    typer.echo(f"  count scale {cfg.count_scale:g} (a regional aggregator's init takes the "
               f"same: --count-scale {cfg.count_scale:g})")


@one_line_errors
def keys_bundle(
    secret_context: Annotated[Path, Opt("--secret-context", help="federation-secret.tenseal")],
    aggregator_key: Annotated[Path, Opt("--aggregator-key", help="aggregator.pub")],
    ca_cert: Annotated[Path, Opt("--ca-cert", help="federation CA certificate")],
    fed: Annotated[str, Opt("--fed", help="federation id")],
    out: Annotated[Path, Opt("--out", help="bundle file to write (0600)")],
    passphrase_file: Annotated[Path | None, Opt(
        help="file with the passphrase (or FEDFACE_BUNDLE_PASSPHRASE)")] = None,
    broker_url: Annotated[str, Opt(help="mqtts://host:port the boxes use")] = "",
    aggregator_id: str = "aggregator",
) -> None:
    """Pack the federation key bundle a technician imports on every box (run it where the
    secret context is: the commissioner's machine, never the aggregator)."""
    from federation.crypto.keys import write_secret_file

    if passphrase_file is not None:
        passphrase = passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
    else:
        passphrase = os.environ.get("FEDFACE_BUNDLE_PASSPHRASE", "")
    if not passphrase:
        raise ValueError("no passphrase: give --passphrase-file or set FEDFACE_BUNDLE_PASSPHRASE")
    data = create_key_bundle(secret_context, aggregator_key, ca_cert, fed, passphrase,
                             broker_url=broker_url, aggregator_id=aggregator_id)
    write_secret_file(out, data)
    typer.echo(f"key bundle {out} ({len(data)} bytes); give it to the technicians, and the "
               "passphrase by another channel")


@one_line_errors
def devices_add(
    state: StateOpt,
    device_id: Annotated[str | None, typer.Argument(help="device id (or from --request)")] = None,
    request: Annotated[Path | None, Opt("--request", help="<device>.request.json")] = None,
    public_key: Annotated[Path | None, Opt("--public-key", help="Ed25519 public key")] = None,
    csr: Annotated[Path | None, Opt("--csr", help="the box's TLS CSR")] = None,
    exchange_key: Annotated[str, Opt(help="the box's X25519 exchange key (hex; key epochs)")
                            ] = "",
    exchange_sig: Annotated[str, Opt(help="its device key's signature over it (hex)")] = "",
    reply: Annotated[Path | None, Opt("--reply", help="reply file for the box")] = None,
    cert_days: Annotated[
        int, Opt(min=1, help="certificate validity")
    ] = pki_issue.DEFAULT_DEVICE_DAYS,
) -> None:
    """Register a device: sign its certificate request and register its signing key.
    Without a CSR (no CA configured), only the signing key is registered."""
    cfg = load_config(state)
    store = Store(state)
    if request is not None:
        req = read_request(request, cfg.fed)
        if device_id not in (None, req.device_id):
            raise RegistryError(f"{request} is for {req.device_id}, not {device_id}")
    elif device_id is not None and public_key is not None:
        req = DeviceRequest(device_id, csr.read_bytes() if csr else b"",
                            load_public_key_bytes(public_key), exchange_key, exchange_sig)
    else:
        raise ValueError("give --request FILE, or DEVICE_ID --public-key FILE [--csr FILE]")
    if not req.csr_pem:
        device = DeviceRegistry(store).add(
            req.device_id, req.signing_key, fed=cfg.fed,
            exchange=(req.exchange_key, req.exchange_sig) if req.exchange_key else None)
        typer.echo(f"added {device.device_id} (signing key registered, no certificate)")
    else:
        answer = register_device(store, cfg, req, cert_days=cert_days)
        out = reply or Path(f"{req.device_id}.reply.json")
        write_atomic(out, json.dumps(answer, indent=2).encode(), mode=0o644)
        typer.echo(f"added {req.device_id}: certificate signed, signing key registered; give "
                   f"{out} to the technician (fedface-edge provision --install-reply "
                   f"{out.name})")
    # `fedface-edge provision` printed the same lines on the box: a request swapped or
    # altered on its way here shows other values (revoke it if they differ)
    for line in request_fingerprint_lines(req.csr_pem, req.signing_key):
        typer.echo(f"  {line}")


@one_line_errors
def devices_list(state: StateOpt, as_json: JsonOpt = False) -> None:
    """Registered devices and whether they are revoked."""
    devices = DeviceRegistry(_store(state)).list()
    rows = [{"device_id": d.device_id, "public_key": d.public_key.hex(), "added_at": d.added_at,
             "revoked_at": d.revoked_at, "active": d.active} for d in devices]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_table(("DEVICE", "STATE", "ADDED", "SIGNING KEY SHA-256"),
                [(d.device_id, "active" if d.active else "REVOKED", local_time(d.added_at),
                  signing_key_fingerprint(d.public_key)) for d in devices],
                "no devices registered: fedface-aggregator devices add --request FILE")


@one_line_errors
def devices_revoke(device_id: str, state: StateOpt) -> None:
    """Revoke a device at the aggregator (its updates are refused from the next message)
    and at the broker (CRL published, broker reloaded)."""
    result = revoke_device(Store(state), load_config(state), device_id)
    typer.echo(f"revoked {device_id} at the aggregator"
               + ("" if result.registry else " (was already revoked there)"))
    if result.crl is not None:
        typer.echo(f"CRL {result.crl}: {result.broker_reloaded}")
    else:
        typer.echo(result.broker_reloaded)
    typer.echo(f"{device_id} still holds the federation's secret key: rotate it now "
               "(docs/operations.md, 'Rotating the federation key'): fedface-aggregator "
               f"devices recipients --state {state} --out recipients.json, then the key "
               "holder's `keys rotate`, then `keys install` here")


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
    if cfg.broker is not None and not no_broker:
        live = device_statuses(cfg, store, wait)
    devices = []
    for d in DeviceRegistry(store).list():
        st = live.get(d.device_id, {})
        devices.append({"device_id": d.device_id, "registered": "active" if d.active else
                        "revoked", "state": st.get("state", "unknown" if live or not
                                                   cfg.broker else "never seen"),
                        "model": st.get("model"), "since": st.get("ts"),
                        "last_swap": st.get("last_swap"), "verdicts": st.get("verdicts", []),
                        # gone without a clean stop: model, verdicts and last swap of its
                        # last online status, as serve recorded it (aggregator.state.presence)
                        "last_reported": bool(st.get("last_reported")),
                        "offline_since": st.get("offline_since"),
                        "last_online": st.get("last_online")})
    latest = store.latest_round()
    # updates, not messages: a region's partial counts as the box updates it sums
    results = [{"round": r.round, "model": r.result_model, "updates": store.updates_of(r.round),
                "closed_at": r.closed_at}
               for r in store.list_rounds() if r.status == "published"][-5:]
    info: dict[str, Any] = {
        "fed": cfg.fed, "key_id": cfg.key_id,
        "open_round": None if latest is None or latest.status != "open" else {
            "round": latest.round, "base_model": latest.base_model, "deadline": latest.deadline,
            "contributions": latest.contributions, "updates": store.updates_of(latest.round),
            "quorum": latest.quorum,
            "contributors": store.contributors(latest.round)},
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
        "broker_checked": cfg.broker is not None and not no_broker,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    _print_status(info)


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
    if not info["device_status"]:
        typer.echo("no devices registered: fedface-aggregator devices add --request FILE")
    else:
        typer.echo(f"{'DEVICE':20s} {'REGISTRY':9s} {'STATUS':10s} {'MODEL':18s} SINCE")
    for d in info["device_status"]:
        typer.echo(f"{d['device_id']:20s} {d['registered']:9s} {d['state']:10s} "
                   f"{d['model'] or '-'!s:18s} {_age(d['since'])}")
    for d in info["device_status"]:
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
        swap = d.get("last_swap") or {}
        if swap.get("event") == "refused" and not any(
                v.outcome == "refused" and v.model == swap.get("version") for v in verdicts):
            typer.echo(f"  {d['device_id']} REFUSED model {swap.get('version')} "
                       f"{_age(swap.get('at'))}: {swap.get('reason')}")
    cur = info["open_round"]
    typer.echo("open round: " + (f"{cur['round']} on {cur['base_model']}, "
                                 f"{cur['updates']}/{cur['quorum']} update(s), deadline "
                                 f"in {max(0, cur['deadline'] - time.time()):.0f}s"
                                 if cur else "none" + _next_opening(info["next_round_at"])))
    typer.echo(f"next round builds on: {info['next_base']}"
               + (" (PINNED: fedface-aggregator models unpin to follow the latest)"
                  if info["pinned"] else ""))
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
    for name, value in info["counters"].items():
        typer.echo(f"  {name}: {value}")


def _gone(d: dict[str, Any]) -> str:
    """A box whose retained status is its last will, older than its last online status
    serve recorded: it vanished (kill -9, power loss), and the will is from its connect."""
    when = (f"offline since {local_time(d['offline_since'])} (serve heard its last will)"
            if d.get("offline_since") is not None else
            "offline, since when is unknown (serve was not listening when its last will came)")
    return (f"{when}; {d['model']} is the last model the box reported (in its online "
            f"status of {local_time(d.get('last_online'))}); it went away without a clean stop")


def poisoned_lines(p: dict[str, Any]) -> str:
    """A poisoned round for the operator: why, refusals by reason, who contributed."""
    reasons = ", ".join(f"{code} x{n}" for code, n in sorted(p["refusals"].items()))
    return (f"POISONED round {p['round']} ({_age(p['poisoned_at'])}): {p['why']}; went back "
            f"to {p['recovered_to']}\n  refusals: {reasons or '-'} (from "
            f"{', '.join(p['refused_by']) or '-'})\n  contributors: "
            f"{', '.join(p['contributors']) or '-'}")


def register(app: typer.Typer, keys_app: typer.Typer, devices_app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("status")(status)
    keys_app.command("bundle")(keys_bundle)
    devices_app.command("add")(devices_add)
    devices_app.command("list")(devices_list)
    devices_app.command("revoke")(devices_revoke)
    app.add_typer(models_app, name="models")
