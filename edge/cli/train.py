"""``fedface-edge train``: fine-tune the box's federated part on its own enrolled people.

Needs torch (the ``train`` extra), imported only here and only when the command runs.
The process lowers its own CPU priority (``--niceness``) and uses one torch thread, so a
kiosk or ``run`` on the same box keeps recognising. The result is saved under
``<data dir>/train/results/``; ``--apply`` serves it through the hot swap (canary-checked:
a model that recognises the box's own people worse is refused and not served).

Exit codes beyond the common ones: 9 the hot swap refused the result, 10 training could
not run (torch missing, too few people).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Annotated

import typer

from edge.cli.context import box
from edge.cli.errors import EXIT_CHECKS as EXIT_REFUSED
from edge.cli.errors import EXIT_GALLERY, EXIT_TRAINING, CliError

log = logging.getLogger(__name__)


def _require_torch() -> None:
    try:
        import torch  # noqa: F401  (the train extra)
    except ImportError as exc:
        raise CliError(f"fedface-edge train needs torch, which is not installed ({exc}): "
                       "pip install 'fedface[train]'", exit_code=EXIT_TRAINING) from None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def train(
    ctx: typer.Context,
    budget_seconds: Annotated[float, typer.Option(
        "--budget-seconds", min=1.0, help="Stop training after this many seconds (the "
        "first run also extracts trunk features of the crops, cached for later runs).")
    ] = 120.0,
    epochs: Annotated[float, typer.Option(
        "--epochs", min=0.1, help="Passes over the augmented enrolment crops (the time "
        "budget may stop earlier).")] = 5.0,
    part: Annotated[str | None, typer.Option(
        "--part", help="Federated parameter set (default: the box config's, else the "
        "project default).", show_default=False)] = None,
    apply: Annotated[bool, typer.Option(
        "--apply", help="Serve the result (hot swap, canary-checked).")] = False,
    niceness: Annotated[int, typer.Option(
        "--niceness", min=0, max=19, help="Lower this process's CPU priority by this much.")
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Fine-tune the federated part on this box's people; report leave-one-out accuracy."""
    _require_torch()
    from edge.serving.hot_swap import ModelRefused
    from edge.training.api import TrainingError
    from edge.training.local import lock_training, train_box
    from edge.training.trainer import TrainConfig

    settings = box(ctx).settings
    the_box = box(ctx).box()
    try:
        held = lock_training(the_box.train_dir)
    except TrainingError as exc:
        raise CliError(str(exc), exit_code=EXIT_TRAINING) from None
    ctx.call_on_close(held.close)
    fed_part = the_box.part(part)
    gallery = the_box.gallery()
    people = [p for p in gallery.people() if p.crops > 0]
    if len(people) < 2:
        raise CliError(f"{len(people)} enrolled people with photos in {settings.data_dir}: "
                       "training needs at least 2", hint="enrol people first: fedface-edge "
                       "enroll NAME PHOTO...", exit_code=EXIT_GALLERY)
    if niceness:
        try:  # training must never starve the recognition stream
            os.nice(niceness)
        except OSError:
            log.warning("could not lower the training's priority")
    import torch

    torch.set_num_threads(1)
    swapper = the_box.model_sink(fed_part, background=False)
    train_dir = the_box.train_dir
    # in process: this command already runs at a lower priority with one thread
    trainer = the_box.trainer(fed_part, TrainConfig(epochs=epochs, time_budget_s=budget_seconds),
                              isolate=False, federated=False)
    try:
        report, vector = train_box(swapper, trainer, settings.data_dir, train_dir,
                                   settings.match_threshold, len(people))
    except TrainingError as exc:
        raise CliError(str(exc), exit_code=EXIT_TRAINING) from None
    served = None
    if apply:
        try:
            swapper.apply(report.version, vector, reason="local training (fedface-edge train)")
        except ModelRefused as exc:
            raise CliError(f"{exc.message}; the result stays in {report.result_path}",
                           exit_code=EXIT_REFUSED) from None
        served = swapper.last_report
    if as_json:
        data = report.to_dict()
        data["served"] = served is not None
        data["swap_seconds"] = served.total if served else None
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    budget = " (stopped by the time budget)" if report.stopped_by_budget else ""
    typer.echo(f"trained {report.part} on {report.people} people, {report.samples} samples "
               f"in {report.seconds:.1f} s: {report.steps} steps{budget}, loss "
               f"{report.first_loss:.4g} -> {report.last_loss:.4g}")
    typer.echo(f"leave-one-out identification on this box's people ({report.probes} probes): "
               f"{_pct(report.accuracy_before)} -> {_pct(report.accuracy_after)}")
    typer.echo(f"started from {report.started_from}; saved {report.version} to "
               f"{report.result_path}")
    if served is not None:
        typer.echo(f"now serving {report.version} (hot swap {served.total:.2f} s; canary: "
                   f"{served.canary.reason if served.canary else 'n/a'})")
    else:
        typer.echo("not served: re-run with --apply to serve it")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
