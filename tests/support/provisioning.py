"""A real federation for provisioning tests: CKKS keys, an initialised aggregator with
its CA, a TLS-only Mosquitto from the generated config (CRL, per-device ACL), the key
bundle, and boxes provisioned through the two CLIs exactly as a technician and an
operator would (request file -> devices add -> reply file)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from aggregator.cli.main import app as aggregator_app
from aggregator.pki import authority as pki
from aggregator.pki import issue as pki_issue
from aggregator.pki.broker_config import write_broker_config
from edge.cli import app as edge_app
from federation.crypto.keys import create_federation_keys
from tests.support.broker import MosquittoBroker, free_port

FED = "fed-prov"
PASSPHRASE = "correct horse battery staple"
KIOSK_PASSWORD = "kiosk staff passphrase"
runner = CliRunner()


@dataclass
class Federation:
    root: Path
    state: Path
    ca_dir: Path
    broker: MosquittoBroker
    bundle: Path
    secret_context: Path

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.broker.port}"

    def aggregator(self, *args: str) -> tuple[int, str]:
        r = runner.invoke(aggregator_app, [*args])
        return r.exit_code, r.output


def model_dir() -> Path:
    from models.registry import verify_models

    return next(iter(verify_models(None).values())).parent


def start_federation(root: Path, factory: Callable[..., MosquittoBroker]) -> Federation:
    keys = create_federation_keys(root / "commissioner")
    state, ca_dir, broker_dir = root / "agg-state", root / "ca", root / "broker"
    ca = pki.create_ca(ca_dir, FED)
    server = pki_issue.issue_server_cert(ca, ["localhost", "127.0.0.1"], root / "server")
    agg_tls = pki_issue.issue_client_cert(ca, pki.AGGREGATOR_IDENTITY, root / "agg-tls")
    port = free_port()
    conf, _ = write_broker_config(ca, server, broker_dir, port=port, bind_address="127.0.0.1")
    broker = factory(extra_config=conf.read_text(), port=port)
    assert broker.proc is not None
    pid_file = root / "mosquitto.pid"
    pid_file.write_text(str(broker.proc.pid))
    r = runner.invoke(aggregator_app, [
        "init", "--fed", FED, "--state", str(state), "--public-context",
        str(keys.public_context), "--ca-dir", str(ca_dir), "--broker-dir", str(broker_dir),
        "--broker-pid-file", str(pid_file), "--broker-url", f"mqtts://localhost:{port}",
        "--broker-ca", str(ca.cert_path), "--broker-cert", str(agg_tls.cert_path),
        "--broker-key", str(agg_tls.key_path)])
    assert r.exit_code == 0, r.output
    (root / "passphrase").write_text(PASSPHRASE + "\n")
    bundle = root / "fed.ffkb"
    r = runner.invoke(aggregator_app, [
        "keys", "bundle", "--secret-context", str(keys.secret_context), "--aggregator-key",
        str(state / "aggregator.pub"), "--ca-cert", str(ca.cert_path), "--fed", FED,
        "--out", str(bundle), "--passphrase-file", str(root / "passphrase"),
        "--broker-url", f"mqtts://localhost:{port}"])
    assert r.exit_code == 0, r.output
    return Federation(root, state, ca_dir, broker, bundle, keys.secret_context)


def edge(box_dir: Path, *args: str) -> tuple[int, str]:
    r = runner.invoke(edge_app, ["--data-dir", str(box_dir), "--model-dir", str(model_dir()),
                                 *args])
    return r.exit_code, r.output


def provision_box(fed: Federation, device_id: str, camera: str, *, sign: bool = True) -> Path:
    """Technician pass 1, operator `devices add`, technician pass 2. Returns the box dir."""
    box = fed.root / device_id
    (fed.root / "kiosk-pw").write_text(KIOSK_PASSWORD + "\n")
    code, out = edge(box, "provision", "--non-interactive", "--device-id", device_id,
                     "--bundle", str(fed.bundle), "--passphrase-file",
                     str(fed.root / "passphrase"), "--camera", camera,
                     "--kiosk-password-file", str(fed.root / "kiosk-pw"))
    assert code == 0, out
    if not sign:
        return box
    reply = fed.root / f"{device_id}.reply.json"
    code, out = fed.aggregator("devices", "add", "--request",
                               str(box / f"{device_id}.request.json"), "--reply", str(reply),
                               "--state", str(fed.state))
    assert code == 0, out
    code, out = edge(box, "provision", "--install-reply", str(reply))
    assert code == 0, out
    return box


def edit_config(box: Path, section: str, key: str, value: object) -> None:
    """Break (or change) one entry of the box config, through the typed model."""
    from edge.config import load_box_config
    from edge.provision import render_box_config

    path = box / "edge.toml"
    cfg = load_box_config(path)
    data = json.loads(cfg.model_dump_json())
    data[section][key] = value
    from edge.config import parse_box_config

    path.write_text(render_box_config(parse_box_config(data, "test")))
