"""``fedface-edge identify IMAGE|FOLDER...``: who is in these photos, in one process.

The models load once and every photo goes through the same engine as ``run``, so a
folder of 370 photos costs what ``run --source dir:`` costs on it (issue 17: one process
per photo spent 2-3 s starting for 25 ms of recognition). Folders are searched
recursively; which files are images is the box's one rule (``edge.vision.image_files``).

Output: one block of lines per photo, or with ``--json`` one JSON object per photo and
per line (``"faces": []`` when none is found, ``"error"`` when the photo cannot be
read). The exit code is 0 when every photo was read and had a face, else the input
error code, after every photo has been reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge.cli.context import box
from edge.cli.errors import EXIT_INPUT, CliError
from edge.config import MIN_MATCH_THRESHOLD

if TYPE_CHECKING:
    from edge.serving.recognizer import ProgressCallback, Recognition, Recognizer

ThresholdOption = Annotated[float | None, typer.Option(
    "--threshold", min=MIN_MATCH_THRESHOLD, max=1.0, show_default=False,
    help="SFace cosine similarity needed to name a face (default: the box setting, 0.40). "
    "Higher is stricter: fewer strangers accepted, more known people reported unknown.")]


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[ProgressCallback]:
    """A callback advancing a bar of ``total`` steps (enroll, identify), drawn on stderr
    when it is a terminal (stdout is kept for results a script may parse; no bar in a
    log)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task(label, total=total)

        def advance(_image: Path, _failure: str | None) -> None:
            progress.advance(task)

        yield advance


def warn_if_empty(ctx: typer.Context) -> None:
    if not box(ctx).gallery().people():
        typer.echo("warning: the gallery is empty, every face is unknown "
                   "(enrol with `fedface-edge enroll`)", err=True)


def _print_text(image: Path, recognitions: list[Recognition], prefix: bool) -> None:
    lead = f"{image}: " if prefix else ""
    if not recognitions:
        typer.echo(f"{lead}no face found")
    for r in recognitions:
        x, y, w, h = r.box
        typer.echo(f"{lead}{r.name:30s} score {r.match.score:.3f}  box x={x} y={y} w={w} h={h}")


def _report(recognizer: Recognizer, image: Path, recognitions: list[Recognition]) -> str:
    return json.dumps({
        "image": str(image),
        "model_version": recognizer.model_version,
        "threshold": recognizer.threshold,
        "faces": [r.to_dict() for r in recognitions],
    })


def identify(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(
        help="Photos, and folders searched recursively for photos (by content: JPEG, PNG, "
        "GIF, PGM... whatever the file name).", show_default=False)],
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object per photo and per line (\"faces\": [] when none "
        "is found, \"error\" when the photo cannot be read).")] = False,
    threshold: ThresholdOption = None,
) -> None:
    """Detect every face of each photo and name it from the gallery (or "unknown")."""
    from edge.errors import ImageReadError
    from edge.vision.image_files import scan
    from edge.vision.pipeline import read_image

    found = scan(inputs)
    named = {Path(p) for p in inputs}
    for path, reason in found.skipped:  # named with the reason, never silently
        typer.echo(f"skipped {path}: {reason}", err=True)
    unreadable = [(p, r) for p, r in found.skipped if p in named]  # asked for by name
    total = len(found.images) + len(unreadable)
    if as_json:
        for path, reason in unreadable:
            typer.echo(json.dumps({"image": str(path), "error": reason}))
    no_face = 0
    if found.images:  # the models load after the inputs are listed: bad paths fail fast
        recognizer = box(ctx).recognizer(threshold)
        warn_if_empty(ctx)
        with progress_bar(len(found.images), "identifying") as advance:
            for image in found.images:
                try:
                    bgr = read_image(image)
                except ImageReadError as exc:  # a header that passed, pixels that did not
                    unreadable.append((image, str(exc)))
                    if as_json:
                        typer.echo(json.dumps({"image": str(image), "error": str(exc)}))
                    else:  # as the files skipped above: it was said only in the summary
                        typer.echo(f"skipped {image}: {exc}", err=True)
                    advance(image, str(exc))
                    continue
                recognitions = recognizer.recognise(bgr)
                no_face += not recognitions
                if as_json:
                    typer.echo(_report(recognizer, image, recognitions))
                else:
                    _print_text(image, recognitions, prefix=total > 1)
                advance(image, None)
    elif not unreadable:
        raise CliError(f"no images in {', '.join(map(str, inputs))}", exit_code=EXIT_INPUT,
                       hint="give photos or folders holding photos (skipped files are "
                       "named above)")
    if unreadable:
        path, reason = unreadable[0]
        # both counts: the photos without a face went unsaid here (helper-47)
        faceless = f"; no face found in {no_face}" if no_face else ""
        raise CliError(f"{len(unreadable)} of {total} image(s) could not be read "
                       f"(first: {path}: {reason}){faceless}", exit_code=EXIT_INPUT,
                       hint="check the paths; each photo's reason is reported above")
    if no_face:
        raise CliError(f"no face found in {no_face} of {total} image(s)", exit_code=EXIT_INPUT,
                       hint="use photos where a face is visible and at least ~40 px wide")


def register(app: typer.Typer) -> None:
    app.command("identify")(identify)
