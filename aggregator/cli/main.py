"""``fedface-aggregator``: the aggregator operator's CLI.

Expected failures (bad key file, secret context, unknown device, missing state) end
with ONE line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from aggregator.cli import budget
from aggregator.cli import epochs as epochs_cli
from aggregator.cli import operator as operator_cli
from aggregator.cli import regional as regional_cli
from aggregator.cli import status as status_cli
from aggregator.cli.common import (
    EPILOG,
    AggregatorGroup,
    JsonOpt,
    StateOpt,
    local_time,
    one_line_errors,
    print_table,
    resolve_broker,
)
from aggregator.rounds.coordinator import RoundSettings
from aggregator.rounds.schedule import DailyWindow, RoundSchedule
from aggregator.state.config import load_config
from aggregator.state.serve_lock import lock_state
from aggregator.state.store import Store, StoreError
from aggregator.state.verdicts import poisoned_summary
from federation.cli_help import show_flags_without_type
from federation.crypto.bounds import DEFAULT_MAX_SAMPLES, Bounds
from federation.crypto.ckks import DEFAULT_PARAMS, CkksParams
from federation.crypto.keys import (
    KEYHOLDER_KEY_NAME,
    KEYHOLDER_PUB_NAME,
    create_federation_keys,
)
from federation.signals import stop_on_signals
from federation.verdicts import Verdict

show_flags_without_type()

app = typer.Typer(help="FedFace aggregator: adds encrypted updates it can never decrypt.",
                  epilog=EPILOG, no_args_is_help=True, pretty_exceptions_enable=False,
                  cls=AggregatorGroup)
keys_app = typer.Typer(help="Federation CKKS keys.", no_args_is_help=True)
devices_app = typer.Typer(help="Devices allowed to contribute.", no_args_is_help=True)
rounds_app = typer.Typer(help="Training rounds.", no_args_is_help=True)


def _print_release(on: bool) -> None:
    if on:
        from federation.release import release

        typer.echo(release())
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_release,
        help="Print the release (version and build) and exit.")] = False) -> None:
    """FedFace aggregator: adds encrypted updates it can never decrypt."""


app.add_typer(keys_app, name="keys")
app.add_typer(devices_app, name="devices")
app.add_typer(rounds_app, name="rounds")
app.add_typer(regional_cli.regions_app, name="regions")

# init, devices, models and keys bundle live in operator_cli.py, status in status_cli.py
operator_cli.register(app, keys_app, devices_app)
status_cli.register(app)
epochs_cli.register(keys_app, devices_app)  # key epochs: rotate, install, recipients


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
        str, typer.Option(help="data prime(s) then the special prime, comma separated "
                          "(default: the policy's set for --boxes, else "
                          f"{','.join(str(b) for b in DEFAULT_PARAMS.coeff_mod_bit_sizes)})")
    ] = "",
    scale_bits: Annotated[int, typer.Option(
        help=f"scale 2^bits (default: the policy's, else {DEFAULT_PARAMS.global_scale_bits})")] = 0,
    boxes: budget.BoxesOpt = 0,
    regions: budget.RegionsOpt = budget.REGIONS,
    max_samples: budget.MaxSamplesOpt = DEFAULT_MAX_SAMPLES,
    max_value: budget.MaxValueOpt = budget.MAX_VALUE,
    precision: budget.PrecisionOpt = budget.PRECISION,
    min_samples: budget.MinSamplesOpt = budget.MIN_SAMPLES,
) -> None:
    """Create the federation's CKKS keys (run once, by whoever commissions the federation).
    With --boxes, the set is the policy's for that declared size (docs/protocol.md)."""
    size = budget.declared_size(boxes, regions, max_samples, max_value, precision, min_samples)
    params = budget.policy_params(size) if size is not None else DEFAULT_PARAMS
    if coeff_mod_bits:
        try:
            bits = tuple(int(b) for b in coeff_mod_bits.split(","))
        except ValueError:
            raise ValueError(
                f"--coeff-mod-bits must be integers like 38,40, got {coeff_mod_bits}"
            ) from None
        params = CkksParams(poly_modulus_degree, bits, scale_bits or params.global_scale_bits)
    elif scale_bits or poly_modulus_degree != params.poly_modulus_degree:
        params = CkksParams(poly_modulus_degree, params.coeff_mod_bit_sizes,
                            scale_bits or params.global_scale_bits)
    if size is not None:
        for line in budget.budget_lines(budget.check_context(params, size)):
            typer.echo(line)
    files = create_federation_keys(out, params)
    typer.echo(f"federation key id {files.key_id}")
    typer.echo(f"  {files.secret_context}  (0600) -> EVERY EDGE BOX of the federation, never "
               "the aggregator")
    typer.echo(f"  {files.public_context}  (0644) -> the aggregator: fedface-aggregator init "
               f"--public-context {files.public_context}")
    holder = files.secret_context.parent
    typer.echo(f"  {holder / KEYHOLDER_KEY_NAME}  (0600) stays here, with whoever holds the "
               "keys: it signs each new key epoch")
    typer.echo(f"  {holder / KEYHOLDER_PUB_NAME}  (0644) -> every box, in the key bundle "
               "(fedface-aggregator keys bundle)")


