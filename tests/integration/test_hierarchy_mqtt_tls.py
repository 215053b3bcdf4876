"""A region reaching the root over TLS, each broker with its own CA, ACL and CRL (the
generated Mosquitto config): the real ``serve`` processes, the region's root link with
its own client certificate (``--root-cert-file``, CN = region id, issued by the root's
CA), which the root broker's ACL treats as a device.

Regression: the root link used the region's own TLS files (CN ``aggregator`` from the
region's CA): the root's broker refuses that chain, and even with one shared CA its ACL
lets the ``aggregator`` user read updates, not write ``update/<region id>``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.pki import authority as pki
from aggregator.pki import issue as pki_issue
from aggregator.pki.broker_config import write_broker_config
from federation.crypto.keys import (
    PUBLIC_CONTEXT_NAME,
    SECRET_CONTEXT_NAME,
    load_secret_context,
    write_public_key,
)
from federation.crypto.packing import plain_weighted_average
from federation.transport.mqtt import TlsConfig
from tests.support.aggregator_boxes import ScriptedBox, decrypt_result
from tests.support.broker import MosquittoBroker, free_port
from tests.support.hierarchy_mqtt import (
    AGGREGATOR,
    BrokerWatcher,
    Serve,
    connected_box,
    n_updates,
    run_cli,
    send_update,
)

pytestmark = pytest.mark.mosquitto

FED = "hiertls"
REGION = "region-south"


def _tls_broker(tmp: Path, name: str, factory: Callable[..., MosquittoBroker]
                ) -> tuple[pki.CertificateAuthority, str]:
    ca = pki.create_ca(tmp / f"{name}-ca", FED)
    server = pki_issue.issue_server_cert(ca, ["localhost", "127.0.0.1"], tmp / f"{name}-server")
    port = free_port()
    conf, _ = write_broker_config(ca, server, tmp / f"{name}-broker", port=port,
                                  bind_address="127.0.0.1")
    factory(extra_config=conf.read_text(), port=port)
    return ca, f"mqtts://localhost:{port}"


def _client_tls(ca: pki.CertificateAuthority, identity: str, out: Path) -> TlsConfig:
    issued = pki_issue.issue_client_cert(ca, identity, out)
    return TlsConfig(ca.cert_path, issued.cert_path, issued.key_path)


def _tls_args(prefix: str, tls: TlsConfig) -> list[str]:
    return [f"--{prefix}ca-file", str(tls.ca_file), f"--{prefix}cert-file", str(tls.cert_file),
            f"--{prefix}key-file", str(tls.key_file)]


@pytest.fixture
def procs() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for p in started:
        p.stop(kill=True)


def test_region_reaches_a_tls_root_broker_with_its_own_certificate(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker], procs: list[Serve],
) -> None:
    root_ca, root_url = _tls_broker(tmp_path, "root", mosquitto_factory)
    region_ca, region_url = _tls_broker(tmp_path, "region", mosquitto_factory)
    root_agg = _client_tls(root_ca, pki.AGGREGATOR_IDENTITY, tmp_path / "root-agg")
    region_agg = _client_tls(region_ca, pki.AGGREGATOR_IDENTITY, tmp_path / "region-agg")
    region_link = _client_tls(root_ca, REGION, tmp_path / "region-link")  # root CA, CN region

    keys = tmp_path / "keys"
    run_cli("keys", "create", "--out", str(keys))
    secret = load_secret_context(keys / SECRET_CONTEXT_NAME)
    root_state, region_state = tmp_path / "root", tmp_path / "region"
    for state in (root_state, region_state):
        run_cli("init", "--fed", FED, "--state", str(state), "--public-context",
                str(keys / PUBLIC_CONTEXT_NAME))
    run_cli("regions", "add", REGION, "--state", str(root_state), "--public-key",
            str(region_state / "aggregator.pub"))
    boxes: list[ScriptedBox] = []
    for i in range(2):
        dev = f"south-box{i}"
        box = connected_box(region_url, dev, secret, FED,
                            tls=_client_tls(region_ca, dev, tmp_path / dev))
        pub = write_public_key(tmp_path / f"{dev}.pub", box.key.public_key())
        run_cli("devices", "add", dev, "--state", str(region_state), "--public-key", str(pub))
        boxes.append(box)

    # a certificate without its key is refused before anything connects
    bad = subprocess.run(
        [AGGREGATOR, "serve", "--state", str(region_state), "--broker", region_url,
         *_tls_args("", region_agg), "--forward-to", root_url, "--root-key",
         str(root_state / "aggregator.pub"), "--region-id", REGION, "--root-cert-file",
         str(region_link.cert_file)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--root-key-file" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

    root_watch = BrokerWatcher(root_url, "watch-root", FED, tls=root_agg)
    region_watch = BrokerWatcher(region_url, "watch-region", FED, tls=region_agg)
    root = Serve(tmp_path / "root.log", [
        "--state", str(root_state), "--broker", root_url, *_tls_args("", root_agg),
        "--quorum", "2", "--rounds", "1", "--round-deadline", "60", "--chunk-size", "65536"])
    region = Serve(tmp_path / "region.log", [
        "--state", str(region_state), "--broker", region_url, *_tls_args("", region_agg),
        "--forward-to", root_url, "--root-key", str(root_state / "aggregator.pub"),
        "--region-id", REGION, *_tls_args("root-", region_link),
        "--quorum", "2", "--rounds", "1", "--round-deadline", "60", "--chunk-size", "65536"])
    procs += [root, region]

    def logs() -> str:
        return f"--- root\n{root.text()[-2000:]}\n--- region\n{region.text()[-2000:]}"

    region_watch.wait("region round 1 open", region_watch.open_round(1), 30, logs)
    ann = region_watch.announce()
    assert ann is not None
    rng = np.random.default_rng(11)
    vecs = [rng.normal(0, 0.4, 3000).astype(np.float32) for _ in boxes]
    counts = [70, 190]
    for box, v, n in zip(boxes, vecs, counts, strict=True):
        send_update(box, ann, v, n)
    region_watch.wait("region result 1", region_watch.result_of(1), 60, logs)
    root_watch.wait("root result 1", root_watch.result_of(1), 30, logs)
    assert root.wait_exit(30) == 0 and region.wait_exit(30) == 0, logs()
    _, root_blob = root_watch.result()
    _, region_blob = region_watch.result()
    assert region_blob == root_blob and n_updates(root_blob, secret.public()) == 2
    got = decrypt_result(secret, region_blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
    assert f"as region-{REGION}" in region.text()  # its MQTT client id at the root broker
    for box in boxes:
        box.transport.close()
    root_watch.close()
    region_watch.close()
