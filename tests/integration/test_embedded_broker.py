"""The demo's embedded broker (amqtt) under the demo's pattern: clients connecting while
others subscribe. amqtt 0.12 iterates its topic filters with an ``await`` inside, so a
subscription made meanwhile used to drop the connecting client ("dictionary changed size
during iteration", a Traceback on the demo's stderr: a flaky e2e demo test)."""

from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from edge.demo.broker import EmbeddedBroker


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _client(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_clients_connect_while_others_subscribe_without_being_dropped() -> None:
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    try:
        with EmbeddedBroker() as broker:
            keeper = _client(broker.port, "keeper")  # many filters: a long loop to race
            for j in range(300):
                keeper.subscribe(f"keep/{j}", qos=1)
            keeper.publish("keep/1", b"retained", qos=1, retain=True).wait_for_publish(10)
            time.sleep(1.0)
            stop = time.monotonic() + 5.0
            connects = [0]

            def connector(k: int) -> None:
                while time.monotonic() < stop:
                    c = _client(broker.port, f"conn{k}-{connects[0]}")
                    connects[0] += 1
                    time.sleep(0.05)
                    c.disconnect()
                    c.loop_stop()

            def subscriber(k: int) -> None:
                c, n = _client(broker.port, f"sub{k}"), 0
                while time.monotonic() < stop:
                    c.subscribe(f"new/{k}/{n}", qos=0)
                    n += 1
                    time.sleep(0.002)
                c.disconnect()
                c.loop_stop()

            threads = [threading.Thread(target=connector, args=(k,)) for k in range(4)]
            threads += [threading.Thread(target=subscriber, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # and the broker still delivers: a new client gets the retained message
            got = threading.Event()
            late = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="late")
            late.on_message = lambda *_: got.set()
            late.connect("127.0.0.1", broker.port)
            late.loop_start()
            late.subscribe("keep/1", qos=1)
            assert got.wait(10), "the broker stopped delivering"
            late.disconnect()
            late.loop_stop()
            keeper.disconnect()
            keeper.loop_stop()
    finally:
        logging.getLogger().removeHandler(errors)
    assert not [m for m in errors.messages if "Unhandled exception" in m], errors.messages[:3]
    assert connects[0] > 10  # the race had its chances (176 drops in 15 s before the fix)


@pytest.fixture(autouse=True)
def _quiet_amqtt() -> None:
    logging.getLogger("amqtt").setLevel(logging.ERROR)
