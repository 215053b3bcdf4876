"""Visit events over MQTT, and Home Assistant MQTT discovery for the box.

Topics (``<fed>``, ``<box>``: the box's federation and device id)::

    fedface/<fed>/<box>/events   every visit event (QoS 1, not retained), JSON as in
                                 edge.tracking.visit_events
    fedface/<fed>/<box>/state    retained: {"last_person", "unknown_present", "visits"}
    fedface/<fed>/<box>/availability  retained "online" (on every connect) / "offline"
                                 (at a clean stop, or the broker's last will for a box
                                 that vanished: killed, crashed, cut off)
    <prefix>/sensor/fedface_<box>/last_person/config          retained discovery
    <prefix>/binary_sensor/fedface_<box>/unknown_face/config  messages (prefix
    <prefix>/sensor/fedface_<box>/visits/config               "homeassistant")

These go to the broker of the box's ``[events]`` section (a local one, e.g. Home
Assistant's), never to the federation's broker by default: the aggregator's operator
must not learn who walks past a kiosk. The best crop stays on the box: events carry its
local path only, unless the config sets ``include_crop`` (then ``best_crop_png`` holds
the PNG, base64). A publish that fails is logged and recognition goes on. Every discovery
config names the availability topic: a box that is gone shows its entities unavailable,
not its last state ("Unknown face" stayed on for ever after a ``kill -9``). The visit
count starts at 0 with each start (``total_increasing``: Home Assistant takes the drop
for a new cycle).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
from pathlib import Path

from edge.tracking.visit_events import ENDED, IDENTIFIED, VisitEvent
from federation.envelope import ID_RE
from federation.errors import TransportError
from federation.transport.base import Transport, Will

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
MAX_QUEUED_EVENTS = 10_000  # kept in memory while the events broker is away, then dropped
ONLINE, OFFLINE = "online", "offline"  # Home Assistant's default availability payloads


def events_topic(fed: str, box: str) -> str:
    return f"fedface/{fed}/{box}/events"


def state_topic(fed: str, box: str) -> str:
    return f"fedface/{fed}/{box}/state"


def availability_topic(fed: str, box: str) -> str:
    return f"fedface/{fed}/{box}/availability"


def _object_id(box: str) -> str:
    return "fedface_" + re.sub(r"[^A-Za-z0-9_-]", "_", box)


def discovery_messages(fed: str, box: str, prefix: str = "homeassistant"
                       ) -> dict[str, dict[str, object]]:
    """Home Assistant MQTT discovery: topic -> config payload, one device per box."""
    node = _object_id(box)
    device = {"identifiers": [node], "name": f"FedFace {box}", "manufacturer": "FedFace",
              "model": "edge box"}
    state = state_topic(fed, box)

    def entity(key: str, name: str, template: str, **extra: object) -> dict[str, object]:
        return {"name": name, "unique_id": f"{node}_{key}", "object_id": f"{node}_{key}",
                "state_topic": state, "value_template": template, "device": device,
                "availability_topic": availability_topic(fed, box),
                "payload_available": ONLINE, "payload_not_available": OFFLINE, **extra}

    return {
        f"{prefix}/sensor/{node}/last_person/config":
            entity("last_person", "Last person seen", "{{ value_json.last_person }}",
                   icon="mdi:account-eye"),
        f"{prefix}/binary_sensor/{node}/unknown_face/config":
            entity("unknown_face", "Unknown face",
                   "{{ 'ON' if value_json.unknown_present else 'OFF' }}",
                   payload_on="ON", payload_off="OFF", device_class="occupancy"),
        f"{prefix}/sensor/{node}/visits/config":
            entity("visits", "Visit count", "{{ value_json.visits }}",
                   state_class="total_increasing", icon="mdi:counter"),
    }


class VisitPublisher:
    """Publishes a box's visit events and keeps its Home Assistant state current."""

    def __init__(self, transport: Transport, fed: str, box: str, *,
                 include_crop: bool = False, discovery_prefix: str = "homeassistant") -> None:
        self.transport = transport
        self.fed, self.box = fed, box
        self.include_crop = include_crop
        self.discovery_prefix = discovery_prefix
        self.last_person: str | None = None
        self.visits = 0
        self._unknown: set[str] = set()
        self.failed = 0

    def announce(self) -> None:
        """The discovery configs (retained, so Home Assistant finds them when it starts)."""
        for topic, config in discovery_messages(self.fed, self.box,
                                                self.discovery_prefix).items():
            self._send(topic, config, retain=True)
        self._publish_state()

    def online(self) -> None:
        """Say the box is there: on every connect (a reconnect follows the broker's last
        will, "offline"). Runs on the transport's thread: no waiting."""
        self._send_raw(availability_topic(self.fed, self.box), ONLINE.encode())

    def close(self) -> None:
        """A clean stop: "offline" (the broker sends no last will for a clean disconnect),
        then the transport's close, which flushes (bounded). Not connected: the broker has
        said "offline" already, or never heard "online"."""
        if self.transport.connected:
            self._send_raw(availability_topic(self.fed, self.box), OFFLINE.encode())
        self.transport.close()

    def publish(self, event: VisitEvent) -> None:
        payload = event.to_dict()
        if self.include_crop and event.best_crop:
            try:
                payload["best_crop_png"] = base64.b64encode(
                    Path(event.best_crop).read_bytes()).decode("ascii")
            except OSError as exc:
                log.warning("visit %s: crop not attached: %s", event.visit, exc)
        self._send(events_topic(self.fed, self.box), payload)
        if event.event == IDENTIFIED:
            self.visits += 1
            self.last_person = event.name
            if event.name == UNKNOWN:
                self._unknown.add(event.visit)
            self._publish_state()
        elif event.event == ENDED:  # after every visit: a listener knows it is current
            self._unknown.discard(event.visit)
            self._publish_state()

    def _publish_state(self) -> None:
        self._send(state_topic(self.fed, self.box),
                   {"last_person": self.last_person or "none",
                    "unknown_present": bool(self._unknown), "visits": self.visits},
                   retain=True)

    def _send(self, topic: str, payload: dict[str, object], retain: bool = False) -> None:
        self._send_raw(topic, json.dumps(payload, separators=(",", ":")).encode(), retain)

    def _send_raw(self, topic: str, payload: bytes, retain: bool = True) -> None:
        try:
            self.transport.publish(topic, payload, retain=retain)
        except TransportError as exc:  # recognition goes on; the broker is only a listener
            self.failed += 1
            log.warning("MQTT publish to %s failed: %s", topic, exc)


