"""Key epoch commands of ``fedface-aggregator`` (docs/operations.md, "Rotating the
federation key"): the operator's ``devices recipients`` and ``keys install``, the key
holder's ``keys rotate``. Mounted by ``aggregator.cli.main`` (``register``); same error
contract (one ``error:`` line, exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from aggregator.cli.common import StateOpt, one_line_errors
from aggregator.operator import install_key_epoch
from aggregator.state.config import load_config
from aggregator.state.regions import region_ids
from aggregator.state.registry import DeviceRegistry
from aggregator.state.serve_lock import lock_state
from aggregator.state.store import Store
from federation.files import write_atomic

Opt = typer.Option


@one_line_errors
def devices_recipients(
    state: StateOpt,
    out: Annotated[Path, Opt("--out", help="recipients file for the key holder")],
) -> None:
    """List the active devices and their exchange keys (signed by their device keys) for
    the key holder's `keys rotate`. Nothing secret in it."""
    cfg = load_config(state)
    store = Store(state)
    try:
        found, missing = DeviceRegistry(store).recipients()
        # a regional aggregator is registered like a device but holds no secret key: it
        # was listed as needing re-provisioning (helper-43)
        regions = set(region_ids(store))
    finally:
        store.close()
    missing = [d for d in missing if d not in regions]
    write_atomic(out, json.dumps({"fed": cfg.fed, "key_id": cfg.key_id, "devices": found},
                                 indent=2).encode(), mode=0o644)
    typer.echo(f"{out}: {len(found)} active device(s) with an exchange key")
    for device in missing:
        typer.echo(f"  {device}: NO exchange key (provisioned before key epochs): it gets no "
                   "new key; re-provision it under a new device id")


@one_line_errors
def keys_rotate(
    keys: Annotated[Path, Opt("--keys", help="the key holder's keys dir (from `keys create`)")],
    recipients: Annotated[list[Path], Opt(
        "--recipients", help="from `devices recipients` (repeatable: a root and its regions)")],
    fed: Annotated[str, Opt("--fed", help="federation id")],
    out: Annotated[Path, Opt("--out", help="directory for the new epoch (to the operator)")],
    exclude: Annotated[list[str] | None, Opt(
        "--exclude", help="a device to leave out (repeatable), e.g. one being revoked")] = None,
) -> None:
    """Start a new key epoch (key holder, offline machine): a new CKKS secret context,
    sealed to each recipient box alone; the public context and the sealed bundles go to
    the operator (`keys install`), the secret stays here."""
    from federation.crypto.epochs import read_recipients, rotate_keys

    chosen = [r for path in recipients for r in read_recipients(path.read_bytes(), fed)]
    rot = rotate_keys(keys, fed, chosen, out, exclude=frozenset(exclude or ()))
    typer.echo(f"key epoch {rot.epoch}: key id {rot.key_id} ({rot.seconds:.2f} s)")
    for device, path in sorted(rot.sealed.items()):
        typer.echo(f"  {path}  ({path.stat().st_size} bytes) -> {device} only")
    typer.echo(f"  {rot.public_context} -> the aggregator: fedface-aggregator keys install "
               f"--state STATE --epoch {out}")
    typer.echo(f"  {keys}/federation-secret.tenseal is now epoch {rot.epoch} (0600, stays here)")


@one_line_errors
def keys_install(
    state: StateOpt,
    epoch: Annotated[Path, Opt("--epoch", help="the directory `keys rotate` wrote")],
) -> None:
    """Install a new key epoch at the aggregator (with `serve` stopped): its public
    context, and the sealed bundles `serve` relays to each active box on its next start."""
    # beside a running serve it was taken without a word, status named a key no round
    # used, and the revoked box kept the old one (helper-57): refused, serve kept out
    with lock_state(state, wait_seconds=0, doing="installing a key epoch"):
        cfg, relayed, missing = install_key_epoch(state, load_config(state), epoch)
    typer.echo(f"installed key {cfg.key_id}; sealed bundles for {len(relayed)} box(es): "
               f"{', '.join(relayed) or '-'}")
    for device in missing:
        typer.echo(f"  {device}: active but NO bundle in {epoch}: it cannot take part")
    typer.echo("start (or restart) `fedface-aggregator serve`: it fails a round left open "
               "under the old key and opens the next one under this key")


def register(keys_app: typer.Typer, devices_app: typer.Typer) -> None:
    keys_app.command("rotate")(keys_rotate)
    keys_app.command("install")(keys_install)
    devices_app.command("recipients")(devices_recipients)
