"""The progress bar of the commands that work through many photos (enroll, identify)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.serving.recognizer import ProgressCallback


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[ProgressCallback]:
    """A callback advancing a bar of ``total`` steps, drawn on stderr when it is a
    terminal (stdout is kept for results a script may parse; no bar in a log)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task(label, total=total)

        def advance(_image: Path, _failure: str | None) -> None:
            progress.advance(task)

        yield advance
