"""``fedface-aggregator``: the aggregator operator's CLI.

Expected failures (bad key file, secret context, unknown device, missing state) end
with ONE line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from aggregator.config import init_state, load_config
from aggregator.coordinator import RoundSettings
from aggregator.registry import DeviceRegistry, RegistryError, load_public_key_bytes
from aggregator.store import Store, StoreError
from federation.ckks import DEFAULT_PARAMS, CkksParams
from federation.errors import FederationError
from federation.keys import create_federation_keys

app = typer.Typer(help="FedFace aggregator: adds encrypted updates it can never decrypt.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Federation CKKS keys.", no_args_is_help=True)
devices_app = typer.Typer(help="Devices allowed to contribute.", no_args_is_help=True)
rounds_app = typer.Typer(help="Training rounds.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(devices_app, name="devices")
app.add_typer(rounds_app, name="rounds")

F = TypeVar("F", bound=Callable[..., Any])
EXPECTED = (FederationError, StoreError, RegistryError, ValueError, OSError, sqlite3.Error)

StateOpt = Annotated[
    Path, typer.Option("--state", envvar="FEDFACE_AGGREGATOR_STATE", help="state directory")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EXPECTED as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.filename:
                message = f"{exc.filename}: {message}"
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _store(state: Path) -> Store:
    load_config(state)  # clear error if not initialised
    return Store(state)


# --- keys --------------------------------------------------------------------------
@keys_app.command("create")
@one_line_errors
def keys_create(
    out: Annotated[Path, typer.Option("--out", help="directory for the two context files")],
    poly_modulus_degree: int = DEFAULT_PARAMS.poly_modulus_degree,
    coeff_mod_bits: Annotated[
        str, typer.Option(help="data prime(s) then the special prime, comma separated")
    ] = ",".join(str(b) for b in DEFAULT_PARAMS.coeff_mod_bit_sizes),
    scale_bits: int = DEFAULT_PARAMS.global_scale_bits,
) -> None:
    """Create the federation's CKKS keys (run once, by whoever commissions the federation)."""
    try:
        bits = tuple(int(b) for b in coeff_mod_bits.split(","))
    except ValueError:
        raise ValueError(
            f"--coeff-mod-bits must be integers like 38,40, got {coeff_mod_bits}"
        ) from None
    params = CkksParams(poly_modulus_degree, bits, scale_bits)
    files = create_federation_keys(out, params)
    typer.echo(f"federation key id {files.key_id}")
    typer.echo(f"  {files.secret_context}  (0600) -> EVERY EDGE BOX of the federation, never "
               "the aggregator")
    typer.echo(f"  {files.public_context}  (0644) -> the aggregator: fedface-aggregator init "
               f"--public-context {files.public_context}")


# --- init / serve / status ---------------------------------------------------------
@app.command("init")
@one_line_errors
def init(
    fed: Annotated[str, typer.Option("--fed", help="federation id (a topic level)")],
    state: StateOpt,
    public_context: Annotated[Path, typer.Option("--public-context", help="public context file")],
    aggregator_id: str = "aggregator",
    initial_model: Annotated[str, typer.Option(help="model version round 1 builds on")] = "base",
    count_scale: Annotated[float, typer.Option(help="c = 1/count_scale (federation-wide)")] = 0,
    part_key: Annotated[str, typer.Option(help="federated parameter set key")] = "",
    vector_length: Annotated[int, typer.Option(help="values per update; 0 = first update")] = 0,
) -> None:
    """Create the aggregator's state: config, public context copy, signing key (0600)."""
    kwargs: dict[str, Any] = {"aggregator_id": aggregator_id, "initial_model": initial_model,
                              "part_key": part_key, "vector_length": vector_length or None}
    if count_scale:
        kwargs["count_scale"] = count_scale
    cfg = init_state(state, fed, public_context, **kwargs)
    typer.echo(f"initialised federation {cfg.fed} (key {cfg.key_id}) in {state}")
    typer.echo(f"  give {state / 'aggregator.pub'} to every box (it verifies announcements)")