# --- serve -------------------------------------------------------------------------
@app.command("serve")
@one_line_errors
def serve(
    state: StateOpt,
    broker: Annotated[str, typer.Option("--broker", help="mqtt://host:port or mqtts://...; "
                                        "default: broker.url stored by init")] = "",
    round_deadline: Annotated[float, typer.Option(help="seconds per round")] = 300.0,
    quorum: Annotated[int, typer.Option(help="updates needed to close at the deadline")] = 2,
    rounds: Annotated[int, typer.Option(help="stop after N published rounds; 0 = run on")] = 0,
    chunk_size: Annotated[int, typer.Option(help="bytes per result chunk")] = 256 * 1024,
    max_extensions: Annotated[int, typer.Option(help="deadline extensions w/o quorum")] = 3,
    # --- round schedule (aggregator/rounds/schedule.py; docs/operations.md "Round schedule") ---
    round_interval: Annotated[float, typer.Option(
        min=0, help="minimum seconds between two round openings (0: back to back)")] = 0.0,
    round_window: Annotated[str, typer.Option(
        help="open rounds only in this daily window, local time, e.g. 01:00-05:00 "
        "(empty: any time)")] = "",
    min_new_samples: Annotated[int, typer.Option(
        min=0, help="announced: a box with fewer new enrolled samples since its last "
        "update sits the round out; a round nobody has anything new for is skipped "
        "(0: every box trains every round)")] = 1,
    client_id: Annotated[str, typer.Option(help="MQTT client id; default aggregator-<fed>")] = "",
    ca_file: Annotated[Path | None, typer.Option(
        help="TLS CA certificate (default: broker.ca_file stored by init)")] = None,
    cert_file: Annotated[Path | None, typer.Option(
        help="TLS client certificate (default: broker.cert_file)")] = None,
    key_file: Annotated[Path | None, typer.Option(
        help="TLS client key (default: broker.key_file)")] = None,
    mqtt_protocol: Annotated[str, typer.Option(
        "--mqtt-protocol", help="MQTT version: 5, or 3.1.1 for brokers without MQTT 5 "
        "(e.g. the demo's embedded amqtt)")] = "5",
    log_level: str = "INFO",
    sum_workers: Annotated[int | None, typer.Option(
        min=0, max=16, help="processes holding the round's CKKS sum (default: one per "
        "core, at most 4; 0: sum in the service process, least memory)",
        show_default=False)] = None,
    intake_processes: Annotated[int, typer.Option(
        min=1, max=16, help="processes that receive, verify and spool updates (each hears "
        "a share of the devices; 1: the service process itself). More than 1 lifts the "
        "one-core limit of the service process in bursts; see docs/operations.md")] = 1,
    # --- fleet options (aggregator/cli/regional.py) ---
    forward_to: Annotated[str, typer.Option(
        help="regional mode: the ROOT aggregator's broker; closed rounds' sums go there as "
        "partials and the root's result is published here")] = "",
    root_key: Annotated[Path | None, typer.Option(help="the root's aggregator.pub")] = None,
    region_id: Annotated[str, typer.Option(help="this region's id at the root")] = "",
    root_aggregator_id: Annotated[str, typer.Option(help="the root's sender id")] = "aggregator",
    root_ca_file: Annotated[Path | None, typer.Option(
        help="TLS CA of the root's broker (default: --ca-file)")] = None,
    root_cert_file: Annotated[Path | None, typer.Option(
        help="client certificate for the root's broker, CN = --region-id, issued by the "
        "root's CA (default: --cert-file)")] = None,
    root_key_file: Annotated[Path | None, typer.Option(
        help="its private key (with --root-cert-file)")] = None,
    max_samples: Annotated[int, typer.Option(
        min=0, help="bounds: the most samples one box's update may weigh (boxes clamp "
        "their n to it and refuse a result over k x it; 0: no bounds)")] = DEFAULT_MAX_SAMPLES,
    clip_norm: Annotated[float, typer.Option(
        min=0.0, help="bounds: L2 clip of each box's change to the round's base (boxes "
        "refuse a result that moves it further; 0: no clip)")] = 0.0,
    dp_clip: Annotated[float, typer.Option(help="DP: L2 clip of each box's delta")] = 0.0,
    dp_noise: Annotated[float, typer.Option(help="DP: Gaussian noise multiplier z")] = 0.0,
    dp_delta: Annotated[float, typer.Option(help="DP: delta of the reported epsilon")] = 1e-5,
    dp_mode: Annotated[str, typer.Option(help="DP: local or distributed")] = "local",
    rate_limit_msgs: Annotated[float, typer.Option(
        help="per-device messages/s (burst 10 s worth); 0 with --rate-limit-mib 0: off")] = 200.0,
    rate_limit_mib: Annotated[float, typer.Option(
        help="per-device MiB/s (burst 8 s worth)")] = 16.0,
) -> None:
    """Run rounds: announce, collect, sum, publish. Ctrl-C / SIGTERM stop cleanly."""
    from aggregator.runner import build_service  # keeps paho out of the other commands

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(state)
    budget.check_serve_cap(cfg.budget, max_samples)
    broker, ca_file, cert_file, key_file = resolve_broker(cfg, broker, ca_file, cert_file,
                                                          key_file)
    dp = regional_cli.dp_settings(dp_clip, dp_noise, dp_delta, dp_mode)
    schedule = RoundSchedule(round_interval,
                             DailyWindow.parse(round_window) if round_window else None)
    bounds = Bounds(max_samples, clip_norm or None) if max_samples else None
    if bounds is None and clip_norm:
        raise typer.BadParameter("--clip-norm needs --max-samples > 0 (they are one policy)")
    settings = RoundSettings(round_deadline, quorum, cfg.count_scale, cfg.part_key, chunk_size,
                             max_extensions, dp, schedule, min_new_samples, bounds)
    limiter = regional_cli.rate_limiter(rate_limit_msgs, rate_limit_mib)
    # checked before connecting anywhere: a bad option fails fast, with nothing to undo
    root_tls = regional_cli.root_link_tls(_tls(ca_file, cert_file, key_file), root_ca_file,
                                          root_cert_file, root_key_file)
    # one serve per state dir (the kernel drops the lock when the process dies; closed
    # here on every way out, or a serve that failed would hold it in this process)
    held = lock_state(state)
    try:
        service, transport = build_service(
            state, cfg, settings, broker, client_id or f"aggregator-{cfg.fed}",
            rounds or None, ca_file, cert_file, key_file, mqtt_protocol, sum_workers,
            intake_processes, rate_limiter=limiter,
        )
        logging.getLogger("aggregator").info("round schedule: %s; min new samples per box %d",
                                             schedule.describe(), min_new_samples)
        logging.getLogger("aggregator").info(
            "bounds: %s", "off (no cap on a box's weight)" if bounds is None else
            f"n capped at {bounds.max_samples} per update, "
            + (f"delta clipped to L2 norm {bounds.clip_norm:g}" if bounds.clip_norm
               else "delta not clipped"))
        if dp is not None:
            logging.getLogger("aggregator").info("%s", regional_cli.describe_dp(dp))
        links = [transport]
        if forward_to:
            try:
                links.append(regional_cli.attach_forwarder(
                    service, state, forward_to, root_key, region_id, root_aggregator_id,
                    mqtt_protocol, root_tls))
            except BaseException:
                transport.close()
                service.store.close()
                raise
        stop = threading.Event()
        # signals: the one that stopped serve, for its last log line. Named and set from a
        # thread of their own: a handler that set the Event while this thread held its
        # lock waited for it for ever (federation.signals)
        with stop_on_signals(stop) as signals:
            try:
                service.start()
                service.loop(stop)
            finally:
                service.close()  # intake shards, summing workers
                for link in reversed(links):
                    link.close()
                service.store.close()
                logging.getLogger("aggregator").info(
                    "serve stopped (%s)", signals[0] if signals else
                    "its rounds are done" if service.finished.is_set() else "an error")
    finally:
        held.close()


