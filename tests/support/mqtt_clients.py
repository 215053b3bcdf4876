"""MQTT transports for tests: connect one, collect what it receives, wait until a
subscription is live."""

from __future__ import annotations

import queue

from federation.transport.mqtt import MqttTransport


def connect(url: str, client_id: str, **kw: object) -> MqttTransport:
    t = MqttTransport(url, client_id, **kw)  # type: ignore[arg-type]
    assert t.wait_connected(10), f"{client_id} did not connect to {url}"
    return t


def collect(t: MqttTransport, topic_filter: str) -> queue.Queue[tuple[str, bytes]]:
    q: queue.Queue[tuple[str, bytes]] = queue.Queue()
    t.subscribe(topic_filter, lambda topic, payload: q.put((topic, payload)))
    return q


def settle_subscription(pub: MqttTransport, sub_q: queue.Queue[tuple[str, bytes]],
                        topic: str) -> None:
    """Publish probes until one arrives: the SUBACK has certainly been processed."""
    for _ in range(50):
        pub.publish(topic, b"probe")
        try:
            while sub_q.get(timeout=0.2)[1] != b"probe":
                pass
            break
        except queue.Empty:
            continue
    while not sub_q.empty():
        sub_q.get_nowait()
