"""Operator actions behind ``fedface-aggregator``: key bundles, device enrolment and
revocation across both layers (broker TLS and aggregator registry), device status.

Enrolment is one exchange of files with the technician: ``fedface-edge provision``
writes ``<device>.request.json`` (device id, TLS CSR, Ed25519 public key; no secret),
``register_device`` signs the CSR with the federation CA, registers the signing key and
returns the reply (certificate + CA certificate) the box installs.

Revocation must take effect in both places or it is not a revocation: the registry
stops taking the device's updates (a running ``serve`` reads it on every update and
every announce), and the CRL, copied to the broker and reloaded, stops its TLS
connections; the connection the box holds is then cut by the broker (``pki_live``).

May import: aggregator.state, aggregator.pki, federation.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregator.pki import authority as pki
from aggregator.pki import issue as pki_issue
from aggregator.pki.broker_config import publish_crl
from aggregator.pki.live import cut_live_session
from aggregator.state.config import PUBLIC_CONTEXT_NAME, AggregatorConfig, PkiConfig, load_context
from aggregator.state.presence import load_presence, shown, status_entry
from aggregator.state.registry import DeviceRegistry, RegistryError, validate_device_id
from aggregator.state.store import Store
from federation.crypto.ckks import FederationContext
from federation.crypto.epochs import verify_exchange_key
from federation.crypto.key_bundle import (
    AGGREGATOR_PUB,
    CA_CERT,
    KEYHOLDER_PUB,
    SECRET_CONTEXT,
    KeyBundle,
    seal_bundle,
)
from federation.crypto.keys import load_secret_context
from federation.crypto.signing import public_key_from_hex
from federation.errors import FederationError
from federation.files import PRIVATE_DIR, make_dirs
from federation.messages import DeviceStatus

log = logging.getLogger(__name__)


class OperatorError(ValueError):
    """An operator action was refused; the message says what and how to fix it."""


def create_key_bundle(secret_context: Path, aggregator_pub: Path, ca_cert: Path, fed: str,
                      passphrase: str, *, broker_url: str = "",
                      aggregator_id: str = "aggregator") -> tuple[bytes, FederationContext]:
    """The passphrase-protected file a technician imports on every box, and the key it
    carries (the command names its id and epoch)."""
    ctx = load_secret_context(secret_context)  # refuses a public-only or too-open file
    files = {SECRET_CONTEXT: Path(secret_context).read_bytes(),
             AGGREGATOR_PUB: Path(aggregator_pub).read_bytes(), CA_CERT: Path(ca_cert).read_bytes()}
    # the key holder's public key (``keys create`` wrote it beside the secret context):
    # boxes accept a later key epoch only if that key signed it
    keyholder = Path(secret_context).parent / KEYHOLDER_PUB
    if keyholder.is_file():
        files[KEYHOLDER_PUB] = keyholder.read_bytes()
    bundle = KeyBundle(fed_id=fed, key_id=ctx.key_id, params=ctx.params.to_dict(),
                       aggregator_id=aggregator_id, broker_url=broker_url, files=files)
    return seal_bundle(bundle, passphrase), ctx


@dataclass(frozen=True)
class DeviceRequest:
    device_id: str
    csr_pem: bytes
    signing_key: bytes  # raw 32-byte Ed25519 public key
    # the box's X25519 exchange key and its device key's signature over it (key epochs,
    # federation.crypto.epochs); empty from a box provisioned before key epochs
    exchange_key: str = ""
    exchange_sig: str = ""
    # the federation key the box imported (absent from boxes of earlier releases)
    key_id: str = ""
    key_epoch: int | None = None


def read_request(path: Path, fed: str) -> DeviceRequest:
    try:
        data = json.loads(Path(path).read_text())
        device_id, csr, key_hex = str(data["device_id"]), data["csr"], str(data["signing_key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OperatorError(f"{path} is not a request from `fedface-edge provision`: "
                            f"{exc}") from None
    if data.get("fed") not in (None, fed):
        raise OperatorError(f"{path} is for federation {data.get('fed')!r}, this aggregator "
                            f"runs {fed!r}")
    try:
        raw = public_key_from_hex(key_hex).public_bytes_raw()
    except FederationError as exc:
        raise OperatorError(f"{path}: {exc.message}") from None
    key_id, key_epoch = data.get("key_id") or "", data.get("key_epoch")
    if not isinstance(key_id, str) or not (key_epoch is None or type(key_epoch) is int):
        raise OperatorError(f"{path}: its key_id/key_epoch are not a key id and an epoch")
    return DeviceRequest(device_id, str(csr).encode(), raw, str(data.get("exchange_key") or ""),
                         str(data.get("exchange_sig") or ""), key_id, key_epoch)


def check_request_key(state_dir: Path, cfg: AggregatorConfig, request: DeviceRequest
                      ) -> str:
    """Refuse (before anything is written) a box that imported another federation key
    than this aggregator's: one provisioned from a bundle kept from before a rotation
    passed doctor and sat out every round, and then needed a new device id. Returns a
    note for a box already on a newer epoch (the operator has yet to ``keys install``
    it), else ""."""
    if not request.key_id:  # a box of an earlier release does not say
        return ""
    ours = load_context(state_dir, cfg)
    theirs = ("" if request.key_epoch is None else f" epoch {request.key_epoch}")
    if request.key_id == ours.key_id:
        return ""
    if request.key_epoch is not None and request.key_epoch > ours.epoch:
        return (f"{request.device_id} holds key {request.key_id}{theirs}, newer than this "
                f"aggregator's {ours.key_id} (epoch {ours.epoch}): it takes part once that "
                "epoch is installed here (fedface-aggregator keys install)")
    raise OperatorError(
        f"{request.device_id} was provisioned with federation key {request.key_id}{theirs}; "
        f"this aggregator is on key {ours.key_id} (epoch {ours.epoch}): its bundle is of "
        "another key (one made before a rotation?) and it would sit out every round; "
        "nothing was registered. The technician provisions it again in a fresh --data-dir "
        "from a bundle of the current key (fedface-aggregator keys bundle, from the key "
        "holder's keys/ dir) and sends the new request")


def _require_pki(cfg: AggregatorConfig) -> PkiConfig:
    if cfg.pki is None:
        raise OperatorError("this aggregator has no CA configured: run `fedface-aggregator "
                            "init --ca-dir DIR` (or add a pki section to config.json)")
    return cfg.pki


def register_device(store: Store, cfg: AggregatorConfig, request: DeviceRequest,
                    *, cert_days: int = pki_issue.DEFAULT_DEVICE_DAYS) -> dict[str, Any]:
    """Sign the CSR and register the signing key; returns the reply for the box.
    Everything is checked before anything is written."""
    validate_device_id(request.device_id)
    registry = DeviceRegistry(store)
    if registry.get(request.device_id) is not None:
        raise RegistryError(f"device {request.device_id} is already registered (or revoked: "
                            "re-provision under a new device id)")
    exchange = (request.exchange_key, request.exchange_sig) if request.exchange_key else None
    if exchange is not None:  # checked before the CSR is signed: nothing half-done
        try:
            verify_exchange_key(Ed25519PublicKey.from_public_bytes(request.signing_key), cfg.fed,
                                request.device_id, *exchange)
        except FederationError as exc:
            raise OperatorError(f"request of {request.device_id}: {exc.message}") from None
    ca = pki.load_ca(_require_pki(cfg).ca_dir)
    cert_pem = pki.sign_device_csr(ca, request.csr_pem, request.device_id,
                                   valid_days=cert_days)
    registry.add(request.device_id, request.signing_key, fed=cfg.fed, exchange=exchange)
    return {"v": 1, "device_id": request.device_id, "fed": cfg.fed,
            "cert": cert_pem.decode("ascii"), "ca_cert": ca.cert_path.read_text()}


@dataclass(frozen=True)
class Revocation:
    device_id: str
    registry: bool
    crl: Path | None
    broker_reloaded: str  # ends with what happened to the live session (live_session)
    live_session: str = ""


def revoke_device(store: Store, cfg: AggregatorConfig, device_id: str) -> Revocation:
    """Revoke in the registry and, with a CA configured, in the CRL: copy it to the
    broker and make the broker reload it; then (``pki_live``) tell the box and have the
    broker disconnect its live session, which the CRL alone leaves open. A device revoked
    before has the rest applied again (``registry`` False): a reload that failed the first
    time (no pid file) left it able to connect, and `revoke` said only "already revoked"
    (helper-57)."""
    registry = DeviceRegistry(store)
    device = registry.get(device_id)
    if device is None:
        raise RegistryError(f"unknown device {device_id}")
    if device.active:
        registry.revoke(device_id)
    crl, reloaded = None, "no CA configured: only the registry was changed"
    if cfg.pki is not None:
        ca = pki.load_ca(cfg.pki.ca_dir)
        crl = pki.revoke(ca, device_id)
        if cfg.pki.broker_dir is not None:
            crl = publish_crl(ca, cfg.pki.broker_dir)
        reloaded = reload_broker(cfg.pki, device_id)
        live = cut_live_session(cfg, store, device_id)  # strictly after the CRL reload
        return Revocation(device_id, device.active, crl, f"{reloaded}; {live}", live)
    return Revocation(device_id, device.active, crl, reloaded)


def revoked_since_key(store: Store, state_dir: Path) -> list[str]:
    """Devices revoked after the federation's current key was installed (``init`` or
    ``keys install`` wrote the public context): each still holds that key's secret
    context and could decrypt every later result, so a key rotation is due."""
    try:
        installed = (Path(state_dir) / PUBLIC_CONTEXT_NAME).stat().st_mtime
    except FileNotFoundError:
        return []
    return [d.device_id for d in DeviceRegistry(store).list()
            if d.revoked_at is not None and d.revoked_at >= installed]


def _not_applied(device_id: str, why: str) -> OperatorError:
    return OperatorError(
        f"{why}; {device_id} is revoked in the registry and the CRL, but the broker has NOT "
        f"reloaded the CRL, so {device_id} can still connect. Reload the broker: `pkill -HUP "
        "-x mosquitto` (or find its pid with `pgrep -x mosquitto` and `kill -HUP PID`; "
        "`systemctl reload mosquitto` when systemd runs it; a second `mosquitto -d` that "
        "failed with 'Address already in use' deletes the pid file), then run "
        f"`fedface-aggregator devices revoke {device_id}` again: it applies the rest")


def _broker_pid(pid_file: Path, device_id: str) -> int:
    """The pid in the broker's pid file, if that process is a Mosquitto (a stale file's
    pid may be another program's now: it must not get the SIGHUP)."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError) as exc:
        raise _not_applied(device_id, f"cannot read the broker's pid from {pid_file} "
                           f"({exc})") from None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        raise _not_applied(device_id, f"{pid_file} is stale: no process {pid}") from None
    except OSError:
        return pid  # no /proc here: trust the file
    if not comm.startswith("mosquitto"):
        raise _not_applied(device_id, f"{pid_file} is stale: process {pid} is {comm!r}, "
                           "not mosquitto")
    return pid


