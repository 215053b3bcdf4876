"""Intake shards: the per-chunk work of the service in K processes
(``serve --intake-processes K``, K >= 2).

Why: in a burst the service process is the aggregator's limit. Its MQTT thread (paho's
Python receive loop, envelope checks, Ed25519, the spool write) and its worker (group
commits, acks) share one GIL, so the process tops out near one core however many cores
the host has (measured with bench.aggregator.fleet_load: about 550 updates/s of the default part
drained on this 2-core machine). A shard process does the per-chunk half (parse, rate
limit, verify, spool: aggregator.intake.delivery, the same code) for its share of the devices,
and hands the service the same small records the MQTT thread queues in one process: a
Rejection, or a SpooledUpdate (the header and the path of the reassembled blob, never
the bytes). The service keeps what needs its state: group commits, the sum, acks, rounds.

How devices are shared: shard = a stable hash of the device id mod K, and each shard's
MQTT client subscribes to the update topic of each of its devices (registered or
revoked; the registry is re-read every second, so a newly registered device is heard
within a second). All chunks of an update come from one device, so they reach one shard
and reassembly needs no state shared between processes. Plain Mosquitto suffices.

Acks are decided by the service and signed and published by the shard that heard the
update (by the service itself while that shard is down).

What differs from K = 1: an update from a device id that is not registered is not
answered, since no shard subscribes to its topic (with the TLS broker config such a
client cannot connect anyway). A revoked device is still answered ``unknown_device``.

Sessions: each shard has its own persistent MQTT session (client id
``<client id>-intake-<k>of<K>``), so the broker queues updates for a shard that is
restarting. The ids in use are recorded in the state directory; a start with another K
ends the previous shards' sessions (``retire_stale_sessions``), which would otherwise
queue every update for a client that never returns.

Supervision: a shard that dies (killed, out of memory) is restarted by the service's next
pump (``restart_dead``). Its partial uploads are lost; they were never acked, so the
boxes resend them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

from aggregator.intake.delivery import DeliveryIntake, Item, RateLimitedReport
from aggregator.intake.ratelimit import RateLimiter, RateLimits
from aggregator.intake.spool import DiskReassembler
from aggregator.rounds.publisher import Publisher
from aggregator.rounds.records import OutgoingAck
from aggregator.state.registry import read_devices
from federation import topics
from federation.crypto.key_files import read_private_key
from federation.files import write_atomic
from federation.memory import AGGREGATOR_MALLOC, pin_malloc
from federation.transport.mqtt import MqttTransport, TlsConfig

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0  # registry re-read (new devices, revocations), rate-limit reports
# A shard that keeps dying (an unreadable key, a bug) is restarted after 0.5, 1, 2 ... s,
# at most a minute apart, instead of on every pump; the delay resets after a minute up.
RESTART_DELAYS = (0.5, 60.0)
CONNECT_TIMEOUT = 20.0
START_TIMEOUT = 120.0  # spawn + imports + connect on a loaded 2-core box take seconds
READY = "ready"
SESSIONS_FILE = "intake-sessions.json"


def shard_of(device: str, count: int) -> int:
    """The shard that hears ``device`` (stable across restarts and hosts)."""
    return int.from_bytes(hashlib.sha256(device.encode()).digest()[:4], "big") % count


def shard_client_id(client_id: str, index: int, count: int) -> str:
    return f"{client_id}-intake-{index}of{count}"


@dataclass(frozen=True)
class ShardSpec:
    """Everything a shard process needs (pickled to it at spawn)."""

    index: int
    count: int
    state_dir: Path
    fed_id: str
    broker: str
    client_id: str  # the service's; each shard's is derived (shard_client_id)
    tls: TlsConfig | None
    protocol: str
    max_blob_bytes: int
    max_spool_bytes: int  # for all shards together
    signing_key_file: Path  # the aggregator's key: the shard signs its devices' acks
    aggregator_id: str = "aggregator"  # the sender id of the acks it signs
    rate_limits: RateLimits | None = None
    log_level: int = logging.INFO


# --- shard process ------------------------------------------------------------------------
class _PipeSink:
    """The delivery code's queue, in a shard: each item goes to the service at once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # the MQTT thread and the main loop both send

    def put(self, item: Item) -> None:
        with self._lock:
            self._conn.send(item)

    def ready(self) -> None:
        with self._lock:
            self._conn.send(READY)


