"""Issue 15's unknown-device flood against a running aggregator, and an honest box's ack
latency before and during it (bench.attacks.unknown_flood, tests/integration).

- the flooder (``python -m bench.rig.flood URL FED``, a process of its own so that its
  CPU is not the measuring process's GIL): a chunk start, signed by a key of its own,
  on the update topic of a new made-up device id per message, QoS 1, as fast as it can,
  until ``--count`` or a ``stop`` line on its stdin;
- ``HonestProbe``: a registered box that sends the same real update again and again
  under fresh message ids and times each ack (the first is accepted, the rest are
  ``duplicate``: the same intake, spool, group commit and ack path);
- ``measure``: quiet probes, then probes while the flood runs; then it waits until the
  aggregator has counted the flood and reads acks, rows and log growth.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.rig.procs import spawn_module

GHOST = "ghost"  # made-up device ids: ghost-<n>


class HonestProbe:
    """A registered box on its own MQTT link: ``once()`` sends its update (fresh msg id)
    and returns the seconds until the aggregator's ack of that message arrived."""

    def __init__(self, url: str, fed: str, device: str, key: Any, blob: bytes,
                 round_no: int, model: str, chunk_size: int = 64 * 1024) -> None:
        from federation import topics
        from federation.transport.mqtt import MqttTransport

        self.fed, self.device, self.key, self.blob = fed, device, key, blob
        self.round_no, self.model, self.chunk_size = round_no, model, chunk_size
        self.reasons: list[str | None] = []
        self._acked: dict[str, float] = {}
        self._cond = threading.Condition()
        self.link = MqttTransport(url, f"{device}-probe", clean_start=True)
        self.link.subscribe(topics.ack(fed, device), self._on_ack)
        if not self.link.wait_connected(20):
            raise RuntimeError(f"{device} cannot reach the broker at {url}")

    def _on_ack(self, topic: str, payload: bytes) -> None:
        import json

        from federation.envelope import decode

        body = json.loads(decode(payload).payload)
        with self._cond:
            if body.get("msg"):
                self._acked[str(body["msg"])] = time.monotonic()
                self.reasons.append(body.get("reason"))
            self._cond.notify_all()

    def once(self, timeout: float = 120.0) -> float:
        from federation import topics
        from federation.chunking import split_blob
        from federation.envelope import encode

        envs = split_blob(self.blob, self.key, kind="update", fed=self.fed, sender=self.device,
                          round=self.round_no, model=self.model, chunk_size=self.chunk_size)
        msg = envs[0].msg
        started = time.monotonic()
        for env in envs:
            self.link.publish(topics.update(self.fed, self.device), encode(env))
        with self._cond:
            if not self._cond.wait_for(lambda: msg in self._acked, timeout):
                raise TimeoutError(f"no ack for {self.device}'s update after {timeout:.0f} s")
            return self._acked[msg] - started

    def close(self) -> None:
        self.link.close()


def wait_open(url: str, fed: str, timeout: float = 60.0) -> tuple[int, str]:
    """The open round's number and base model, once the aggregator announced it."""
    import json

    from federation import topics
    from federation.envelope import decode
    from federation.transport.mqtt import MqttTransport

    seen: list[dict[str, Any]] = []
    cond = threading.Condition()

    def on(topic: str, payload: bytes) -> None:
        with cond:
            seen.append(json.loads(decode(payload).payload))
            cond.notify_all()

    link = MqttTransport(url, "announce-reader", clean_start=True)
    try:
        link.subscribe(topics.announce(fed), on)
        with cond:
            if not cond.wait_for(lambda: any(a["state"] == "open" for a in seen), timeout):
                raise TimeoutError(f"no open round announced on {url} after {timeout:.0f} s")
            ann = next(a for a in reversed(seen) if a["state"] == "open")
        return int(ann["round"]), str(ann["base_model"])
    finally:
        link.close()


class AckCounter:
    """Every ack the aggregator publishes, per device (subscribes to ``ack/+``)."""

    def __init__(self, url: str, fed: str) -> None:
        from federation import topics
        from federation.transport.mqtt import MqttTransport

        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.link = MqttTransport(url, "ack-counter", clean_start=True)
        self.link.subscribe(f"{topics.prefix(fed)}/ack/+", self._on)
        if not self.link.wait_connected(20):
            raise RuntimeError(f"the ack counter cannot reach the broker at {url}")

    def _on(self, topic: str, payload: bytes) -> None:
        device = topic.rsplit("/", 1)[1]
        with self._lock:
            self.counts[device] = self.counts.get(device, 0) + 1

    def unknown(self) -> int:
        with self._lock:
            return sum(n for d, n in self.counts.items() if d.startswith(GHOST))


@dataclass
class FloodFigures:
    sent: int
    counted: int  # rejected.unknown_device at the aggregator
    unknown_acks: int
    unknown_rows: int  # rejection rows about unknown senders
    all_rows: int  # rows the rejections table grew by during the flood (any reason)
    log_bytes: int  # aggregator log lines about unregistered senders, during the flood
    log_lines: int
    all_log_bytes: int  # the log's whole growth (the honest box's duplicates too)
    quiet: list[float]
    during: list[float]
    flood_seconds: float

    @property
    def quiet_median(self) -> float:
        return statistics.median(self.quiet)

    @property
    def during_median(self) -> float:
        return statistics.median(self.during)