def reload_broker(p: PkiConfig, device_id: str = "DEVICE") -> str:
    """SIGHUP to the broker (pid file) or the configured reload command."""
    if p.broker_pid_file is not None:
        pid = _broker_pid(p.broker_pid_file, device_id)
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            raise _not_applied(device_id, f"cannot signal the broker (pid {pid} from "
                               f"{p.broker_pid_file}): {exc}") from None
        return f"SIGHUP sent to broker pid {pid}"
    if p.broker_reload_command:
        result = subprocess.run(p.broker_reload_command, capture_output=True, text=True,
                                timeout=60, check=False)
        if result.returncode != 0:
            raise _not_applied(device_id, f"{' '.join(p.broker_reload_command)} failed: "
                               f"{result.stderr.strip()[-300:]}")
        return f"ran {' '.join(p.broker_reload_command)}"
    return "reload the broker yourself (systemctl reload mosquitto): no reload configured"


def device_statuses(cfg: AggregatorConfig, store: Store, wait: float = 2.0) -> dict[str, Any]:
    """Retained status of each device (its last will says offline), signature-checked
    against the registry. Needs the ``broker`` section of the config.

    A retained last will older than the last online status ``serve`` recorded
    (aggregator.state.presence) is shown with that status's model, verdicts and last
    swap, offline since serve heard the will (``last_reported``, ``offline_since``)."""
    from federation import topics
    from federation.crypto.signing import KeyRing
    from federation.envelope import decode, verify_envelope
    from federation.transport.mqtt import MqttTransport, TlsConfig

    if cfg.broker is None:
        raise OperatorError("no broker section in config.json: run init with --broker-url "
                            "(and --broker-ca/--broker-cert/--broker-key for TLS)")
    b = cfg.broker
    registry = DeviceRegistry(store)
    ring = KeyRing({d.device_id: Ed25519PublicKey.from_public_bytes(d.public_key)
                    for d in registry.list()})
    seen: dict[str, Any] = {}
    lock = threading.Lock()

    def on_status(topic: str, payload: bytes) -> None:
        device = topic.rsplit("/", 1)[-1]
        try:
            env = decode(payload)
            verify_envelope(env, ring, fed=cfg.fed)
            entry = status_entry(DeviceStatus.from_json(env.payload), env.ts)
        except (FederationError, ValueError) as exc:
            entry = {"state": "invalid", "model": None, "ts": None, "error": str(exc)}
        with lock:
            seen[device] = entry

    tls = TlsConfig(b.ca_file, b.cert_file, b.key_file) if b.cert_file else None
    transport = MqttTransport(b.url, f"{cfg.aggregator_id}-status-{os.getpid()}",
                              tls=tls, clean_start=True)
    try:
        if not transport.wait_connected(10.0):
            raise OperatorError(f"cannot reach the broker at {b.url}")
        transport.subscribe(topics.status_filter(cfg.fed), on_status)
        time.sleep(wait)  # retained messages arrive right after SUBACK
    finally:
        transport.close()
    recorded = load_presence(store.db)  # what serve heard before a box's will
    with lock:
        return {device: shown(entry, recorded.get(device)) for device, entry in seen.items()}


