"""Revocation on a LIVE session: tell the box, then make the broker cut its connection.

Mosquitto checks the CRL only at the TLS handshake: after ``devices revoke`` reloads the
CRL, the box cannot open a NEW connection, but the one it holds stays up and keeps
delivering announcements and results (which a stolen box, holding the CKKS secret key,
can read). Reloading more often changes nothing; restarting the broker cuts every box.

So, after the CRL is applied, the aggregator (its client certificate, CN ``aggregator``):

1. publishes a signed revocation notice (``federation.messages``) on ``ack/<device>``,
   the one topic only that device reads, and gives an honest box up to
   ``NOTICE_GRACE`` seconds to record it and say so (its retained status becomes
   ``revoked``, then it closes its connection itself);
2. asks Mosquitto's dynamic-security plugin to disable the client with that username,
   which disconnects every session of that username at once ("administrative action").
   The username is the certificate CN (``use_identity_as_username``), i.e. the device
   id, whatever client id the box uses. The reconnect that follows is refused by the
   CRL reloaded before (step 0), so the kick comes strictly after the reload.

The ``disabled`` flag the plugin stores is not what keeps the box out (with
certificate identities Mosquitto does not ask the plugin to authenticate): the CRL is.
The ACL file stays the authority on topics (``broker_config``): the plugin only gives
the aggregator its ``$CONTROL/dynamic-security/v1`` control topic.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregator.state.config import AggregatorConfig, load_signing_key
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation import topics
from federation.chunking import split_blob
from federation.crypto.signing import KeyRing
from federation.envelope import decode, encode, verify_envelope
from federation.errors import FederationError
from federation.messages import DeviceStatus, RevocationNotice

log = logging.getLogger(__name__)

DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
DYNSEC_RESPONSE = DYNSEC_TOPIC + "/response"
NOTICE_GRACE = 3.0  # seconds an honest box gets to record the notice before the kick
KICK_TIMEOUT = 5.0  # seconds to wait for the plugin's answer


def _status_state(payload: bytes, ring: KeyRing, fed: str) -> tuple[str, float] | None:
    try:
        env = decode(payload)
        verify_envelope(env, ring, fed=fed)
        status = DeviceStatus.from_json(env.payload)
        return status.state, float(env.ts if status.ts is None else status.ts)
    except (FederationError, ValueError, TypeError):
        return None


def cut_live_session(cfg: AggregatorConfig, store: Store, device_id: str,
                     *, grace: float = NOTICE_GRACE, kick_timeout: float = KICK_TIMEOUT) -> str:
    """Notify the device, then have the broker disconnect it. Returns what happened, in
    one line for the operator. Needs the config's ``broker`` section (the aggregator's
    client certificate); call it only after the CRL has been reloaded."""
    from federation.transport.mqtt import MqttTransport, TlsConfig

    if cfg.broker is None:
        return ("live session NOT cut: no broker section in config.json (init --broker-url "
                "...); restart the broker to cut it")
    b = cfg.broker
    device = DeviceRegistry(store).get(device_id)
    ring = KeyRing({device_id: Ed25519PublicKey.from_public_bytes(device.public_key)}
                   if device is not None else {})
    box_state: dict[str, tuple[str, float]] = {}
    kicked: list[dict[str, object]] = []
    changed = threading.Condition()

    def on_status(topic: str, payload: bytes) -> None:
        got = _status_state(payload, ring, cfg.fed) if payload else None
        if got is not None:
            with changed:
                box_state["last"] = got
                changed.notify_all()

    def on_response(topic: str, payload: bytes) -> None:
        try:
            responses = json.loads(payload).get("responses", [])
        except (ValueError, AttributeError):
            return
        with changed:
            kicked.extend(r for r in responses if isinstance(r, dict))
            changed.notify_all()

    tls = TlsConfig(b.ca_file, b.cert_file, b.key_file) if b.cert_file else None
    transport = MqttTransport(b.url, f"{cfg.aggregator_id}-revoke-{os.getpid()}", tls=tls,
                              clean_start=True, reconnect_max_delay=2)
    try:
        if not transport.wait_connected(10.0):
            return (f"live session NOT cut: cannot reach the broker at {b.url}; restart the "
                    "broker to cut it")
        transport.subscribe(topics.status(cfg.fed, device_id), on_status)
        transport.subscribe(DYNSEC_RESPONSE, on_response)
        sent_at = time.time()
        key = load_signing_key(store.state_dir)
        body = RevocationNotice(device_id, revoked_at=sent_at).to_json()
        for env in split_blob(body, key, kind="ack", fed=cfg.fed, sender=cfg.aggregator_id,
                              round=0, model="", chunk_size=len(body)):
            transport.publish(topics.ack(cfg.fed, device_id), encode(env), wait_timeout=10.0)
        # an honest, connected box answers with a retained "revoked" status and closes
        with changed:
            changed.wait_for(lambda: box_state.get("last", ("", 0.0))[0] == "revoked",
                             timeout=max(0.0, grace))
        told = box_state.get("last", ("", 0.0))[0] == "revoked"
        command = {"commands": [{"command": "createClient", "username": device_id},
                                {"command": "disableClient", "username": device_id}]}
        transport.publish(DYNSEC_TOPIC, json.dumps(command).encode(), wait_timeout=10.0)
        with changed:
            changed.wait_for(lambda: any(r.get("command") == "disableClient" for r in kicked),
                             timeout=kick_timeout)
        answer = next((r for r in kicked if r.get("command") == "disableClient"), None)
    except FederationError as exc:
        return f"live session NOT cut: {exc.message}; restart the broker to cut it"
    finally:
        transport.close()
    notice = ("the box recorded the revocation notice" if told else
              "no answer to the revocation notice (box offline or too old to know it)")
    if answer is None:
        return (f"{notice}; live session NOT cut: the broker did not answer on {DYNSEC_TOPIC} "
                "(dynamic-security plugin not loaded, or the ACL does not grant the aggregator "
                "$CONTROL/dynamic-security/#): restart the broker to cut it")
    if answer.get("error"):
        return (f"{notice}; live session NOT cut: dynamic-security said "
                f"{answer.get('error')!r}: restart the broker to cut it")
    log.info("broker disconnected every session of %s", device_id)
    return f"{notice}; broker disconnected every session of {device_id} (dynamic-security)"


def dynsec_config_path(broker_dir: Path) -> Path:
    """Where the generated broker config keeps the plugin's own state file."""
    return Path(broker_dir) / "dynamic-security.json"