class ShardIntake:
    """One shard: its own MQTT client, delivery intake (key snapshot, rate limiter, spool
    directory) and ack publisher."""

    def __init__(self, spec: ShardSpec, conn: Connection) -> None:
        self.spec = spec
        self.fed_id = spec.fed_id
        self.conn = conn
        # Read-only: the service owns the database; this process only reads devices.
        self._db = sqlite3.connect(f"file:{spec.state_dir / 'state.db'}?mode=ro", uri=True,
                                   check_same_thread=False)
        self._sink = _PipeSink(conn)
        self.rate_limiter = RateLimiter(spec.rate_limits) if spec.rate_limits else None
        self.intake = DeliveryIntake(
            spec.fed_id,
            DiskReassembler(spec.state_dir / "spool" / f"intake-{spec.index}",
                            spec.max_blob_bytes, spec.max_spool_bytes // spec.count),
            self._sink, self.rate_limiter)
        self._heard: set[str] = set()
        self.transport = MqttTransport(
            spec.broker, shard_client_id(spec.client_id, spec.index, spec.count),
            tls=spec.tls, clean_start=False, protocol=spec.protocol, connect=False)
        # Acks of its devices are signed and sent from here: signing one costs about as
        # much as verifying an update, work that would otherwise fall on the service's
        # one thread. The key is the service's own (same host, same user, state dir).
        self.publisher = Publisher(self.transport, read_private_key(spec.signing_key_file),
                                   spec.fed_id, spec.aggregator_id, chunk_size=1)

    def refresh_keys(self) -> None:
        devices = read_devices(self._db)
        self.intake.set_keys(devices)
        for device in devices:  # revoked ones too: they are answered unknown_device
            if device.device_id not in self._heard and \
                    shard_of(device.device_id, self.spec.count) == self.spec.index:
                self.transport.subscribe(topics.update(self.fed_id, device.device_id),
                                         self.intake.on_update)
                self._heard.add(device.device_id)

    def run(self) -> None:
        self.refresh_keys()  # subscribed before connecting: nothing queued is missed
        self.transport.start()
        # connected and every SUBSCRIBE acknowledged: a round announced when the shard had
        # only connected lost the updates that came before its SUBACK (a loaded CI run:
        # 30 messages of a box went unheard, unanswered)
        if not self.transport.wait_subscribed(CONNECT_TIMEOUT):
            log.error("intake shard %d: cannot reach the broker at %s yet; retrying",
                      self.spec.index, self.spec.broker)
        else:  # subscribed: the service may stop hearing the update topics itself
            self._sink.ready()
        log.info("intake shard %d of %d (pid %d): hearing %d device(s)", self.spec.index,
                 self.spec.count, os.getpid(), len(self._heard))
        next_refresh = time.monotonic() + REFRESH_SECONDS
        while True:
            if self.conn.poll(max(0.0, next_refresh - time.monotonic())):
                try:
                    request = self.conn.recv()
                except (EOFError, OSError):
                    return  # the service is gone
                if request[0] == "quit":
                    return
                if request[0] == "ack":
                    self.publisher.send_ack(request[1])
                elif request[0] == "forget":
                    self.intake.forget(request[1], request[2])
            if time.monotonic() >= next_refresh:
                self.refresh_keys()
                if self.rate_limiter is not None:
                    counts = self.rate_limiter.drain()
                    if counts:
                        self._sink.put(RateLimitedReport(counts))
                unknown = self.intake.unknown.drain()
                if unknown is not None:  # only in the race of a registry change
                    self._sink.put(unknown)
                next_refresh = time.monotonic() + REFRESH_SECONDS

    def close(self) -> None:
        self.transport.close()
        self._db.close()


def run_shard(fd: int) -> None:
    """A shard process's life (``python -m aggregator.intake.shard_main FD``): its spec is
    the first message on the connection ``fd`` to the service."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the service, which stops us
    conn = Connection(fd)
    try:
        spec: ShardSpec = conn.recv()
    except (EOFError, OSError):
        return
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pin_malloc(AGGREGATOR_MALLOC)  # as the service (federation.memory)
    shard = ShardIntake(spec, conn)
    try:
        shard.run()
    except (EOFError, OSError, BrokenPipeError):
        pass  # the service is gone: nothing to hand over any more
    finally:
        shard.close()


# --- service side -------------------------------------------------------------------------
class _Shard:
    def __init__(self, spec: ShardSpec, deliver: Callable[[Item], None]) -> None:
        # A fresh interpreter running only this module's imports: not fork (this process
        # runs paho threads), and not multiprocessing's spawn, which would re-import the
        # CLI entry point and TenSEAL with it (about 40 MB more per shard).
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aggregator.intake.shard_main", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(spec)
        self.started = time.monotonic()
        self.lost = threading.Event()
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(deliver,), daemon=True,
                                        name=f"intake-{spec.index}-reader")
        self._reader.start()

    def _read(self, deliver: Callable[[Item], None]) -> None:
        while True:
            try:
                item = self.conn.recv()
            except (EOFError, OSError):
                self.lost.set()
                self.ready.set()  # nothing to wait for
                return
            if item == READY:
                self.ready.set()
            else:
                deliver(item)

    def send(self, *request: object) -> bool:
        """False: the shard is gone (the pump restarts it)."""
        if self.lost.is_set():
            return False
        try:
            self.conn.send(request)
        except (OSError, ValueError):
            return False
        return True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.send("quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.alive():
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        self.conn.close()


class IntakeShards:
    """The K shard processes, seen from the service."""

    def __init__(self, spec: ShardSpec) -> None:
        if spec.count < 2:
            raise ValueError("intake shards need at least 2 processes (1: the service's own)")
        self.spec = spec
        self._shards: list[_Shard] = []
        self._deliver: Callable[[Item], None] | None = None
        self._failures: list[int] = []  # per shard: deaths since it last ran a minute

    def start(self, deliver: Callable[[Item], None], rate_limits: RateLimits | None) -> bool:
        """Start the shards and wait until each is connected with its subscriptions in
        place (started together, so their imports overlap). False: some did not get
        there within START_TIMEOUT (they keep trying; updates meanwhile are resent)."""
        self.spec = replace(self.spec, rate_limits=rate_limits)
        self._deliver = deliver
        self._shards = [_Shard(replace(self.spec, index=i), deliver)
                        for i in range(self.spec.count)]
        self._failures = [0] * self.spec.count
        deadline = time.monotonic() + START_TIMEOUT
        for i, shard in enumerate(self._shards):
            if not shard.ready.wait(max(0.0, deadline - time.monotonic())) or shard.lost.is_set():
                log.error("intake shard %d is not ready after %.0f s", i, START_TIMEOUT)
                return False
        return True

    def ack(self, ack: OutgoingAck) -> bool:
        """Hand ``ack`` to the shard that hears its device, which signs and sends it.
        False: that shard is down (the caller publishes the ack itself)."""
        if not self._shards:
            return False
        return self._shards[shard_of(ack.device, self.spec.count)].send("ack", ack)

    def forget(self, device: str, msg: str) -> None:
        """Let the owning shard take the same message id again (after a transient
        failure the box resends it unchanged)."""
        if self._shards:
            self._shards[shard_of(device, self.spec.count)].send("forget", device, msg)

    def restart_dead(self) -> None:
        """Restart shards that died, each after its backoff delay (RESTART_DELAYS)."""
        now = time.monotonic()
        for i, shard in enumerate(self._shards):
            if not (shard.lost.is_set() or not shard.alive()):
                continue
            first, longest = RESTART_DELAYS
            if now - shard.started >= longest:
                self._failures[i] = 0
            delay = min(longest, first * 2 ** self._failures[i])
            if now - shard.started < delay:
                continue
            log.error("intake shard %d exited (code %s); starting a new one (its "
                      "unfinished uploads are resent by the boxes)", i, shard.proc.poll())
            shard.stop()
            self._failures[i] += 1
            assert self._deliver is not None
            self._shards[i] = _Shard(replace(self.spec, index=i), self._deliver)

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._shards]

    def running(self) -> list[bool]:
        """Per shard: its process is up and its connection to this one open."""
        return [s.alive() and not s.lost.is_set() for s in self._shards]

    def close(self) -> None:
        for shard in self._shards:
            shard.send("quit")
        for shard in self._shards:
            shard.stop()
        self._shards = []


def session_ids(client_id: str, count: int) -> list[str]:
    """The shard client ids of a service run with ``count`` intake processes."""
    return [] if count < 2 else [shard_client_id(client_id, i, count) for i in range(count)]


def retire_stale_sessions(state_dir: Path, current: list[str],
                          end_session: Callable[[str], None]) -> None:
    """End the broker sessions of shards a previous run used and this one does not, then
    record ``current``. ``end_session(id)`` connects with a clean start and leaves."""
    path = state_dir / SESSIONS_FILE
    try:
        previous = json.loads(path.read_text())["client_ids"]
    except FileNotFoundError:
        previous = []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read %s (%s): earlier intake sessions are not retired", path, exc)
        previous = []
    for client_id in previous:
        if client_id not in current:
            log.info("ending the broker session of a former intake shard: %s", client_id)
            end_session(client_id)
    if previous != current:
        write_atomic(path, json.dumps({"client_ids": current}).encode(), mode=0o644)
