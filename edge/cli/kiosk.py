"""``fedface-edge kiosk``: the staff web page (``serve``) and its password (``set-password``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge.cli.context import box, serve_until_signalled
from edge.cli.errors import EXIT_CONFIG, EXIT_USAGE, CliError
from edge.cli.visit_outputs import (
    BoxIdOption,
    FedOption,
    MqttUrlOption,
    events_stream,
    visit_publisher,
    warn_if_another_camera,
)

if TYPE_CHECKING:
    from edge.tracking.visit_events import VisitEvent

log = logging.getLogger(__name__)

kiosk_app = typer.Typer(help="The kiosk web page for security staff.", no_args_is_help=True)


def _read_new_password() -> str:
    if not sys.stdin.isatty():
        # provisioning scripts pipe it in: one line, the newline is not part of it
        return sys.stdin.readline().rstrip("\r\n")
    first = typer.prompt("New kiosk password", hide_input=True)
    second = typer.prompt("Repeat it", hide_input=True)
    if first != second:
        raise CliError("the two passwords differ; nothing was changed",
                       hint="run the command again")
    return str(first)


@kiosk_app.command("set-password")
def set_password(ctx: typer.Context) -> None:
    """Set the staff password (read from stdin, or prompted twice on a terminal).

    Only a hash is stored (argon2id, or scrypt without argon2-cffi), in
    DATA_DIR/kiosk/password.hash, mode 0600. Logged-in sessions end.
    """
    from edge.kiosk.auth import PasswordStore

    password = _read_new_password()
    if not password:
        raise CliError("no password given on stdin",
                       hint="echo 'a long passphrase' | fedface-edge kiosk set-password")
    store = PasswordStore(box(ctx).settings.data_dir)
    store.set(password)
    typer.echo(f"kiosk password set ({store.path})")


def _configured_source(ctx: typer.Context) -> str:
    """camera.source of the provisioned box config (what `provision` chose)."""
    from edge.config import ConfigError, default_config_path, load_config

    path = default_config_path(box(ctx).settings)
    if not path.exists():
        raise CliError(f"no --source given and no box config at {path}",
                       hint="pass --source /dev/video0 (or rtsp://..., dir:FOLDER), or "
                       "provision the box (fedface-edge provision) so edge.toml names the "
                       "camera", exit_code=EXIT_USAGE)
    try:
        camera = load_config(path).camera
    except ConfigError as exc:  # its message names the file and the bad key
        raise CliError(f"no --source given and the box config cannot be used: {exc}",
                       hint="pass --source, or fix the config", exit_code=EXIT_CONFIG) from None
    if camera is None:  # a box in no federation's edge.toml may leave it out
        raise CliError(f"no --source given and {path} has no [camera] source",
                       hint="pass --source, or add [camera] source = ... to it",
                       exit_code=EXIT_USAGE)
    source = camera.source
    log.info("kiosk source %s from %s", source, path)
    return source


@kiosk_app.command("serve")
def serve(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Option(
        "--source", help="Frame source: /dev/video0 or 0 (camera), rtsp://... (stream), a "
        "video file, dir:FOLDER[?fps=N&loop=1&stills=1] (image folder; docs/operations.md, "
        "'Frame sources'). Default: camera.source of "
        "the box config (FEDFACE_CONFIG or DATA_DIR/edge.toml).")] = None,
    host: Annotated[str, typer.Option(
        "--host", help="Listen address. Keep 127.0.0.1 unless the kiosk serves HTTPS "
        "(--tls-cert/--tls-key) or a TLS proxy fronts it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8080,
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout", min=1.0, help="Log staff out after this many idle seconds.")] = 900.0,
    cookie_secure: Annotated[bool, typer.Option(
        "--cookie-secure", help="Send the session cookie over HTTPS only (behind a TLS "
        "proxy; always so with --tls-cert).")] = False,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="PEM certificate: serve the page over HTTPS (with --tls-key).",
        show_default=False)] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", help="PEM private key of --tls-cert.", show_default=False)] = None,
    per_frame: Annotated[bool, typer.Option(
        "--per-frame", help="Recognise every face on every frame instead of once per "
        "visit (the lists then count frames).")] = False,
    detect_every: Annotated[int, typer.Option(
        "--detect-every", min=1, max=10, help="Per visit: detect faces on every k-th frame, "
        "tracking in between (a Raspberry Pi 4 at 30 fps: 2).")] = 1,
    events: Annotated[str | None, typer.Option(
        "--events", help="Also append the visit events to this file as JSON lines, as "
        "`run` does (three per visit; - for stdout). Default: none.",
        show_default=False)] = None,
    mqtt_url: MqttUrlOption = None,
    fed: FedOption = None,
    box_id: BoxIdOption = None,
) -> None:
    """Serve the kiosk page: live view, recognitions, alerts, enrolment, people; the
    visit events also to a file and to Home Assistant's broker, as `run` does."""
    from edge.kiosk import KioskSettings, build_kiosk
    from edge.serving.events import EventWriter

    settings = KioskSettings.from_mapping(
        {"host": host, "port": port, "idle_timeout_s": idle_timeout,
         "cookie_secure": cookie_secure, "tls_cert": tls_cert, "tls_key": tls_key,
         "per_visit": not per_frame,
         "detect_every": detect_every}, source="kiosk options")
    with ExitStack() as stack:
        sinks: list[Callable[[VisitEvent], None]] = []
        if per_frame and (events is not None or mqtt_url is not None):
            raise CliError("--events and --mqtt-url carry visit events; --per-frame has no "
                           "visits", hint="drop one or the other", exit_code=EXIT_USAGE)
        if events is not None:
            writer = EventWriter(events_stream(stack, events), events if events != "-" else None)
            stack.callback(writer.close)  # says what a full disk kept out of the file
            sinks.append(writer.write)
        publisher = None if per_frame else visit_publisher(ctx, stack, mqtt_url, fed, box_id)
        if publisher is not None:
            sinks.append(publisher.publish)
        if source is not None:
            warn_if_another_camera(ctx, source)
        kiosk = build_kiosk(box(ctx).settings, settings, source or _configured_source(ctx),
                            visit_sinks=sinks)
        # the worker stops (ending the open visits into the sinks) before they close
        serve_until_signalled(kiosk.start, kiosk.stop,
                              lambda: f"kiosk on {kiosk.url}, camera "
                              f"{kiosk.services.worker.source.uri} (Ctrl-C to stop)")
    if kiosk.services.worker.status().state == "error":
        raise CliError(kiosk.services.worker.status().message, exit_code=EXIT_USAGE)


def register(app: typer.Typer) -> None:
    app.add_typer(kiosk_app, name="kiosk")
