"""A throwaway Mosquitto for a bench: a free loopback port, its own config and log in the
bench's work directory, and its $SYS counters."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path, max_queued: int = 100_000,
                    extra: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """Nagle off, as the generated broker config; returns the process and its URL."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence false\nset_tcp_nodelay true\nmax_queued_messages {max_queued}\n"
                    f"{extra}log_dest file {workdir}/mosquitto.log\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def start_fleet_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Queues deep enough for every chunk of a fleet in flight, $SYS counters each second."""
    return start_mosquitto(workdir, max_queued=1_000_000,
                           extra="max_inflight_messages 0\nsys_interval 1\n")


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


class SysCounters:
    """Mosquitto's $SYS byte/message totals (published every second)."""

    NAMES = ("bytes/received", "bytes/sent", "messages/received", "messages/sent")

    def __init__(self, url: str) -> None:
        from federation.transport.mqtt import MqttTransport

        self.values: dict[str, int] = {}
        self.t = MqttTransport(url, "bench-sys", clean_start=True)
        for name in self.NAMES:
            self.t.subscribe(f"$SYS/broker/{name}", self._on)
        assert self.t.wait_connected(10)

    def _on(self, topic: str, payload: bytes) -> None:
        self.values[topic.split("/broker/", 1)[1]] = int(payload)

    def snapshot(self) -> dict[str, int]:
        time.sleep(2.2)  # two $SYS periods: the totals include everything so far
        return dict(self.values)

    def close(self) -> None:
        self.t.close()
