"""``fedface-edge people list|remove``: who is enrolled on this box."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from edge.cli.context import box

people_app = typer.Typer(help="List and remove enrolled people.", no_args_is_help=True)


@people_app.command("list")
def list_people(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Enrolled people with their crop count and the model versions of their embeddings."""
    people = box(ctx).gallery().people()
    if as_json:
        typer.echo(json.dumps([
            {"id": p.id, "name": p.name, "crops": p.crops, "embeddings": p.embeddings,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(p.created))}
            for p in people], indent=2))
        return
    if not people:
        typer.echo("no one is enrolled (enrol with `fedface-edge enroll NAME IMAGE...`)",
                   err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "crops", "model versions", "enrolled (UTC)")
    for p in people:
        versions = ", ".join(f"{v} ({n})" for v, n in sorted(p.embeddings.items()))
        table.add_row(p.name, str(p.crops), versions,
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(p.created)))
    Console().print(table)
    typer.echo(f"{len(people)} people")


@people_app.command("remove")
def remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Exact name.")]) -> None:
    """Delete a person with all their stored crops and embeddings."""
    removed = box(ctx).gallery().remove_person(name)
    typer.echo(f"removed {name} ({removed} crops and their embeddings)")


def register(app: typer.Typer) -> None:
    app.add_typer(people_app, name="people")
