"""Operator commands of ``fedface-aggregator``: init, devices, models, keys bundle
(``status`` is aggregator.cli.status).

Mounted on the app by ``aggregator.cli.main`` (``register``). Same error contract: one
``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from aggregator.cli import budget
from aggregator.cli.common import JsonOpt, StateOpt, local_time, one_line_errors, print_table
from aggregator.cli.models import models_app
from aggregator.operator import (
    DeviceRequest,
    OperatorError,
    check_request_key,
    create_key_bundle,
    read_request,
    register_device,
    revoke_device,
)
from aggregator.pki import authority as pki
from aggregator.pki import files as pki_files
from aggregator.pki import issue as pki_issue
from aggregator.state.config import BrokerClientConfig, PkiConfig, init_state, load_config
from aggregator.state.registry import DeviceRegistry, RegistryError, load_public_key_bytes
from aggregator.state.store import Store
from federation.crypto.bounds import DEFAULT_MAX_SAMPLES
from federation.crypto.budget import Budget
from federation.crypto.fingerprint import request_fingerprint_lines, signing_key_fingerprint
from federation.crypto.keys import load_public_context
from federation.files import write_atomic

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
    # a secret context is refused before anything is made (the CA was created first:
    # helper-57)
    context = load_public_context(public_context)
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
        held = budget.check_context(context.params, size)
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
    data, key = create_key_bundle(secret_context, aggregator_key, ca_cert, fed, passphrase,
                                  broker_url=broker_url, aggregator_id=aggregator_id)
    write_secret_file(out, data)
    # the key it carries: a bundle of an earlier epoch is refused by `devices add`
    typer.echo(f"key bundle {out} ({len(data)} bytes) of federation key {key.key_id} (key "
               f"epoch {key.epoch}); give it to the technicians, and the passphrase by "
               "another channel")


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
    key_note = check_request_key(state, cfg, req)
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
    if key_note:
        typer.echo(f"note: {key_note}")


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
    and at the broker (CRL published, broker reloaded). Again for a device revoked
    before: applies the CRL, the broker reload and the notice again (after a failed
    reload)."""
    result = revoke_device(Store(state), load_config(state), device_id)
    typer.echo(f"revoked {device_id} at the aggregator" if result.registry else
               f"{device_id} was already revoked at the aggregator: applying the rest again")
    if result.crl is not None:
        typer.echo(f"CRL {result.crl}: {result.broker_reloaded}")
    else:
        typer.echo(result.broker_reloaded)
    typer.echo(f"{device_id} still holds the federation's secret key: rotate it now "
               "(docs/operations.md, 'Rotating the federation key'): fedface-aggregator "
               f"devices recipients --state {state} --out recipients.json, then the key "
               "holder's `keys rotate`, then `keys install` here")
    _warn_below_quorum(state)
    # the root's status does not see a region's revocations, nor its KEY ROTATION DUE
    typer.echo("in a hierarchy the key is the whole federation's: `devices recipients` at "
               "the root and at every region, one `keys rotate` with all of them, `keys "
               "install` at each (docs/operations.md, 'Rotating the federation key')")


def _warn_below_quorum(state: Path) -> None:
    """Fewer active boxes than the latest round's quorum: no round closes again (a
    region left with one box of its quorum 2 never sent a partial: helper-43). Not at a
    root with regions, whose partials count several updates each."""
    from aggregator.state.regions import region_ids

    store = Store(state)
    try:
        latest, active = store.latest_round(), DeviceRegistry(store).active_ids()
        if latest is None or region_ids(store) or len(active) >= latest.quorum:
            return
    finally:
        store.close()
    typer.echo(f"WARNING: {len(active)} active device(s) left, fewer than the quorum of "
               f"{latest.quorum} updates round {latest.round} needs: no round can close "
               "until boxes are added (devices add), or serve is restarted with a lower "
               "--quorum (the quorum is a privacy floor: never below 2)")


def register(app: typer.Typer, keys_app: typer.Typer, devices_app: typer.Typer) -> None:
    app.command("init")(init)
    keys_app.command("bundle")(keys_bundle)
    devices_app.command("add")(devices_add)
    devices_app.command("list")(devices_list)
    devices_app.command("revoke")(devices_revoke)
    app.add_typer(models_app, name="models")
