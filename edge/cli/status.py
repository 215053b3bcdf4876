"""``fedface-edge status``: who this box is, its federation, model and pending updates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edge.cli.context import box, warn_if_no_data_dir
from edge.cli.errors import EXIT_PROVISIONING

HEADER_READ = 1 << 16  # a context's header is well inside this (federation.crypto.ckks)


def status(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Config file (default FEDFACE_CONFIG or DATA_DIR/edge.toml).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Device id, federation, the key it holds, broker, certificate expiry, federated
    model, outbox, kiosk password. A box not provisioned (a kiosk on its own) shows its
    model and kiosk. Exits 8 when the box was revoked."""
    from edge.doctor import check_certificate
    from edge.federated.outbox import Outbox
    from edge.federated.revocation import revocation_state
    from edge.kiosk.auth import PasswordStore
    from edge.serving.versions import BASE_VERSION, SwapStore
    from edge.vision.frame_source import shown_uri
    from federation.messages import result_round

    if config is not None:
        box(ctx).resolve(config)  # an explicit --config must exist: require_config below
    warn_if_no_data_dir(ctx)
    # the box's one store of model versions: what it serves
    models_dir = box(ctx).box().models_dir
    pointer = SwapStore(models_dir).load() if models_dir.is_dir() else None
    current = pointer.current if pointer is not None and \
        pointer.current.version != BASE_VERSION else None
    threshold = _threshold(current, box(ctx).settings.match_threshold)
    if box(ctx).config is None and (config is None or box(ctx).standalone is not None):
        _unprovisioned(ctx, as_json, None if current is None else current.version, threshold)
        return
    cfg = box(ctx).require_config()
    fed_dir = cfg.box.data_dir / "federation"
    pending = len(Outbox(fed_dir / "outbox").stored()) if (fed_dir / "outbox").exists() else 0
    cert = check_certificate(cfg)
    revoked = revocation_state(cfg.box.data_dir)
    info: dict[str, Any] = {
        "device_id": cfg.box.device_id, "fed": cfg.box.fed, "broker": cfg.broker.url,
        "camera": shown_uri(cfg.camera.source),
        "events": _events(cfg.events, cfg.box.fed, cfg.box.device_id),
        "key_id": cfg.federation.key_id,
        "key": _held_key(cfg.federation.secret_context, cfg.federation.key_id),
        "certificate": {"ok": cert.ok, "detail": cert.detail},
        "model": None if current is None else {"version": current.version,
                                               "round": result_round(current.version)},
        **threshold,
        "pending_updates": pending,
        "kiosk_password_set": PasswordStore(cfg.box.data_dir).is_set(),
        "revoked": None if revoked is None else {
            "revoked_at": revoked.revoked_at, "recorded_at": revoked.recorded_at,
            "source": revoked.source, "detail": revoked.detail},
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _print(info, cert.ok, cert.detail, revoked)
    if revoked is not None:  # for a monitoring script: this box is out of its federation
        raise typer.Exit(EXIT_PROVISIONING)


def _print(info: dict[str, Any], cert_ok: bool, cert_detail: str, revoked: Any) -> None:
    from edge.federated.revocation import REPROVISION

    typer.echo(f"device      {info['device_id']} (federation {info['fed']})")
    typer.echo(f"key         {info['key']['detail']}")
    typer.echo(f"broker      {info['broker']}")
    typer.echo(f"camera      {info['camera']}")
    _print_events(info["events"])
    typer.echo(f"certificate {'ok' if cert_ok else 'NOT OK'}: {cert_detail}")
    if revoked is not None:
        typer.echo(f"REVOKED     {revoked.summary()}: {REPROVISION}")
    model = info["model"]
    if not model:
        shown = "pretrained base (no federated result applied yet)"
    elif model["round"] is None:  # a local fine-tune (`train --apply`): it said "round None"
        shown = f"{model['version']} (not a federated result)"
    else:
        shown = f"{model['version']} (round {model['round']})"
    typer.echo(f"model       {shown}")
    typer.echo(f"threshold   {_threshold_text(info)}")
    typer.echo(f"outbox      {info['pending_updates']} update(s) waiting for an ack")
    typer.echo(f"kiosk       password {'set' if info['kiosk_password_set'] else 'NOT set'}")


def _threshold(current: Any, deployed: float) -> dict[str, Any]:
    """The threshold faces are named at: the served model's own (calibrated on the box
    when it was swapped in), else the deployed one; ``model status``, ``identify`` and the
    kiosk say the same (helper-64: status said 0.40 where they said 0.354)."""
    from edge.serving.calibration import own_threshold

    own = None if current is None else own_threshold(current.threshold,
                                                     current.calibrated_for, deployed)
    return {"match_threshold": deployed if own is None else own,
            "deployed_threshold": deployed, "threshold_own": own is not None}


def _threshold_text(info: dict[str, Any]) -> str:
    if not info["threshold_own"]:
        return f"{info['match_threshold']:.2f} (the deployed one)"
    return (f"{info['match_threshold']:.3f} (the served model's own, calibrated for the "
            f"deployed {info['deployed_threshold']:.2f})")


def _events(events: Any, fed: str | None = None, box_id: str | None = None
            ) -> dict[str, Any] | None:
    """Where the box publishes its visit events ([events]), the password never shown;
    under which topics (a box in no federation: 'local' and its host name)."""
    from edge.cli.visit_outputs import STANDALONE_FED, host_id
    from edge.vision.frame_source import shown_uri

    if events is None:
        return None
    return {"mqtt_url": shown_uri(events.mqtt_url), "username": events.username,
            "include_crop": events.include_crop,
            "topics": f"fedface/{fed or STANDALONE_FED}/{box_id or host_id()}/#"}


def _print_events(events: dict[str, Any] | None) -> None:
    if events is None:
        typer.echo("events      none (no [events] in the config: visits stay on the box)")
        return
    crops = "with each visit's face crop" if events["include_crop"] else "no face images"
    typer.echo(f"events      {events['mqtt_url']} {events['topics']} ({crops})")


def _held_key(secret_context: Path, provisioned: str) -> dict[str, Any]:
    """The CKKS key the box holds now: a key rotation replaces the secret context, not the
    config's ``key_id`` (the key it was provisioned with). Only the file's header is read."""
    from federation.crypto.ckks import read_context_header
    from federation.errors import FederationError

    try:
        with open(secret_context, "rb") as fh:
            head = read_context_header(fh.read(HEADER_READ))
    except (OSError, FederationError) as exc:
        return {"key_id": None, "epoch": None, "provisioned_with": provisioned,
                "detail": f"{provisioned} (provisioned; cannot read {secret_context}: "
                          f"{getattr(exc, 'message', None) or exc})"}
    detail = head.key_id if head.key_id == provisioned and head.epoch == 0 else \
        f"{head.key_id} (key epoch {head.epoch}; provisioned with {provisioned})"
    return {"key_id": head.key_id, "epoch": head.epoch, "provisioned_with": provisioned,
            "detail": detail}


def _unprovisioned(ctx: typer.Context, as_json: bool, model: str | None,
                   threshold: dict[str, Any]) -> None:
    from edge.kiosk.auth import PasswordStore
    from edge.vision.frame_source import shown_uri

    context = box(ctx)
    data_dir = context.settings.data_dir
    camera = context.camera
    events = _events(context.events)
    info: dict[str, Any] = {"provisioned": False, "config": str(context.config_path),
            "config_found": context.standalone is not None, "data_dir": str(data_dir),
            "model": model, **threshold,
            "federation_state": (Path(data_dir) / "federation").is_dir(),
            "camera": shown_uri(camera.source) if camera is not None else None,
            "events": events,
            "kiosk_password_set": PasswordStore(data_dir).is_set()}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    where = (f"{info['config']}: a box in no federation" if info["config_found"]
             else f"no {info['config']}")
    if info["federation_state"]:  # a demo box, or a box whose edge.toml was lost
        typer.echo(f"device      not provisioned ({where}), but its data dir holds a "
                   "federation's state (a demo box, or its config lost): `fedface-edge "
                   "model status` shows its rounds")
    else:
        typer.echo(f"device      not provisioned ({where}): recognises and serves the "
                   "kiosk on its own; `fedface-edge provision` joins a federation")
    typer.echo(f"data dir    {data_dir}")
    typer.echo(f"threshold   {_threshold_text(info)}")
    if camera is not None:
        typer.echo(f"camera      {info['camera']}")
    _print_events(events)
    typer.echo("model       " + (model or "pretrained base"))
    typer.echo(f"kiosk       password {'set' if info['kiosk_password_set'] else 'NOT set'}")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
