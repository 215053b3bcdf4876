"""``fedface-edge doctor``: one PASS/FAIL line per check with a hint; exit 9 if any fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edge.cli.context import box
from edge.cli.errors import EXIT_CHECKS as EXIT_DOCTOR


def doctor(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Config file (default FEDFACE_CONFIG or DATA_DIR/edge.toml).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    source: Annotated[str | None, typer.Option(
        "--source", help="Camera to check on a box in no federation (a provisioned box "
        "checks its configured camera.source).")] = None,
) -> None:
    """Check camera, models, key files, certificate, broker (TLS), clock and disk.

    A box in no federation (never provisioned) gets the checks it can have: models, disk,
    box data, and the camera given with --source."""
    from edge.config import ConfigError
    from edge.doctor import Check, run_checks, run_standalone_checks

    context = box(ctx)
    note = None
    try:
        if config is not None:
            context.resolve(config)
        alone = context.standalone is not None  # an edge.toml of a box in no federation
        if context.config is None and (config is None or alone) and \
                not context.provisioned_keys():
            settings, camera = context.settings, context.camera
            checks = run_standalone_checks(Path(settings.data_dir), settings.model_dir,
                                           source or (camera.source if camera else None))
            where = (f"{context.config_path}: a box in no federation" if alone
                     else f"no {context.config_path}")
            note = (f"not provisioned ({where}): the box recognises on "
                    "its own; federation checks skipped (fedface-edge provision joins it "
                    "to a federation)")
        else:
            checks = run_checks(context.require_config())
    except ConfigError as exc:
        checks = [Check("config", False, exc.message, exc.hint or "fedface-edge provision")]
    if note is not None:
        typer.echo(note, err=True)
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        for c in checks:
            typer.echo(f"{'PASS' if c.ok else 'FAIL'}  {c.name:16s} {c.detail}")
            if not c.ok and c.hint:
                typer.echo(f"      {'':16s} hint: {c.hint}")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        typer.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}", err=True)
        raise typer.Exit(EXIT_DOCTOR)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
