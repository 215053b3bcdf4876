"""``fedface-edge doctor``: is this box ready? One pass/fail line per check, with a hint.

Each check is a small function of the box config returning a ``Check``; none raises. The
broker check makes a real TLS handshake with the device certificate (so a wrong CA, a wrong
broker name, a revoked or expired certificate is named precisely), then a real MQTT
connection; the retained, aggregator-signed announcement it reads doubles as the clock
reference (a Pi without RTC that boots without NTP sits in 1970 and fails TLS in ways that
look like anything but a clock problem).

May import: edge.errors, edge.config, edge.box, edge.gallery, edge.serving,
edge.provision, edge.federated, edge.vision, federation, models.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.config import BoxConfig, DoctorSection

if TYPE_CHECKING:
    from federation.messages import RoundAnnounce

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


def check_camera(source: str, hint: str = "set camera.source in the config") -> Check:
    from edge.provision import probe_camera
    from edge.vision.frame_source import shown_uri  # pasted into tickets: no password
    try:
        w, h = probe_camera(source)
    except Exception as exc:  # SourceError and whatever the capture backend raises
        return Check("camera", False, f"{shown_uri(source)}: {getattr(exc, 'message', exc)}",
                     str(getattr(exc, "hint", "")) or hint)
    return Check("camera", True, f"{shown_uri(source)}: {w}x{h} frame read")


def check_models(model_dir: Path | None) -> Check:
    from models.registry import ModelError, verify_models

    try:
        paths = verify_models(model_dir)
    except ModelError as exc:
        return Check("models", False, exc.message, exc.hint or "fedface-edge models fetch")
    return Check("models", True, "sha256 ok: " + ", ".join(sorted(paths)))


def _secret_files(cfg: BoxConfig) -> list[Path]:
    return [cfg.broker.key_file, cfg.federation.device_key, cfg.federation.secret_context]


def check_key_permissions(cfg: BoxConfig) -> Check:
    problems, fixes = [], []
    for path in _secret_files(cfg):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(f"{path} missing")
            continue
        if (mode := stat.S_IMODE(st.st_mode)) & 0o077:
            problems.append(f"{path} is {mode:04o}")
            fixes.append(f"chmod 600 {path}")
        if st.st_uid != os.geteuid():
            problems.append(f"{path} owned by uid {st.st_uid}, not {os.geteuid()}")
            fixes.append(f"chown {os.geteuid()} {path}")
    if problems:
        return Check("key files", False, "; ".join(problems),
                     "; ".join(fixes) or "re-run fedface-edge provision")
    return Check("key files", True, f"{len(_secret_files(cfg))} secret files 0600, owned by "
                 "this user")


def check_federation_keys(cfg: BoxConfig) -> Check:
    from federation.crypto.keys import load_secret_context, read_private_key, read_public_key
    from federation.errors import FederationError

    try:
        ctx = load_secret_context(cfg.federation.secret_context)
        read_private_key(cfg.federation.device_key)
        read_public_key(cfg.federation.aggregator_key)
    except FederationError as exc:
        return Check("federation keys", False, exc.message,
                     "re-import the key bundle: fedface-edge provision --bundle FILE")
    if ctx.key_id != cfg.federation.key_id and ctx.epoch > 0:  # a key epoch taken since
        return Check("federation keys", True, f"key {ctx.key_id} (key epoch {ctx.epoch}; "
                     f"provisioned with {cfg.federation.key_id}), signing and aggregator key")
    if ctx.key_id != cfg.federation.key_id:
        return Check("federation keys", False, f"secret context is key {ctx.key_id}, config "
                     f"says {cfg.federation.key_id}", "re-import the federation's key bundle")
    return Check("federation keys", True, f"key {ctx.key_id}, signing key and aggregator key")


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def check_certificate(cfg: BoxConfig, now: Clock = time.time) -> Check:
    from edge.federated.revocation import REPROVISION, revocation_state

    b = cfg.broker
    revoked = revocation_state(cfg.box.data_dir)
    if revoked is not None:  # signed notice, or the broker's CRL alert: not PASS (helper-57)
        return Check("certificate", False, f"REVOKED: {revoked.summary()}", REPROVISION)
    request = cfg.box.data_dir / f"{cfg.box.device_id}.request.json"
    if not Path(b.cert_file).exists():
        return Check("certificate", False, f"{b.cert_file} missing (not signed yet)",
                     f"give {request} to the operator, then "
                     "fedface-edge provision --install-reply REPLY")
    try:
        cert, ca = _load_cert(b.cert_file), _load_cert(b.ca_file)
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(Path(b.key_file).read_bytes(), password=None)
    except Exception as exc:  # unreadable, malformed, wrong issuer: all mean "re-provision"
        return Check("certificate", False, f"{b.cert_file}: {exc}",
                     "install the operator's reply again: fedface-edge provision "
                     "--install-reply REPLY")
    if cert.public_key() != key.public_key():
        return Check("certificate", False, "certificate does not match the TLS key",
                     "send the current request to the operator and install the new reply")
    days = (cert.not_valid_after_utc.timestamp() - now()) / 86400
    if days < 0:
        return Check("certificate", False, f"expired {-days:.0f} days ago",
                     "ask the operator to sign the request again")
    return Check("certificate", True, f"CN {cfg.box.device_id}, valid {days:.0f} more days")


def _tls_context(cfg: BoxConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.broker.ca_file))
    ctx.load_cert_chain(str(cfg.broker.cert_file), str(cfg.broker.key_file))
    return ctx


def _tls_probe(cfg: BoxConfig) -> str | None:
    """None if the broker completes a TLS handshake and keeps this box's certificate;
    else why not. TLS 1.3 servers reject a client certificate after the handshake, so a
    short read waits for that alert (an accepting broker sends nothing before CONNECT)."""
    from federation.transport.mqtt import parse_broker_url

    url = parse_broker_url(cfg.broker.url)
    if not url.tls:
        return "broker.url is mqtt:// (no TLS): use mqtts://"
    try:
        raw = socket.create_connection((url.host, url.port), timeout=cfg.doctor.broker_timeout_s)
    except OSError as exc:
        return f"cannot reach {url.host}:{url.port}: {exc.strerror or exc}"
    try:
        with _tls_context(cfg).wrap_socket(raw, server_hostname=url.host) as tls:
            tls.settimeout(1.5)
            try:
                if tls.recv(1) == b"":
                    return "the broker closed the connection after the TLS handshake"
            except TimeoutError:
                return None
            except ssl.SSLError as exc:
                return f"the broker refused this box's certificate ({exc.reason or exc})"
    except ssl.SSLCertVerificationError as exc:
        return f"broker certificate not trusted: {exc.verify_message}"
    except (ssl.SSLError, OSError) as exc:
        return f"TLS failed: {getattr(exc, 'reason', None) or exc}"
    finally:
        raw.close()
    return None


def broker_refusal(cfg: BoxConfig) -> tuple[str | None, bool]:
    """Why the broker does not take this box's TLS connection (None: it does), and
    whether that is its certificate's revocation, which is then recorded like the
    aggregator's signed notice (edge.federated.revocation): a box the broker's CRL names
    stops instead of reconnecting for ever (doctor, and join when it cannot connect)."""
    why = _tls_probe(cfg)
    if why is None or "certificate revoked" not in why.lower().replace("_", " "):
        return why, False
    from edge.federated.revocation import FEDERATION_DIR, record_revocation

    record_revocation(cfg.box.data_dir / FEDERATION_DIR, cfg.box.device_id, source="tls",
                      detail=why)
    return why, True


def check_broker(cfg: BoxConfig, seen_ts: list[float],
                 announced: list[RoundAnnounce] | None = None) -> Check:
    """TLS probe, then a real MQTT session; records the aggregator's signed timestamps
    into ``seen_ts`` for the clock check, and its signed announce into ``announced``."""
    hint = ("check broker.url and the network; a revoked or expired certificate needs a "
            "new one from the operator; a wrong clock breaks TLS too")
    if not Path(cfg.broker.cert_file).exists():  # said 'TLS failed: [Errno 2] ...'
        return Check("broker", False, "not tried: the box has no certificate yet",
                     "see the certificate check")
    why, revoked = broker_refusal(cfg)
    if revoked:
        from edge.federated.revocation import REPROVISION

        return Check("broker", False, f"{why}: this box was revoked by the federation",
                     REPROVISION)
    if why is not None:
        return Check("broker", False, why, hint)
    from federation import topics
    from federation.crypto.keys import read_public_key
    from federation.crypto.signing import KeyRing
    from federation.envelope import decode, verify_envelope
    from federation.messages import RoundAnnounce
    from federation.transport.mqtt import MqttTransport, TlsConfig

    got = threading.Event()

    def on_announce(topic: str, payload: bytes) -> None:
        try:
            env = decode(payload)
            seen_ts.append(float(env.ts))
            if announced is not None:
                verify_envelope(env, KeyRing({cfg.federation.aggregator_id: read_public_key(
                    cfg.federation.aggregator_key)}), fed=cfg.box.fed)
                announced.append(RoundAnnounce.from_json(env.payload))
        except Exception as exc:  # the clock check then just has fewer references
            log.debug("unreadable announce on %s: %s", topic, exc)
        got.set()

    transport = MqttTransport(
        cfg.broker.url, f"{cfg.box.device_id}-doctor", clean_start=True,
        tls=TlsConfig(cfg.broker.ca_file, cfg.broker.cert_file, cfg.broker.key_file),
        protocol=cfg.broker.protocol, reconnect_max_delay=2)
    try:
        if not transport.wait_connected(cfg.doctor.broker_timeout_s):
            return Check("broker", False, f"TLS ok but no MQTT CONNACK from {cfg.broker.url}",
                         hint)
        transport.subscribe(topics.announce(cfg.box.fed), on_announce)
        got.wait(2.0)
    finally:
        transport.close()
    # the federation key check needs the aggregator's announce: said when there is none,
    # rather than leaving that check out without a word (helper-42)
    return Check("broker", True, f"{cfg.broker.url}: TLS with the device certificate, "
                 "MQTT connected" + ("" if got.is_set() else "; no round announced yet (has "
                                     "the aggregator's serve run?): the federation key is "
                                     "checked against its announce once there is one"))


def check_clock(cfg: BoxConfig, seen_ts: list[float], now: Clock = time.time) -> Check:
    """The clock may not be behind anything signed: the certificate's notBefore, the key
    bundle's creation time, the aggregator's last announcement."""
    refs: list[tuple[str, float]] = []
    with contextlib.suppress(OSError, ValueError):
        refs.append(("certificate notBefore",
                     _load_cert(cfg.broker.cert_file).not_valid_before_utc.timestamp()))
    refs += [("aggregator announcement", ts) for ts in seen_ts]
    from edge.provision import BoxFiles

    trust = BoxFiles(cfg.box.data_dir).trust
    if trust.exists():
        refs.append(("key bundle", float(json.loads(trust.read_text())
                                        .get("bundle_created_at", 0.0))))
    if not refs:
        return Check("clock", False, "no signed time reference (no certificate, bundle or "
                     "announcement)", "provision the box first")
    what, latest = max(refs, key=lambda r: r[1])
    behind = latest - now()
    if behind > cfg.doctor.max_clock_skew_s:
        return Check("clock", False, f"{behind:.0f} s behind the {what}",
                     "enable NTP (timedatectl set-ntp true) or set the date; TLS and "
                     "round deadlines need a correct clock")
    return Check("clock", True, f"not behind the {what} (margin "
                 f"{cfg.doctor.max_clock_skew_s:.0f} s)")


def check_disk(data_dir: Path, min_free_mb: int) -> Check:
    try:
        free = shutil.disk_usage(data_dir).free // (1024 * 1024)
    except OSError as exc:
        return Check("disk", False, f"{data_dir}: {exc.strerror}", "check box.data_dir")
    if free < min_free_mb:
        return Check("disk", False, f"{free} MiB free in {data_dir}, need {min_free_mb}",
                     "free space (old logs, models) or lower doctor.min_free_disk_mb")
    return Check("disk", True, f"{free} MiB free in {data_dir}")


def check_box_data(data_dir: Path) -> Check:
    """The gallery database passes SQLite's quick check, and the model versions the box
    serves match their SHA-256 (a damaged one is skipped at load, silently to doctor)."""
    import sqlite3

    from edge.box import MODELS_DIRNAME
    from edge.gallery.files import DAMAGED_GALLERY, DB_FILENAME, data_dir_hint
    from edge.serving.versions import ModelStoreError, SwapStore

    gallery = data_dir / DB_FILENAME
    if data_dir.is_dir() and not os.access(data_dir, os.W_OK | os.X_OK):  # helper-58
        return Check("box data", False, f"data directory {data_dir} is not writable (a "
                     "read-only card or mount?)", data_dir_hint(data_dir))
    if gallery.exists():
        try:
            db = sqlite3.connect(f"{gallery.resolve().as_uri()}?mode=ro", uri=True)
            try:
                verdict = str(db.execute("PRAGMA quick_check").fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error as exc:
            # only SQLite's own words mean damage: on a full disk it could not open the
            # file ('disk I/O error'), and doctor told the technician to move it aside
            hint = data_dir_hint(data_dir, exc)
            if hint != DAMAGED_GALLERY:
                return Check("box data", False, f"{gallery} cannot be read: {exc}", hint)
            verdict = str(exc)
        if verdict != "ok":
            return Check("box data", False, f"{gallery} is damaged: {verdict[:200]}",
                         DAMAGED_GALLERY)
    try:
        damaged = SwapStore(data_dir / MODELS_DIRNAME).damaged_files()
    except ModelStoreError as exc:  # the pointer itself
        damaged = {"": str(exc)}
    if damaged:
        return Check("box data", False, next(iter(damaged.values())), "the box serves the "
                     "previous model meanwhile; join fetches the federation's current result "
                     "again (fedface-edge model rollback serves the previous one for good)")
    return Check("box data", True, "gallery database and served model files intact")


def check_announced_key(cfg: BoxConfig, announced: list[RoundAnnounce]) -> Check | None:
    """The federation key the aggregator's signed announce names against the box's: a
    box provisioned from a bundle of another key of the same federation passed every
    check and then sat out every round (helper-38). None: no announce was read."""
    from federation.crypto.keys import load_secret_context

    if not announced or not announced[-1].key_id:
        return None
    ann = announced[-1]
    try:
        mine = load_secret_context(cfg.federation.secret_context)
    except Exception:  # check_federation_keys says what is wrong with the file
        return None
    if ann.key_id == mine.key_id:
        return Check("federation key", True, f"rounds are announced under this box's key "
                     f"{mine.key_id} (epoch {mine.epoch})")
    if ann.key_epoch > mine.epoch:
        return Check("federation key", True, f"rounds are announced under key epoch "
                     f"{ann.key_epoch}; this box is on {mine.epoch} and takes the new key "
                     "when it is sealed to it (join)")
    return Check("federation key", False, f"rounds are announced under key {ann.key_id} "
                 f"(epoch {ann.key_epoch}); this box holds key {mine.key_id} (epoch "
                 f"{mine.epoch}): its bundle is of another key", "re-import the "
                 "federation's current key bundle: fedface-edge provision --bundle FILE (ask "
                 "the operator: fedface-aggregator keys bundle)")


def run_checks(cfg: BoxConfig, now: Clock = time.time) -> list[Check]:
    seen_ts: list[float] = []
    announced: list[RoundAnnounce] = []
    checks = [check_camera(cfg.camera.source), check_models(cfg.box.model_dir),
              check_key_permissions(cfg), check_federation_keys(cfg),
              check_certificate(cfg, now), check_broker(cfg, seen_ts, announced)]
    if checks[-2].ok and not checks[-1].ok:  # a revocation the broker's refusal recorded
        checks[-2] = check_certificate(cfg, now)
    if (key_in_use := check_announced_key(cfg, announced)) is not None:
        checks.append(key_in_use)
    checks.append(check_clock(cfg, seen_ts, now))
    return [*checks, check_disk(cfg.box.data_dir, cfg.doctor.min_free_disk_mb),
            check_box_data(cfg.box.data_dir)]


def run_standalone_checks(data_dir: Path, model_dir: Path | None,
                          source: str | None) -> list[Check]:
    """A box in no federation (never provisioned; it had no checks: helper-47): those
    above it can have, the camera when given (each of its commands takes --source)."""
    if data_dir.exists():
        disk = check_disk(data_dir, DoctorSection().min_free_disk_mb)
        data = check_box_data(data_dir)
    else:  # nothing enrolled yet: the first enrolment creates it (0700)
        parent = next(p for p in data_dir.parents if p.exists())
        disk = check_disk(parent, DoctorSection().min_free_disk_mb)
        disk = replace(disk, detail=f"{disk.detail} (holds {data_dir}, not created yet: "
                                    "the first enrolment creates it)")
        data = Check("box data", True, "none yet: nothing enrolled")
    checks = [check_models(model_dir), disk, data]
    if source is not None:
        checks.insert(0, check_camera(source, hint="check --source"))
    return checks
