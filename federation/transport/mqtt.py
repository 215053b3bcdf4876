"""MQTT adapter of ``Transport`` on paho-mqtt 2.x (callback API v2), QoS 1.

MQTT v5 by default: a persistent session needs a Session Expiry Interval (the broker
keeps the session and queues QoS 1 messages for a bounded time, instead of forever as
with 3.1.1's clean_session=False), PUBACK reason codes make a refused publish (ACL,
quota, packet too large) visible instead of a silent drop, and retain handling lets a
reconnect with a surviving session skip re-sending retained messages. ``protocol="3.1.1"``
is kept for brokers that only speak 3.1.1 (the demo's embedded amqtt).

Threading: paho runs its network loop in a background thread (``loop_start``); it
connects, reconnects with exponential backoff (``reconnect_delay_set``) and re-sends
every subscription on every connect (a filter subscribed while disconnected would
otherwise never reach a broker that kept the session). Handlers run on that thread:
keep them quick and hand work to a queue; never call ``publish(..., wait_timeout=...)``
or ``flush`` from a handler.

Messages no handler matches yet are buffered (bounded, with a warning when the bound
drops one) and handed to the first matching ``subscribe``: with a persistent session the
broker delivers its queue right after CONNACK, and paho acks each message when the
callback returns, so dropping them would lose them. Messages for a filter the
application unsubscribed are dropped instead.

Publishing while disconnected: paho keeps QoS 1 messages in memory (bounded by
``max_queued``) and sends them after reconnecting; ``publish`` returns normally in that
case (``offline_queue=True``, the default) or raises ``TransportError(not_connected)``
(``offline_queue=False``). Memory does not survive a restart: the edge client also keeps
its updates on disk until they are acknowledged. ``flush(timeout)`` waits until the
broker acknowledged everything published so far; ``close()`` flushes (bounded) first.

Latency: TCP_NODELAY on every socket (``federation.transport.mqtt_options`` says why).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from federation.errors import (
    NOT_CONNECTED,
    PUBLISH_REFUSED,
    PUBLISH_TIMEOUT,
    QUEUE_FULL,
    TransportError,
)
from federation.topics import matches
from federation.transport.base import Handler, Will, deliver
from federation.transport.mqtt_acks import PendingMids
from federation.transport.mqtt_options import (
    DEFAULT_SESSION_EXPIRY,
    BrokerUrl,
    Refusals,
    TlsConfig,
    connect_args,
    is_v5,
    new_client,
    parse_broker_url,
)

# The URL and TLS types live in federation.transport.mqtt_options; they are named here
# too because the CLIs, the aggregator and the tests import them with MqttTransport.
__all__ = ["DEFAULT_SESSION_EXPIRY", "BrokerUrl", "MqttTransport", "TlsConfig",
           "parse_broker_url"]

log = logging.getLogger(__name__)

# Messages that arrive before any handler matches them are kept for a later subscribe:
# room for a persistent session's backlog (e.g. a few boxes' 24 MB updates in 256 KiB
# chunks queued while the aggregator restarted) without unbounded memory.
DEFAULT_UNROUTED_MAX_MESSAGES = 10_000
DEFAULT_UNROUTED_MAX_BYTES = 256 * 1024 * 1024
# close() waits this long for the broker to acknowledge what was just published.
DEFAULT_CLOSE_FLUSH_TIMEOUT = 5.0


class MqttTransport:
    """``Transport`` over a real MQTT broker.

    Starts connecting in the constructor, or with ``connect=False`` only when ``start()``
    is called (so handlers can be subscribed before the first message can arrive).
    ``on_connected`` runs after every connect, on paho's thread (as a handler: quick);
    ``refusals`` says each refused connect once (``login_hint``: what to check).
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsConfig | None = None,
        will: Will | None = None,
        clean_start: bool = False,
        session_expiry: int = DEFAULT_SESSION_EXPIRY,
        keepalive: int = 30,
        max_inflight: int = 20,
        max_queued: int = 10_000,
        reconnect_min_delay: int = 1,
        reconnect_max_delay: int = 30,
        protocol: str = "5",
        offline_queue: bool = True,
        unrouted_max_messages: int = DEFAULT_UNROUTED_MAX_MESSAGES,
        unrouted_max_bytes: int = DEFAULT_UNROUTED_MAX_BYTES,
        connect: bool = True,
        login_hint: str | None = None,
    ) -> None:
        self.url = parse_broker_url(url)
        self.client_id = client_id
        self.on_connected: Callable[[], None] | None = None
        self.refusals = Refusals(self.url, username, login_hint)
        self.offline_queue = offline_queue
        self._v5 = is_v5(protocol)
        self._subs: dict[str, Handler] = {}
        self._lock = threading.Lock()
        # Serialises handler calls: paho's thread and a subscribe() that delivers
        # buffered messages must not run handlers at the same time, nor out of order.
        self._deliver_lock = threading.RLock()
        self._connected = threading.Event()
        self._closed = False
        self._started = False
        self._refused: OrderedDict[int, str] = OrderedDict()
        self._pubacks = PendingMids()  # flush() waits for them (mqtt_acks)
        self._unrouted: deque[tuple[str, bytes, bool]] = deque()  # topic, payload, retained
        self._unrouted_bytes = 0
        self._unrouted_max_messages = unrouted_max_messages
        self._unrouted_max_bytes = unrouted_max_bytes
        self._unrouted_dropped = 0
        self._unwanted: OrderedDict[str, None] = OrderedDict()  # recently unsubscribed
        self._subacks = PendingMids()  # connected is not subscribed (mqtt_acks)
        self.connects = 0
        self.session_present = False  # of the latest connect: the broker kept the session
        self._client = new_client(
            self.url, client_id, v5=self._v5, clean_start=clean_start, username=username,
            password=password, tls=tls, will=will, reconnect_min_delay=reconnect_min_delay,
            reconnect_max_delay=reconnect_max_delay, max_inflight=max_inflight,
            max_queued=max_queued)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._connect_args = connect_args(v5=self._v5, clean_start=clean_start,
                                          session_expiry=session_expiry, keepalive=keepalive)
        if connect:
            self.start()

    def start(self) -> None:
        """Start connecting (in the background); idempotent."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self.url.host, self.url.port, **self._connect_args)
        self._client.loop_start()

    # -- Transport -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Connected, and every SUBSCRIBE of this connection acknowledged (mqtt_acks)."""
        return self._subacks.wait_none(timeout, lambda: self.connected)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        wait_timeout: float | None = None,
    ) -> None:
        """QoS 1 publish. With ``wait_timeout``, block until the broker's PUBACK."""
        if not self.connected and not self.offline_queue:
            raise TransportError(NOT_CONNECTED, f"not connected to {self.url.host}:{self.url.port}")
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        if deadline is not None and not self.connected:
            self.wait_connected(wait_timeout or 0)
        # paho takes bytes as they are (no copy for bytes; bytearray/memoryview -> bytes)
        data = payload if isinstance(payload, bytes) else bytes(payload)
        info = self._client.publish(topic, data, qos=1, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise TransportError(QUEUE_FULL, "outgoing MQTT queue is full; retry later")
        if info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            self._pubacks.sent(info.mid)  # queued by paho: flush() waits for its PUBACK
        if info.rc == paho.MQTT_ERR_NO_CONN:
            if deadline is not None or not self.offline_queue:
                raise TransportError(NOT_CONNECTED, "not connected; message queued in memory")
            log.debug("offline: queued %d bytes for %s", len(payload), topic)
            return
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise TransportError(NOT_CONNECTED, f"publish failed: {paho.error_string(info.rc)}")
        if deadline is None:
            return
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            published = info.is_published()
        except (RuntimeError, ValueError) as exc:
            raise TransportError(NOT_CONNECTED, f"publish not confirmed: {exc}") from None
        if not published:
            raise TransportError(PUBLISH_TIMEOUT, f"no PUBACK for {topic} in {wait_timeout}s")
        with self._lock:
            refused = self._refused.pop(info.mid, None)
        if refused is not None:
            raise TransportError(PUBLISH_REFUSED, f"broker refused {topic}: {refused}")

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged every message published so far (QoS 1
        PUBACK) or ``timeout`` seconds passed; returns True when nothing is outstanding.
        Never call it from a handler (the PUBACKs arrive on the handler's thread)."""
        return self._pubacks.wait_none(timeout)

    @property
    def unacked(self) -> int:
        """Messages published but not yet acknowledged by the broker."""
        return len(self._pubacks)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        with self._deliver_lock:
            with self._lock:
                self._subs[topic_filter] = handler
                self._unwanted.pop(topic_filter, None)
                early = self._take_unrouted(topic_filter)
                # read under the lock _on_connect holds while it subscribes everything
                # and sets connected: either its list has this filter or we send it
                connected = self.connected
            if early:
                log.info("delivering %d message(s) for %s that arrived before it was "
                         "subscribed", len(early), topic_filter)
            for topic, payload, retained in early:
                self._call(handler, topic, payload, retained)
        if connected:
            self._send_subscribe([topic_filter])

    def unsubscribe(self, topic_filter: str) -> None:
        with self._deliver_lock, self._lock:
            self._subs.pop(topic_filter, None)
            # Messages the broker still had in flight for this filter are not wanted:
            # drop them instead of buffering them for a subscription that never comes.
            self._unwanted[topic_filter] = None
            while len(self._unwanted) > 256:
                self._unwanted.popitem(last=False)
            self._take_unrouted(topic_filter)
        if self.connected:
            self._client.unsubscribe(topic_filter)

    def close(self, flush_timeout: float = DEFAULT_CLOSE_FLUSH_TIMEOUT) -> None:
        """Wait (bounded) for unacknowledged messages, then disconnect cleanly (no last
        will) and stop the network thread. paho forgets its unsent queue on disconnect,
        so without the flush a result or ack published just before would be lost."""
        if self.connected and flush_timeout > 0 and not self.flush(flush_timeout):
            log.warning("closing with %d message(s) not acknowledged by the broker after "
                        "%.1f s", self.unacked, flush_timeout)
        elif not self.connected and self.unacked:
            # queued while the broker was away (offline_queue): they go with this process
            where, why = f"the broker at {self.url.host}:{self.url.port}", self.refusals
            log.warning("closing with %d message(s) never delivered: %s", self.unacked,
                        f"{where} refused the login ({why.reason})" if why.login
                        else f"no connection to {where}")
        self._closed = True
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()

    # -- internals -------------------------------------------------------------------

    def _take_unrouted(self, topic_filter: str) -> list[tuple[str, bytes, bool]]:
        """Remove and return buffered messages matching ``topic_filter`` (lock held)."""
        if not self._unrouted:
            return []
        taken = [m for m in self._unrouted if matches(topic_filter, m[0])]
        if taken:
            kept = deque(m for m in self._unrouted if not matches(topic_filter, m[0]))
            self._unrouted = kept
            self._unrouted_bytes = sum(len(m[1]) for m in kept)
        return taken

    def _buffer_unrouted(self, topic: str, payload: bytes, retained: bool) -> None:
        """Keep a message no handler matches (lock held): paho acks it when the callback
        returns, so dropping it would lose it (e.g. a persistent session's queue that the
        broker delivers right after CONNACK, before the application subscribed)."""
        if any(matches(f, topic) for f in self._unwanted):
            return
        self._unrouted.append((topic, payload, retained))
        self._unrouted_bytes += len(payload)
        while self._unrouted and (len(self._unrouted) > self._unrouted_max_messages
                                  or self._unrouted_bytes > self._unrouted_max_bytes):
            old_topic, old, _ = self._unrouted.popleft()
            self._unrouted_bytes -= len(old)
            self._unrouted_dropped += 1
            if self._unrouted_dropped == 1 or self._unrouted_dropped % 100 == 0:
                log.warning(
                    "dropped %d message(s) that arrived with no subscribed handler (buffer "
                    "full: %d messages / %d bytes max); latest dropped topic %s",
                    self._unrouted_dropped, self._unrouted_max_messages,
                    self._unrouted_max_bytes, old_topic,
                )

    @staticmethod
    def _call(handler: Handler, topic: str, payload: bytes, retained: bool) -> None:
        try:
            deliver(handler, topic, payload, retained)
        except Exception:
            log.exception("handler for %s failed", topic)

    # -- paho callbacks (network thread) ---------------------------------------------

    def _send_subscribe(self, filters: list[str]) -> None:
        for f in filters:
            if self._v5:
                # retainHandling 0: a (re)subscribe always gets the current retained
                # announce / model pointer, also in a surviving persistent session.
                rc, mid = self._client.subscribe(
                    f, options=SubscribeOptions(qos=1, retainHandling=0))
            else:
                rc, mid = self._client.subscribe(f, qos=1)
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                continue  # not connected after all: the next connect subscribes it again
            self._subacks.sent(mid)

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:
        self._subacks.acked(mid)
        refused = [str(rc) for rc in reason_code_list if rc.is_failure]
        if refused:  # e.g. the broker's ACL (MQTT 5: 0x87): otherwise nothing says so
            log.warning("broker refused a subscription of %s (mid %s): %s", self.client_id,
                        mid, ", ".join(refused))

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.log(*self.refusals.refused(reason_code))  # each reason once (at ERROR: login)
            return
        self.refusals.connected()
        self.connects += 1
        self.session_present = bool(flags.session_present)
        # Every filter, on every connect, even when the broker kept the session: one
        # made while disconnected is otherwise never sent (re-subscribing is idempotent
        # at the broker; it also re-sends the retained messages, which handlers dedupe).
        # The list, the SUBSCRIBEs and "connected" under one lock: a subscribe() racing
        # this connect used to land between the list and "connected", was sent by
        # neither, and its messages never came (seen under load: a regional forwarder
        # never heard the root's announce). SUBSCRIBEs still go out before anything a
        # waiter on "connected" publishes.
        with self._lock:
            filters = list(self._subs)
            if filters:
                self._send_subscribe(filters)
            self._connected.set()
        # a reconnection is said at the level its loss was (warning), not below it
        log.log(logging.WARNING if self.connects > 1 else logging.INFO,
                "MQTT %s to %s:%s as %s (session present: %s)",
                "reconnected" if self.connects > 1 else "connected", self.url.host,
                self.url.port, self.client_id, flags.session_present)
        if self.on_connected is not None:
            try:
                self.on_connected()
            except Exception:
                log.exception("on_connected of %s failed", self.client_id)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        self._subacks.reset()
        if not self.refusals.take_disconnect() and not self._closed:
            log.warning("MQTT connection to %s:%s lost (%s); reconnecting",
                        self.url.host, self.url.port, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else bytes(
            message.payload)
        with self._deliver_lock:
            with self._lock:
                handler = next((h for f, h in self._subs.items()
                                if matches(f, message.topic)), None)
                # MQTT sets the flag only on a message sent from the retained store
                # because of a (re)subscription, not on one published while subscribed
                retained = bool(message.retain)
                if handler is None:
                    self._buffer_unrouted(message.topic, payload, retained)
                    return
            self._call(handler, message.topic, payload, retained)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code.is_failure:  # noted before the ack: a waiter then sees it
            with self._lock:
                self._refused[mid] = str(reason_code)
                while len(self._refused) > 1000:
                    self._refused.popitem(last=False)
        self._pubacks.acked(mid)
        if reason_code.is_failure:
            log.warning("broker refused message %s: %s", mid, reason_code)
