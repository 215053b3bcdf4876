"""One bench run's rig, as a context manager: a work directory, a broker, the federation
on disk, a round watcher, and whatever boxes and aggregator the bench starts in it;
leaving the block stops them all and removes the work directory (kept, and named on
stderr, when the block failed: the logs are in it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.rig.aggregator import AggregatorProcess
from bench.rig.box import BoxProcesses, box_args
from bench.rig.broker import start_mosquitto, stop_broker
from bench.rig.procs import tmpdir
from bench.rig.state import Federation, make_federation
from bench.rig.watch import RoundWatcher

StartBroker = Callable[[Path], "tuple[subprocess.Popen[bytes], str]"]


class RigSession:
    def __init__(self, prefix: str, n_devices: int, *, keys: Path | None = None,
                 start_broker: StartBroker = start_mosquitto, watch: bool = True) -> None:
        self.root = tmpdir(prefix)
        self.broker, self.url = start_broker(self.root / "mosquitto")
        self.children: list[subprocess.Popen[Any]] = []
        self.boxes: list[BoxProcesses] = []
        self.aggregator: AggregatorProcess | None = None
        self.watcher: RoundWatcher | None = None
        try:
            self.fed: Federation = make_federation(self.root, n_devices, keys=keys)
            self.watcher = RoundWatcher(self.url) if watch else None
        except BaseException:
            self.close(keep=True)
            raise

    def __enter__(self) -> RigSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(keep=exc_type is not None)

    @property
    def watch(self) -> RoundWatcher:
        assert self.watcher is not None, "this session was started with watch=False"
        return self.watcher

    def start_boxes(self, groups: list[list[str]], rounds: int, chunk: int,
                    **options: Any) -> BoxProcesses:
        """Box processes, one per device group (``rig.box``'s options by long name)."""
        boxes = BoxProcesses(groups, box_args(self.url, self.fed.key_dir, rounds, chunk,
                                              **options), self.root)
        self.boxes.append(boxes)
        return boxes

    def start_aggregator(self, argv: list[str]) -> AggregatorProcess:
        self.aggregator = AggregatorProcess(argv, self.root / "aggregator.log")
        return self.aggregator

    def adopt(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        """Another child of this run, killed with the rest."""
        self.children.append(proc)
        return proc

    def close(self, keep: bool = False) -> None:
        if self.watcher is not None:
            self.watcher.close()
        for boxes in self.boxes:
            boxes.kill()
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
        if self.aggregator is not None:
            self.aggregator.kill()
        stop_broker(self.broker)
        if keep:
            print(f"bench: logs kept in {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
