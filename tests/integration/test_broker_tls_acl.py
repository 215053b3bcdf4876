"""The generated broker security, against a REAL Mosquitto: TLS-only listener, client
certificates (CN = device id), per-device ACL, CRL revocation.

Mosquitto drops unauthorised publishes silently and never delivers what a client may
not read, so every "does not arrive" assertion is paired with a control message sent
AFTER the forbidden one on the same connection, which must arrive: the test cannot pass
because nothing was delivered at all.
"""

from __future__ import annotations

import queue
import signal
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from aggregator.pki import authority as pki
from aggregator.pki import issue as pki_issue
from aggregator.pki.broker_config import publish_crl, render_acl, write_broker_config
from tests.support.broker import MosquittoBroker, free_port

pytestmark = pytest.mark.mosquitto

FED = "fed-test"
P = f"fedface/v1/{FED}"
DEVICES = ("box-a", "box-b", "box-c")
SETTLE = 1.0  # bounded wait for a message that must NOT arrive (after its control arrived)


@dataclass
class Pki:
    ca: pki.CertificateAuthority
    certs: dict[str, tuple[Path, Path]]  # identity -> (cert, key)
    conf_text: str
    port: int
    broker_dir: Path


@pytest.fixture
def fed_pki(tmp_path: Path) -> Pki:
    ca = pki.create_ca(tmp_path / "ca", FED)
    server = pki_issue.issue_server_cert(ca, ["localhost", "127.0.0.1"], tmp_path / "broker")
    agg = pki_issue.issue_client_cert(ca, pki.AGGREGATOR_IDENTITY, tmp_path / "aggregator")
    assert agg.key_path is not None
    certs = {pki.AGGREGATOR_IDENTITY: (agg.cert_path, agg.key_path)}
    for dev in DEVICES:
        box_dir = tmp_path / dev
        key_path, csr_path = pki.create_device_key_and_csr(dev, box_dir)
        cert_path = box_dir / "device-tls.crt"
        cert_path.write_bytes(pki.sign_device_csr(ca, csr_path.read_bytes(), dev))
        certs[dev] = (cert_path, key_path)
    port = free_port()
    conf, _ = write_broker_config(
        ca, server, tmp_path / "broker", port=port, bind_address="127.0.0.1"
    )
    return Pki(ca, certs, conf.read_text(), port, conf.parent)


def broker_config(fed_pki: Pki) -> str:
    # The fixture keeps Mosquitto as root when the tests run as root (pytest's 0700 tmp
    # dirs); production installs make the files readable by `mosquitto` instead.
    return fed_pki.conf_text


