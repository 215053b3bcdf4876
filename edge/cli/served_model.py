"""``fedface-edge model status|rollback``: the federated model the box serves.

``status`` reads only the swap directory (``<data dir>/models``): no model is loaded.
``rollback`` serves version N-1 again (re-embedding the gallery with it) and blocks N,
so the federation client does not swap it back in; a running kiosk or ``run`` follows
the pointer within a second.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer

from edge.cli.context import box, warn_if_no_data_dir
from federation.messages import result_round
from models.federated_parts import DEFAULT_PART

model_app = typer.Typer(help="Show or roll back the federated model the box serves.",
                        no_args_is_help=True)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def status_data(ctx: typer.Context) -> dict[str, Any]:
    from dataclasses import asdict

    from edge.federated.verdicts import RoundVerdicts
    from edge.serving.current import base_served, served_models, swap_dir_for
    from edge.serving.versions import SwapStore

    the_box = box(ctx).box()
    swap_dir = swap_dir_for(the_box.gallery_db)
    verdicts = [asdict(v) for v in RoundVerdicts(the_box.federation_dir).all()]
    deployed = the_box.settings.match_threshold
    if not swap_dir.is_dir():
        return {"current": asdict(base_served()), "previous": None, "blocked": {},
                "history": [], "swap_dir": str(swap_dir), "rounds": verdicts,
                "deployed": deployed, "damaged": {}}
    store = SwapStore(swap_dir)
    current, previous = served_models(store)
    # a version whose file is gone or damaged is not what the box serves: every process
    # falls back to the one before it (helper-39: status said nothing until join ran)
    damaged = store.damaged_files()
    return {"current": asdict(current), "previous": asdict(previous) if previous else None,
            "blocked": store.blocked(), "history": store.history(), "swap_dir": str(swap_dir),
            "rounds": verdicts, "deployed": deployed, "damaged": damaged}


def threshold_text(served: dict[str, Any], deployed: float) -> str:
    """The threshold the version's faces are named at (edge.serving.calibration)."""
    from edge.serving.calibration import own_threshold

    own = own_threshold(served.get("threshold"), served.get("calibrated_for"), deployed)
    if own is None:
        return f"match threshold {deployed:.2f} (the deployed one)"
    return f"match threshold {own:.3f} (its own, calibrated for the deployed {deployed:.2f})"


@model_app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    last: Annotated[int, typer.Option("--last", min=0, help="History entries shown.")] = 10,
) -> None:
    """Current and previous model: when and why each was swapped in; refusals."""
    from edge.serving.versions import BASE_VERSION
    from federation.verdicts import Verdict

    warn_if_no_data_dir(ctx)
    data = status_data(ctx)
    data["history"] = data["history"][-last:] if last else []
    data["rounds"] = data["rounds"][-last:] if last else []
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for label in ("current", "previous"):
        served = data[label]
        if served is None:
            current = data["current"]
            # a rollback keeps no N-1, yet a next rollback serves the pretrained model:
            # "nothing to roll back to" was wrong there (helper-47)
            typer.echo(f"{label:9s} none" + (
                " (nothing to roll back to)" if label == "current" or current is None
                or current["version"] == BASE_VERSION else
                f" kept: model rollback serves the pretrained model ({BASE_VERSION})"))
            continue
        typer.echo(f"{label:9s} {served['version']}  since {_when(served['since'])}  "
                   f"({served['reason']}); {threshold_text(served, data['deployed'])}")
        if served["version"] in data["damaged"]:
            typer.echo(f"  DAMAGED: {data['damaged'][served['version']]}; the box serves "
                       "the version before it meanwhile, and join fetches the federation's "
                       "current result again by itself (`fedface-edge doctor`)")
    for version, entry in sorted(data["blocked"].items()):
        typer.echo(f"refused   {version}  {_when(entry.get('at'))}  ({entry.get('reason')})")
    for entry in reversed(data["history"]):
        seconds = entry.get("seconds") or {}
        took = f" in {max(seconds.values()):.2f} s" if seconds else ""
        typer.echo(f"  {_when(entry['at'])}  {entry['event']:11s} {entry['version']}{took}"
                   f"  {entry.get('reason', '')}")
    if data["rounds"]:  # what each federated round did for this box, newest first
        typer.echo("federated rounds (canary: leave-one-out identification on this box's "
                   "people, served -> round's model):")
    for raw in reversed(data["rounds"]):
        verdict = Verdict.from_dict(raw)
        if verdict is not None:
            typer.echo(f"  {_when(verdict.at)}  {verdict.summary()}")


@model_app.command("rollback")
def rollback(
    ctx: typer.Context,
    part: Annotated[str | None, typer.Option(
        "--part", help="Federated parameter set (default: the one the previous version "
        f"was made with, else the box config's, else {DEFAULT_PART}).",
        show_default=False)] = None,
) -> None:
    """Serve the previous model again and refuse the current one from now on."""
    from edge.serving.current import swap_dir_for
    from edge.serving.hot_swap import HotSwapError
    from edge.serving.versions import SwapStore

    the_box = box(ctx).box()
    swap_dir = swap_dir_for(the_box.gallery_db)
    pointer = SwapStore(swap_dir).load() if (swap_dir / "current.json").is_file() else None
    if pointer is None:
        raise HotSwapError("this box has never swapped in a federated model: nothing to "
                           "roll back", hint="see `fedface-edge model status`")
    # the part the target version was made with (its weights need that part's cut)
    recorded = pointer.previous.part if pointer.previous is not None else None
    swapper = the_box.model_sink(the_box.part(part or recorded), background=False)
    report = swapper.rollback()
    typer.echo(f"now serving {report.version} (gallery re-embedded in {report.total:.2f} s); "
               "the rolled-back model will be refused if it is sent again")
    if result_round(pointer.current.version) is not None:
        # a box of a federation then sits out every round built on it: helper-52's rollback
        # stopped a federation whose quorum needed every box, and nothing here said so
        typer.echo(f"note: in a federation this box now sits out the rounds built on "
                   f"{pointer.current.version}; if the quorum needs it, no round closes until "
                   "the operator runs `fedface-aggregator models rollback` (docs/operations.md,"
                   " \"Model versions: pin, rollback, unpin\")", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
