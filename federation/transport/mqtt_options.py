"""How the MQTT adapter (``federation.transport.mqtt``) reaches its broker: the broker
URL, TLS files, the MQTT version and the paho client's connection options.

Everything here is settled before the first connect and never changes afterwards:
parsing ``mqtt://`` / ``mqtts://`` URLs (credentials never in the URL), the TLS config,
the protocol choice (MQTT v5 with a Session Expiry Interval for a persistent session, or
3.1.1 with ``clean_session``), the paho client with its will, reconnect backoff, flow
limits and TCP_NODELAY on every socket, and the CONNECT arguments. Kept apart from the
adapter's threads and locks, which live in ``federation.transport.mqtt``.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from federation.errors import BAD_URL, TransportError
from federation.transport.base import Will

log = logging.getLogger(__name__)

DEFAULT_SESSION_EXPIRY = 7 * 24 * 3600
# CONNACK reasons that are about the credentials, not the network: retrying does not help
# until someone fixes the username, the password or the broker's users (MQTT 5: 0x86 bad
# user name or password, 0x87 not authorized, 0x8C bad authentication method; paho maps
# 3.1.1's return codes 4 and 5 onto the first two, and Mosquitto answers a wrong password
# with "not authorized" in both versions)
LOGIN_REFUSED = frozenset({0x86, 0x87, 0x8C})


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (credentials never in the URL)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TransportError(BAD_URL, f"invalid broker URL {url!r}: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise TransportError(BAD_URL, f"broker URL {url!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise TransportError(BAD_URL, f"broker URL {url!r} has no host")
    if parts.username or parts.password:
        raise TransportError(
            BAD_URL, "put broker credentials in the config/password file, not in the URL"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise TransportError(BAD_URL, f"broker URL {url!r} must not have a path or query")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls)


@dataclass(frozen=True)
class TlsConfig:
    """CA bundle to verify the broker, and this client's certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def is_v5(protocol: str) -> bool:
    """``"5"`` (the default) or ``"3.1.1"``; ValueError for anything else."""
    v5 = protocol in ("5", "v5", "5.0")
    if not v5 and protocol not in ("3.1.1", "v311", "311"):
        raise ValueError(f"protocol must be '5' or '3.1.1', got {protocol!r}")
    return v5


def _no_delay(client: paho.Client, userdata: object, sock: Any) -> None:
    """Nagle off; a socket without the option is left as is.

    Latency: paho leaves Nagle's algorithm on. A small packet (a PUBACK, an ack, an
    announce) written while an earlier one is unacknowledged then waits for the peer's
    delayed TCP ACK, up to 40 ms on Linux, at every hop. Every socket therefore gets
    TCP_NODELAY; the broker needs it too (Mosquitto's ``set_tcp_nodelay true``, written by
    ``aggregator.pki.broker_config``). Measured, a request and its reply through a local
    Mosquitto: 68 ms with neither, 24 ms with the broker's only, 0.8 ms with both.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:
        log.debug("TCP_NODELAY not set: %s", exc)


def new_client(url: BrokerUrl, client_id: str, *, v5: bool, clean_start: bool,
               username: str | None, password: str | None, tls: TlsConfig | None,
               will: Will | None, reconnect_min_delay: int, reconnect_max_delay: int,
               max_inflight: int, max_queued: int) -> paho.Client:
    """A paho client (callback API v2) set up to connect; its callbacks are the caller's."""
    kwargs: dict[str, object] = {}
    if not v5:
        kwargs["clean_session"] = clean_start
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        **kwargs,  # type: ignore[arg-type]
    )
    if username is not None:
        client.username_pw_set(username, password)
    if url.tls or tls is not None:
        t = tls or TlsConfig()
        client.tls_set(
            ca_certs=str(t.ca_file) if t.ca_file else None,
            certfile=str(t.cert_file) if t.cert_file else None,
            keyfile=str(t.key_file) if t.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
    client.reconnect_delay_set(min_delay=reconnect_min_delay, max_delay=reconnect_max_delay)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(max_queued)
    client.on_socket_open = _no_delay
    return client


def connect_args(*, v5: bool, clean_start: bool, session_expiry: int,
                 keepalive: int) -> dict[str, Any]:
    """Keyword arguments of paho's ``connect_async`` (v5: the session's expiry interval)."""
    args: dict[str, Any] = {"keepalive": keepalive}
    if v5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean_start else session_expiry
        args.update(clean_start=clean_start, properties=props)
    else:
        args.update(clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY)
    return args


class Refusals:
    """The connects a broker refused (a CONNACK with a failure reason), each reason said
    once until a connect succeeds: paho retries every few seconds for ever, and a wrong
    password said at every retry (with a "connection lost" after each) drowned everything
    else and read like a network problem. ``login``: the broker refused the credentials.
    """

    def __init__(self, url: BrokerUrl, username: str | None, hint: str | None) -> None:
        self.url, self.username, self.hint = url, username, hint
        self.reason: str | None = None  # of the latest refused connect; None once connected
        self.login = False
        self._disconnect_follows = False  # the disconnect after a refusal is no news

    def refused(self, reason_code: ReasonCode) -> tuple[int, str]:
        """Note a refused connect; the level and the message to log it with."""
        again = str(reason_code) == self.reason
        self.reason, self._disconnect_follows = str(reason_code), True
        self.login = reason_code.value in LOGIN_REFUSED
        level = logging.DEBUG if again else logging.ERROR if self.login else logging.WARNING
        return level, self.message()

    def connected(self) -> None:
        self.reason, self.login = None, False

    def take_disconnect(self) -> bool:
        """True (once) for the disconnect that follows a refused connect."""
        follows, self._disconnect_follows = self._disconnect_follows, False
        return follows

    def message(self) -> str:
        if not self.login:
            return f"MQTT connect to {self.url.host}:{self.url.port} refused: {self.reason}"
        where = f"{'mqtts' if self.url.tls else 'mqtt'}://{self.url.host}:{self.url.port}"
        who = f"user {self.username!r}" if self.username else "a client with no username"
        return (f"the MQTT broker {where} is reachable but refused the login of {who} "
                f"({self.reason}): {self.hint or 'check the username and the password'}. "
                "The login is tried again in the background.")
