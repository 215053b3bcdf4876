"""`fedface-edge provision` then `doctor` against a real TLS Mosquitto: all green, and each
failure class of `doctor` shown by breaking exactly one thing."""

from __future__ import annotations

import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config import load_box_config
from edge.doctor import check_clock, run_checks
from tests.support.broker import MosquittoBroker
from tests.support.provisioning import (
    Federation,
    edge,
    edit_config,
    model_dir,
    provision_box,
    start_federation,
)

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def fed(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> Federation:
    return start_federation(tmp_path, mosquitto_factory)


@pytest.fixture
def camera(lfw_dir: Path) -> str:
    return f"dir:{lfw_dir / 'Aaron_Peirsol'}"


def doctor_lines(box: Path) -> tuple[int, dict[str, str]]:
    code, out = edge(box, "doctor")
    lines = {}
    for line in out.splitlines():
        if line.startswith(("PASS", "FAIL")):
            verdict, name = line[:4], line[6:22].strip()
            lines[name] = line if verdict == "FAIL" else "PASS"
    return code, lines


def failing(box: Path) -> dict[str, str]:
    code, lines = doctor_lines(box)
    assert code == 9, lines
    return {k: v for k, v in lines.items() if v != "PASS"}


def test_provision_then_doctor_all_green(fed: Federation, camera: str) -> None:
    box = provision_box(fed, "box-1", camera)
    for name in ("tls/device-tls.key", "keys/device.key", "keys/federation-secret.tenseal",
                 "kiosk/password.hash"):
        assert stat.S_IMODE((box / name).stat().st_mode) == 0o600, name
    cfg_text = (box / "edge.toml").read_text()
    assert "correct horse" not in cfg_text and "kiosk staff" not in cfg_text  # no secrets
    code, out = edge(box, "doctor")
    assert code == 0, out
    names = [ln[6:22].strip() for ln in out.splitlines() if ln.startswith("PASS")]
    assert names == ["camera", "models", "key files", "federation keys", "certificate",
                     "broker", "clock", "disk", "box data"]
    assert "FAIL" not in out
    # no serve has run: the federation key check cannot be made, and doctor says so
    assert "no round announced yet (has the aggregator's serve run?)" in out, out
    code, out = edge(box, "status", "--json")
    assert code == 0 and '"device_id": "box-1"' in out and '"kiosk_password_set": true' in out


def test_status_shows_the_key_a_rotation_installed(fed: Federation, camera: str) -> None:
    """A key epoch replaces the secret context, not the config's key_id: status and doctor
    name the key the box holds now (they showed the provisioning key's id before)."""
    from federation.crypto.ckks import new_secret_context, secret_context_bytes
    from federation.crypto.keys import write_secret_file

    box = provision_box(fed, "box-4", camera)
    provisioned = load_box_config(box / "edge.toml").federation.key_id
    code, out = edge(box, "status")
    assert code == 0 and f"key         {provisioned}\n" in out, out
    epoch = new_secret_context(epoch=1)  # what edge.federated.epochs installs
    write_secret_file(box / "keys" / "federation-secret.tenseal",
                      secret_context_bytes(epoch), overwrite=True)
    code, out = edge(box, "status")
    assert code == 0, out
    assert f"key         {epoch.key_id} (key epoch 1; provisioned with {provisioned})" in out
    assert f"key {epoch.key_id} (key epoch 1" in edge(box, "doctor")[1]


def test_doctor_before_the_certificate_is_installed(fed: Federation, camera: str) -> None:
    box = provision_box(fed, "box-2", camera, sign=False)
    bad = failing(box)
    assert set(bad) == {"certificate", "broker"}, bad
    assert "no certificate yet" in bad["broker"], bad  # was 'TLS failed: [Errno 2] ...'
    assert "box-2.request.json" in edge(box, "doctor")[1]  # the hint says what to hand over


def test_doctor_camera_failure(fed: Federation, camera: str, tmp_path: Path) -> None:
    box = provision_box(fed, "box-3", camera)
    edit_config(box, "camera", "source", str(tmp_path / "no-such-camera.mp4"))
    assert set(failing(box)) == {"camera"}


def test_doctor_model_hash_failure(fed: Federation, camera: str, tmp_path: Path) -> None:
    box = provision_box(fed, "box-4", camera)
    broken = tmp_path / "models"
    shutil.copytree(model_dir(), broken)
    yunet = next(broken.glob("face_detection_yunet*.onnx"))
    data = bytearray(yunet.read_bytes())
    data[1000] ^= 0xFF
    yunet.write_bytes(bytes(data))
    edit_config(box, "box", "model_dir", str(broken))
    bad = failing(box)
    assert set(bad) == {"models"}, bad


def test_doctor_key_permission_failure(fed: Federation, camera: str) -> None:
    box = provision_box(fed, "box-5", camera)
    (box / "tls/device-tls.key").chmod(0o644)
    bad = failing(box)
    assert set(bad) == {"key files"}, bad
    assert "chmod 600" in edge(box, "doctor")[1]


def test_doctor_federation_key_mismatch(fed: Federation, camera: str) -> None:
    box = provision_box(fed, "box-6", camera)
    edit_config(box, "federation", "key_id", "0" * 32)
    assert set(failing(box)) == {"federation keys"}


def test_doctor_broker_unreachable_and_revoked(fed: Federation, camera: str) -> None:
    box = provision_box(fed, "box-7", camera)
    code, out = fed.aggregator("devices", "revoke", "box-7", "--state", str(fed.state))
    assert code == 0, out
    assert "SIGHUP" in out
    deadline = time.monotonic() + 10
    bad: dict[str, str] = {}
    while time.monotonic() < deadline and "broker" not in bad:
        bad = failing(box) if doctor_lines(box)[0] else {}
    # the broker's refusal recorded the revocation: the certificate check says so too
    assert set(bad) == {"broker", "certificate"}, bad
    assert "refused this box's certificate" in bad["broker"]
    assert "REVOKED" in bad["certificate"], bad
    fed.broker.stop()
    bad = failing(box)
    assert set(bad) == {"broker", "certificate"} and "cannot reach" in bad["broker"], bad


def test_doctor_disk_failure(fed: Federation, camera: str) -> None:
    box = provision_box(fed, "box-8", camera)
    edit_config(box, "doctor", "min_free_disk_mb", 10**12)
    bad = failing(box)
    assert set(bad) == {"disk"}, bad


def test_doctor_clock_behind(fed: Federation, camera: str) -> None:
    # The clock is injected: a test cannot set the machine's clock back. Everything else
    # is the real provisioned box.
    box = provision_box(fed, "box-9", camera)
    cfg = load_box_config(box / "edge.toml")
    assert check_clock(cfg, [], now=time.time).ok
    late = check_clock(cfg, [], now=lambda: time.time() - 3600)
    assert not late.ok and "behind" in late.detail and "ntp" in late.hint.lower()
    results = {c.name: c.ok for c in run_checks(cfg, now=lambda: time.time() - 3600)}
    assert [n for n, ok in results.items() if not ok] == ["clock"]


def test_doctor_checks_a_box_in_no_federation(tmp_path: Path, camera: str,
                                              lfw_dir: Path) -> None:
    """helper-47: a site's box that recognises on its own (never provisioned) had no
    health check: doctor stopped at 'no box config'. It gets the checks it can have."""
    from edge.gallery.files import DB_FILENAME

    box = tmp_path / "standalone"
    code, out = edge(box, "doctor")  # never used: its data dir is not there yet
    assert code == 0, out
    assert [ln[:22].split() for ln in out.splitlines() if ln[:4] in ("PASS", "FAIL")] == [
        ["PASS", "models"], ["PASS", "disk"], ["PASS", "box", "data"]], out
    assert "not created yet: the first enrolment creates it" in out
    assert "box data         none yet: nothing enrolled" in out
    assert "not provisioned" in out and "federation checks skipped" in out
    photos = sorted((lfw_dir / "Tony_Blair").glob("*.jpg"))[:2]
    assert edge(box, "enroll", "Tony Blair", *map(str, photos))[0] == 0
    code, out = edge(box, "doctor", "--source", camera)
    assert code == 0 and f"PASS  camera           {camera}: " in out, out
    code, out = edge(box, "doctor", "--source", str(tmp_path / "no-such-camera.mp4"))
    assert code == 9 and "FAIL  camera" in out and "1 check(s) failed: camera" in out, out
    assert out.count("check the path") == 1, out  # the hint on its own line only
    gallery = box / DB_FILENAME
    data = bytearray(gallery.read_bytes())
    data[4096:4096 + 4096] = b"\xff" * 4096  # a damaged page
    gallery.write_bytes(bytes(data))
    code, out = edge(box, "doctor")
    assert code == 9 and "FAIL  box data" in out and "is damaged" in out, out


def test_doctor_with_a_config_file_that_is_not_there_is_one_fail_line(tmp_path: Path) -> None:
    code, out = edge(tmp_path / "empty", "doctor", "--config", str(tmp_path / "edge.toml"))
    assert code == 9
    assert out.count("FAIL") == 1 and "no box config" in out and "provision" in out
    assert out.count("provision the box first") == 1, out  # the hint once, on its line


def test_doctor_names_a_damaged_gallery_and_model_file(fed: Federation, camera: str,
                                                       lfw_dir: Path) -> None:
    """A gallery database with a damaged page and a truncated model file of the served
    version: every check passed (a walkthrough's), while identify failed with a hint to
    choose a writable data directory."""
    import hashlib
    import json

    from edge.gallery.files import DB_FILENAME

    box = provision_box(fed, "box-10", camera)
    photos = sorted((lfw_dir / "Tony_Blair").glob("*.jpg"))[:3]
    code, out = edge(box, "enroll", "Tony Blair", *map(str, photos))
    assert code == 0, out
    models = box / "models"
    models.mkdir(exist_ok=True)
    weights = models / "sface-fed-round-7.weights.npz"
    weights.write_bytes(b"the first bytes of a model file")
    (models / "current.json").write_text(json.dumps({
        "version": "round-7", "tag": "round-7", "model_file": weights.name,
        "sha256": hashlib.sha256(b"a whole model file").hexdigest(), "since": 1.0,
        "reason": "federated round result", "previous": None}))
    bad = failing(box)
    assert set(bad) == {"box data"} and "does not match the SHA-256" in bad["box data"], bad
    # model status says so too (it showed round-7 as served, nothing more)
    code, out = edge(box, "model", "status")
    assert code == 0, out
    current = out.splitlines().index(next(line for line in out.splitlines()
                                          if line.startswith("current   round-7")))
    damaged = out.splitlines()[current + 1]
    assert damaged.startswith("  DAMAGED: ") and "does not match the SHA-256" in damaged, out
    assert "serves the version before it" in damaged, out
    code, out = edge(box, "model", "status", "--json")
    assert code == 0 and list(json.loads(out)["damaged"]) == ["round-7"], out
    (models / "current.json").unlink()
    gallery = box / DB_FILENAME
    data = bytearray(gallery.read_bytes())
    data[4096:4096 + 4096] = b"\xff" * 4096  # a damaged page (of the crops table)
    gallery.write_bytes(bytes(data))
    bad = failing(box)
    assert set(bad) == {"box data"} and "is damaged" in bad["box data"], bad
    code, out = edge(box, "identify", str(photos[0]))
    assert code == 5, out
    assert "writable data directory" not in out and "damaged" in out, out


def test_doctor_compares_the_announced_key_with_the_box_s(fed: Federation, camera: str) -> None:
    """A box provisioned from a bundle of another key of the same federation passed
    every check and then sat every round out (`old_epoch`)."""
    from edge.doctor import check_announced_key
    from federation.crypto.keys import load_secret_context
    from federation.messages import OPEN, RoundAnnounce

    box = provision_box(fed, "box-11", camera)
    cfg = load_box_config(box / "edge.toml")
    mine = load_secret_context(cfg.federation.secret_context)

    def announce(key_id: str, epoch: int) -> RoundAnnounce:
        return RoundAnnounce(3, "round-2", OPEN, time.time() + 60, 2, 64.0, 65536,
                             key_id=key_id, key_epoch=epoch)

    assert check_announced_key(cfg, []) is None  # no aggregator heard: nothing to say
    same = check_announced_key(cfg, [announce(mine.key_id, mine.epoch)])
    assert same is not None and same.ok
    newer = check_announced_key(cfg, [announce("1" * 32, mine.epoch + 1)])
    assert newer is not None and newer.ok and "sealed to it" in newer.detail
    other = check_announced_key(cfg, [announce("2" * 32, mine.epoch)])
    assert other is not None and not other.ok
    assert "another key" in other.detail and "provision --bundle" in other.hint


def test_a_box_that_lost_its_config_is_told_how_to_write_it_again(
        fed: Federation, camera: str) -> None:
    """edge.toml deleted on a signed box: the hint said 'provision the box first', as for
    a new one. Provisioning again with the same id and bundle keeps its keys and
    certificate and writes the config; every local check passes again."""
    box = provision_box(fed, "box-12", camera)
    cert = (box / "tls" / "device-tls.crt").read_bytes()
    (box / "edge.toml").unlink()
    code, out = edge(box, "doctor")
    assert code == 9 and "holds a provisioned box's keys" in out, out
    assert "--device-id and --bundle" in out, out
    code, out = edge(box, "provision", "--non-interactive", "--device-id", "box-12",
                     "--bundle", str(fed.bundle), "--passphrase-file",
                     str(fed.root / "passphrase"), "--camera", camera,
                     "--kiosk-password-file", str(fed.root / "kiosk-pw"))
    assert code == 0, out
    assert (box / "tls" / "device-tls.crt").read_bytes() == cert
    _, lines = doctor_lines(box)
    assert lines["certificate"] == "PASS" and lines["federation keys"] == "PASS", lines