def install_key_epoch(state_dir: Path, cfg: AggregatorConfig, epoch_dir: Path
                      ) -> tuple[AggregatorConfig, list[str], list[str]]:
    """The operator's half of a rotation (``keys install``): the new epoch's public context
    replaces the state's, and the active boxes' sealed bundles go to ``<state>/sealed/``
    for the service to relay (``aggregator.rounds.epochs``). Run with ``serve`` stopped;
    its next start fails a round left open under the old key. Refuses a secret context,
    an epoch not newer than the current one, and bundles of another key or federation.
    Returns the new config, the devices relayed to and the active devices left without a
    bundle (they cannot take part until they are re-provisioned)."""
    from aggregator.state.config import SEALED_SUFFIX as SUFFIX
    from aggregator.state.config import save_config, sealed_dir
    from federation.crypto.epochs import read_header
    from federation.crypto.keys import PUBLIC_CONTEXT_NAME, load_public_context, write_public_file

    new = load_public_context(Path(epoch_dir) / PUBLIC_CONTEXT_NAME)  # refuses a secret one
    old = load_context(state_dir, cfg)
    if new.epoch <= old.epoch or new.key_id == old.key_id:
        raise OperatorError(f"{epoch_dir} holds key {new.key_id} epoch {new.epoch}; this "
                            f"aggregator is on key {old.key_id} epoch {old.epoch} already")
    store = Store(state_dir)
    try:
        active = DeviceRegistry(store).active_ids()
    finally:
        store.close()
    bundles: dict[str, bytes] = {}
    for path in sorted((Path(epoch_dir) / "sealed").glob(f"*{SUFFIX}")):
        data = path.read_bytes()
        header = read_header(data)
        if header.fed != cfg.fed or header.key_id != new.key_id:
            raise OperatorError(f"{path} is for key {header.key_id} of {header.fed}, not the "
                                f"new key {new.key_id} of {cfg.fed}")
        if header.device in active:  # never relay to a device revoked meanwhile
            bundles[header.device] = data
    folder = sealed_dir(state_dir)
    make_dirs(folder, PRIVATE_DIR)
    for device, data in bundles.items():
        write_public_file(folder / f"{device}{SUFFIX}", data, overwrite=True)
    for stale in folder.glob(f"*{SUFFIX}"):  # an earlier epoch's, or a revoked box's
        if stale.name[: -len(SUFFIX)] not in bundles:
            stale.unlink()
    write_public_file(Path(state_dir) / PUBLIC_CONTEXT_NAME,
                      (Path(epoch_dir) / PUBLIC_CONTEXT_NAME).read_bytes(), overwrite=True)
    cfg = cfg.model_copy(update={"key_id": new.key_id})
    save_config(state_dir, cfg)
    return cfg, sorted(bundles), sorted(active - set(bundles))
