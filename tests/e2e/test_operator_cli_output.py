"""Issue 13.10: the operator CLI's output. A closed pipe ends quietly, times are
ISO-8601 (raw in --json), list commands have a header or say they are empty, --help
lists every exit code, and a box's request shows the same fingerprints on the box and
at the operator."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from aggregator.cli.common import EXIT_CODES
from aggregator.cli.main import app
from aggregator.state.store import Store
from federation.crypto.keys import create_federation_keys, read_private_key, write_public_key
from federation.crypto.signing import generate_signing_key
from tests.support.broker import MosquittoBroker
from tests.support.provisioning import FED, edge, start_federation

REPO = Path(__file__).resolve().parents[2]
OPENED = 1_700_000_000.0  # 2023-11-14T22:13:20Z
runner = CliRunner()


@pytest.fixture(scope="module")
def public_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_federation_keys(tmp_path_factory.mktemp("keys")).public_context


@pytest.fixture
def state(tmp_path: Path, public_context: Path) -> Path:
    s = tmp_path / "state"
    r = runner.invoke(app, ["init", "--fed", "f1", "--state", str(s), "--public-context",
                            str(public_context)])
    assert r.exit_code == 0, r.output
    return s


def cli(state: Path, *args: str) -> tuple[int, str]:
    r = runner.invoke(app, [*args, "--state", str(state)])
    return r.exit_code, r.output


def add_round(state: Path) -> None:
    store = Store(state)
    try:
        with store.transaction():
            store.insert_round(1, "base", OPENED, OPENED + 300, 2, {"round": 1})
    finally:
        store.close()


@pytest.mark.parametrize("command", [["status", "--no-broker"], ["devices", "list"]])
def test_a_reader_that_closes_the_pipe_ends_it_quietly(state: Path, command: list[str]) -> None:
    """`fedface-aggregator status | head`: the reader is gone before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "aggregator.cli", *command, "--state",
                               str(state)], stdout=write_end, stderr=subprocess.PIPE,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              timeout=120, check=False)
    finally:
        os.close(write_end)
    assert proc.stderr.decode() == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, as a shell reports it


def test_rounds_show_prints_iso_times_and_json_keeps_unix_times(state: Path) -> None:
    add_round(state)
    code, out = cli(state, "rounds", "show", "1")
    assert code == 0, out
    local = dt.datetime.fromtimestamp(OPENED).astimezone().isoformat(timespec="seconds")
    assert f"opened_at: {local}\n" in out
    assert dt.datetime.fromisoformat(local).timestamp() == OPENED  # offset included
    assert str(int(OPENED)) not in out
    code, out = cli(state, "rounds", "show", "1", "--json")
    info = json.loads(out)
    assert info["opened_at"] == OPENED and info["deadline"] == OPENED + 300


def test_empty_lists_say_so(state: Path) -> None:
    for args, says in ((("devices", "list"), "no devices registered"),
                       (("rounds", "list"), "no rounds yet"),
                       (("models", "list"), "no published version yet"),
                       (("regions", "list"), "no regions registered")):
        code, out = cli(state, *args)
        assert code == 0 and out.count("\n") == 1 and says in out, (args, out)
    code, out = cli(state, "status", "--no-broker")
    assert code == 0 and "no devices registered" in out


def test_lists_start_with_a_header_row(state: Path, tmp_path: Path) -> None:
    pub = write_public_key(tmp_path / "box1.pub", generate_signing_key().public_key())
    assert cli(state, "devices", "add", "box1", "--public-key", str(pub))[0] == 0
    add_round(state)
    code, out = cli(state, "devices", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["DEVICE", "STATE", "ADDED", "SIGNING", "KEY",
                                              "SHA-256"]
    assert lines[1].split()[:2] == ["box1", "active"] and len(lines) == 2
    code, out = cli(state, "rounds", "list")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["ROUND", "STATUS"] and lines[1].split()[:2] == ["1", "open"]


def test_help_lists_every_exit_code() -> None:
    out = " ".join(runner.invoke(app, ["--help"]).output.split())  # rich wraps lines
    assert "Exit codes:" in out
    for code, what in EXIT_CODES.items():
        assert f"{code} {what}" in out
    assert set(EXIT_CODES) == {0, 1, 2, 141}  # what one_line_errors and Python can exit with


def _groups(digest: bytes) -> str:
    h = digest.hex()
    return " ".join(h[i:i + 4] for i in range(0, 64, 4))


@pytest.mark.mosquitto
def test_box_and_operator_print_the_same_request_fingerprints(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker], lfw_dir: Path) -> None:
    fed = start_federation(tmp_path, mosquitto_factory)
    box = tmp_path / "box-f"
    (tmp_path / "kiosk-pw").write_text("kiosk staff passphrase\n")
    code, box_out = edge(box, "provision", "--non-interactive", "--device-id", "box-f",
                         "--bundle", str(fed.bundle), "--passphrase-file",
                         str(tmp_path / "passphrase"), "--camera",
                         f"dir:{lfw_dir / 'Aaron_Peirsol'}", "--kiosk-password-file",
                         str(tmp_path / "kiosk-pw"))
    assert code == 0, box_out
    reply = tmp_path / "box-f.reply.json"
    code, op_out = fed.aggregator("devices", "add", "--request",
                                  str(box / "box-f.request.json"), "--reply", str(reply),
                                  "--state", str(fed.state))
    assert code == 0, op_out

    def prints(out: str) -> list[str]:
        return [line.strip() for line in out.splitlines() if "SHA-256:" in line]

    # computed here from the box's own key files and the issued certificate
    signing = read_private_key(box / "keys/device.key").public_key().public_bytes_raw()
    cert = x509.load_pem_x509_certificate(json.loads(reply.read_text())["cert"].encode())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = [f"signing key (Ed25519) SHA-256: {_groups(hashlib.sha256(signing).digest())}",
                f"TLS key (CSR/certificate) SHA-256: {_groups(hashlib.sha256(spki).digest())}"]
    assert prints(box_out) == expected
    assert prints(op_out) == expected


