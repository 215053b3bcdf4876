"""``fedface-edge``: the edge box's command line.

Each command group lives in its own module exposing ``register(app)``; the modules are
listed in ``COMMAND_MODULES`` below, so adding one (``train``, ``federate``...) is one
line. Command modules import heavy packages (cv2, onnxruntime; torch only for ``train``)
inside their functions, so ``fedface-edge --help`` stays fast and light.

Every exception raised by a command passes through ``FedFaceGroup`` (edge/cli/errors.py),
which prints ``error: ...`` / ``hint: ...`` on stderr and exits with a code grouped by
component (table in edge/cli/errors.py).

May import (the top floor of the box): edge.errors, edge.priority, edge.config, edge.box,
edge.vision, edge.gallery, edge.serving, edge.tracking, edge.training, edge.federated, edge.kiosk,
edge.demo, edge.doctor, edge.provision, edge.api, federation, models.
"""

from __future__ import annotations

import logging
import os
from importlib import import_module
from pathlib import Path
from typing import Annotated

import typer

from edge.cli.context import BoxContext
from edge.cli.errors import EXIT_CODES, FedFaceGroup
from federation.cli_help import show_flags_without_type

COMMAND_MODULES = (
    "model_files",
    "served_model",
    "enroll",  # and people
    "identify",
    "run",
    "bench",
    "federate",
    "train",
    "kiosk",
    "serve_api",
    "provision",
    "doctor",
    "status",
)

show_flags_without_type()

EPILOG = "Exit codes: " + ", ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."

app = typer.Typer(
    name="fedface-edge",
    cls=FedFaceGroup,
    help="FedFace edge box: enrol people, recognise faces from cameras, manage models.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if verbose < 2:
        # OpenCV and FFmpeg print their own warnings straight to stderr (e.g. every failed
        # camera open); our own log lines already say what went wrong.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def _print_release(on: bool) -> None:
    if on:
        from federation.release import release

        typer.echo(release())
        raise typer.Exit()


@app.callback()
def _box_options(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Box data directory (gallery, model versions, keys). Env: "
        "FEDFACE_DATA_DIR; default ~/.local/share/fedface.",
        show_default=False)] = None,
    model_dir: Annotated[Path | None, typer.Option(
        "--model-dir", help="Verified model directory. Env: FEDFACE_MODEL_DIR; default "
        "~/.cache/fedface/models.",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for inference (default 1).", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Box config file (default: FEDFACE_CONFIG, else DATA_DIR/edge.toml "
        "when present). Options beat the file, the file beats the environment.",
        show_default=False)] = None,
    verbose: Annotated[int, typer.Option(
        "--verbose", "-v", count=True, metavar="",
        help="Repeatable flag: -v info, -vv debug logging.", show_default=False)] = 0,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_release,
        help="Print the release (version and build) and exit.")] = False,
) -> None:
    from edge.config import EdgeSettings

    _setup_logging(verbose)
    ctx.obj = BoxContext(settings=EdgeSettings(), debug=debug,  # debug known before validating
                         options={"data_dir": data_dir, "model_dir": model_dir,
                                  "threads": threads})
    ctx.obj.resolve(config)
    ctx.call_on_close(ctx.obj.close)


for _module in COMMAND_MODULES:
    import_module(f"{__name__}.{_module}").register(app)


def main() -> None:
    """Console-script entry point (pyproject: fedface-edge = "edge.cli:main")."""
    from federation.memory import BOX_MALLOC, pin_malloc

    pin_malloc(BOX_MALLOC)  # frame buffers reused, graphs and batches freed (federation.memory)
    app(prog_name="fedface-edge")
