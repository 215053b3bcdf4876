"""MQTT topics of a federation: prefix ``fedface/v1/<fed>`` (docs/protocol.md, "Topics").

Per-device topics let the broker ACL confine each device to its own update and status
topics. Ids never contain '/', '+' or '#' (``envelope.ID_RE``).
"""

from __future__ import annotations

from dataclasses import dataclass

from federation.envelope import ID_RE
from federation.errors import MALFORMED, FederationError

ROOT = "fedface/v1"


def _check_id(kind: str, value: str) -> str:
    if not ID_RE.match(value):
        raise FederationError(
            MALFORMED, f"{kind} id {value!r} must be 1-64 of A-Z a-z 0-9 . _ - (no / + #)"
        )
    return value


def prefix(fed: str) -> str:
    return f"{ROOT}/{_check_id('federation', fed)}"


# The per-device kinds: one topic per device, so the broker ACL can confine each device
# to its own (``parse`` accepts exactly these with a device id).
DEVICE_KINDS = ("update", "ack", "status", "key")


def _device_topic(fed: str, kind: str, device: str) -> str:
    return f"{prefix(fed)}/{kind}/{_check_id('device', device)}"


def _every_device(fed: str, kind: str) -> str:
    return f"{prefix(fed)}/{kind}/+"


def announce(fed: str) -> str:
    return f"{prefix(fed)}/announce"


def update(fed: str, device: str) -> str:
    return _device_topic(fed, "update", device)


def update_filter(fed: str) -> str:
    return _every_device(fed, "update")


def ack(fed: str, device: str) -> str:
    return _device_topic(fed, "ack", device)


def result(fed: str, round: int, index: int) -> str:
    if round < 0 or index < 0:
        raise ValueError("round and index must be >= 0")
    return f"{prefix(fed)}/result/{int(round)}/{int(index)}"


def result_filter(fed: str, round: int | None = None) -> str:
    """All result chunks of one round, or of every round (``round=None``)."""
    return f"{prefix(fed)}/result/{'+' if round is None else int(round)}/+"


def model_latest(fed: str) -> str:
    return f"{prefix(fed)}/model/latest"


def status(fed: str, device: str) -> str:
    return _device_topic(fed, "status", device)


def status_filter(fed: str) -> str:
    return _every_device(fed, "status")


def key(fed: str, device: str) -> str:
    """The device's sealed key epoch (federation.crypto.epochs), retained: only it can
    open it, and the broker's ACL lets only it read this topic."""
    return _device_topic(fed, "key", device)


@dataclass(frozen=True)
class Topic:
    """A parsed topic: ``kind`` is announce/update/ack/result/model/status/key."""

    fed: str
    kind: str
    device: str | None = None
    round: int | None = None
    index: int | None = None


def parse(topic: str) -> Topic:
    """Parse a federation topic or raise FederationError(malformed)."""
    parts = topic.split("/")
    bad = FederationError(MALFORMED, f"not a FedFace v1 topic: {topic!r}")
    if len(parts) < 4 or "/".join(parts[:2]) != ROOT or not ID_RE.match(parts[2]):
        raise bad
    fed, kind, rest = parts[2], parts[3], parts[4:]
    if kind == "announce" and not rest:
        return Topic(fed, kind)
    if kind in DEVICE_KINDS and len(rest) == 1 and ID_RE.match(rest[0]):
        return Topic(fed, kind, device=rest[0])
    if kind == "result" and len(rest) == 2 and all(p.isdigit() and p.isascii() for p in rest):
        return Topic(fed, kind, round=int(rest[0]), index=int(rest[1]))
    if kind == "model" and rest == ["latest"]:
        return Topic(fed, kind)
    raise bad


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching with '+' (one level) and '#' (rest, incl. parent)."""
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return i == len(f_parts) - 1
        if i >= len(t_parts):
            return False
        if f != "+" and f != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)
