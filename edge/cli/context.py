"""Per-invocation state shared by the commands: settings, and lazily opened resources.

Resources are opened on first use so ``fedface-edge people list`` never loads a model
and ``fedface-edge models verify`` never opens the gallery; closing happens when the
command's context ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edge.config import BoxConfig, ConfigError, EdgeSettings, resolve_settings

if TYPE_CHECKING:
    from edge.gallery import Gallery
    from edge.pipeline import FacePipeline
    from edge.recognizer import Recognizer


@dataclass
class BoxContext:
    settings: EdgeSettings
    debug: bool = False
    config: BoxConfig | None = None  # None: the box is not provisioned
    config_path: Path | None = None  # where the config is (or would be)
    options: dict[str, Any] = field(default_factory=dict)  # the root's command-line values
    _gallery: Gallery | None = field(default=None, repr=False)
    _pipeline: FacePipeline | None = field(default=None, repr=False)

    def resolve(self, config_file: Path | None = None) -> None:
        """Settings from the options, then the config file, then env, then defaults
        (edge.config.resolve_settings). A command's own ``--config FILE`` calls this again
        before it opens anything, so the file's data dir is the one used."""
        if config_file is not None and (self._gallery is not None
                                        or self._pipeline is not None):
            raise RuntimeError("--config must be applied before the box is opened")
        self.settings, self.config, self.config_path = resolve_settings(self.options,
                                                                        config_file)

    def require_config(self) -> BoxConfig:
        """The provisioned config, or a clear error saying how to get one."""
        if self.config is None:
            raise ConfigError(f"no box config at {self.config_path}",
                              hint="provision the box first (fedface-edge provision), or "
                              "pass --config FILE / set FEDFACE_CONFIG")
        return self.config

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
        obj.resolve()
        ctx.find_root().obj = obj
        ctx.find_root().call_on_close(obj.close)
    return obj
