"""An embedded MQTT broker (amqtt, pure Python) for the one-command demo.

A user without Mosquitto installed must still be able to run a whole federation on one
machine, so the demo starts amqtt in a background thread of its own process, listening
on a free loopback port with anonymous access. Never used on a real box: there the
broker is Mosquitto/EMQX with TLS and ACLs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not start (amqtt missing or the port busy)."""


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _SnapshotDict(dict):
    """amqtt 0.12's topic-filter table, iterated over a snapshot.

    amqtt loops over its subscriptions with an ``await`` inside (a connecting client's
    retained messages, a broadcast's receivers), so a client that subscribes meanwhile
    changes the dict under the loop: "dictionary changed size during iteration" drops
    the connecting client (measured: 176 such drops in 15 s of 4 clients reconnecting
    while 2 subscribe). Iterating a copy is what the loops need; the entries are the
    same lists."""

    def __iter__(self) -> Any:
        return iter(list(super().keys()))

    def keys(self) -> Any:
        return list(super().keys())

    def items(self) -> Any:
        return list(super().items())

    def values(self) -> Any:
        return list(super().values())


def _broker_config(port: int) -> dict[str, Any]:
    # Plugins listed explicitly: left to its defaults, amqtt 0.12 also loads entry-point
    # plugins and warns that this is deprecated. Only anonymous auth is needed here (no
    # $SYS publisher, no packet logger: they cost CPU on a 2-core machine).
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


class EmbeddedBroker:
    """amqtt broker on 127.0.0.1:<free port>, running in a daemon thread."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_loopback_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EmbeddedBrokerError(
                "the embedded broker needs amqtt: pip install 'fedface[demo]' "
                "(or pass --broker mqtt://host:port to use an existing broker)"
            ) from exc

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(_broker_config(self.port), loop=loop)
                self._broker._subscriptions = _SnapshotDict()  # see _SnapshotDict
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:  # reported to the starting thread
                self._error = exc
                self._started.set()
                loop.close()
                return
            self._started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise EmbeddedBrokerError(f"embedded broker did not start within {timeout:.0f} s")
        if self._error is not None:
            raise EmbeddedBrokerError(
                f"embedded broker failed to start on 127.0.0.1:{self.port}: {self._error}"
            ) from self._error
        log.info("embedded MQTT broker (amqtt) listening on %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or not loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        try:
            fut.result(timeout)
        except Exception as exc:  # shutting down anyway
            log.warning("embedded broker shutdown: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        self._broker = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
