"""Turn expected failures into one ``error:`` line (+ ``hint:``) and a grouped exit code.

Exit codes of ``fedface-edge`` (grouped by component):

====  ==================================================================
0     success
1     internal error (a bug: re-run with ``--debug`` for the traceback)
2     usage error (unknown option, missing argument; printed by Typer)
3     input image: unreadable file, no face found
4     models: missing, corrupt or unfetchable model files
5     gallery / data directory: not writable, unknown person, model mismatch
6     video source: bad URI, cannot open, stream lost for good
7     configuration: invalid setting
9     a check failed: ``doctor``, ``model`` (refused or impossible swap/rollback),
      a trained result the canary refused
10    training: torch missing (install ``fedface[train]``) or training failed
8, 11-19  reserved for later components: an exception class declares its own
      ``exit_code`` attribute
130   interrupted (Ctrl-C)
141   stdout closed by the reader (``fedface-edge run | head``), no message
====  ==================================================================

Any exception with an integer ``exit_code`` attribute and a message is treated as a user
error; ``FedFaceError`` subclasses without one get 1 unless listed in ``_CODES_BY_NAME``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

log = logging.getLogger(__name__)

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODELS = 4
EXIT_GALLERY = 5
EXIT_SOURCE = 6
EXIT_CONFIG = 7
EXIT_PROVISIONING = 8  # edge.provision.ProvisionError
EXIT_CHECKS = 9  # doctor's checks failed, or a model refused (edge.serving.hot_swap.HotSwapError)
EXIT_TRAINING = 10
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell pipeline reports it

# What `fedface-edge --help` lists; a test checks every exit code the package declares
# appears here.
EXIT_CODES = {
    0: "ok", EXIT_INTERNAL: "internal error", EXIT_USAGE: "usage", EXIT_INPUT: "input image",
    EXIT_MODELS: "models", EXIT_GALLERY: "gallery/data dir", EXIT_SOURCE: "video source",
    EXIT_CONFIG: "configuration", EXIT_PROVISIONING: "provisioning",
    EXIT_CHECKS: "checks failed (doctor, model refused by the canary)",
    EXIT_TRAINING: "training", EXIT_INTERRUPTED: "interrupted",
    EXIT_BROKEN_PIPE: "output closed (e.g. | head)",
}

# Errors owned by other modules that do not carry an exit_code of their own.
_CODES_BY_NAME = {
    "ImageReadError": EXIT_INPUT,
    "NoFaceError": EXIT_INPUT,
    "ModelError": EXIT_MODELS,
    "GalleryError": EXIT_GALLERY,
    "SourceError": EXIT_SOURCE,
    "ConfigError": EXIT_CONFIG,
}


def _pass_through() -> tuple[type[BaseException], ...]:
    """Exceptions the framework itself turns into usage messages and exit codes."""
    types: list[type[BaseException]] = [typer.Exit, typer.Abort]
    typer_exception = getattr(typer, "TyperException", None)  # typer >= 0.22 vendors click
    if isinstance(typer_exception, type):
        types.append(typer_exception)
    try:
        import click

        types += [click.exceptions.ClickException, click.exceptions.Exit,
                  click.exceptions.Abort]
    except ImportError:
        pass
    return tuple(types)


_PASS_THROUGH = _pass_through()


class CliError(Exception):
    """Raised by a command for a user error detected in the CLI layer itself."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code


def _user_error_code(exc: BaseException) -> int | None:
    """Exit code if ``exc`` is an expected (user) error, None if it is a bug."""
    from edge.errors import FedFaceError
    from models.registry import ModelError

    explicit = getattr(exc, "exit_code", None)
    if isinstance(explicit, int) and not isinstance(explicit, bool):
        return explicit
    for klass in type(exc).__mro__:
        if klass.__name__ in _CODES_BY_NAME:
            return _CODES_BY_NAME[klass.__name__]
    if isinstance(exc, (FedFaceError, ModelError)):
        return EXIT_INTERNAL
    return None


def _as_user_error(exc: Exception) -> Exception:
    """Failures of the box's own files that are not bugs: a full disk (join caching its
    model graphs said 'internal error ... report it'), a damaged gallery database, and an
    unusable key file (exit 1, which the service manager restarts for ever; 7, not
    provisioned, it does not)."""
    from edge.gallery.files import DAMAGED_GALLERY, damaged, no_space
    from federation.errors import KeyFileError

    if isinstance(exc, OSError) and no_space(exc):
        where = Path(exc.filename).parent if exc.filename else Path(".")
        return CliError(f"no space left on the device writing {exc.filename or 'a file'}",
                        hint=f"free space there (df -h {where}); a box needs about 100 MB in "
                        "its data dir besides the gallery (its model graphs, trunk features "
                        "and model versions); fedface-edge doctor checks free space",
                        exit_code=EXIT_GALLERY)
    if isinstance(exc, sqlite3.DatabaseError) and damaged(exc):
        return CliError(f"the gallery database cannot be read: {exc}", hint=DAMAGED_GALLERY,
                        exit_code=EXIT_GALLERY)
    if isinstance(exc, KeyFileError):
        return CliError(f"a key file of this box cannot be used: {exc.message}",
                        hint="re-import the key bundle (fedface-edge provision --bundle FILE); "
                        "fedface-edge doctor names the file", exit_code=EXIT_CONFIG)
    return exc


def _message_and_hint(exc: BaseException) -> tuple[str, str | None]:
    text = str(exc)
    hint = str(getattr(exc, "hint", "") or "")
    # FedFaceError and ModelError fold the hint into str(exc) as "message (hint)":
    # print it on its own line instead
    if hint and text.endswith(f" ({hint})"):
        text = text[: -len(hint) - 3]
    message = " ".join(text.split()) or type(exc).__name__
    return message, (" ".join(hint.split()) or None)


def report(exc: BaseException, code: int) -> None:
    message, hint = _message_and_hint(exc)
    typer.echo(f"error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    log.debug("exit %d after %s", code, type(exc).__name__, exc_info=exc)


def debug_enabled(ctx: typer.Context) -> bool:
    obj = ctx.find_root().obj
    return bool(getattr(obj, "debug", False))


class FedFaceGroup(TyperGroup):
    """The root command group: every command's exceptions pass through here."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0].isdigit() and self.get_command(ctx, args[0]) is None:
            # `-v 2`: --verbose counts repetitions and takes no number (issue 17)
            ctx.fail(f"No such command '{args[0]}': -v takes no number; repeat it instead "
                     "(-v info, -vv debug)")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: Any) -> Any:  # typer.Context; base class types it privately
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except BrokenPipeError:
            # `fedface-edge run | head`: the reader is gone; stop quietly like a pipe tool
            # (stdout is pointed at /dev/null so the final flush cannot raise again)
            devnull = os.open(os.devnull, os.O_WRONLY)
            with suppress(OSError, ValueError):
                os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            user_exc = _as_user_error(exc)
            code = _user_error_code(user_exc)
            if debug_enabled(ctx):
                # the traceback, and still the exit code a script or systemd reads (a
                # raised exception would end every --debug run with 1)
                traceback.print_exc()
                raise typer.Exit(EXIT_INTERNAL if code is None else code) from None
            exc = user_exc
            if code is None:
                typer.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
                typer.echo("hint: re-run with --debug for the traceback and report it", err=True)
                raise typer.Exit(EXIT_INTERNAL) from None
            report(exc, code)
            raise typer.Exit(code) from None
