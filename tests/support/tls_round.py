"""A provisioned federation running rounds over TLS: the real ``fedface-aggregator serve``
process on the TLS-only Mosquitto of ``provisioning_support`` (aggregator client
certificate, per-device ACL, CRL), and in-process box clients that use exactly the
files ``fedface-edge provision`` wrote (device certificate, signing key, secret context,
aggregator key)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from aggregator.pki import authority as pki
from aggregator.pki import files as pki_files
from edge.config import BoxConfig, load_box_config
from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.training.drift import NumpyDriftTrainer
from federation.crypto.keys import load_secret_context, read_private_key, read_public_key
from federation.transport.base import Will
from federation.transport.mqtt import MqttTransport, TlsConfig
from tests.support.federation_rig import (
    AGGREGATOR,
    PART,
    GatedTrainer,
    RecordingSink,
    part_base_vector,
)
from tests.support.provisioning import Federation


def serve(fed: Federation, *, quorum: int, rounds: int, deadline: float = 60.0,
          intake: int = 1) -> subprocess.Popen[bytes]:
    """`fedface-aggregator serve` connecting with the aggregator's TLS client certificate
    (CN aggregator: the ACL's aggregator section); ``intake``: its --intake-processes,
    whose shards connect with the same certificate."""
    tls = fed.root / "agg-tls"
    log = (fed.root / "aggregator.log").open("wb")
    return subprocess.Popen(
        [*AGGREGATOR, "serve", "--state", str(fed.state), "--broker", fed.url,
         "--ca-file", str(fed.ca_dir / pki_files.CA_CERT),
         "--cert-file", str(tls / f"{pki.AGGREGATOR_IDENTITY}.crt"),
         "--key-file", str(tls / f"{pki.AGGREGATOR_IDENTITY}.key"),
         "--quorum", str(quorum), "--rounds", str(rounds), "--round-deadline", str(deadline),
         "--chunk-size", "16384", "--intake-processes", str(intake),
         "--min-new-samples", "0"],
        stdout=log, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def aggregator_log(fed: Federation) -> str:
    path = fed.root / "aggregator.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def box_tls(cfg: BoxConfig) -> TlsConfig:
    return TlsConfig(cfg.broker.ca_file, cfg.broker.cert_file, cfg.broker.key_file)


@dataclass
class TlsBox:
    """A provisioned box's federation client (drift trainer, gated) over its own TLS."""

    device_id: str
    cfg: BoxConfig
    client: FederationClient
    trainer: GatedTrainer
    events: list[ClientEvent] = field(default_factory=list)

    def has(self, kind: str, round_no: int) -> ClientEvent | None:
        return next((e for e in list(self.events) if e.kind == kind and e.round == round_no),
                    None)


def start_client(box_dir: Path, events: list[ClientEvent], *, state_dir: str = "federation",
                 open_gate: bool = True, reconnect_max_delay: int = 2
                 ) -> tuple[FederationClient, GatedTrainer, BoxConfig]:
    """A provisioned box's federation client (drift trainer) as `fedface-edge join` runs
    it: the box config's broker, TLS certificate and keys; state in ``box_dir/state_dir``."""
    cfg = load_box_config(box_dir / "edge.toml")
    base = part_base_vector()
    trainer = GatedTrainer(NumpyDriftTrainer(PART, base, cfg.box.device_id, 50, 1e-2))
    if open_gate:
        trainer.gate.set()

    def transport(will: Will) -> MqttTransport:
        return MqttTransport(cfg.broker.url, cfg.box.device_id, will=will,
                             reconnect_max_delay=reconnect_max_delay, tls=box_tls(cfg))

    client = FederationClient(
        ClientConfig(cfg.box.fed, cfg.box.device_id, retry_seconds=2.0, tick_seconds=0.1),
        transport, load_secret_context(cfg.federation.secret_context),
        read_private_key(cfg.federation.device_key),
        read_public_key(cfg.federation.aggregator_key), trainer, RecordingSink(),
        box_dir / state_dir, base, on_event=events.append)
    client.start()
    return client, trainer, cfg


def start_box(box_dir: Path, *, open_gate: bool = True) -> TlsBox:
    events: list[ClientEvent] = []
    client, trainer, cfg = start_client(box_dir, events, state_dir="federation-test",
                                        open_gate=open_gate)
    return TlsBox(cfg.box.device_id, cfg, client, trainer, events)


def connects(cfg: BoxConfig, client_id: str, timeout: float = 2.0) -> bool:
    """Whether the broker accepts a NEW TLS connection with this box's certificate."""
    t = MqttTransport(cfg.broker.url, client_id, clean_start=True, reconnect_max_delay=1,
                      tls=box_tls(cfg))
    try:
        return t.wait_connected(timeout)
    finally:
        t.close()