def open_visit_publisher(url: str, fed: str, box: str, *, username: str | None = None,
                         password_file: Path | None = None, ca_file: Path | None = None,
                         include_crop: bool = False,
                         discovery_prefix: str = "homeassistant") -> VisitPublisher:
    """Connects (in the background: a broker that is away queues events in memory) and
    announces the box to Home Assistant. ``ValueError`` for a bad id, URL or password file."""
    from federation.transport.mqtt import MqttTransport, TlsConfig

    for kind, value in (("federation", fed), ("box", box)):
        if not ID_RE.match(value):
            raise ValueError(f"{kind} id {value!r} must be 1-64 of A-Z a-z 0-9 . _ - "
                             "(it is a topic level)")
    password = None if password_file is None else _read_password(Path(password_file))
    tls = TlsConfig(ca_file=ca_file) if url.startswith("mqtts://") else None
    # the broker says "offline" (retained) for a box that vanishes without a clean stop
    will = Will(availability_topic(fed, box), OFFLINE.encode(), retain=True)
    transport = MqttTransport(url, f"{box}-visits", username=username, password=password,
                              tls=tls, will=will, clean_start=True,
                              max_queued=MAX_QUEUED_EVENTS, connect=False,
                              login_hint=_login_hint(username, password_file))
    publisher = VisitPublisher(transport, fed, box, include_crop=include_crop,
                               discovery_prefix=discovery_prefix)
    transport.on_connected = publisher.online  # before the first connect: none is missed
    publisher.announce()  # queued until connected
    transport.start()
    return publisher


def _read_password(path: Path) -> str:
    """The password in ``path`` (never logged). A file other users may read is used all
    the same, with a warning, as the kiosk's TLS key (edge.http_thread): it is the host's
    own users who could read it, and the box keeps recognising."""
    try:
        password = path.read_text(encoding="utf-8").strip()
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise ValueError(f"cannot read the MQTT password file {path}: {exc.strerror}") from exc
    if mode & 0o077:
        log.warning("the MQTT password file %s is readable by other users (mode %04o): "
                    "chmod 600 %s", path, mode, path)
    return password


def _login_hint(username: str | None, password_file: Path | None) -> str:
    """What to check when the events broker refuses the login (names files, never a
    password): said once; recognition goes on, and the events file gets every visit."""
    if username is None:
        check = "the broker wants a login: set username and password_file in [events]"
    elif password_file is None:
        check = "[events] has no password_file: set it, or check the username"
    else:
        check = (f"the password in {password_file} ([events] password_file) may be wrong, "
                 "or the broker does not know that user")
    return (f"{check}; recognition goes on, an --events file gets every visit, and visit "
            f"events wait in memory (at most {MAX_QUEUED_EVENTS:,})")
