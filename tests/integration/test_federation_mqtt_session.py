"""MqttTransport session behaviour against a real Mosquitto: messages that arrive before
their handler, subscriptions made while disconnected, and flush-before-close."""

from __future__ import annotations

import logging
import queue
import threading
import time

import pytest

from federation import topics
from federation.transport.mqtt import MqttTransport
from tests.support.mqtt_clients import collect, connect, settle_subscription

pytestmark = pytest.mark.mosquitto
FED = "fed-s"


def _drain(q: queue.Queue[tuple[str, bytes]], n: int, timeout: float = 10.0) -> list[bytes]:
    return [q.get(timeout=timeout)[1] for _ in range(n)]


def _offline_backlog(url: str, client_id: str, n: int, topic: str) -> None:
    """A persistent session for ``client_id`` subscribed to ``topic`` with ``n`` QoS 1
    messages queued at the broker while it is away."""
    box = connect(url, client_id)
    pub = connect(url, f"{client_id}-pub", clean_start=True)
    q = collect(box, topic)
    settle_subscription(pub, q, topic)
    box.close()
    for i in range(n):
        pub.publish(topic, f"queued {i}".encode(), wait_timeout=10)
    pub.close()


def test_messages_arriving_before_subscribe_are_delivered_to_it(mosquitto) -> None:
    topic = topics.ack(FED, "box-1")
    _offline_backlog(mosquitto.url, "box-1", 3, topic)
    back = connect(mosquitto.url, "box-1")  # broker sends the backlog right after CONNACK
    try:
        deadline = time.monotonic() + 10
        while back._unrouted_bytes < len(b"queued 0") * 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # wait until paho has taken (and acked) all three
        got: list[bytes] = []
        back.subscribe(f"{topics.prefix(FED)}/ack/+", lambda t, p: got.append(p))
        assert got == [b"queued 0", b"queued 1", b"queued 2"]  # in order, at subscribe
    finally:
        back.close()


def test_unrouted_buffer_is_bounded_and_warns(mosquitto, caplog) -> None:
    topic = topics.ack(FED, "box-2")
    _offline_backlog(mosquitto.url, "box-2", 5, topic)
    caplog.set_level(logging.WARNING, logger="federation.transport.mqtt")
    back = MqttTransport(mosquitto.url, "box-2", unrouted_max_messages=2)
    try:
        assert back.wait_connected(10)
        deadline = time.monotonic() + 10
        while back._unrouted_dropped < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        got: list[bytes] = []
        back.subscribe(topic, lambda t, p: got.append(p))
        assert got == [b"queued 3", b"queued 4"]  # the newest ones within the bound
        assert any("dropped" in r.getMessage() and "no subscribed handler" in r.getMessage()
                   for r in caplog.records)
    finally:
        back.close()


def test_unsubscribed_filter_is_not_buffered(mosquitto) -> None:
    sub = connect(mosquitto.url, "reader", clean_start=True)
    pub = connect(mosquitto.url, "writer", clean_start=True)
    try:
        topic = topics.result(FED, 1, 0)
        q = collect(sub, topics.result_filter(FED, 1))
        settle_subscription(pub, q, topic)
        sub.unsubscribe(topics.result_filter(FED, 1))
        pub.publish(topic, b"late chunk", wait_timeout=10)
        time.sleep(0.5)
        assert sub._unrouted_bytes == 0 and not sub._unrouted
    finally:
        sub.close()
        pub.close()


def test_subscribe_while_disconnected_is_sent_after_reconnect(mosquitto_factory) -> None:
    broker = mosquitto_factory()
    box = connect(broker.url, "box-3", reconnect_max_delay=1)
    pub = connect(broker.url, "agg", reconnect_max_delay=1)
    try:
        first = collect(box, topics.announce(FED))
        settle_subscription(pub, first, topics.announce(FED))
        broker.restart()  # graceful: Mosquitto persists box-3's session
        deadline = time.monotonic() + 10
        while box.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        late = collect(box, topics.ack(FED, "box-3"))  # while disconnected
        connects = box.connects
        deadline = time.monotonic() + 20
        while box.connects == connects and time.monotonic() < deadline:
            time.sleep(0.05)
        # `connects` moves before the re-subscriptions and `connected` (one lock): wait
        # for it, not a snapshot (a loaded CI run read it in between once)
        assert box.wait_connected(10) and box.connects > connects, "no reconnect"
        assert box.session_present, "broker should have kept the session"
        assert pub.wait_connected(20)
        settle_subscription(pub, late, topics.ack(FED, "box-3"))
        pub.publish(topics.ack(FED, "box-3"), b"ack after reconnect", wait_timeout=10)
        assert late.get(timeout=10)[1] == b"ack after reconnect"
    finally:
        box.close()
        pub.close()