@pytest.mark.mosquitto
def test_provisioning_mistakes_are_named_and_leave_nothing_behind(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker], lfw_dir: Path) -> None:
    """A technician's typos (a walkthrough): a wrong bundle passphrase said `internal
    error ... report it` (exit 1); a kiosk password too short was refused only after the
    box's keys, TLS key and certificate request were written."""
    fed = start_federation(tmp_path, mosquitto_factory)
    (tmp_path / "wrong").write_text("not the passphrase\n")
    (tmp_path / "short").write_text("short\n")
    (tmp_path / "kiosk-pw").write_text("kiosk staff passphrase\n")

    def provision(box: Path, passphrase: str, kiosk: str) -> tuple[int, str]:
        return edge(box, "provision", "--non-interactive", "--device-id", box.name,
                    "--bundle", str(fed.bundle), "--passphrase-file", str(tmp_path / passphrase),
                    "--camera", f"dir:{lfw_dir / 'Aaron_Peirsol'}", "--kiosk-password-file",
                    str(tmp_path / kiosk))

    code, out = provision(tmp_path / "box-g", "wrong", "kiosk-pw")
    assert code == 8, out
    assert "cannot open the key bundle: wrong passphrase" in out and "internal" not in out
    assert "hint: check the passphrase" in out
    code, out = provision(tmp_path / "box-h", "passphrase", "short")
    assert code == 7 and "at least 8 characters" in out, out
    left = sorted(p.name for p in (tmp_path / "box-h").rglob("*") if p.is_file()) \
        if (tmp_path / "box-h").exists() else []
    assert not [n for n in left if n.endswith((".key", ".request.json", ".tenseal"))], left
    code, out = provision(tmp_path / "box-h", "passphrase", "kiosk-pw")  # then as it should
    assert code == 0 and "kiosk password set" in out, out
    # a bundle of another key of the same federation (made before a rotation, or after
    # it for another box): the hint said "to move the box to another federation, remove
    # its keys", which left a box with a new signing key the aggregator refused
    other = create_federation_keys(tmp_path / "another-epoch")
    code, out = fed.aggregator(
        "keys", "bundle", "--secret-context", str(other.secret_context), "--aggregator-key",
        str(fed.state / "aggregator.pub"), "--ca-cert", str(fed.ca_dir / "ca.crt"), "--fed",
        FED, "--out", str(tmp_path / "other.ffkb"), "--passphrase-file",
        str(tmp_path / "passphrase"), "--broker-url", fed.url)
    assert code == 0, out
    # the bundle names the key it carries, and the federation's own another one
    assert f"of federation key {other.key_id} (key epoch 0)" in out, out
    code, out = fed.aggregator("keys", "bundle", "--secret-context", str(fed.secret_context),
                               "--aggregator-key", str(fed.state / "aggregator.pub"),
                               "--ca-cert", str(fed.ca_dir / "ca.crt"), "--fed", FED, "--out",
                               str(tmp_path / "again.ffkb"), "--passphrase-file",
                               str(tmp_path / "passphrase"))
    assert code == 0 and "of federation key" in out and other.key_id not in out, out
    right_bundle, fed.bundle = fed.bundle, tmp_path / "other.ffkb"
    code, out = provision(tmp_path / "box-h", "passphrase", "kiosk-pw")
    assert code == 8 and "another key epoch of the same federation" in out, out
    # box-h has no certificate: nothing of it is registered, so the same id will do (the
    # hint said "a new device id", which the docs contradicted: helper-42)
    assert "no certificate yet" in out and "under the same device id if" in out, out
    assert "another federation" not in out
    # a new box provisioned from that bundle: passed doctor and sat out every round, and
    # then needed a new device id; now `devices add` refuses it before registering it
    code, out = provision(tmp_path / "box-k", "passphrase", "kiosk-pw")
    assert code == 0, out
    request = tmp_path / "box-k" / "box-k.request.json"
    code, out = fed.aggregator("devices", "add", "--request", str(request), "--reply",
                               str(tmp_path / "box-k.reply.json"), "--state", str(fed.state))
    assert code != 0 and f"provisioned with federation key {other.key_id} epoch 0" in out, out
    assert "its bundle is of another key" in out and "nothing was registered" in out, out
    assert not (tmp_path / "box-k.reply.json").exists()
    code, out = fed.aggregator("devices", "list", "--state", str(fed.state))
    assert code == 0 and "box-k" not in out, out
    # provisioned again from the current bundle in a fresh data dir: the same id registers
    fed.bundle = right_bundle
    code, out = provision(tmp_path / "box-k2" / "box-k", "passphrase", "kiosk-pw")
    assert code == 0, out
    code, out = fed.aggregator("devices", "add", "--request",
                               str(tmp_path / "box-k2" / "box-k" / "box-k.request.json"),
                               "--reply", str(tmp_path / "box-k.reply.json"), "--state",
                               str(fed.state))
    assert code == 0 and "added box-k: certificate signed" in out and "note:" not in out, out
    code, out = edge(tmp_path / "box-k2" / "box-k", "provision", "--install-reply",
                     str(tmp_path / "box-k.reply.json"))
    assert code == 0, out
    fed.bundle = tmp_path / "other.ffkb"  # a registered box: its key epochs come by join
    code, out = provision(tmp_path / "box-k2" / "box-k", "passphrase", "kiosk-pw")
    assert code == 8 and "takes each new key epoch from the aggregator" in out, out
    assert "a new device id" in out and "no certificate yet" not in out, out


