"""``fedface-edge serve-api`` (the CompreFace-compatible recognition API) and
``fedface-edge api-key create|list|revoke`` (its keys, one or more per service)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.cli.context import box, serve_until_signalled
from edge.cli.identify import ThresholdOption, warn_if_empty

keys_app = typer.Typer(help="API keys of the recognition API (serve-api).",
                       no_args_is_help=True)


@keys_app.command("create")
def create_key(ctx: typer.Context, service: Annotated[str, typer.Argument(
        help="Who will use the key (e.g. double-take); revoked by this name.")]) -> None:
    """Create a key for SERVICE and print it once (only its SHA-256 is stored)."""
    from edge.api.keys import ApiKeys

    key = ApiKeys(box(ctx).settings.data_dir).create(service)
    typer.echo(key)
    typer.echo(f"API key for {service} created; it is shown only now. Clients send it "
               "in the x-api-key header.", err=True)


@keys_app.command("list")
def list_keys(ctx: typer.Context) -> None:
    """Services with keys (the first characters of each key, never the key)."""
    import time

    from edge.api.keys import ApiKeys

    for key in ApiKeys(box(ctx).settings.data_dir).list():
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created))
        typer.echo(f"{key.service:24s} {key.hint}...  created {created}")


@keys_app.command("revoke")
def revoke_key(ctx: typer.Context, service: Annotated[str, typer.Argument(
        help="The service whose keys stop working (a running serve-api applies it at "
        "the next request).")]) -> None:
    """Revoke every key of SERVICE."""
    from edge.api.keys import ApiKeys

    count = ApiKeys(box(ctx).settings.data_dir).revoke(service)
    typer.echo(f"revoked {count} key(s) of {service}")


def serve_api(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(
        "--host", help="Listen address. Beyond loopback it needs --tls-cert/--tls-key "
        "(or --allow-plain-http behind a TLS proxy).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="TCP port (CompreFace's default).")] = 8000,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="PEM certificate: serve HTTPS.", show_default=False)] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", help="PEM private key of --tls-cert.", show_default=False)] = None,
    allow_plain_http: Annotated[bool, typer.Option(
        "--allow-plain-http", help="Serve plain HTTP beyond loopback (a TLS proxy in "
        "front does the encryption).")] = False,
    rate: Annotated[float, typer.Option(
        "--rate", min=0.1, help="Requests a second allowed per API key (burst: twice, at least 1).")
    ] = 20.0,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.1, help="Largest request body.")] = 8.0,
    threshold: ThresholdOption = None,
) -> None:
    """Serve the CompreFace-compatible recognition API on this box's engine and gallery."""
    from edge.api.server import ApiServer, ApiSettings

    settings = ApiSettings(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
                           allow_plain_http=allow_plain_http, rate_per_s=rate,
                           burst=max(1.0, 2 * rate),
                           max_upload_bytes=int(max_upload_mb * 2**20))
    recognizer = box(ctx).recognizer(threshold)  # the models load once, here
    warn_if_empty(ctx)
    server = ApiServer(settings, recognizer, box(ctx).settings.data_dir)
    serve_until_signalled(server.start, server.stop,
                          lambda: f"recognition API on {server.url} (Ctrl-C to stop)")


def register(app: typer.Typer) -> None:
    app.command("serve-api")(serve_api)
    app.add_typer(keys_app, name="api-key")
