"""Topics and the in-memory bus (MQTT semantics used by round-logic unit tests)."""

from __future__ import annotations

import pytest

from federation import topics
from federation.errors import FederationError, TransportError
from federation.transport.base import InMemoryBus, InMemoryTransport, Transport, Will
from federation.transport.mqtt import parse_broker_url


def test_topic_builders_and_parser_round_trip() -> None:
    assert topics.announce("f1") == "fedface/v1/f1/announce"
    assert topics.update("f1", "box-1") == "fedface/v1/f1/update/box-1"
    assert topics.result("f1", 3, 12) == "fedface/v1/f1/result/3/12"
    assert topics.parse(topics.update("f1", "box-1")) == topics.Topic("f1", "update", "box-1")
    assert topics.parse(topics.result("f1", 3, 12)) == topics.Topic("f1", "result", None, 3, 12)
    assert topics.parse(topics.model_latest("f1")).kind == "model"
    assert topics.parse(topics.status("f1", "b")).device == "b"
    for bad in ("fedface/v1/f1", "fedface/v2/f1/announce", "fedface/v1/f1/update/a/b",
                "fedface/v1/f1/result/x/1", "fedface/v1/f1/model/old", "other"):
        with pytest.raises(FederationError):
            topics.parse(bad)
    for bad_id in ("a/b", "+", "#", "", "a b"):
        with pytest.raises(FederationError):
            topics.update("f1", bad_id)


@pytest.mark.parametrize(
    ("filt", "topic", "expected"),
    [
        ("a/+/c", "a/b/c", True), ("a/+/c", "a/b/d", False), ("a/#", "a", True),
        ("a/#", "a/b/c", True), ("a/+", "a/b/c", False), ("#", "x/y", True),
        ("a/b", "a/b", True), ("a/b", "a/b/c", False),
    ],
)
def test_wildcards(filt: str, topic: str, expected: bool) -> None:
    assert topics.matches(filt, topic) is expected


def test_in_memory_bus_retained_wildcards_and_deletion() -> None:
    bus = InMemoryBus()
    agg = InMemoryTransport(bus, "agg")
    assert isinstance(agg, Transport)
    agg.publish(topics.announce("f1"), b"round 1", retain=True)
    got: list[tuple[str, bytes]] = []
    box = InMemoryTransport(bus, "box-1")
    box.subscribe(topics.announce("f1"), lambda t, p: got.append((t, p)))
    assert got == [(topics.announce("f1"), b"round 1")]  # retained, late subscriber
    agg.publish(topics.announce("f1"), b"", retain=True)  # delete
    assert topics.announce("f1") not in bus.retained
    seen: list[str] = []
    agg.subscribe(topics.update_filter("f1"), lambda t, p: seen.append(t))
    box.publish(topics.update("f1", "box-1"), b"chunk")
    box.publish(topics.status("f1", "box-1"), b"online")
    assert seen == [topics.update("f1", "box-1")]


def test_in_memory_persistent_session_will_and_queued_mode() -> None:
    bus = InMemoryBus(synchronous=False)
    agg = InMemoryTransport(bus, "agg")
    got: list[bytes] = []
    box = InMemoryTransport(bus, "box-1", will=Will(topics.status("f1", "box-1"), b"offline"))
    box.subscribe(topics.ack("f1", "box-1"), lambda t, p: got.append(p))
    box.drop()
    assert bus.retained[topics.status("f1", "box-1")] == b"offline"
    with pytest.raises(TransportError):
        box.publish(topics.update("f1", "box-1"), b"x")
    agg.publish(topics.ack("f1", "box-1"), b"accepted")  # while the box is offline
    assert bus.flush() == 0 and got == []
    box.reconnect()
    assert bus.flush() == 1 and got == [b"accepted"]


def test_broker_url_parser() -> None:
    u = parse_broker_url("mqtt://127.0.0.1:1884")
    assert (u.host, u.port, u.tls) == ("127.0.0.1", 1884, False)
    assert parse_broker_url("mqtts://broker.example").port == 8883
    assert parse_broker_url("mqtt://broker.example").port == 1883
    for bad in ("http://x", "mqtt://", "mqtt://u:p@host", "mqtt://h:99999", "mqtt://h/path",
                "host:1883"):
        with pytest.raises(TransportError) as exc:
            parse_broker_url(bad)
        assert exc.value.reason == "bad_url"


def test_in_memory_reconnect_resends_retained_and_publish_waits_like_mqtt() -> None:
    """Like MqttTransport: every connect re-subscribes (retained messages again, also for
    a filter subscribed while offline); publish(wait_timeout) and flush exist."""
    bus = InMemoryBus()
    agg = InMemoryTransport(bus, "agg")
    box = InMemoryTransport(bus, "box")
    got: list[tuple[str, bytes]] = []
    box.subscribe(topics.announce("f"), lambda t, p: got.append((t, p)))
    agg.publish(topics.announce("f"), b"round 1", retain=True, wait_timeout=1.0)
    assert got == [(topics.announce("f"), b"round 1")]
    box.drop()
    late: list[bytes] = []
    box.subscribe(topics.model_latest("f"), lambda t, p: late.append(p))  # while offline
    agg.publish(topics.model_latest("f"), b"pointer", retain=True)
    with pytest.raises(TransportError):
        box.publish(topics.status("f", "box"), b"x", wait_timeout=0.05)
    box.reconnect()
    assert got[-1] == (topics.announce("f"), b"round 1") and len(got) == 2
    assert late == [b"pointer"]
    assert agg.flush(1.0) is True
    assert isinstance(box, Transport)
