"""Where a box's visit events go, shared by ``run`` and ``kiosk serve``: a JSON-lines file
and an MQTT broker (Home Assistant's), from options or the box config's ``[events]``."""

from __future__ import annotations

import re
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO, cast

import typer

from edge.cli.context import box
from edge.cli.errors import EXIT_CONFIG, EXIT_USAGE, CliError
from federation.errors import FederationError
from federation.files import open_new

if TYPE_CHECKING:
    from edge.tracking.mqtt_events import VisitPublisher

EVENTS_CONNECT_WAIT_S = 3.0  # before saying that the events broker is not reachable

MqttUrlOption = Annotated[str | None, typer.Option(
    "--mqtt-url", help="Publish visit events and Home Assistant discovery to this "
    "broker (mqtt://host:1883). Default: the box config's events.mqtt_url; none: no "
    "MQTT.", show_default=False)]
FedOption = Annotated[str | None, typer.Option(
    "--fed", help="Federation id in the events topic (default: the box config's; 'local' "
    "on a box in no federation).",
    show_default=False)]
BoxIdOption = Annotated[str | None, typer.Option(
    "--box-id", help="Box id in the events topic (default: the box config's device id; "
    "the host name on a box in no federation).",
    show_default=False)]


def events_stream(stack: ExitStack, events: str) -> TextIO:
    """The events file, opened for appending (0600), closed with ``stack``; - is stdout."""
    if events == "-":
        return sys.stdout
    try:
        # recognition events name people: the box user's alone, whatever the umask
        return cast(TextIO, stack.enter_context(open_new(Path(events), 0o600, "a",
                                                         encoding="utf-8", buffering=1)))
    except OSError as exc:
        raise CliError(f"cannot write events to {events}: {exc.strerror}",
                       hint="pass a writable file or - for stdout", exit_code=EXIT_USAGE) from exc


STANDALONE_FED = "local"


def warn_if_another_camera(ctx: typer.Context, source: str) -> None:
    """``--source`` beats edge.toml's camera.source, and the installed services pass
    edge.env's FEDFACE_SOURCE: a camera changed in edge.toml (by ``provision --camera``)
    was ignored by them without a word (helper-58)."""
    from edge.vision.frame_source import shown_uri

    camera = box(ctx).camera
    if camera is not None and camera.source != source:
        typer.echo(f"warning: using --source {shown_uri(source)}; {box(ctx).config_path} "
                   f"names camera.source {shown_uri(camera.source)}, not used (the services "
                   "take FEDFACE_SOURCE of /etc/fedface/edge.env)", err=True)


def host_id() -> str:
    """This host's name as a topic id (1-64 of A-Z a-z 0-9 . _ -)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-.")
    return name or "box"


def visit_publisher(ctx: typer.Context, stack: ExitStack, url: str | None, fed: str | None,
               box_id: str | None) -> VisitPublisher | None:
    """The MQTT side of per-visit events: ``--mqtt-url``, else the config's ``[events]``."""
    from edge.tracking.mqtt_events import MAX_QUEUED_EVENTS, open_visit_publisher

    config = box(ctx).config
    events = box(ctx).events  # a box in no federation's edge.toml may have [events] too
    from_config = url is None  # a bad [events] is a configuration error (exit 7)
    url = url or (events.mqtt_url if events is not None else None)
    if url is None:
        return None
    # a box in no federation has no ids of its own: "local" and its host name, unless
    # given (helper-58: its documented [events] section stopped every run)
    fed = fed or (config.box.fed if config is not None else STANDALONE_FED)
    box_id = box_id or (config.box.device_id if config is not None else host_id())
    try:
        publisher = open_visit_publisher(
            url, fed, box_id, username=events.username if events else None,
            password_file=events.password_file if events else None,
            ca_file=events.ca_file if events else None,
            include_crop=events.include_crop if events else False,
            discovery_prefix=events.discovery_prefix if events else "homeassistant")
    except (ValueError, FederationError) as exc:
        if from_config:  # it said 'check --mqtt-url' and exit 2 for edge.toml's [events]
            raise CliError(f"cannot publish visit events: {exc}",
                           hint=f"fix [events] in {box(ctx).config_path}",
                           exit_code=EXIT_CONFIG) from exc
        raise CliError(f"cannot publish visit events: {exc}",
                       hint="check --mqtt-url / --fed / --box-id or the config's [events]",
                       exit_code=EXIT_USAGE) from exc
    stack.callback(publisher.close)  # "offline", then flushes what is queued (bounded)
    if not _connected_or_refused(publisher, EVENTS_CONNECT_WAIT_S):
        typer.echo(f"warning: the events broker at {url} is not reachable yet; recognition "
                   f"goes on and visit events wait in memory (at most "
                   f"{MAX_QUEUED_EVENTS:,}) until it is",
                   err=True)
    return publisher


def _connected_or_refused(publisher: VisitPublisher, timeout: float) -> bool:
    """Wait until connected (True), or the broker refused the login, which the transport
    has said then, naming the username and password file (True too: the broker is
    reachable, and "not reachable" would send the user to the network), or ``timeout``."""
    from federation.transport.mqtt import MqttTransport  # what open_visit_publisher makes

    transport = publisher.transport
    deadline = time.monotonic() + timeout
    while not transport.wait_connected(min(0.1, max(0.0, deadline - time.monotonic()))):
        if isinstance(transport, MqttTransport) and transport.refusals.login:
            return True
        if time.monotonic() >= deadline:
            return False
    return True
