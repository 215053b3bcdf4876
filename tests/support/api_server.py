"""A running ``fedface-edge serve-api`` as a real process on a free loopback port, and an
API key for it made by the real CLI (``fedface-edge api-key create``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

URL_LINE = re.compile(r"recognition API on (https?://\S+)")


def edge_cli(data_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FEDFACE_DATA_DIR=str(data_dir))
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


def create_key(data_dir: Path, service: str) -> str:
    out = edge_cli(data_dir, "api-key", "create", service)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@dataclass
class RunningApi:
    url: str
    log: list[str]  # the server's stderr lines so far


@contextmanager
def running_api(data_dir: Path, *args: str, start_timeout: float = 120) -> Iterator[RunningApi]:
    """``serve-api --port 0`` on ``data_dir``, once it listens."""
    env = dict(os.environ, FEDFACE_DATA_DIR=str(data_dir))
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve-api", "--port", "0",
                                *args], env=env, text=True, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:  # keeps draining stderr so the server never blocks on it
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if URL_LINE.search(line):
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + start_timeout
    while not found.is_set() and process.poll() is None and time.monotonic() < deadline:
        found.wait(0.2)
    try:
        assert found.is_set(), f"serve-api did not start: {''.join(lines)}"
        match = next(m for m in map(URL_LINE.search, lines) if m)
        yield RunningApi(match.group(1), lines)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(5)