@app.command("serve")
@one_line_errors
def serve(
    state: StateOpt,
    broker: Annotated[str, typer.Option("--broker", help="mqtt://host:port or mqtts://...")],
    round_deadline: Annotated[float, typer.Option(help="seconds per round")] = 300.0,
    quorum: Annotated[int, typer.Option(help="updates needed to close at the deadline")] = 2,
    rounds: Annotated[int, typer.Option(help="stop after N published rounds; 0 = run on")] = 0,
    chunk_size: Annotated[int, typer.Option(help="bytes per result chunk")] = 256 * 1024,
    max_extensions: Annotated[int, typer.Option(help="deadline extensions w/o quorum")] = 3,
    client_id: Annotated[str, typer.Option(help="MQTT client id; default aggregator-<fed>")] = "",
    ca_file: Annotated[Path | None, typer.Option(help="TLS CA certificate")] = None,
    cert_file: Annotated[Path | None, typer.Option(help="TLS client certificate")] = None,
    key_file: Annotated[Path | None, typer.Option(help="TLS client key")] = None,
    mqtt_protocol: Annotated[str, typer.Option(
        "--mqtt-protocol", help="MQTT version: 5, or 3.1.1 for brokers without MQTT 5 "
        "(e.g. the demo's embedded amqtt)")] = "5",
    log_level: str = "INFO",
) -> None:
    """Run rounds: announce, collect, sum, publish. Ctrl-C / SIGTERM stop cleanly."""
    from aggregator.runner import build_service  # keeps paho out of the other commands

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(state)
    settings = RoundSettings(round_deadline, quorum, cfg.count_scale, cfg.part_key, chunk_size,
                             max_extensions)
    service, transport = build_service(
        state, cfg, settings, broker, client_id or f"aggregator-{cfg.fed}",
        rounds or None, ca_file, cert_file, key_file, mqtt_protocol,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        service.start()
        service.loop(stop)
    finally:
        transport.close()
        service.store.close()


@app.command("status")
@one_line_errors
def status(state: StateOpt, as_json: JsonOpt = False) -> None:
    """Federation, current round, devices, counters."""
    cfg = load_config(state)
    store = Store(state)
    latest = store.latest_round()
    published = store.latest_published()
    info: dict[str, Any] = {
        "fed": cfg.fed,
        "key_id": cfg.key_id,
        "current_round": None if latest is None else _round_summary(store, latest.round),
        "latest_model": None if published is None else published.result_model,
        "devices": {"active": len(DeviceRegistry(store).active_ids()),
                    "total": len(DeviceRegistry(store).list())},
        "counters": store.counters(),
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"federation {cfg.fed} (key {cfg.key_id})")
    cur = info["current_round"]
    if cur:
        typer.echo(f"round {cur['round']}: {cur['status']}, base {cur['base_model']}, "
                   f"{cur['contributions']} update(s), quorum {cur['quorum']}")
    typer.echo(f"latest model: {info['latest_model'] or '-'}")
    typer.echo(f"devices: {info['devices']['active']} active / {info['devices']['total']}")
    for name, value in store.counters().items():
        typer.echo(f"  {name}: {value}")


def _round_summary(store: Store, round_no: int) -> dict[str, Any]:
    row = store.get_round(round_no)
    if row is None:
        raise StoreError(f"no round {round_no}")
    data = row.as_dict()
    data["contributors"] = store.contributors(round_no)
    return data


# --- devices -----------------------------------------------------------------------
@devices_app.command("add")
@one_line_errors
def devices_add(
    device_id: str,
    public_key: Annotated[Path, typer.Option("--public-key", help="the device's public key")],
    state: StateOpt,
) -> None:
    """Register a device and its Ed25519 public key."""
    device = DeviceRegistry(_store(state)).add(device_id, load_public_key_bytes(public_key))
    typer.echo(f"added {device.device_id} (key {device.fingerprint()}...)")


@devices_app.command("list")
@one_line_errors
def devices_list(state: StateOpt, as_json: JsonOpt = False) -> None:
    devices = DeviceRegistry(_store(state)).list()
    rows = [{"device_id": d.device_id, "public_key": d.public_key.hex(), "added_at": d.added_at,
             "revoked_at": d.revoked_at, "active": d.active} for d in devices]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for d in devices:
        typer.echo(f"{d.device_id}\t{'active' if d.active else 'REVOKED'}\t{d.fingerprint()}...")


@devices_app.command("revoke")
@one_line_errors
def devices_revoke(device_id: str, state: StateOpt) -> None:
    """Stop accepting updates from a device (a running serve picks it up within a tick)."""
    DeviceRegistry(_store(state)).revoke(device_id)
    typer.echo(f"revoked {device_id}")


# --- rounds ------------------------------------------------------------------------
@rounds_app.command("list")
@one_line_errors
def rounds_list(state: StateOpt, as_json: JsonOpt = False) -> None:
    rows = [r.as_dict() for r in _store(state).list_rounds()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['round']}\t{r['status']}\t{r['base_model']} -> {r['result_model'] or '-'}"
                   f"\t{r['contributions']} update(s)\t{r['close_reason'] or ''}")


@rounds_app.command("show")
@one_line_errors
def rounds_show(round_no: int, state: StateOpt, as_json: JsonOpt = False) -> None:
    info = _round_summary(_store(state), round_no)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key != "announce":
            typer.echo(f"{key}: {value}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
