"""One settings resolution for every command (issue 13.4): option, then the config file,
then the environment, then the default (edge.config.resolve_settings)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config import CONFIG_NAME, ConfigError, resolve_settings
from edge.federated.revocation import revocation_state
from edge.gallery.store import DB_FILENAME
from tests.support.broker import MosquittoBroker, free_port
from tests.support.provisioning import edit_config, provision_box, start_federation

EDGE = str(Path(sys.executable).parent / "fedface-edge")


def edge_cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """``fedface-edge ARGS`` in a subprocess, with ``env`` added and no FEDFACE_CONFIG."""
    full = {k: v for k, v in os.environ.items() if k != "FEDFACE_CONFIG"} | env
    return subprocess.run([EDGE, *args], env=full, capture_output=True, text=True,
                          timeout=timeout)


def join_until(args: list[str], env: dict[str, str], log: Path, text: str,
               timeout: float) -> str:
    """Run ``fedface-edge ARGS`` until its output says ``text`` (it must not exit first),
    then stop it; returns the output."""
    with log.open("wb") as out:
        proc = subprocess.Popen([EDGE, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while text not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(30)
    return log.read_text(errors="replace")


def provisioned_config(root: Path, data_dir: Path, threads: int = 3) -> Path:
    """A box config as `provision` writes it (only the sections' required keys)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "box.toml"
    path.write_text(f"""
[box]
device_id = "box-1"
fed = "fed"
data_dir = "{data_dir}"
threads = {threads}
match_threshold = 0.5
[camera]
source = "dir:frames"
[broker]
url = "mqtts://localhost:8883"
ca_file = "{root}/ca.crt"
cert_file = "{root}/box.crt"
key_file = "{root}/box.key"
[federation]
key_id = "k"
secret_context = "{root}/s.tenseal"
device_key = "{root}/d.key"
aggregator_key = "{root}/a.pub"
""")
    return path


def test_option_beats_file_beats_env_beats_default(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = provisioned_config(tmp_path / "etc", tmp_path / "from-file")
    monkeypatch.setenv("FEDFACE_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.delenv("FEDFACE_CONFIG", raising=False)
    settings, cfg, path = resolve_settings({"threads": None}, config)
    assert cfg is not None and path == config
    assert settings.data_dir == tmp_path / "from-file"  # the file beats the environment
    assert settings.threads == 3 and settings.match_threshold == 0.5
    settings, _, _ = resolve_settings({"threads": 2, "data_dir": tmp_path / "opt"}, config)
    assert settings.threads == 2 and settings.data_dir == tmp_path / "opt"  # options win
    monkeypatch.setenv("FEDFACE_CONFIG", str(config))  # the file named by the environment
    assert resolve_settings({})[0].data_dir == tmp_path / "from-file"
    monkeypatch.delenv("FEDFACE_CONFIG")
    settings, cfg, path = resolve_settings({})  # not provisioned: env, then defaults
    assert cfg is None and settings.data_dir == tmp_path / "from-env"
    assert path == tmp_path / "from-env" / CONFIG_NAME and settings.threads == 1


def test_the_data_dirs_own_config_is_found(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDFACE_CONFIG", raising=False)
    data = tmp_path / "box"
    data.mkdir()
    (data / CONFIG_NAME).write_text(
        provisioned_config(tmp_path / "etc", data, threads=4).read_text())
    settings, cfg, _ = resolve_settings({"data_dir": data})
    assert cfg is not None and settings.threads == 4


def test_a_named_config_not_written_yet_leaves_the_box_unprovisioned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FEDFACE_CONFIG may name the file `provision` is about to write: every command
    still runs; those that need the config say it is missing."""
    monkeypatch.setenv("FEDFACE_CONFIG", str(tmp_path / "new.toml"))
    settings, cfg, path = resolve_settings({"data_dir": tmp_path / "box"})
    assert cfg is None and path == tmp_path / "new.toml"
    assert settings.data_dir == tmp_path / "box"
    env = {"FEDFACE_CONFIG": str(tmp_path / "new.toml"),
           "FEDFACE_DATA_DIR": str(tmp_path / "box")}
    out = edge_cli("status", **env)  # a kiosk on its own: what it has, not an error
    assert out.returncode == 0, out.stderr
    assert f"not provisioned (no {tmp_path / 'new.toml'})" in out.stdout, out.stdout
    assert "kiosk       password NOT set" in out.stdout
    assert not (tmp_path / "box").exists()  # looking is not creating
    out = edge_cli("status", "--config", str(tmp_path / "new.toml"), **env)
    assert out.returncode == 7 and "no box config at" in out.stderr, out.stderr
    with pytest.raises(ConfigError, match="invalid"):  # a broken file is still an error
        (tmp_path / "bad.toml").write_text("[box\n")
        resolve_settings({}, tmp_path / "bad.toml")


@pytest.mark.mosquitto
def test_join_with_config_uses_the_files_data_dir(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker],
        lfw_dir: Path) -> None:
    """Before the fix `join --config FILE` opened (and created) the default data dir's
    gallery, not the one the file names: the box federated on an empty gallery."""
    fed = start_federation(tmp_path, mosquitto_factory)
    box = provision_box(fed, "box-cfg", f"dir:{lfw_dir / 'Tony_Blair'}")
    stray = tmp_path / "stray-default"
    env = dict(os.environ, FEDFACE_DATA_DIR=str(stray), HOME=str(tmp_path / "home"))
    env.pop("FEDFACE_CONFIG", None)
    join_until(["join", "--config", str(box / CONFIG_NAME), "--part", "embed_bn"], env,
               tmp_path / "join.log", "joining federation", 120)
    assert not stray.exists()  # nothing read or created outside the configured data dir
    assert (box / "federation").is_dir() and (box / DB_FILENAME).exists()


@pytest.mark.mosquitto
def test_join_says_when_the_broker_does_not_accept_the_box(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker],
        lfw_dir: Path) -> None:
    """A wrong broker port in edge.toml: join printed 'joined federation ...' and then
    nothing, -v or not (a walkthrough waited 90 s). It now says so, and keeps retrying."""
    fed = start_federation(tmp_path, mosquitto_factory)
    box = provision_box(fed, "box-off", f"dir:{lfw_dir / 'Tony_Blair'}")
    dead = f"mqtts://localhost:{free_port()}"
    edit_config(box, "broker", "url", dead)
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    env.pop("FEDFACE_CONFIG", None)
    # still running when it says so: it keeps retrying (the broker may come back)
    text = join_until(["--data-dir", str(box), "join", "--part", "embed_bn"], env,
                      tmp_path / "join.log", "has not accepted this box's connection", 150)
    assert f"warning: the broker at {dead} has not accepted" in text
    assert "fedface-edge doctor" in text
    assert "box-off: join stopped (SIGTERM)" in text  # said, as serve says it (helper-42)


@pytest.mark.mosquitto
def test_join_stops_when_the_broker_refuses_its_revoked_certificate(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker],
        lfw_dir: Path) -> None:
    """A box whose certificate the broker's CRL names, and which has no record of the
    aggregator's notice (it was offline, or the record was deleted): join looped on
    'connection lost (Unspecified error)' for ever. It now asks the broker's TLS why,
    records the revocation and stops with exit 8, as after the notice."""
    fed = start_federation(tmp_path, mosquitto_factory)
    box = provision_box(fed, "box-crl", f"dir:{lfw_dir / 'Tony_Blair'}")
    code, out = fed.aggregator("devices", "revoke", "box-crl", "--state", str(fed.state))
    assert code == 0, out
    assert revocation_state(box) is None  # nothing told the box
    home = str(tmp_path / "home")
    run = edge_cli("--data-dir", str(box), "join", "--part", "embed_bn", timeout=150, HOME=home)
    assert run.returncode == 8, run.stdout + run.stderr
    assert "revoked" in run.stderr and "certificate" in run.stderr, run.stderr
    recorded = revocation_state(box)
    assert recorded is not None and recorded.source == "tls", recorded
    assert edge_cli("--data-dir", str(box), "status", HOME=home).returncode == 8


@pytest.mark.mosquitto
def test_commands_read_the_config_named_on_the_command_line(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker],
        lfw_dir: Path) -> None:
    fed = start_federation(tmp_path, mosquitto_factory)
    box = provision_box(fed, "box-cfg2", f"dir:{lfw_dir / 'Tony_Blair'}")
    edit_config(box, "box", "threads", 2)
    out = edge_cli("--config", str(box / CONFIG_NAME), "status", "--json",
                   FEDFACE_DATA_DIR=str(tmp_path / "elsewhere"))
    assert out.returncode == 0, out.stderr
    assert '"device_id": "box-cfg2"' in out.stdout
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.mosquitto
def test_run_defaults_to_the_configs_camera(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker],
        lfw_dir: Path) -> None:
    fed = start_federation(tmp_path, mosquitto_factory)
    box = provision_box(fed, "box-cam", f"dir:{lfw_dir / 'Tony_Blair'}")
    out = edge_cli("--data-dir", str(box), "run", "--max-frames", "2")
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("2 frames"), out.stderr
    bare = edge_cli("--data-dir", str(tmp_path / "unprovisioned"), "run")
    assert bare.returncode == 2 and "no frame source" in bare.stderr, bare.stderr


@pytest.mark.mosquitto
def test_join_on_a_box_not_signed_yet_stops_with_exit_7(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker],
        lfw_dir: Path) -> None:
    """Before the operator's reply is installed, join said 'internal error:
    FileNotFoundError' (exit 1: systemd restarted it for ever); it now gives doctor's
    words and exit 7, which the unit does not restart."""
    fed = start_federation(tmp_path, mosquitto_factory)
    box = provision_box(fed, "box-unsigned", f"dir:{lfw_dir / 'Tony_Blair'}", sign=False)
    run = edge_cli("--data-dir", str(box), "join", "--part", "embed_bn", timeout=150,
                   HOME=str(tmp_path / "home"))
    assert run.returncode == 7, run.stdout + run.stderr
    assert "not signed yet" in run.stderr and "--install-reply" in run.stderr, run.stderr
    assert "internal error" not in run.stderr


@pytest.mark.mosquitto
def test_a_box_in_no_federation_keeps_its_settings_when_provisioned(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker],
        lfw_dir: Path) -> None:
    """A kiosk that ran on its own (edge.toml of [box] and [camera] only) joins a
    federation: provision keeps its threshold and camera, and writes the rest."""
    from edge.config import load_box_config

    fed = start_federation(tmp_path, mosquitto_factory)
    box = fed.root / "box-alone"
    box.mkdir(mode=0o700)
    camera = f"dir:{lfw_dir / 'Tony_Blair'}"
    (box / CONFIG_NAME).write_text(f'[box]\nmatch_threshold = 0.45\n\n[camera]\n'
                                   f'source = "{camera}"\n')
    provisioned = provision_box(fed, "box-alone", camera, sign=False)
    cfg = load_box_config(provisioned / CONFIG_NAME)
    assert cfg.box.device_id == "box-alone" and cfg.box.match_threshold == 0.45, cfg
    assert cfg.camera.source == camera and cfg.broker.url.startswith("mqtt"), cfg
