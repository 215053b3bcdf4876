"""Per-invocation state shared by the commands: settings, and lazily opened resources.

Resources are opened on first use so ``fedface-edge people list`` never loads a model
and ``fedface-edge models verify`` never opens the gallery; closing happens when the
command's context ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edge.box import Box, build_box
from edge.config import (
    BoxConfig,
    CameraSection,
    ConfigError,
    EdgeSettings,
    EventsSection,
    StandaloneConfig,
    resolve_settings,
)
from federation.signals import stop_on_signals

if TYPE_CHECKING:
    from edge.gallery.store import Gallery
    from edge.serving.recognizer import Recognizer
    from edge.vision.pipeline import FacePipeline


@dataclass
class BoxContext:
    settings: EdgeSettings
    debug: bool = False
    config: BoxConfig | None = None  # None: the box is not provisioned
    standalone: StandaloneConfig | None = None  # the edge.toml of a box in no federation
    config_path: Path | None = None  # where the config is (or would be)
    options: dict[str, Any] = field(default_factory=dict)  # the root's command-line values
    _box: Box | None = field(default=None, repr=False)

    def resolve(self, config_file: Path | None = None) -> None:
        """Settings from the options, then the config file, then env, then defaults
        (edge.config.resolve_settings). A command's own ``--config FILE`` calls this again
        before it opens anything, so the file's data dir is the one used."""
        if config_file is not None and self._box is not None:
            raise RuntimeError("--config must be applied before the box is opened")
        self.settings, found, self.config_path = resolve_settings(self.options, config_file)
        self.config = found if isinstance(found, BoxConfig) else None
        self.standalone = found if isinstance(found, StandaloneConfig) else None

    @property
    def camera(self) -> CameraSection | None:
        """The config's ``[camera]`` (a provisioned box's or one in no federation)."""
        found = self.config or self.standalone
        return found.camera if found is not None else None

    @property
    def events(self) -> EventsSection | None:
        found = self.config or self.standalone
        return found.events if found is not None else None

    def provisioned_keys(self) -> bool:
        """The data dir holds a provisioned box's keys (its edge.toml may be lost)."""
        keys = Path(self.settings.data_dir) / "keys"
        return keys.is_dir() and any(keys.iterdir())

    def require_config(self) -> BoxConfig:
        """The provisioned config, or a clear error saying how to get one."""
        if self.config is None:
            if self.provisioned_keys():  # edge.toml lost, the box's keys kept
                raise ConfigError(f"no box config at {self.config_path}, but "
                                  f"{self.settings.data_dir} holds a provisioned box's keys",
                                  hint="run fedface-edge provision again with the same "
                                  "--device-id and --bundle: it keeps the keys and "
                                  "certificate and writes the config")
            if self.standalone is not None:  # it said "no box config at" that file
                raise ConfigError(f"{self.config_path} is the config of a box in no "
                                  "federation: this command needs a provisioned box",
                                  hint="provision the box (fedface-edge provision): it keeps "
                                  "that file's threshold, camera and events")
            raise ConfigError(f"no box config at {self.config_path}",
                              hint="provision the box first (fedface-edge provision), or "
                              "pass --config FILE / set FEDFACE_CONFIG")
        return self.config

    def box(self) -> Box:
        """The box these settings describe (edge.box: the one assembly of a box)."""
        if self._box is None:
            self._box = build_box(self.settings, self.config)
        return self._box

    def gallery(self) -> Gallery:
        return self.box().gallery()

    def pipeline(self) -> FacePipeline:
        return self.box().pipeline()

    def recognizer(self, threshold: float | None = None) -> Recognizer:
        return self.box().recognizer(threshold)

    def close(self) -> None:
        if self._box is not None:
            self._box.close()
            self._box = None


def box(ctx: typer.Context) -> BoxContext:
    """The BoxContext set up by the root callback."""
    obj = ctx.find_root().obj
    if not isinstance(obj, BoxContext):  # a command invoked without the root app
        obj = BoxContext(EdgeSettings())
        obj.resolve()
        ctx.find_root().obj = obj
        ctx.find_root().call_on_close(obj.close)
    return obj


def warn_if_no_data_dir(ctx: typer.Context) -> None:
    """A reading command (status, model status, people list) on a data dir that is not
    there says so: it would otherwise show a plausible empty box (the pretrained model,
    no one enrolled) for a mistyped ``--data-dir`` or ``FEDFACE_DATA_DIR``."""
    data_dir = Path(box(ctx).settings.data_dir)
    ancestor = next((p for p in data_dir.parents if p.exists()), None)
    # under a file it cannot be made at all: the command's own error says so alone
    if not data_dir.exists() and ancestor is not None and ancestor.is_dir():
        typer.echo(f"warning: the data directory {data_dir} does not exist, so what follows "
                   "is an empty box's (a mistyped --data-dir or FEDFACE_DATA_DIR?)", err=True)


def serve_until_signalled(start: Callable[[], object], stop: Callable[[], object],
                          banner: Callable[[], str]) -> None:
    """Start a server, say where it listens, and run until SIGTERM (systemd) or SIGINT
    (Ctrl-C); the server is stopped on the way out, whatever ends the wait."""
    stopping = threading.Event()
    # not a handler that sets the Event: one that ran while this thread held the
    # Event's lock waited for it for ever (federation.signals)
    with stop_on_signals(stopping):
        start()
        typer.echo(banner(), err=True)
        try:
            stopping.wait()
        finally:
            stop()  # a second signal meanwhile is heard and changes nothing
