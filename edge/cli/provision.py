"""``fedface-edge provision``: make this box a member of a federation.

Two passes, because the operator signs in between:

1. ``provision --device-id box-17 --bundle fed.ffkb --camera /dev/fedface-camera``:
   imports the key bundle (passphrase from --passphrase-file, FEDFACE_BUNDLE_PASSPHRASE
   or a prompt), creates the box's keys and ``box-17.request.json`` for the operator,
   tests the camera, sets the kiosk password, writes the config;
2. ``provision --install-reply box-17.reply.json``: installs the certificate.

Every value missing from the options is prompted for on a terminal; with
``--non-interactive`` (or no terminal) a missing value is an error instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.cli.context import box
from edge.cli.errors import CliError

PASSPHRASE_ENV = "FEDFACE_BUNDLE_PASSPHRASE"


def _secret_from(path: Path | None, env: str | None, prompt: str, interactive: bool,
                 confirm: bool = False) -> str:
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if env and os.environ.get(env):
        return os.environ[env]
    if not interactive:
        raise CliError(f"{prompt.lower()} not given",
                       hint=f"pass it in a file{f' or set {env}' if env else ''}")
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


def _value(given: str | None, prompt: str, interactive: bool, option: str,
           default: str | None = None) -> str:
    if given:
        return given
    if not interactive:
        if default:
            return default
        raise CliError(f"{option} is required", hint=f"fedface-edge provision {option} ...")
    return str(typer.prompt(prompt, default=default))


def _choose_camera(given: str | None, interactive: bool) -> str:
    if given or not interactive:
        return _value(given, "Camera", interactive, "--camera")
    found = sorted(str(p) for p in Path("/dev").glob("video*"))
    stable = "/dev/fedface-camera"
    default = stable if Path(stable).exists() else (found[0] if found else None)
    typer.echo(f"cameras found: {', '.join(found) or 'none'}")
    return str(typer.prompt("Camera (device, rtsp://..., or dir:FOLDER)", default=default))


def provision(
    ctx: typer.Context,
    device_id: Annotated[str | None, typer.Option("--device-id", help="This box's id.")] = None,
    bundle: Annotated[Path | None, typer.Option(
        "--bundle", exists=True, dir_okay=False, help="Federation key bundle (.ffkb).")] = None,
    passphrase_file: Annotated[Path | None, typer.Option(
        "--passphrase-file", help=f"File holding the bundle passphrase (or {PASSPHRASE_ENV}).")
    ] = None,
    broker: Annotated[str | None, typer.Option(
        "--broker", help="mqtts://host:port (default: the bundle's).")] = None,
    camera: Annotated[str | None, typer.Option("--camera", help="Camera source.")] = None,
    skip_camera_test: Annotated[bool, typer.Option(
        "--skip-camera-test", help="Do not read a frame now (camera not attached yet).")
    ] = False,
    kiosk_password_file: Annotated[Path | None, typer.Option(
        "--kiosk-password-file", help="File holding the kiosk staff password.")] = None,
    install_reply: Annotated[Path | None, typer.Option(
        "--install-reply", exists=True, dir_okay=False,
        help="The operator's reply (certificate) to install.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Config file (default FEDFACE_CONFIG or DATA_DIR/edge.toml).")] = None,
    non_interactive: Annotated[bool, typer.Option(
        "--non-interactive", help="Never prompt: a missing value is an error.")] = False,
) -> None:
    """Provision this box: keys, key bundle, certificate request/reply, camera, kiosk
    password, config."""
    from edge.config import BoxConfig, StandaloneConfig, default_config_path, load_config
    from edge.provision import (
        BoxFiles,
        build_config,
        create_identity,
        import_bundle,
        install_certificate,
        probe_camera,
        read_reply,
        read_trust,
        request_fingerprints,
        write_config,
    )

    settings = box(ctx).settings
    interactive = not non_interactive and sys.stdin.isatty()
    # the file the other commands will read (edge.config.resolve_settings)
    config_path = config or box(ctx).config_path or default_config_path(settings)
    # absolute paths in edge.toml: a relative --data-dir (the walkthrough's) wrote
    # "box-a/tls/..." and every command run from another directory missed its files
    files = BoxFiles(settings.data_dir.resolve())
    found = load_config(config_path) if config_path.exists() else None
    # a box in no federation joins one: its camera and settings are kept
    alone = found if isinstance(found, StandaloneConfig) else None
    existing = found if isinstance(found, BoxConfig) else None
    if existing is not None and existing.box.data_dir.resolve() != files.data_dir:
        files = BoxFiles(existing.box.data_dir.resolve())
    if install_reply is not None and existing is not None and bundle is None:
        reply_id, cert, ca = read_reply(install_reply)
        if reply_id != existing.box.device_id:
            raise CliError(f"{install_reply} is for {reply_id}, this box is "
                           f"{existing.box.device_id}")
        got = install_certificate(files, existing.box.device_id, cert, ca)
        typer.echo(f"certificate installed: {existing.box.device_id}, valid until "
                   f"{got.not_valid_after_utc:%Y-%m-%d}; next: fedface-edge doctor")
        return
    # asked and checked before anything is written (a short one left keys, certificate
    # request and TLS key behind, and a second provisioning run to clean up after)
    kiosk_password = _kiosk_password(files.data_dir, kiosk_password_file, interactive)
    if bundle is None and not files.trust.exists():
        bundle = Path(_value(None, "Key bundle file", interactive, "--bundle"))
    if bundle is not None:
        passphrase = _secret_from(passphrase_file, PASSPHRASE_ENV, "Bundle passphrase",
                                  interactive)
        imported = import_bundle(files, bundle.read_bytes(), passphrase)
        typer.echo(f"imported federation {imported.fed_id} (key {imported.key_id})")
    trust = read_trust(files)
    device = _value(device_id or (existing.box.device_id if existing else None),
                    "Device id", interactive, "--device-id")
    url = _value(broker or (existing.broker.url if existing else None) or trust["broker_url"]
                 or None, "Broker URL (mqtts://host:8883)", interactive, "--broker")
    before = existing or alone
    source = _choose_camera(camera or (before.camera.source if before and before.camera
                                       else None), interactive)
    if not skip_camera_test:
        w, h = probe_camera(source)
        typer.echo(f"camera {source}: {w}x{h} frame read")
    request = create_identity(files, device, trust["fed_id"])
    if kiosk_password is not None:
        from edge.kiosk.auth import PasswordStore

        PasswordStore(files.data_dir).set(kiosk_password)
        typer.echo("kiosk password set")
    cfg = build_config(files, device, trust, url, source, settings.model_dir)
    if alone is not None:
        kept = {k: v for k, v in alone.box.model_dump().items()
                if k in ("threads", "match_threshold") and v is not None}
        cfg = cfg.model_copy(update={"box": cfg.box.model_copy(update=kept),
                                     "events": alone.events})
    write_config(config_path, cfg)
    typer.echo(f"config written: {config_path}")
    if install_reply is not None:
        reply_id, cert, ca = read_reply(install_reply)
        install_certificate(files, device, cert, ca)
        typer.echo("certificate installed; next: fedface-edge doctor")
    elif not files.cert.exists():
        typer.echo(f"give {request} to the operator (fedface-aggregator devices add "
                   f"--request {request.name}), then: fedface-edge provision --install-reply "
                   "REPLY")
        # the operator's `devices add` prints the same lines: compare them out of band
        for line in request_fingerprints(request):
            typer.echo(f"  {line}")


def _kiosk_password(data_dir: Path, path: Path | None, interactive: bool) -> str | None:
    """The staff password to set, checked (None: re-provisioning keeps the one set)."""
    from edge.kiosk.auth import PasswordStore, check_password

    if path is None and PasswordStore(data_dir).is_set():
        return None
    password = _secret_from(path, None, "Kiosk staff password", interactive, confirm=True)
    check_password(password)
    return password


def register(app: typer.Typer) -> None:
    app.command("provision")(provision)
