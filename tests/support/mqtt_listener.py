"""A plain paho subscriber, outside the product (none of federation.transport): what a
Home Assistant or any other MQTT client on the events broker would receive."""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as paho


class Listener:
    """Subscribes to ``filters`` at QoS 1 and queues every (topic, payload, retained)."""

    def __init__(self, host: str, port: int, filters: list[str], *,
                 login: tuple[str, str] | None = None) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="ha-listener")
        if login is not None:  # a broker with a password_file, as Home Assistant's add-on
            self._client.username_pw_set(*login)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters])
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self._client.on_message = lambda c, u, m: self.messages.put(
            (m.topic, m.payload, bool(m.retain)))
        self._client.connect(host, port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "the listener's subscription was not acknowledged"

    def collect_until(self, done: object, timeout: float = 60.0) -> list[tuple[str, bytes, bool]]:
        """Messages until ``done(messages)`` is true (AssertionError after ``timeout``)."""
        got: list[tuple[str, bytes, bool]] = []
        deadline = time.monotonic() + timeout
        while not done(got):  # type: ignore[operator]
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; received {[t for t, _, _ in got]}"
            try:
                got.append(self.messages.get(timeout=min(remaining, 0.5)))
            except queue.Empty:
                continue
        return got

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