def _db_figures(state: Path) -> tuple[int, int, int]:
    """rejected.unknown_device, rows about unknown senders, all rejection rows."""
    db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT value FROM counters WHERE name='rejected.unknown_device'"
                         ).fetchone()
        unknown = db.execute("SELECT COUNT(*) FROM rejections WHERE reason='unknown_device'"
                             ).fetchone()[0]
        rows = db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
        return (0 if row is None else int(row[0])), int(unknown), int(rows)
    finally:
        db.close()


def measure(url: str, fed: str, state: Path, log: Path, probe: HonestProbe, *,
            count: int, min_count: int, samples: int, spacing: float = 0.1,
            settle: float = 30.0,
            say: Callable[[str], None] = lambda _: None) -> FloodFigures:
    """Quiet probes, then the flood (stopped once ``min_count`` are sent and ``samples``
    probes completed while it ran, or at ``count``), then its aftermath once the
    aggregator has counted what it received (or ``settle`` s without progress)."""
    acks = AckCounter(url, fed)
    try:
        probe.once()  # the accepted one: the rest are the same path, answered duplicate
        quiet = [probe.once() for _ in range(samples)]
        say(f"quiet: {len(quiet)} probes, median {statistics.median(quiet):.3f} s")
        _, _, rows_before = _db_figures(state)
        log_before = log.stat().st_size
        flooder = spawn_module("bench.rig.flood", url, fed, "--count", str(count))
        sent = [0]
        done = threading.Event()
        reader = threading.Thread(target=_read_progress, args=(flooder, sent, done),
                                  daemon=True)
        reader.start()
        started = time.monotonic()
        while sent[0] < 100 and not done.wait(0.01):  # the flood is under way
            pass
        during: list[float] = []
        while not done.is_set() and (len(during) < samples or sent[0] < min_count):
            if len(during) >= samples:
                done.wait(0.05)  # enough probes: let the flood reach its count
                continue
            latency = probe.once()
            if not done.is_set():  # acked while the flood was still being sent
                during.append(latency)
            done.wait(spacing)  # spread the probes over the flood
        _stop_flooder(flooder, done)
        reader.join(30)
        flood_seconds = time.monotonic() - started
        say(f"flood: {sent[0]} messages in {flood_seconds:.1f} s; {len(during)} probes")
        counted = _settle(state, sent[0], settle)
        time.sleep(0.5)  # an ack the aggregator sent would arrive within this
        _, unknown_rows, rows_after = _db_figures(state)
        with log.open("rb") as f:
            f.seek(log_before)
            grown = f.read().splitlines(keepends=True)
        about = [line for line in grown if b"unregistered" in line]
        return FloodFigures(
            sent=sent[0], counted=counted, unknown_acks=acks.unknown(),
            unknown_rows=unknown_rows, all_rows=rows_after - rows_before,
            log_bytes=sum(map(len, about)), log_lines=len(about),
            all_log_bytes=sum(map(len, grown)), quiet=quiet, during=during,
            flood_seconds=flood_seconds)
    finally:
        acks.link.close()


def _read_progress(proc: subprocess.Popen[str], sent: list[int],
                   done: threading.Event) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("sent "):
            sent[0] = int(line.split()[1])
    done.set()


def _stop_flooder(proc: subprocess.Popen[str], done: threading.Event) -> None:
    if not done.is_set():
        proc.terminate()  # the flooder stops at the next message and reports its count
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _settle(state: Path, sent: int, quiet_for: float) -> int:
    """Wait until the aggregator has counted every flood message, or its count stopped
    moving for ``quiet_for`` s (a broker may drop what it could not queue)."""
    last, since = -1, time.monotonic()
    while True:
        counted = _db_figures(state)[0]
        if counted >= sent:
            return counted
        if counted != last:
            last, since = counted, time.monotonic()
        elif time.monotonic() - since > quiet_for:
            return counted
        time.sleep(0.2)


# --- the flooder process ------------------------------------------------------------------
def flood(url: str, fed: str, count: int, payload_bytes: int) -> None:
    import signal

    from federation import topics
    from federation.chunking import split_blob
    from federation.crypto.signing import generate_signing_key
    from federation.envelope import encode
    from federation.transport.mqtt import MqttTransport

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    key = generate_signing_key()
    link = MqttTransport(url, "flooder", clean_start=True, max_queued=1_000_000)
    if not link.wait_connected(20):
        raise SystemExit(f"the flooder cannot reach {url}")
    blob = bytes(4 * payload_bytes)  # a chunk start: the first of four chunks
    sent = 0
    for i in range(count):
        if stop.is_set():
            break
        device = f"{GHOST}-{i}"
        env = split_blob(blob, key, kind="update", fed=fed, sender=device, round=1,
                         model="base", chunk_size=payload_bytes)[0]
        link.publish(topics.update(fed, device), encode(env))
        sent += 1
        if sent % 100 == 0:
            print(f"sent {sent}", flush=True)
    link.flush(60)
    link.close()
    print(f"sent {sent}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="flood a federation's update topics with chunk "
                                "starts from made-up device ids (bench.attacks.unknown_flood)")
    p.add_argument("url")
    p.add_argument("fed")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--payload-bytes", type=int, default=1024)
    a = p.parse_args(argv)
    flood(a.url, a.fed, a.count, a.payload_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
