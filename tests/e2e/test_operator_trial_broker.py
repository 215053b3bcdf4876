"""Issue 13.5: the operator's path works exactly as docs/operations.md says.

The "Trial broker" section's shell blocks are run as written (only the port is swapped
for a free one): keys, init, certificates, a standalone Mosquitto with TLS + ACL started
by hand from the generated config, then ``serve`` with no broker options (it takes what
``init`` stored), ``status``, a box registered and revoked through the broker's pid file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from typer.testing import CliRunner

from aggregator.cli.common import resolve_broker
from aggregator.cli.main import app
from aggregator.pki import authority as pki
from aggregator.state.config import AggregatorConfig, BrokerClientConfig
from federation.crypto.signing import generate_signing_key, public_key_hex
from tests.support.broker import free_port

pytestmark = pytest.mark.mosquitto

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
runner = CliRunner()
T = TypeVar("T")


def trial_blocks() -> list[str]:
    text = DOC.read_text()
    section = text.split("### Trial broker", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """``fedface-aggregator`` and ``python`` on PATH run THIS checkout's code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "fedface-aggregator"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m aggregator.cli "$@"\n')
    wrapper.chmod(0o755)
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONPATH": str(REPO)}


def run_block(block: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", "-euc", block], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{block}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


def broker_pid(trial: Path) -> int | None:
    try:
        return int((trial / "broker/mosquitto.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@pytest.fixture
def trial(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "trial"
    d.mkdir()
    yield d
    pid = broker_pid(d)  # the broker daemonised: stop it by the pid it wrote
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def box_request(trial: Path, device: str) -> Path:
    _, csr = pki.create_device_key_and_csr(device, trial / device)
    req = {"v": 1, "device_id": device, "fed": "trial-fed", "csr": csr.read_text(),
           "signing_key": public_key_hex(generate_signing_key())}
    path = trial / f"{device}.request.json"
    path.write_text(json.dumps(req))
    return path


def test_trial_broker_section_works_as_written(trial: Path, shell_env: dict[str, str]) -> None:
    blocks = trial_blocks()
    assert len(blocks) == 4, "setup, serve, check, stop"
    setup, serve_block, check, stop = blocks
    assert "PORT=18883" in setup
    run_block(setup.replace("PORT=18883", f"PORT={free_port()}"), trial, shell_env)
    conf = (trial / "broker/fedface.conf").read_text()
    assert "require_certificate true" in conf and "acl_file" in conf
    pid = wait_for(lambda: broker_pid(trial), 30, "the broker's pid file")
    stored = json.loads((trial / "agg/config.json").read_text())["broker"]
    assert all(Path(stored[k]).is_absolute() for k in ("ca_file", "cert_file", "key_file"))

    assert "--broker" not in serve_block  # the point: init stored it
    log = (trial / "serve.log").open("w")
    serve = subprocess.Popen(["bash", "-euc", serve_block], cwd=trial, env=shell_env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def open_round() -> bool:
            assert serve.poll() is None, (trial / "serve.log").read_text()
            r = runner.invoke(app, ["status", "--json", "--no-broker", "--state",
                                    str(trial / "agg")])
            return r.exit_code == 0 and json.loads(r.stdout)["open_round"] is not None

        wait_for(open_round, 180, "serve to open round 1 over the TLS broker")
        out = run_block(check, trial, shell_env)
        assert "open round: 1" in out and "no devices registered" in out
        # boxes are registered and revoked as the doc says; revoke SIGHUPs the pid file
        added = runner.invoke(app, ["devices", "add", "--request",
                                    str(box_request(trial, "box-01")), "--state",
                                    str(trial / "agg"), "--reply", str(trial / "r.json")])
        assert added.exit_code == 0, added.output
        revoked = runner.invoke(app, ["devices", "revoke", "box-01", "--state",
                                      str(trial / "agg")])
        assert revoked.exit_code == 0 and f"SIGHUP sent to broker pid {pid}" in revoked.output
    finally:
        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C, as the doc says
        serve.wait(timeout=60)
        log.close()
    assert "Traceback" not in (trial / "serve.log").read_text()
    run_block(stop, trial, shell_env)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the broker to stop")


def test_init_without_the_public_context_says_how_to_create_it(tmp_path: Path) -> None:
    r = runner.invoke(app, ["init", "--fed", "f1", "--state", str(tmp_path / "s"),
                            "--public-context", str(tmp_path / "federation-public.tenseal")])
    assert r.exit_code == 2
    assert "fedface-aggregator keys create --out" in r.stderr and "\n" not in r.stderr.strip()


def _cfg(broker: BrokerClientConfig | None) -> AggregatorConfig:
    return AggregatorConfig(fed="f1", key_id="k", broker=broker)


def test_serve_takes_the_stored_broker_and_explicit_options_win() -> None:
    stored = BrokerClientConfig(url="mqtts://b:8883", ca_file=Path("/c/ca.crt"),
                                cert_file=Path("/c/a.crt"), key_file=Path("/c/a.key"))
    cfg = _cfg(stored)
    assert resolve_broker(cfg, "", None, None, None) == (
        "mqtts://b:8883", Path("/c/ca.crt"), Path("/c/a.crt"), Path("/c/a.key"))
    assert resolve_broker(cfg, "mqtts://other:1", None, Path("/x.crt"), None) == (
        "mqtts://other:1", Path("/c/ca.crt"), Path("/x.crt"), Path("/c/a.key"))
    # a plaintext test broker named on the command line gets no stored TLS files
    assert resolve_broker(cfg, "mqtt://127.0.0.1:1883", None, None, None) == (
        "mqtt://127.0.0.1:1883", None, None, None)
    with pytest.raises(ValueError, match="--broker-url"):
        resolve_broker(_cfg(None), "", None, None, None)


def test_serve_without_broker_and_none_stored_is_one_clear_error(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keys", "create", "--out", str(keys)]).exit_code == 0
    state = tmp_path / "s"
    assert runner.invoke(app, ["init", "--fed", "f1", "--state", str(state), "--public-context",
                               str(keys / "federation-public.tenseal")]).exit_code == 0
    r = runner.invoke(app, ["serve", "--state", str(state)])
    assert r.exit_code == 2 and "no broker: pass --broker" in r.stderr
