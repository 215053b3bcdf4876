"""A real Mosquitto broker on a free loopback port with its own config file.

The ``mosquitto`` and ``mosquitto_factory`` fixtures (tests/conftest.py) start these;
tests that need a broker on a fixed port or with TLS start one themselves.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_PICK = random.SystemRandom()  # not the per-test seeded ``random``: workers must differ


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range. A port from bind(0)
    is in that range, where any outgoing connection may take it as its source port
    before the test binds it: the journey's kiosk, bound minutes after its port was
    picked, found "Address already in use" (a loaded fresh-clone CI)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = _PICK.randrange(max(1025, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if not found and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    if not found:
        pytest.fail("mosquitto is not installed: run `make setup-test` (apt-get install mosquitto)")
    return found


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class MosquittoBroker:
    """A real Mosquitto process on 127.0.0.1:port with a config file of its own."""

    workdir: Path
    port: int
    extra_config: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "set_tcp_nodelay true",  # as the generated broker config (federation.transport.mqtt)
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to user `mosquitto`, which cannot enter
            # pytest's 0700 temp dirs (config, ACL, CRL, log, persistence).
            lines.append("user root")
        if "listener" not in self.extra_config:
            lines += [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> MosquittoBroker:
        self.write_config()
        self.proc = subprocess.Popen(
            [_mosquitto_binary(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"mosquitto did not start: {log}") from None
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
