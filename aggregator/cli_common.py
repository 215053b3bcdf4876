"""Shared pieces of the ``fedface-aggregator`` command modules: the one-line error
wrapper and the common options."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from aggregator.registry import RegistryError
from aggregator.store import StoreError
from federation.errors import FederationError

F = TypeVar("F", bound=Callable[..., Any])
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
        except EXPECTED as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.filename:
                message = f"{exc.filename}: {message}"
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
