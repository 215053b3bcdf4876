"""``fedface-edge identify IMAGE``: who is in a photo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edge.cli.context import box

ThresholdOption = Annotated[float | None, typer.Option(
    "--threshold", min=-1.0, max=1.0, show_default=False,
    help="SFace cosine similarity needed to name a face (default: the box setting, 0.40). "
    "Higher is stricter: fewer strangers accepted, more known people reported unknown.")]


def warn_if_empty(ctx: typer.Context) -> None:
    if not box(ctx).gallery().people():
        typer.echo("warning: the gallery is empty, every face is unknown "
                   "(enrol with `fedface-edge enroll`)", err=True)


def identify(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="Photo to identify faces in.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    threshold: ThresholdOption = None,
) -> None:
    """Detect every face of IMAGE and name it from the gallery (or "unknown")."""
    from edge.errors import NoFaceError
    from edge.vision.pipeline import read_image

    bgr = read_image(image)
    recognizer = box(ctx).recognizer(threshold)
    warn_if_empty(ctx)
    recognitions = recognizer.recognise(bgr)
    if not recognitions:
        raise NoFaceError(f"no face found in {image}",
                          "use a photo where a face is visible and at least ~40 px wide")
    if as_json:
        typer.echo(json.dumps({
            "image": str(image),
            "model_version": recognizer.model_version,
            "threshold": recognizer.threshold,
            "faces": [r.to_dict() for r in recognitions],
        }, indent=2))
        return
    for r in recognitions:
        x, y, w, h = r.box
        typer.echo(f"{r.name:30s} score {r.match.score:.3f}  box x={x} y={y} w={w} h={h}")


def register(app: typer.Typer) -> None:
    app.command("identify")(identify)
