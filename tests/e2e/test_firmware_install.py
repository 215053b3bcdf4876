"""The installers really run: install-aggregator.sh then install-x86.sh into one
temporary prefix with --no-system (from this checkout, models from the local cache as an
offline bundle), then upgrade.sh, then uninstall.sh. The installed broker config is
started in a real Mosquitto and the installed CLIs are run from the prefix.

pip installs from the local index/cache where it can (tenseal may come from PyPI).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from aggregator.pki import issue as pki_issue
from tests.support.broker import MosquittoBroker, free_port

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto]

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "firmware_scripts"
FED = "fed-install"
UNITS = [
    "fedface-edge.service",
    "fedface-kiosk.service",
    "fedface-join.service",
    "fedface-aggregator.service",
    "fedface-crl-renew.service",
    "fedface-crl-renew.timer",
]


@dataclass
class Install:
    prefix: Path
    port: int
    aggregator_log: str
    edge_log: str

    @property
    def venv_python(self) -> Path:
        return self.prefix / "venv/bin/python"

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
        )


def run_script(name: str, *args: str) -> str:
    r = subprocess.run(
        ["bash", str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=400, cwd="/"
    )
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def local_model_bundle() -> Path:
    from models.registry import verify_models

    try:
        paths = verify_models(None)
    except Exception as exc:  # the registry's typed error: models not fetched yet
        pytest.fail(f"no verified models in the local cache ({exc}): run `make setup`")
    return next(iter(paths.values())).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    prefix = tmp_path_factory.mktemp("install") / "opt-fedface"
    port = free_port()
    common = ["--prefix", str(prefix), "--no-system", "--python", sys.executable]
    agg_log = run_script(
        "install-aggregator.sh",
        *common,
        "--fed",
        FED,
        "--broker-host",
        "localhost",
        "--broker-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
    )
    inst = Install(prefix, port, agg_log, "")
    # Checked before the edge install adds the edge extra to the same venv.
    probe = inst.run(
        str(inst.venv_python),
        "-c",
        "import importlib.util as u; print([m for m in ('onnxruntime','cv2','torch')"
        " if u.find_spec(m)])",
    )
    assert probe.stdout.strip() == "[]", f"aggregator venv has edge packages: {probe.stdout}"
    inst.edge_log = run_script(
        "install-x86.sh", *common, "--model-bundle", str(local_model_bundle())
    )
    return inst


def test_aggregator_install_is_base_only_and_writes_pki(installed: Install) -> None:
    etc = installed.prefix / "etc"
    assert (etc / "fedface/pki/ca/ca.key").stat().st_mode & 0o777 == 0o600
    assert (etc / "fedface/pki").stat().st_mode & 0o777 == 0o700
    assert (etc / "fedface/tls/aggregator.key").stat().st_mode & 0o777 == 0o600
    assert (etc / "mosquitto/fedface/server.key").stat().st_mode & 0o777 == 0o600
    conf = (etc / "mosquitto/conf.d/fedface.conf").read_text()
    assert f"listener {installed.port} 127.0.0.1" in conf
    assert str(etc / "mosquitto/fedface/crl.pem") in conf
    assert "pid_file" not in conf  # a drop-in: the main mosquitto.conf has the pid file
    # the service connects to the port the installer gave the broker (issue 13.5)
    env = (etc / "fedface/aggregator.env").read_text().splitlines()
    assert f"FEDFACE_BROKER=mqtts://localhost:{installed.port}" in env
    r = installed.run(str(installed.prefix / "venv/bin/fedface-aggregator"), "--help")
    assert r.returncode == 0 and "aggregator" in r.stdout.lower()


def test_installed_broker_config_serves_the_installed_aggregator_cert(
    installed: Install, mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    etc = installed.prefix / "etc"
    conf = (etc / "mosquitto/conf.d/fedface.conf").read_text()
    # As root Mosquitto would drop to `mosquitto`, which cannot enter pytest's 0700 dirs.
    broker = mosquitto_factory(
        extra_config=conf, port=installed.port
    )
    # A technician's box: key + CSR on the box, signed with the installed CA's CLI.
    py = str(installed.venv_python)
    box = tmp_path / "box"
    ca_dir = str(etc / "fedface/pki/ca")
    for step in (
        ["device-csr", "--device-id", "box-1", "--out", str(box)],
        [
            "sign",
            "--ca-dir",
            ca_dir,
            "--csr",
            str(box / "device-tls.csr"),
            "--device-id",
            "box-1",
            "--out",
            str(box / "device-tls.crt"),
        ],
    ):
        r = installed.run(py, "-m", "aggregator.cli.pki", *step)
        assert r.returncode == 0, r.stderr
    got: queue.Queue[bytes] = queue.Queue()
    tls = etc / "fedface/tls"

    def client(cert: Path, key: Path) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2)
        c.tls_set(str(tls / "ca.crt"), str(cert), str(key), cert_reqs=ssl.CERT_REQUIRED)
        return c

    agg = client(tls / "aggregator.crt", tls / "aggregator.key")
    agg.on_message = lambda c, u, m: got.put(bytes(m.payload))
    agg.connect("127.0.0.1", broker.port)
    agg.loop_start()
    dev = client(box / "device-tls.crt", box / "device-tls.key")
    dev.connect("127.0.0.1", broker.port)
    dev.loop_start()
    try:
        agg.subscribe(f"fedface/v1/{FED}/update/+", qos=1)[1]
        # Retry until the subscription is in place (SUBACK is asynchronous).
        for _ in range(20):
            dev.publish(f"fedface/v1/{FED}/update/box-1", b"hello", qos=1).wait_for_publish(5)
            try:
                assert got.get(timeout=0.5) == b"hello"
                break
            except queue.Empty:
                continue
        else:
            pytest.fail("the aggregator never received the box's update over the installed config")
    finally:
        for c in (agg, dev):
            c.disconnect()
            c.loop_stop()
    assert pki_issue.verify_chain(
        (tls / "ca.crt").read_bytes(), (box / "device-tls.crt").read_bytes()
    )


def test_edge_cli_runs_from_the_prefix(installed: Install) -> None:
    edge = str(installed.prefix / "venv/bin/fedface-edge")
    r = installed.run(edge, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout
    state = installed.prefix / "var/lib/fedface"
    r = installed.run(edge, "models", "verify", env={"FEDFACE_MODEL_DIR": str(state / "models")})
    assert r.returncode == 0, r.stderr
    assert "sface" in r.stdout and "yunet" in r.stdout
    if " doctor " in installed.run(edge, "--help").stdout:
        r = installed.run(
            edge,
            "doctor",
            env={"FEDFACE_MODEL_DIR": str(state / "models"), "FEDFACE_DATA_DIR": str(state)},
        )
        # installed, not provisioned yet: the checks a box in no federation has, and
        # that the federation's were skipped until `provision`
        assert r.returncode == 0, r.stdout + r.stderr
        assert "PASS  models" in r.stdout and "FAIL" not in r.stdout, r.stdout
        assert "not provisioned" in r.stderr and "fedface-edge provision" in r.stderr
    # The edge box's inference path has no torch (no --with-train).
    probe = installed.run(
        str(installed.venv_python),
        "-c",
        "import importlib.util as u; print(bool(u.find_spec('torch')),"
        " bool(u.find_spec('onnxruntime')), bool(u.find_spec('cv2')))",
    )
    assert probe.stdout.split() == ["False", "True", "True"]


def test_installed_units_verify_with_real_paths(installed: Install) -> None:
    unit_dir = installed.prefix / "lib/systemd/system"
    units = [unit_dir / u for u in UNITS]
    assert f"ExecStart={installed.prefix}/venv/bin/fedface-edge run" in units[0].read_text()
    r = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_every_installed_edge_unit_runs_a_command_the_cli_accepts(installed: Install) -> None:
    """The kiosk unit ran `fedface-edge kiosk --host ...` (kiosk is a command group: the
    service could never start). Each edge unit's ExecStart, with edge.env's values, must
    be a command line the installed CLI accepts (checked with --help appended)."""
    import re
    import shlex

    env_file = installed.prefix / "etc/fedface/edge.env"
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                  if line and not line.startswith("#"))
    unit_dir = installed.prefix / "lib/systemd/system"
    for unit in ("fedface-edge.service", "fedface-kiosk.service", "fedface-join.service"):
        (line,) = [ln for ln in (unit_dir / unit).read_text().splitlines()
                   if ln.startswith("ExecStart=")]
        command = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), ""),
                         line.removeprefix("ExecStart="))
        r = installed.run(*shlex.split(command), "--help")
        assert r.returncode == 0, f"{unit}: {command}\n{r.stdout}{r.stderr}"
    join = (unit_dir / "fedface-join.service").read_text()
    assert "RestartPreventExitStatus=2 7 8 10" in join  # a revoked box is not restarted
    # an inference-only box (no --with-train) exits 10 (training) there: it exited 2,
    # which systemd restarted to its start limit (helper-58)
    joined = installed.run(str(installed.prefix / "venv/bin/fedface-edge"), "join")
    assert joined.returncode == 10 and "training needs torch" in joined.stderr, \
        joined.stdout + joined.stderr


def test_dirs_and_modes(installed: Install) -> None:
    p = installed.prefix
    assert (p / "etc/fedface").stat().st_mode & 0o777 == 0o750
    assert (p / "var/lib/fedface").stat().st_mode & 0o777 == 0o700
    assert (p / "etc/fedface/edge.env").stat().st_mode & 0o777 == 0o640
    assert (p / "etc/udev/rules.d/99-fedface-camera.rules").is_file()
    assert (p / "etc/logrotate.d/fedface").is_file()
    assert "FF_PLATFORM=x86" in (p / "installed-edge.env").read_text()


def release_wheel(tmp_path: Path, marker: str) -> Path:
    """A wheel of this checkout, with the version number unchanged and a module
    ``edge._release_marker`` that says which release it is."""
    source = tmp_path / "release-src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests",
        "bench", "artifacts"))
    (source / "edge" / "_release_marker.py").write_text(f'RELEASE = "{marker}"\n')
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    return next((tmp_path / "dist").glob("fedface-*.whl"))


def test_upgrade_keeps_config_and_state_then_uninstall(installed: Install,
                                                       tmp_path: Path) -> None:
    p = installed.prefix
    env = p / "etc/fedface/edge.env"
    env.write_text(env.read_text() + "FEDFACE_RUN_ARGS=--threshold 0.45\n")
    marker = p / "var/lib/fedface/gallery-marker"
    marker.write_text("enrolled people live here")
    ca_before = (p / "etc/fedface/pki/ca/ca.crt").read_bytes()
    # the new release as a wheel of the SAME version number, as a release built from a
    # later commit is: pip called it "already installed" and the upgrade kept the old code
    wheel = release_wheel(tmp_path, marker="release-2")
    out = run_script(
        "upgrade.sh",
        "--prefix",
        str(p),
        "--python",
        sys.executable,
        "--model-bundle",
        str(local_model_bundle()),
        "--source",
        str(wheel),
    )
    assert "upgrading edge (x86)" in out and "upgrading aggregator (aggregator)" in out
    installed_marker = subprocess.run(  # from /: not this checkout's edge/ on sys.path
        [str(installed.venv_python), "-c", "import edge._release_marker as m; print(m.RELEASE)"],
        capture_output=True, text=True, timeout=60, cwd="/", check=False)
    assert installed_marker.stdout.strip() == "release-2", installed_marker.stderr
    # it says which build was there and which is now: a wheel's build, by its RECORD
    builds = re.findall(r"\[fedface\] (installed|now): fedface 0\.1\.0 \(build ([0-9a-f]{12}); "
                        r"encrypted updates v2\)", out)
    assert [b[0] for b in builds] == ["installed", "now"] * 2, out[-3000:]
    assert builds[0][1] == builds[2][1] != builds[1][1] == builds[3][1], builds
    assert "the same build as before" not in out
    again = run_script("upgrade.sh", "--prefix", str(p), "--python", sys.executable,
                       "--model-bundle", str(local_model_bundle()), "--source", str(wheel))
    assert again.count("WARNING") == 2 and "the same build as before" in again, again[-3000:]
    assert "--threshold 0.45" in env.read_text()
    assert marker.exists()
    assert (p / "etc/fedface/pki/ca/ca.crt").read_bytes() == ca_before  # CA not re-created
    assert installed.run(str(p / "venv/bin/fedface-edge"), "--help").returncode == 0

    run_script("uninstall.sh", "--prefix", str(p), "--no-system")
    assert not (p / "venv").exists()
    assert not (p / "lib/systemd/system/fedface-edge.service").exists()
    assert marker.exists() and env.exists()  # kept without --purge
    out = run_script("uninstall.sh", "--prefix", str(p), "--no-system", "--purge")
    assert "devices revoke" in out  # the federation still holds it as registered
    assert not (p / "var/lib/fedface").exists()
    assert not (p / "etc/fedface").exists()