def test_close_flushes_the_last_messages(mosquitto) -> None:
    reader = connect(mosquitto.url, "reader", clean_start=True)
    writer = connect(mosquitto.url, "writer", clean_start=True)
    topic = topics.update(FED, "writer")
    q = collect(reader, topics.update_filter(FED))
    settle_subscription(writer, q, topic)
    got: list[bytes] = []
    done = threading.Event()
    n = 120

    def consume() -> None:
        while len(got) < n:
            try:
                got.append(q.get(timeout=20)[1])
            except queue.Empty:
                break
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    try:
        chunk = b"x" * (256 * 1024)
        for _ in range(n - 1):
            writer.publish(topic, chunk)
        writer.publish(topic, b"the last one")  # no wait_timeout: paho only queues it
        assert writer.unacked > 0  # 30 MB cannot have been acked yet
        writer.close()  # flushes before disconnecting
        assert writer.unacked == 0
        assert done.wait(30)
        assert len(got) == n and got[-1] == b"the last one"
    finally:
        reader.close()


def test_flush_reports_a_timeout_while_the_broker_is_down(mosquitto_factory) -> None:
    broker = mosquitto_factory()
    t = connect(broker.url, "box-4", reconnect_max_delay=1)
    try:
        broker.stop()
        deadline = time.monotonic() + 10
        while t.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        t.publish(topics.status(FED, "box-4"), b"queued offline")
        assert t.unacked == 1
        assert t.flush(0.3) is False
        broker.start()
        assert t.flush(20) is True and t.unacked == 0
    finally:
        t.close()


def test_wait_subscribed_means_a_live_publish_arrives(mosquitto) -> None:
    topic = topics.ack(FED, "box-sub")
    box = MqttTransport(mosquitto.url, "box-sub", clean_start=True, connect=False)
    pub = connect(mosquitto.url, "box-sub-pub", clean_start=True)
    got: queue.Queue[bytes] = queue.Queue()
    try:
        box.subscribe(topic, lambda t, p: got.put(p))
        assert not box.wait_subscribed(0.5)  # not even connected
        box.start()
        assert box.wait_subscribed(10)
        # acknowledged: a message published once, not retained, cannot overtake it
        pub.publish(topic, b"live", wait_timeout=10)
        assert got.get(timeout=10) == b"live"
        box.subscribe(topics.ack(FED, "box-sub-2"), lambda t, p: got.put(p))  # connected
        assert box.wait_subscribed(10)
        pub.publish(topics.ack(FED, "box-sub-2"), b"second", wait_timeout=10)
        assert got.get(timeout=10) == b"second"
    finally:
        box.close()
        pub.close()


def test_a_subscription_the_broker_refuses_is_said(mosquitto, caplog) -> None:
    # Mosquitto 2.0's ACL file grants every SUBSCRIBE (it filters at delivery), so the
    # refusal a broker can send (MQTT 5: 0x87) is handed to the callback as paho would
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    caplog.set_level(logging.WARNING, logger="federation.transport.mqtt")
    box = MqttTransport(mosquitto.url, "box-refused", clean_start=True, connect=False)
    box._on_subscribe(None, None, 7, [ReasonCode(PacketTypes.SUBACK, "Not authorized")], None)
    box._on_subscribe(None, None, 8, [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")], None)
    said = [r.getMessage() for r in caplog.records if "refused a subscription" in
            r.getMessage()]
    assert said == ["broker refused a subscription of box-refused (mid 7): Not authorized"]