def _tls(ca: Path | None, cert: Path | None, key: Path | None) -> Any:
    from federation.transport.mqtt import TlsConfig

    return TlsConfig(ca, cert, key) if (ca or cert or key) else None


def _round_summary(store: Store, round_no: int) -> dict[str, Any]:
    row = store.get_round(round_no)
    if row is None:
        raise StoreError(f"no round {round_no}")
    data = row.as_dict()
    data["contributors"] = store.contributors(round_no)
    data["updates"] = store.updates_of(round_no)  # a region's partial: the updates it sums
    data["poisoned"] = poisoned_summary(store, round_no)  # None: not poisoned
    return data


# --- rounds ------------------------------------------------------------------------
@rounds_app.command("list")
@one_line_errors
def rounds_list(state: StateOpt, as_json: JsonOpt = False) -> None:
    store = _store(state)
    # UPDATES: box updates (a region's partial counts as those it sums), as the quorum
    rows = [{**r.as_dict(), "updates": store.updates_of(r.round)} for r in store.list_rounds()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_table(("ROUND", "STATUS", "BASE -> RESULT", "UPDATES", "OPENED", "CLOSE REASON"),
                [(r["round"], r["status"], f"{r['base_model']} -> {r['result_model'] or '-'}",
                  r["updates"], local_time(r["opened_at"]), r["close_reason"] or "-")
                 for r in rows],
                "no rounds yet: `fedface-aggregator serve` opens round 1")


@rounds_app.command("show")
@one_line_errors
def rounds_show(
    round_no: int, state: StateOpt, as_json: JsonOpt = False,
    no_broker: Annotated[bool, typer.Option(
        "--no-broker", help="skip the boxes' verdicts (read from their retained status)")
    ] = False,
    wait: Annotated[float, typer.Option(help="seconds to collect retained statuses")] = 2.0,
) -> None:
    """A round: contributors, close reason, result, and each box's verdict on it."""
    from aggregator.operator import OperatorError, device_statuses

    store = _store(state)
    info = _round_summary(store, round_no)
    cfg = load_config(state)
    verdicts: dict[str, Any] = {}
    unreachable = None
    if cfg.broker is not None and not no_broker:
        try:
            for device, st in device_statuses(cfg, store, wait).items():
                mine = [v for v in st.get("verdicts", []) if v.get("round") == round_no]
                if mine:
                    verdicts[device] = mine[-1]
        except OperatorError as exc:  # the round itself is in the state: still show it
            unreachable = str(exc)
    info["verdicts"] = verdicts
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key in _TIMES:  # --json keeps the Unix times
            value = local_time(value)
        if key not in ("announce", "verdicts", "poisoned"):
            typer.echo(f"{key}: {value}")
    if info["poisoned"] is not None:
        typer.echo(status_cli.poisoned_lines(info["poisoned"]))
    if unreachable:
        typer.echo(f"box verdicts: not available ({unreachable})")
    for device, data in sorted(verdicts.items()):
        verdict = Verdict.from_dict(data)
        if verdict is not None:
            typer.echo(f"  {device} {verdict.summary()}")


_TIMES = ("opened_at", "deadline", "closed_at")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
