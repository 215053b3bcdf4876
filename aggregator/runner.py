"""Build a running service from a state directory and a broker URL (``serve``)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from aggregator.config import AggregatorConfig, load_context, load_signing_key
from aggregator.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.store import Store
from federation.errors import NOT_CONNECTED, TransportError
from federation.mqtt import MqttTransport, TlsConfig
from federation.topics import matches

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 20.0


class EarlyBufferingMqtt(MqttTransport):
    """MqttTransport that keeps messages arriving before ``release()``.

    With a persistent session the broker delivers the QoS 1 updates it queued while the
    aggregator was down right after CONNACK, possibly before the service subscribed its
    handler; the plain transport would drop them (and paho would PUBACK them: lost).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._early_lock = threading.Lock()
        self._early: list[tuple[str, bytes]] = []
        self._released = False
        super().__init__(*args, **kwargs)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # The lock also serialises these deliveries with release(): the service's handler
        # is written for one delivery thread at a time.
        with self._early_lock:
            if not self._released:
                self._early.append((message.topic, bytes(message.payload)))
                return
            super()._on_message(client, userdata, message)

    def release(self) -> None:
        """Deliver the buffered messages to the handlers subscribed by now."""
        with self._early_lock:
            self._released = True
            early, self._early = self._early, []
            if early:
                log.info("delivering %d message(s) that arrived before subscribing", len(early))
            for topic, payload in early:
                for topic_filter, handler in list(self._subs.items()):
                    if matches(topic_filter, topic):
                        handler(topic, payload)
                        break


def build_service(
    state: Path,
    cfg: AggregatorConfig,
    settings: RoundSettings,
    broker: str,
    client_id: str,
    max_rounds: int | None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> tuple[AggregatorService, EarlyBufferingMqtt]:
    ctx = load_context(state, cfg)  # refuses a secret context (secret_key_refused)
    signing_key = load_signing_key(state)
    store = Store(state)
    tls = TlsConfig(ca_file, cert_file, key_file) if (ca_file or cert_file or key_file) else None
    transport = EarlyBufferingMqtt(broker, client_id, tls=tls, clean_start=False)
    try:
        service = AggregatorService(
            transport, store, ctx, signing_key, cfg.fed,
            aggregator_id=cfg.aggregator_id, settings=settings,
            initial_model=cfg.initial_model, vector_length=cfg.vector_length,
            max_rounds=max_rounds,
        )
        if not transport.wait_connected(CONNECT_TIMEOUT):
            raise TransportError(
                NOT_CONNECTED, f"cannot reach the MQTT broker at {broker} "
                f"(after {CONNECT_TIMEOUT:.0f} s); check --broker and that it is running"
            )
    except BaseException:
        transport.close()
        store.close()
        raise
    return service, transport
