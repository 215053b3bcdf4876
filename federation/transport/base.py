"""The message transport the coordinator and the edge client talk through.

``Transport`` is what they depend on; ``mqtt.MqttTransport`` is the production adapter
and ``InMemoryTransport`` (on an ``InMemoryBus``) gives the MQTT semantics that matter
for round logic (wildcards, retained messages and their deletion, QoS 1 delivery to
persistent sessions, last wills) inside one process, for fast unit tests.

Handlers are called on the transport's delivery thread (MQTT: paho's network thread).
They must be quick and must not block on the transport (e.g. publish-and-wait): hand
the message to a queue and process it elsewhere. A handler wrapped in ``RetainAware``
is also told whether each message came from the broker's retained store.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from federation.errors import NOT_CONNECTED, TransportError
from federation.topics import matches

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
FlaggedHandler = Callable[[str, bytes, bool], None]  # topic, payload, retained


@runtime_checkable
class Transport(Protocol):
    """Publish/subscribe with QoS 1 semantics."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        wait_timeout: float | None = None,
    ) -> None:
        """Send at QoS 1. ``retain`` with an empty payload deletes the retained message.
        With ``wait_timeout``, block until the broker acknowledged it (``TransportError``
        when it did not in time); never from a handler."""
        ...

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Deliver messages matching ``topic_filter`` (with + and #) to ``handler``."""
        ...

    def unsubscribe(self, topic_filter: str) -> None: ...

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds passed; return ``connected``."""
        ...

    def flush(self, timeout: float) -> bool:
        """Block until the broker acknowledged everything published so far (True) or
        ``timeout`` seconds passed (False); never from a handler."""
        ...

    def close(self) -> None:
        """Flush (bounded), then disconnect without the last will."""
        ...


@dataclass(frozen=True)
class Will:
    """Last will: published by the broker when the client vanishes without ``close``."""

    topic: str
    payload: bytes
    retain: bool = True


class RetainAware:
    """A handler that is also told whether a message came from the broker's retained
    store (``retained=True``: sent because of a (re)subscription) or was published while
    subscribed (False; the last will the broker publishes for a client that vanished
    arrives so). Subscribed like any handler. Called as a plain handler (a transport
    that cannot tell), a message counts as retained: never claimed live when it may not be.
    """

    def __init__(self, handler: FlaggedHandler) -> None:
        self.handler = handler

    def __call__(self, topic: str, payload: bytes) -> None:
        self.handler(topic, payload, True)

    def deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        self.handler(topic, payload, retained)


def deliver(handler: Handler, topic: str, payload: bytes, retained: bool) -> None:
    """Call ``handler``, with the retain flag when it takes one (``RetainAware``)."""
    if isinstance(handler, RetainAware):
        handler.deliver(topic, payload, retained)
    else:
        handler(topic, payload)


class InMemoryBus:
    """A single-process broker. ``synchronous=True`` delivers inside ``publish``;
    otherwise messages queue until ``flush()`` (deterministic interleavings in tests).

    Persistent sessions: a client id that disconnects (``drop``/``close`` with
    ``persistent=True``) keeps its subscriptions and QoS 1 messages are queued for it
    until it reconnects with the same id. On every connect the client's subscriptions
    get the retained messages again, as ``MqttTransport`` re-subscribes on every connect.
    """

    def __init__(self, synchronous: bool = True) -> None:
        self.synchronous = synchronous
        self.retained: dict[str, bytes] = {}
        self._lock = threading.RLock()
        self._clients: dict[str, InMemoryTransport] = {}
        self._offline: dict[str, tuple[dict[str, Handler], list[tuple[str, bytes]]]] = {}
        self._queue: deque[tuple[Handler, str, bytes, bool]] = deque()
        self.published: list[tuple[str, bytes, bool]] = []

    def connect(self, client: InMemoryTransport) -> None:
        with self._lock:
            old = self._clients.get(client.client_id)
            if old is not None and old is not client:
                old._set_connected(False)  # MQTT: a new connection takes over the id
            self._clients[client.client_id] = client
            stored = self._offline.pop(client.client_id, None)
        client._set_connected(True)
        if stored is not None and client.persistent:
            subs, pending = stored
            for filt, handler in subs.items():
                client._subs.setdefault(filt, handler)
            for topic, payload in pending:
                self._deliver(client, topic, payload)
        for topic_filter in list(client._subs):
            self.deliver_retained(client, topic_filter)

    def disconnect(self, client: InMemoryTransport, *, graceful: bool) -> None:
        with self._lock:
            if self._clients.get(client.client_id) is client:
                del self._clients[client.client_id]
                if client.persistent:
                    self._offline[client.client_id] = (dict(client._subs), [])
        client._set_connected(False)
        if not graceful and client.will is not None:
            w = client.will
            self.publish(w.topic, w.payload, retain=w.retain)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if "+" in topic or "#" in topic:
            raise ValueError(f"cannot publish to a wildcard topic {topic!r}")
        payload = bytes(payload)
        with self._lock:
            self.published.append((topic, payload, retain))
            if retain:
                if payload:
                    self.retained[topic] = payload
                else:
                    self.retained.pop(topic, None)
            targets = list(self._clients.values())
            for subs, pending in self._offline.values():
                if any(matches(f, topic) for f in subs):
                    pending.append((topic, payload))
        for client in targets:
            self._deliver(client, topic, payload)

    def deliver_retained(self, client: InMemoryTransport, topic_filter: str) -> None:
        with self._lock:
            items = [(t, p) for t, p in self.retained.items() if matches(topic_filter, t)]
        handler = client._subs.get(topic_filter)
        for topic, payload in items:
            if handler is not None:
                self._enqueue(handler, topic, payload, True)

    def _deliver(self, client: InMemoryTransport, topic: str, payload: bytes) -> None:
        for filt, handler in list(client._subs.items()):
            if matches(filt, topic):
                self._enqueue(handler, topic, payload, False)
                break  # one delivery per client, like a broker with overlapping filters

    def _enqueue(self, handler: Handler, topic: str, payload: bytes, retained: bool) -> None:
        if self.synchronous:
            _call(handler, topic, payload, retained)
        else:
            with self._lock:
                self._queue.append((handler, topic, payload, retained))

    def flush(self) -> int:
        """Deliver queued messages (asynchronous mode); returns how many."""
        n = 0
        while True:
            with self._lock:
                if not self._queue:
                    return n
                handler, topic, payload, retained = self._queue.popleft()
            _call(handler, topic, payload, retained)
            n += 1


def _call(handler: Handler, topic: str, payload: bytes, retained: bool) -> None:
    try:
        deliver(handler, topic, payload, retained)
    except Exception:  # a broken handler must not break delivery to others
        log.exception("message handler for %s failed", topic)


class InMemoryTransport:
    """A client of an ``InMemoryBus`` implementing ``Transport``."""

    def __init__(
        self,
        bus: InMemoryBus,
        client_id: str,
        *,
        will: Will | None = None,
        persistent: bool = True,
        connect: bool = True,
    ) -> None:
        self.bus = bus
        self.client_id = client_id
        self.will = will
        self.persistent = persistent
        self._subs: dict[str, Handler] = {}
        self._connected = threading.Event()
        if connect:
            bus.connect(self)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _set_connected(self, value: bool) -> None:
        if value:
            self._connected.set()
        else:
            self._connected.clear()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        wait_timeout: float | None = None,
    ) -> None:
        """The bus takes the message at once (it is "acknowledged" on return), so
        ``wait_timeout`` only bounds the wait for a connection."""
        if not self.connected and wait_timeout is not None:
            self.wait_connected(wait_timeout)
        if not self.connected:
            raise TransportError(NOT_CONNECTED, f"{self.client_id} is not connected")
        self.bus.publish(topic, payload, retain=retain)

    def flush(self, timeout: float) -> bool:
        return True  # nothing is ever outstanding: publish hands over synchronously

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self._subs[topic_filter] = handler
        if self.connected:
            self.bus.deliver_retained(self, topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        self._subs.pop(topic_filter, None)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def reconnect(self) -> None:
        """Reconnect after ``drop`` (persistent session: queued messages arrive)."""
        self.bus.connect(self)

    def drop(self) -> None:
        """Simulate a lost connection: the broker publishes the last will."""
        self.bus.disconnect(self, graceful=False)

    def close(self) -> None:
        self.bus.disconnect(self, graceful=True)
