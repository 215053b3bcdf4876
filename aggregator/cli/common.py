"""Shared pieces of the ``fedface-aggregator`` command modules: the one-line error
wrapper, the exit codes, the common options and the output helpers (tables, times)."""

from __future__ import annotations

import datetime as dt
import functools
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from aggregator.state.registry import RegistryError
from aggregator.state.store import StoreError
from federation.errors import FederationError

if TYPE_CHECKING:
    from aggregator.state.config import AggregatorConfig

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERNAL = 1
EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `... | head`
# Every code a fedface-aggregator command exits with; --help lists them all from here.
EXIT_CODES = {
    0: "ok",
    EXIT_INTERNAL: "internal error (a bug: traceback)",
    EXIT_ERROR: "usage, or refused/failed (one error: line on stderr)",
    EXIT_BROKEN_PIPE: "stdout closed by the reader (| head), no message",
}
EPILOG = "Exit codes: " + ", ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."
# PkiError, OperatorError and pydantic-free config errors are ValueError/StoreError.
EXPECTED = (FederationError, StoreError, RegistryError, ValueError, OSError, sqlite3.Error)

StateOpt = Annotated[
    Path, typer.Option("--state", envvar="FEDFACE_AGGREGATOR_STATE", help="state directory")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # an OSError, but the reader's choice, not a failure
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except EXPECTED as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.filename:
                message = f"{exc.filename}: {message}"
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


class AggregatorGroup(TyperGroup):
    """The root command group: a required option left out (``--state`` above all) is one
    ``error:`` line and a ``hint:`` naming the option and its environment variable, exit
    2 (usage), not Typer's red box of five lines (a walkthrough's first ``status`` without
    ``--state``). Other usage errors keep Typer's message."""

    def invoke(self, ctx: Any) -> Any:  # typer.Context; the base class types it privately
        try:
            return super().invoke(ctx)
        except _MISSING_PARAMETER as exc:
            param = getattr(exc, "param", None)
            if getattr(param, "param_type_name", None) != "option":  # Typer's own message
                raise
            sub = getattr(exc, "ctx", None) or ctx
            typer.echo(f"error: {sub.command_path} needs {missing_option(param)}", err=True)
            typer.echo(f"hint: {option_hint(param)}", err=True)
            raise typer.Exit(EXIT_ERROR) from None


# click's, or the copy Typer >= 0.22 carries (typer._click): whichever raises it here
_MISSING_PARAMETER: type[Exception] = sys.modules[typer.BadParameter.__module__].MissingParameter


def missing_option(param: Any) -> str:
    name = max(param.opts, key=len)
    return f"{name} ({param.help})" if param.help else name


def option_hint(param: Any) -> str:
    name = max(param.opts, key=len)
    value = "DIR" if name == "--state" else getattr(param, "metavar", None) or \
        str(param.name).upper()
    envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
    return f"pass {name} {value}" + "".join(f", or set {e}={value}" for e in envvars) + (
        " (the directory `fedface-aggregator init` made)" if name == "--state" else "")


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null: the interpreter's last flush of what is still buffered
    would raise BrokenPipeError again and print "Exception ignored" on stderr."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (CliRunner)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def resolve_broker(cfg: AggregatorConfig, url: str, ca: Path | None, cert: Path | None,
                   key: Path | None) -> tuple[str, Path | None, Path | None, Path | None]:
    """``serve``'s broker and TLS files: each option given wins, else what ``init`` stored
    (``broker`` section). Stored TLS files are not applied to an explicit plaintext
    ``mqtt://`` URL (a local test broker next to the production one)."""
    stored = cfg.broker
    if stored is None or (url and not url.startswith("mqtts://")):
        if not url:
            raise ValueError("no broker: pass --broker mqtts://host:port, or store it once "
                             "with `fedface-aggregator init --broker-url ...`")
        return url, ca, cert, key
    return (url or stored.url, ca or stored.ca_file, cert or stored.cert_file,
            key or stored.key_file)


def local_time(ts: float | None) -> str:
    """ISO-8601 in the local time zone with its UTC offset (unambiguous in a log or
    a ticket); ``-`` for none. ``--json`` keeps the raw Unix time."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    """A header row and aligned columns, or ONE line saying why there is nothing (a blank
    output reads as a broken command)."""
    if not rows:
        typer.echo(empty)
        return
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
