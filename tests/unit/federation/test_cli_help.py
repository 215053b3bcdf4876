"""Both CLIs' --help: a flag shows no type (Typer 0.29 printed ``--json <bool>``, as if it
took a value); options that take one keep theirs. Every command of both apps is read."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from aggregator.cli.main import app as aggregator_app
from edge.cli import app as edge_app


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if hasattr(group, "commands"):  # a group (Typer's own Click, not the click package)
        for name, sub in group.commands.items():
            paths += command_paths(sub, (*prefix, name))
    return paths


def test_no_flag_shows_a_type_in_any_help() -> None:
    runner = CliRunner()
    seen_typed = 0
    for app in (edge_app, aggregator_app):
        paths = command_paths(typer.main.get_command(app))
        assert len(paths) > 10
        for path in paths:
            shown = runner.invoke(app, [*path, "--help"], terminal_width=200)
            assert shown.exit_code == 0, (path, shown.output)
            assert "<bool>" not in shown.output, (path, shown.output)
            seen_typed += "<int" in shown.output or "<path>" in shown.output
    assert seen_typed > 10  # the options that take a value still say which
