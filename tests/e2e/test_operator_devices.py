"""Operator commands over a real TLS Mosquitto: key bundle, devices add from the box's
request, revoke at the aggregator AND the broker, status from retained device status."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from federation.chunking import split_blob
from federation.crypto.key_bundle import open_bundle, seal_bundle
from federation.crypto.keys import read_private_key
from federation.envelope import encode
from federation.errors import KeyFileError
from federation.transport.mqtt import MqttTransport, TlsConfig
from tests.support.broker import MosquittoBroker
from tests.support.provisioning import FED, PASSPHRASE, Federation, provision_box, start_federation

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def fed(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> Federation:
    return start_federation(tmp_path, mosquitto_factory)


def test_key_bundle_needs_the_passphrase_and_detects_tampering(fed: Federation) -> None:
    data = fed.bundle.read_bytes()
    assert fed.bundle.stat().st_mode & 0o777 == 0o600
    assert fed.secret_context.read_bytes()[:64] not in data  # encrypted, not just packed
    bundle = open_bundle(data, PASSPHRASE)
    assert bundle.fed_id == FED and bundle.broker_url == fed.url
    assert bundle.files["federation-secret.tenseal"] == fed.secret_context.read_bytes()
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        open_bundle(data, PASSPHRASE + "x")
    tampered = bytearray(data)
    tampered[-100] ^= 1
    with pytest.raises(KeyFileError, match="altered"):
        open_bundle(bytes(tampered), PASSPHRASE)
    with pytest.raises(KeyFileError, match="at least 12"):
        seal_bundle(bundle, "short")


def test_add_from_request_then_revoke_at_aggregator_and_broker(fed: Federation,
                                                               lfw_dir: Path) -> None:
    box = provision_box(fed, "box-r", f"dir:{lfw_dir / 'Aaron_Peirsol'}")
    code, out = fed.aggregator("devices", "add", "--request", str(box / "box-r.request.json"),
                               "--state", str(fed.state))
    assert code == 2 and "already registered" in out
    serial = x509.load_pem_x509_certificate(
        (box / "tls/device-tls.crt").read_bytes()).serial_number
    code, out = fed.aggregator("devices", "revoke", "box-r", "--state", str(fed.state))
    assert code == 0, out
    assert "SIGHUP sent to broker pid" in out
    listed = json.loads(fed.aggregator("devices", "list", "--json", "--state",
                                       str(fed.state))[1])
    assert [d["active"] for d in listed if d["device_id"] == "box-r"] == [False]
    crl = x509.load_pem_x509_crl((fed.root / "broker/crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    # the broker refuses it (after the reload), the aggregator no longer lists it
    refused = False
    for _ in range(20):
        t = MqttTransport(fed.url, "box-r-probe", clean_start=True, reconnect_max_delay=1,
                          tls=TlsConfig(box / "tls/ca.crt", box / "tls/device-tls.crt",
                                        box / "tls/device-tls.key"))
        refused = not t.wait_connected(2.0)
        t.close()
        if refused:
            break
        time.sleep(0.2)
    assert refused, "revoked box still connects"
    status = json.loads(fed.aggregator("status", "--json", "--state", str(fed.state),
                                       "--wait", "0.5")[1])
    assert status["devices"] == {"active": 0, "total": 1}


def test_status_shows_devices_online_from_their_retained_status(fed: Federation,
                                                                lfw_dir: Path) -> None:
    box = provision_box(fed, "box-s", f"dir:{lfw_dir / 'Aaron_Peirsol'}")
    key = read_private_key(box / "keys/device.key")
    body = json.dumps({"state": "online", "device": "box-s", "model": "base",
                       "ts": time.time()}).encode()
    (env,) = split_blob(body, key, kind="status", fed=FED, sender="box-s", round=0,
                        model="base", chunk_size=len(body))
    # a status as a box of a release before it said its own (no "release")
    _publish_status(fed, box, encode(env))
    code, out = fed.aggregator("status", "--state", str(fed.state), "--wait", "1.0")
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("box-s"))
    assert row.split()[:4] == ["box-s", "active", "online", "base"]
    assert "release not said (an earlier release): box-s" in out.splitlines(), out
    info = json.loads(fed.aggregator("status", "--json", "--state", str(fed.state),
                                     "--wait", "1.0")[1])
    assert info["device_status"][0]["state"] == "online" and info["broker_checked"]
    # the box's own status says which release it runs: an upgrade's progress, per box
    from edge.federated.status import BoxStatus
    from federation.release import release

    status = BoxStatus(key, FED, "box-s", box / "no-ledger.json")
    _publish_status(fed, box, status.payload("online", "base", 0, {}))
    code, out = fed.aggregator("status", "--state", str(fed.state), "--wait", "1.0")
    assert code == 0 and f"release {release()}: box-s" in out.splitlines(), out
    info = json.loads(fed.aggregator("status", "--json", "--state", str(fed.state),
                                     "--wait", "1.0")[1])
    assert info["device_status"][0]["release"] == release()


def _publish_status(fed: Federation, box: Path, payload: bytes) -> None:
    t = MqttTransport(fed.url, box.name, clean_start=True,
                      tls=TlsConfig(box / "tls/ca.crt", box / "tls/device-tls.crt",
                                    box / "tls/device-tls.key"))
    try:
        assert t.wait_connected(10)
        t.publish(f"fedface/v1/{FED}/status/{box.name}", payload, retain=True,
                  wait_timeout=5)
    finally:
        t.close()
