"""``fedface-edge demo`` (a whole federation on this machine) and ``fedface-edge join``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge.cli.context import box
from edge.demo import DEMO_PART, DEMO_ROUNDS
from models.federated_parts import DEFAULT_PART

if TYPE_CHECKING:
    from edge.config import BoxConfig
    from edge.federated.api import ClientEvent
    from edge.federated.client import FederationClient


BROKER_WAIT_S = 15.0  # join: time to connect before it says it cannot
PROBE_EVERY_S = 60.0  # join: while it cannot connect, how often it asks the broker's TLS why


def demo(
    faces: Annotated[Path, typer.Option(
        "--faces", help="Folder with one sub-folder of photos per person (e.g. LFW).")],
    boxes: Annotated[int, typer.Option("--boxes", min=1, help="Emulated edge boxes.")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")
                      ] = DEMO_ROUNDS,
    broker: Annotated[str | None, typer.Option(
        "--broker", help="mqtt://host:port of a running broker; default: an embedded one.",
        show_default=False)] = None,
    people_per_box: Annotated[int, typer.Option(
        "--people-per-box", min=2, help="People enrolled on each box (disjoint).")] = 30,
    images_per_person: Annotated[int, typer.Option(
        "--images-per-person", min=1, help="Enrolment photos per person.")] = 2,
    heldout_per_person: Annotated[int, typer.Option(
        "--heldout-per-person", min=0, help="Photos per person kept for accuracy.")] = 2,
    workdir: Annotated[Path | None, typer.Option(
        "--workdir", help="New or empty directory for keys and state, kept afterwards "
        "(default: a temp dir, removed at the end unless the demo fails).",
        show_default=False)] = None,
    part: Annotated[str, typer.Option("--part", help="Federated parameter set (the demo's "
                                      f"default has the most headroom; a box's is "
                                      f"{DEFAULT_PART}).")] = DEMO_PART,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after (s).")] = 900.0,
    train_budget: Annotated[float, typer.Option(
        "--train-budget", help="Max seconds a box optimises per round (its class centres "
        "and its steps; at least one step is taken). Not counted: starting the round's "
        "training process and, at a box's first round, extracting its photos' trunk "
        "features (tens of seconds on a loaded machine), so a round's `train` time can be "
        "longer.")] = 20.0,
    cameras: Annotated[str | None, typer.Option(
        "--cameras", help="Each box's camera look, dealt to the boxes in turn, comma-separated:"
        " clean (the photos as they are), ir-grey, cheap-webcam, motion-blur, backlight,"
        " low-light, focus-blur (default: the six kiosk looks, hardest first, in that"
        " order).",
        show_default=False)] = None,
    strangers_per_box: Annotated[int, typer.Option(
        "--strangers-per-box", min=0, help="People no box enrols, one photo each through "
        "the box's camera: how many of them each model names as someone.")] = 50,
) -> None:
    """Run a whole federation on this machine: keys, aggregator, N boxes, R rounds."""
    import signal

    from edge.demo.faces import DemoOptions
    from edge.demo.run import run_demo

    def interrupted(*_: object) -> None:
        # as Ctrl-C: the demo stops its boxes, then its aggregator, and says `interrupted`
        # (Python's default for these signals ends the process without any of that)
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    run_demo(DemoOptions(
        faces=faces, boxes=boxes, rounds=rounds, broker=broker, people_per_box=people_per_box,
        images_per_person=images_per_person, heldout_per_person=heldout_per_person,
        workdir=workdir, part=part, timeout_s=timeout, train_budget_s=train_budget,
        strangers_per_box=strangers_per_box,
        **({} if cameras is None else
           {"cameras": tuple(c.strip() for c in cameras.split(",") if c.strip())}),
    ), out=typer.echo)


def join(
    ctx: typer.Context,
    broker: Annotated[str | None, typer.Option(
        "--broker", help="mqtt://host:port or mqtts://... (default: the config's)")] = None,
    fed: Annotated[str | None, typer.Option("--fed", help="Federation id.")] = None,
    device_id: Annotated[str | None, typer.Option("--device-id", help="This box's id.")] = None,
    secret_context: Annotated[Path | None, typer.Option(
        "--secret-context", exists=True, dir_okay=False, help="federation-secret.tenseal")
    ] = None,
    device_key: Annotated[Path | None, typer.Option(
        "--device-key", exists=True, dir_okay=False, help="This box's Ed25519 key (0600).")
    ] = None,
    aggregator_key: Annotated[Path | None, typer.Option(
        "--aggregator-key", exists=True, dir_okay=False, help="aggregator.pub")] = None,
    part: Annotated[str | None, typer.Option(
        "--part", help=f"Federated parameter set (default: the config's, else {DEFAULT_PART}); "
        "must be the one the aggregator announces.", show_default=False)] = None,
    protocol: Annotated[str, typer.Option("--protocol", help="MQTT 5 or 3.1.1.")] = "5",
    config: Annotated[Path | None, typer.Option(
        "--config", help="Provisioned box config (edge.toml): broker with TLS client "
        "certificate, keys, ids. Options given explicitly win.")] = None,
) -> None:
    """Take part in the federation until Ctrl-C: train on the gallery, send encrypted
    updates, apply federated models."""
    from edge.federated.api import ClientConfig
    from federation.crypto.keys import load_secret_context, read_private_key, read_public_key
    from federation.signals import stop_on_signals
    from federation.transport.base import Will
    from federation.transport.mqtt import MqttTransport

    try:
        from edge.training.trainer import check_torch

        check_torch()  # in a child: this process never imports torch (edge.training.trainer)
    except ImportError as exc:
        from edge.cli.errors import EXIT_TRAINING, CliError

        # 10 (the exit codes' "training"; it said 2): the join unit does not restart it,
        # no restart would install torch
        raise CliError(f"training needs torch ({exc})", exit_code=EXIT_TRAINING,
                       hint="reinstall with firmware_scripts/install-*.sh --with-train, or "
                       "pip install 'fedface[train]' into this box's venv") from None
    tls = None
    if config is not None:
        box(ctx).resolve(config)  # the file's data dir, threads... (edge.config)
    if config is not None or None in (broker, fed, device_id, secret_context, device_key,
                                      aggregator_key):
        from federation.transport.mqtt import TlsConfig

        cfg = box(ctx).require_config()
        broker, fed = broker or cfg.broker.url, fed or cfg.box.fed
        device_id = device_id or cfg.box.device_id
        secret_context = secret_context or cfg.federation.secret_context
        device_key = device_key or cfg.federation.device_key
        aggregator_key = aggregator_key or cfg.federation.aggregator_key
        tls = TlsConfig(cfg.broker.ca_file, cfg.broker.cert_file, cfg.broker.key_file)
    assert broker and fed and device_id and secret_context and device_key and aggregator_key
    if tls is not None:
        _require_provisioned(box(ctx).require_config())
    the_box = box(ctx).box()
    _hold_join_lock(ctx, the_box.federation_dir)
    fed_part = the_box.part(part)
    sink = the_box.model_sink(fed_part)
    trainer = the_box.trainer(fed_part)

    def transport(will: Will) -> MqttTransport:
        return MqttTransport(broker, device_id, will=will, protocol=protocol, tls=tls)

    client = the_box.federation_client(
        ClientConfig(fed, device_id), transport, load_secret_context(secret_context),
        read_private_key(device_key), read_public_key(aggregator_key), trainer, sink,
        on_event=_echo_event, secret_context=secret_context)
    stop = threading.Event()
    # the signal names itself in stopped_by and sets stop from a thread of its own: a
    # handler that set the Event while this thread held its lock hung (federation.signals)
    with stop_on_signals(stop) as stopped_by:
        client.start()
        if client.revoked is None:  # "joined" was said before the broker had accepted it
            typer.echo(f"{device_id} joining federation {fed} via {broker}; model "
                       f"{client.version}")
        # A revoked box stops for good (exit 8: the service manager must not restart it;
        # firmware_scripts/systemd/fedface-join.service.in).
        _watch_connection(client, broker, box(ctx).config if tls is not None else None, stop)
        _say_stopping(client, stopped_by)
        client.stop()
    if stopped_by:  # as serve says it: a stop asked for, not a crash
        typer.echo(f"{device_id}: join stopped ({stopped_by[0]})")
    if client.revoked is not None:
        from edge.cli.errors import EXIT_PROVISIONING, CliError
        from edge.federated.revocation import REPROVISION

        raise CliError(f"{client.revoked.summary()}: this box no longer takes part",
                       hint=REPROVISION, exit_code=EXIT_PROVISIONING)


def _say_stopping(client: FederationClient, stopped_by: list[str]) -> None:
    """Said the moment a stop is asked for while a round trains: the stop ends the
    training's child process at once, but it went silent for ~16 s before (it waited
    the round out), and a technician pressed Ctrl-C again or reached for kill -9."""
    from edge.federated.client import STOP_TRAINING_S
    from federation.transport.mqtt import DEFAULT_CLOSE_FLUSH_TIMEOUT

    training = client.training_round
    if stopped_by and training is not None:
        most = STOP_TRAINING_S + DEFAULT_CLOSE_FLUSH_TIMEOUT  # the job, then the broker's acks
        typer.echo(f"stopping: ending round {training}'s training, which is not sent "
                   f"({most:.0f} s at most)")


JOIN_LOCK = "join.lock"


def _hold_join_lock(ctx: typer.Context, federation_dir: Path) -> None:
    """One join per box, held until the command ends: a second one (another terminal)
    took the broker session from the first in turn, both printing 'connection lost'
    with no word of why (helper-57)."""
    from edge.cli.errors import EXIT_GALLERY, CliError
    from federation.files import PRIVATE_DIR, make_dirs
    from federation.process_lock import LockHeld, hold_lock

    make_dirs(federation_dir, PRIVATE_DIR)
    try:
        ctx.call_on_close(hold_lock(federation_dir / JOIN_LOCK, wait_seconds=5.0).close)
    except LockHeld as held:
        raise CliError(f"another `fedface-edge join` (pid {held.holder}) runs on this box "
                       f"({federation_dir.parent}): one per box",
                       hint="stop it first (sudo systemctl stop fedface-join, or Ctrl-C in "
                       "its terminal)", exit_code=EXIT_GALLERY) from None


def _require_provisioned(cfg: BoxConfig) -> None:
    """A box not signed yet, or whose keys or certificate cannot be used, stops with
    doctor's words and exit 7 (not provisioned: systemd does not restart it); it said
    'internal error: FileNotFoundError' (exit 1, restarted for ever). A revoked box is
    let through: the client says so and exits 8."""
    from edge.cli.errors import EXIT_CONFIG, CliError
    from edge.doctor import check_certificate, check_federation_keys
    from edge.federated.revocation import revocation_state

    if revocation_state(cfg.box.data_dir) is not None:
        return
    for check in (check_certificate(cfg), check_federation_keys(cfg)):
        if not check.ok:
            raise CliError(f"{check.name}: {check.detail}", hint=check.hint,
                           exit_code=EXIT_CONFIG)


def _watch_connection(client: FederationClient, broker: str, cfg: BoxConfig | None,
                      stop: threading.Event) -> None:
    """Until stopped or revoked: when the broker has not taken the box's connection for
    BROKER_WAIT_S, say so once and why (a wrong URL, port or certificate is not left to a
    silent retry loop), probing its TLS again every PROBE_EVERY_S: a broker that refuses
    the certificate as revoked (its CRL) ends the join like the aggregator's notice,
    also when the box lost that notice's record."""
    from edge.doctor import broker_refusal

    last_up, next_probe, warned = time.monotonic(), 0.0, False
    while client.revoked is None and not stop.wait(1.0):
        now = time.monotonic()
        if client.transport.connected:
            last_up, warned = now, False
            continue
        if now - last_up < BROKER_WAIT_S or now < next_probe:
            continue
        next_probe = now + PROBE_EVERY_S
        why, revoked = broker_refusal(cfg) if cfg is not None else (None, False)
        if revoked or warned:
            continue  # revoked: the loop ends on the record broker_refusal wrote
        warned = True
        typer.echo(f"warning: the broker at {broker} has not accepted this box's "
                   f"connection in {BROKER_WAIT_S:.0f} s" + (f" ({why})" if why else "")
                   + "; retrying in the background (`fedface-edge doctor` checks the "
                   "broker, the certificates and the clock)", err=True)


def _echo_event(event: ClientEvent) -> None:
    why = event.data.get("detail") or event.data.get("reason") or event.data.get("error")
    if event.kind == "key_epoch":  # printed bare: which key replaced which (helper-42)
        why = (f"installed key {event.data.get('key_id')} (epoch {event.data.get('epoch')}), "
               f"replacing {event.data.get('previous')}")
    # events outside any round (a revocation) carry round 0: no "round 0: " for them
    where = f"round {event.round}: " if event.round else ""
    typer.echo(f"{where}{event.kind}" + (f" ({why})" if why else ""),
               err=event.kind in ("not_joined", "result_rejected", "error"))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("join")(join)
