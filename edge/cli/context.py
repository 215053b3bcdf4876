"""Per-invocation state shared by the commands: settings, and lazily opened resources.

Resources are opened on first use so ``fedface-edge people list`` never loads a model
and ``fedface-edge models verify`` never opens the gallery; closing happens when the
command's context ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from edge.config import EdgeSettings

if TYPE_CHECKING:
    from edge.gallery import Gallery
    from edge.pipeline import FacePipeline
    from edge.recognizer import Recognizer


@dataclass
class BoxContext:
    settings: EdgeSettings
    debug: bool = False
    _gallery: Gallery | None = field(default=None, repr=False)
    _pipeline: FacePipeline | None = field(default=None, repr=False)

    def gallery(self) -> Gallery:
        if self._gallery is None:
            from edge.gallery import Gallery

            self._gallery = Gallery.open(self.settings.data_dir)
        return self._gallery

    def pipeline(self) -> FacePipeline:
        if self._pipeline is None:
            from edge.pipeline import FacePipeline

            self._pipeline = FacePipeline.from_model_dir(self.settings.model_dir,
                                                         threads=self.settings.threads)
        return self._pipeline

    def recognizer(self, threshold: float | None = None) -> Recognizer:
        from edge.recognizer import Recognizer

        chosen = self.settings.match_threshold if threshold is None else threshold
        return Recognizer(self.pipeline(), self.gallery(), chosen)

    def close(self) -> None:
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None


def box(ctx: typer.Context) -> BoxContext:
    """The BoxContext set up by the root callback."""
    obj = ctx.find_root().obj
    if not isinstance(obj, BoxContext):  # a command invoked without the root app
        obj = BoxContext(EdgeSettings())
        ctx.find_root().obj = obj
        ctx.find_root().call_on_close(obj.close)
    return obj