@pytest.mark.mosquitto
def test_a_relative_data_dir_is_written_as_absolute_paths(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker], lfw_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The walkthrough's `--data-dir box-a` wrote data_dir = "box-a" and cert paths under
    it into edge.toml: the same box checked from another directory had no certificate
    and doctor said to provision again."""
    fed = start_federation(tmp_path, mosquitto_factory)
    (tmp_path / "kiosk-pw").write_text("kiosk staff passphrase\n")
    monkeypatch.chdir(tmp_path)
    code, out = edge(Path("box-rel"), "provision", "--non-interactive", "--device-id",
                     "box-rel", "--bundle", str(fed.bundle), "--passphrase-file",
                     str(tmp_path / "passphrase"), "--camera",
                     f"dir:{lfw_dir / 'Aaron_Peirsol'}", "--kiosk-password-file",
                     str(tmp_path / "kiosk-pw"))
    assert code == 0, out
    config = (tmp_path / "box-rel" / "edge.toml").read_text()
    assert f'data_dir = "{tmp_path / "box-rel"}"' in config, config
    assert f'"{tmp_path / "box-rel" / "tls" / "device-tls.key"}"' in config, config
    monkeypatch.chdir("/")
    code, out = edge(tmp_path / "box-rel", "status")
    # its own files found (the request is not signed yet: the certificate's absolute path)
    assert "kiosk       password set" in out, out
    assert f"{tmp_path / 'box-rel' / 'tls' / 'device-tls.crt'} missing (not signed" in out


def test_status_counts_failed_rounds_apart_from_rejected_updates(state: Path) -> None:
    """helper-42: two rounds failed (a key rotation, then a deadline) showed as
    `rejected.round_failed: 2` among the refused updates, though no update was refused."""
    store = Store(state)
    try:
        store.record_rejection(1, None, "round_failed", "key rotated")
        store.record_rejection(2, "box-x", "unknown_device", "device 'box-x' is not registered")
    finally:
        store.close()
    code, out = cli(state, "status", "--no-broker")
    assert code == 0, out
    assert "counts since init (rejected.<reason>: updates or messages refused" in out, out
    assert "  rounds failed: 1" in out and "  rejected.unknown_device: 1" in out, out
    assert "round_failed" not in out, out


def test_a_revocation_that_leaves_fewer_boxes_than_the_quorum_says_so(
        state: Path, tmp_path: Path) -> None:
    """helper-43: a region left with one box of its quorum 2 could never close a round
    again, and nothing said so."""
    for box in ("box1", "box2", "box3"):
        pub = write_public_key(tmp_path / f"{box}.pub", generate_signing_key().public_key())
        assert cli(state, "devices", "add", box, "--public-key", str(pub))[0] == 0
    add_round(state)  # quorum 2
    code, out = cli(state, "devices", "revoke", "box1")
    assert code == 0 and "WARNING" not in out, out  # two left: the quorum holds
    code, out = cli(state, "devices", "revoke", "box2")
    assert code == 0, out
    assert "WARNING: 1 active device(s) left, fewer than the quorum of 2 updates round 1 " \
        "needs" in out, out