@pytest.fixture
def broker(fed_pki: Pki, mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return mosquitto_factory(extra_config=broker_config(fed_pki), port=fed_pki.port)


class Client:
    """A paho 2.x client (callback API v2) that records what it receives."""

    def __init__(
        self,
        port: int,
        identity: str | None,
        fed_pki: Pki,
        *,
        tls: bool = True,
        with_cert: bool = True,
    ) -> None:
        self.port = port
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue[str] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{identity}-{uuid.uuid4().hex[:6]}"
        )
        if tls:
            cert, key = fed_pki.certs[identity] if (with_cert and identity) else (None, None)
            self.client.tls_set(
                ca_certs=str(fed_pki.ca.cert_path),
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(str(rc))
        # A TLS 1.3 server rejects a client certificate after the client's side of the
        # handshake has completed: the refusal shows up as a dropped connection.
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connack.put(f"disconnected: {rc}")
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(
            [r.value for r in rcs]
        )

    def connect(self, timeout: float = 5.0) -> str:
        """'Success' or why not (a TLS error, a refused CONNACK, or no CONNACK at all)."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except (ssl.SSLError, OSError) as e:
            return f"connect error: {e}"
        self.client.loop_start()
        try:
            return self.connack.get(timeout=timeout)
        except queue.Empty:
            return "no CONNACK"

    def subscribe(self, *topics: str) -> list[int]:
        self.client.subscribe([(t, 1) for t in topics])
        return self.subacks.get(timeout=5)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)
        assert info.is_published(), f"PUBACK for {topic} not received"

    def wait_for(self, payload: bytes, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """Everything received up to and including ``payload`` (fails if it never comes)."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(msg)
            if msg[1] == payload:
                return seen
        raise AssertionError(f"control message {payload!r} never arrived; got {seen}")

    def drain(self, wait: float) -> list[tuple[str, bytes]]:
        time.sleep(wait)
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(broker: MosquittoBroker, fed_pki: Pki) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(identity: str | None, **kw: bool) -> Client:
        c = Client(broker.port, identity, fed_pki, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def broker_log_says(broker: MosquittoBroker, text: str, timeout: float = 3.0) -> bool:
    """The refusal reason, from the broker's own log: a refusal for another reason (a
    broken test setup) would not count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.log_path.exists() and text in broker.log_path.read_text():
            return True
        time.sleep(0.1)
    return False


def connected(make: Callable[..., Client], identity: str) -> Client:
    c = make(identity)
    assert c.connect() == "Success", f"{identity} could not connect"
    return c


def test_config_has_a_single_tls_listener_and_no_anonymous(fed_pki: Pki) -> None:
    lines = [
        ln.strip() for ln in fed_pki.conf_text.splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert [ln for ln in lines if ln.startswith("listener")] == [
        f"listener {fed_pki.port} 127.0.0.1"
    ]
    for required in (
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
    ):
        assert required in lines
    assert any(ln.startswith("crlfile ") for ln in lines)
    assert any(ln.startswith("acl_file ") for ln in lines)


def test_config_turns_nagle_off(fed_pki: Pki) -> None:
    """Acks and announces must not wait for delayed TCP ACKs (federation.transport.mqtt, "Latency");
    this broker runs the generated config, so Mosquitto accepts the option."""
    assert "set_tcp_nodelay true" in fed_pki.conf_text.splitlines()


def test_device_publishes_its_own_update_and_status(clients: Callable[..., Client]) -> None:
    agg = connected(clients, pki.AGGREGATOR_IDENTITY)
    assert agg.subscribe(f"{P}/update/+", f"{P}/status/+") == [1, 1]
    box = connected(clients, "box-a")
    box.publish(f"{P}/status/box-a", b"online", retain=True)
    box.publish(f"{P}/update/box-a", b"chunk-0")
    got = agg.wait_for(b"chunk-0")
    assert (f"{P}/status/box-a", b"online") in got
    assert (f"{P}/update/box-a", b"chunk-0") in got


def test_device_cannot_publish_as_another_device(clients: Callable[..., Client]) -> None:
    agg = connected(clients, pki.AGGREGATOR_IDENTITY)
    assert agg.subscribe(f"{P}/update/+", f"{P}/status/+") == [1, 1]
    box = connected(clients, "box-a")
    # Mosquitto PUBACKs the forbidden publishes (QoS 1) and drops them silently.
    box.publish(f"{P}/update/box-b", b"forged-update")
    box.publish(f"{P}/status/box-b", b"forged-status", retain=True)
    box.publish(f"{P}/update/box-a", b"control")
    got = agg.wait_for(b"control") + agg.drain(SETTLE)
    assert (f"{P}/update/box-a", b"control") in got
    assert [m for m in got if m[1].startswith(b"forged")] == []


def test_device_cannot_publish_aggregator_topics(clients: Callable[..., Client]) -> None:
    watcher = connected(clients, "box-b")
    assert watcher.subscribe(f"{P}/announce", f"{P}/result/#", f"{P}/model/latest") == [1, 1, 1]
    box = connected(clients, "box-a")
    box.publish(f"{P}/announce", b"forged-announce", retain=True)
    box.publish(f"{P}/result/9/0", b"forged-result", retain=True)
    box.publish(f"{P}/model/latest", b"forged-model", retain=True)
    box.publish(f"{P}/ack/box-b", b"forged-ack")
    agg = connected(clients, pki.AGGREGATOR_IDENTITY)
    agg.publish(f"{P}/model/latest", b"control")
    got = watcher.wait_for(b"control") + watcher.drain(SETTLE)
    assert [m for m in got if m[1].startswith(b"forged")] == []


def test_device_cannot_read_another_devices_update_or_ack(clients: Callable[..., Client]) -> None:
    agg = connected(clients, pki.AGGREGATOR_IDENTITY)
    agg.subscribe(f"{P}/update/+")
    spy = connected(clients, "box-b")
    # Either refused at SUBACK (0x80) or granted but never delivered: both are fine,
    # what matters is that nothing of box-a reaches box-b.
    spy.subscribe(
        f"{P}/update/box-a", f"{P}/update/+", f"{P}/update/#", f"{P}/ack/box-a", f"{P}/ack/+",
        f"{P}/key/box-a", f"{P}/key/+",
    )
    assert spy.subscribe(f"{P}/ack/box-b", f"{P}/result/#", f"{P}/key/box-b") == [1, 1, 1]
    box = connected(clients, "box-a")
    box.publish(f"{P}/update/box-a", b"secret-update")
    agg.wait_for(b"secret-update")  # it was published and delivered to the aggregator
    agg.publish(f"{P}/ack/box-a", b"secret-ack")
    agg.publish(f"{P}/key/box-a", b"secret-sealed-key", retain=True)  # box-a's key epoch
    agg.publish(f"{P}/key/box-b", b"own-sealed-key", retain=True)
    agg.publish(f"{P}/result/3/0", b"result-chunk")
    agg.publish(f"{P}/ack/box-b", b"control")
    got = spy.wait_for(b"control") + spy.drain(SETTLE)
    assert (f"{P}/result/3/0", b"result-chunk") in got
    assert (f"{P}/key/box-b", b"own-sealed-key") in got
    assert [m for m in got if m[1].startswith(b"secret")] == []


def test_device_reads_announce_result_and_model_pointer(clients: Callable[..., Client]) -> None:
    agg = connected(clients, pki.AGGREGATOR_IDENTITY)
    agg.publish(f"{P}/announce", b"round-1", retain=True)
    agg.publish(f"{P}/model/latest", b"v1", retain=True)
    box = connected(clients, "box-c")
    box.subscribe(f"{P}/announce", f"{P}/model/latest")
    got = box.wait_for(b"v1") + box.drain(0.5)
    assert {(f"{P}/announce", b"round-1"), (f"{P}/model/latest", b"v1")} <= set(got)


def test_revoked_device_is_refused_after_reload(
    clients: Callable[..., Client], broker: MosquittoBroker, fed_pki: Pki
) -> None:
    first = clients("box-c")
    assert first.connect() == "Success"
    first.close()
    pki.revoke(fed_pki.ca, "box-c")
    publish_crl(fed_pki.ca, fed_pki.broker_dir)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)  # what `systemctl reload mosquitto` sends
    deadline = time.monotonic() + 5
    outcome = "Success"
    while time.monotonic() < deadline and outcome == "Success":
        time.sleep(0.2)
        c = clients("box-c")
        outcome = c.connect(timeout=2)
        c.close()
    assert outcome != "Success", "revoked box-c still connects after SIGHUP"
    assert broker_log_says(broker, "certificate verify failed")
    # Control: the CRL did not lock out everyone (an expired or bad CRL would).
    assert clients("box-a").connect() == "Success"


def test_revoked_device_is_refused_at_broker_start(
    fed_pki: Pki, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    pki.revoke(fed_pki.ca, "box-b")
    publish_crl(fed_pki.ca, fed_pki.broker_dir)
    b = mosquitto_factory(extra_config=broker_config(fed_pki), port=fed_pki.port)
    refused, control = Client(b.port, "box-b", fed_pki), Client(b.port, "box-a", fed_pki)
    try:
        assert refused.connect(timeout=3) != "Success"
        assert broker_log_says(b, "certificate verify failed")
        assert control.connect() == "Success"
    finally:
        refused.close()
        control.close()


def test_client_without_certificate_is_refused(
    clients: Callable[..., Client], broker: MosquittoBroker
) -> None:
    anonymous = clients("box-a", with_cert=False)
    assert anonymous.connect(timeout=3) != "Success"
    assert broker_log_says(broker, "peer did not return a certificate")
    assert clients("box-a").connect() == "Success"


def test_plaintext_connection_is_refused(
    clients: Callable[..., Client], broker: MosquittoBroker
) -> None:
    plain = clients("box-a", tls=False)
    assert plain.connect(timeout=3) != "Success"
    assert broker_log_says(broker, "wrong version number")  # MQTT CONNECT where TLS was due
    assert clients("box-a").connect() == "Success"


def test_certificate_from_another_ca_is_refused(
    tmp_path: Path, fed_pki: Pki, broker: MosquittoBroker
) -> None:
    # A rogue CA issuing itself an "aggregator" certificate must get nowhere.
    rogue = pki.create_ca(tmp_path / "rogue-ca", FED)
    cert = pki_issue.issue_client_cert(rogue, pki.AGGREGATOR_IDENTITY, tmp_path / "rogue")
    assert cert.key_path is not None
    fed_pki.certs["rogue"] = (cert.cert_path, cert.key_path)
    c = Client(broker.port, "rogue", fed_pki)
    try:
        assert c.connect(timeout=3) != "Success"
        assert broker_log_says(broker, "certificate verify failed")
    finally:
        c.close()


def test_acl_lists_only_own_topics_for_devices() -> None:
    acl = render_acl(["f1", "f2"])
    device_lines = [ln for ln in acl.splitlines() if ln.startswith("pattern")]
    assert all(("%u" in ln) == (" write " in ln or "/ack/" in ln or "/key/" in ln)
               for ln in device_lines)
    assert sum(ln.startswith("pattern write") for ln in device_lines) == 4  # update+status x 2 feds
    with pytest.raises(ValueError):
        render_acl("bad/fed")
