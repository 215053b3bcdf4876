"""``fedface-aggregator models``: published versions, and which one the next rounds build on.

``pin`` / ``rollback`` / ``unpin`` change the state db only; a running ``serve`` reads
the pin when it opens its next round (see ``aggregator.rounds.pins``). Same error
contract as the other commands: one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from aggregator.cli.common import JsonOpt, StateOpt, local_time, one_line_errors, print_table
from aggregator.rounds import pins as model_pins
from aggregator.rounds.epochs import under_earlier_key
from aggregator.state.config import load_config
from aggregator.state.regions import region_ids
from aggregator.state.store import Store
from federation.messages import result_round

models_app = typer.Typer(help="Federated model versions (published round results).",
                         no_args_is_help=True)

_NEXT_ROUND = ("the next round builds on {v} (boxes fetch it from the broker, "
               "re-published by the aggregator)")


def _takes_effect(store: Store, version: str | None) -> str:
    latest = store.latest_round()
    open_now = latest is not None and latest.status == "open"
    if version is not None and result_round(version) is None:  # the initial model
        # nothing is re-published: every box holds it (helper-43 read that it was)
        said = (f"the next round builds on {version}, the pretrained model every box "
                "holds (no result to fetch: boxes go back to it on that round's announce)")
    else:
        said = _NEXT_ROUND.format(v=version)
    if region_ids(store):  # a root: its regions follow by themselves
        said += "; every region follows it by itself"
    return (f"round {latest.round}, open now, finishes on its base; " if open_now and latest
            else "") + said


def _store(state: Path) -> tuple[Store, str]:
    cfg = load_config(state)  # clear error if not initialised (or config.json invalid)
    return Store(state), cfg.initial_model


def _key_id(state: Path) -> str:
    return load_config(state).key_id


@models_app.command("list")
@one_line_errors
def models_list(state: StateOpt, as_json: JsonOpt = False) -> None:
    """Published model versions, oldest first; `next-base` marks what the next round
    builds on (the latest, or the pinned one)."""
    from aggregator.regional.records import root_models

    store, initial = _store(state)
    pin = model_pins.pinned(store)
    base, _ = model_pins.next_base(store, initial)
    # a region publishes the root's results under its own round numbers: the root's name
    # of each (a walkthrough could not match a box's round-4 to the root's round-3)
    at_root = root_models(state)
    key_id = _key_id(state)
    # the current key's epoch, as its rounds announced it (a round of before key epochs
    # announced none: epoch 0's key)
    epoch = next((int(r.announce.get("key_epoch") or 0) for r in store.list_rounds()
                  if r.announce.get("key_id") == key_id), 0)
    rows: list[dict[str, Any]] = [
        {"model": r.result_model, "round": r.round, "base_model": r.base_model,
         "updates": store.updates_of(r.round), "published_at": r.closed_at,
         "result_sha256": r.result_sha256, "pinned": r.result_model == pin,
         "next_base": r.result_model == base,
         "root_model": at_root.get(str(r.result_model)),
         # encrypted under an earlier key epoch: boxes provisioned since cannot read it,
         # and it cannot be pinned (a walkthrough could not tell which versions were)
         "earlier_key": under_earlier_key(store, str(r.result_model), key_id, epoch)}
        for r in model_pins.published(store)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    # the initial model every box holds, which `models pin` names, as a row of its own
    # (it was only in the first round's BASE column: helper-57)
    first = (initial, "-", "-", "-", "-", " ".join(
        m for m, on in (("initial model", True), ("next-base", base == initial),
                        ("PINNED", pin == initial)) if on))
    print_table(("MODEL", "ROUND", "BASE", "UPDATES", "PUBLISHED", "MARKS"),
                [first] + [(r["model"], r["round"], r["base_model"], r["updates"],
                  local_time(r["published_at"]),
                  " ".join(m for m, on in (("next-base", r["next_base"]),
                                           ("PINNED", r["pinned"]),
                                           ("earlier-key", r["earlier_key"]),
                                           (f"= root {r['root_model']}", r["root_model"]))
                           if on))
                 for r in rows] if rows else [],
                f"no published version yet: the next round builds on {base}")


@models_app.command("pin")
@one_line_errors
def models_pin(version: Annotated[str, typer.Argument(help="a published version, e.g. "
                                                      "round-2, or the initial model: base")],
               state: StateOpt) -> None:
    """Make the next rounds build on VERSION instead of the latest result (the initial
    model's name, e.g. base: the pretrained model every box holds)."""
    store, initial = _store(state)
    row = model_pins.pin(store, version, _key_id(state), initial)
    what = f"round {row.round}" if row is not None else "the pretrained model every box holds"
    typer.echo(f"pinned {version} ({what}): " + _takes_effect(store, version))


@models_app.command("rollback")
@one_line_errors
def models_rollback(state: StateOpt) -> None:
    """Pin the published version before the current base (undo a bad round)."""
    store, initial = _store(state)
    old, pinned = model_pins.rollback(store, _key_id(state), initial)
    typer.echo(f"rolled back from {old}: pinned {pinned}; " + _takes_effect(store, pinned))


@models_app.command("unpin")
@one_line_errors
def models_unpin(state: StateOpt) -> None:
    """Remove the pin: the next rounds build on the latest published version again."""
    store, initial = _store(state)
    removed = model_pins.unpin(store)
    base, _ = model_pins.next_base(store, initial)
    typer.echo((f"unpinned {removed}" if removed else "nothing was pinned")
               + f"; the next round builds on {base}")
