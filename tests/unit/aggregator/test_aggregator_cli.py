"""The operator CLI: keys, init, devices, rounds, status; a secret context is refused."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from aggregator.cli.main import app
from federation.crypto.keys import write_public_key
from federation.crypto.signing import generate_signing_key

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    result = runner.invoke(app, ["keys", "create", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "EVERY EDGE BOX" in result.output
    return out


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output
    return err


def test_keys_create_modes(keys_dir: Path) -> None:
    secret = keys_dir / "federation-secret.tenseal"
    public = keys_dir / "federation-public.tenseal"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    again = runner.invoke(app, ["keys", "create", "--out", str(keys_dir)])
    assert "refusing" in _one_line_error(again)


def test_init_refuses_the_secret_context(keys_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--fed", "f1", "--state", str(tmp_path / "s"),
                                 "--public-context", str(keys_dir / "federation-secret.tenseal"),
                                 "--ca-dir", str(tmp_path / "ca")])
    assert "secret_key_refused" in _one_line_error(result)
    assert not (tmp_path / "s" / "config.json").exists()
    assert not (tmp_path / "ca").exists()  # made before the refusal (helper-57): nothing now


def test_init_devices_rounds_status(keys_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = runner.invoke(app, ["init", "--fed", "f1", "--state", str(state),
                                 "--public-context", str(keys_dir / "federation-public.tenseal")])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((state / "aggregator.key").stat().st_mode) == 0o600
    pub = write_public_key(tmp_path / "box1.pub", generate_signing_key().public_key())
    ok = runner.invoke(app, ["devices", "add", "box1", "--public-key", str(pub),
                             "--state", str(state)])
    assert ok.exit_code == 0, ok.output
    assert "already registered" in _one_line_error(
        runner.invoke(app, ["devices", "add", "box1", "--public-key", str(pub),
                            "--state", str(state)]))
    assert "invalid device id" in _one_line_error(
        runner.invoke(app, ["devices", "add", "bad/id", "--public-key", str(pub),
                            "--state", str(state)]))
    assert "PRIVATE" in _one_line_error(
        runner.invoke(app, ["devices", "add", "box2", "--public-key",
                            str(state / "aggregator.key"), "--state", str(state)]))
    listed = json.loads(runner.invoke(app, ["devices", "list", "--json", "--state", str(state)])
                        .stdout)
    assert [d["device_id"] for d in listed] == ["box1"] and listed[0]["active"]
    assert runner.invoke(app, ["devices", "revoke", "box1", "--state", str(state)]).exit_code == 0
    again = runner.invoke(app, ["devices", "revoke", "box1", "--state", str(state)])
    assert again.exit_code == 0, again.output  # applies the rest again (helper-57)
    assert "box1 was already revoked at the aggregator: applying the rest again" in again.output
    status = json.loads(runner.invoke(app, ["status", "--json", "--state", str(state)]).stdout)
    assert status["fed"] == "f1" and status["devices"] == {"active": 0, "total": 1}
    assert json.loads(runner.invoke(app, ["rounds", "list", "--json", "--state", str(state)])
                      .stdout) == []
    assert "no round 3" in _one_line_error(
        runner.invoke(app, ["rounds", "show", "3", "--state", str(state)]))
    assert "not an aggregator state" in _one_line_error(
        runner.invoke(app, ["status", "--state", str(tmp_path / "nowhere")]))


def test_serve_refuses_a_secret_context_swapped_into_the_state(
    keys_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert runner.invoke(app, ["init", "--fed", "f1", "--state", str(state), "--public-context",
                               str(keys_dir / "federation-public.tenseal")]).exit_code == 0
    target = state / "federation-public.tenseal"
    shutil.copyfile(keys_dir / "federation-secret.tenseal", target)
    os.chmod(target, 0o600)
    # a real process through the console entry point: exit code + one line, no traceback,
    # and it fails before it would even look for a broker
    proc = subprocess.run(
        [sys.executable, "-m", "aggregator.cli", "serve", "--state", str(state),
         "--broker", "mqtt://127.0.0.1:9"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "secret_key_refused" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_aggregator_never_imports_ml_or_edge_code() -> None:
    code = (
        "import sys, aggregator.cli.main, aggregator.service, aggregator.runner\n"
        "import aggregator.state.config\n"
        "bad = [m for m in ('torch', 'cv2', 'onnxruntime', 'edge', 'models') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_status_with_the_broker_down_still_shows_the_state(keys_dir: Path,
                                                           tmp_path: Path) -> None:
    """A walkthrough stopped the broker: `status` printed one error line and nothing of
    the registry, rounds or counters, all of which are in the state directory. It shows
    them, then the error (exit 2, for a monitor). Each box showed `unknown`, the operator
    losing what they need in an outage: each box is at the last state serve heard, said
    to be that and how old, and `unknown` only for a box serve never heard."""
    import time

    from aggregator.state.presence import PresenceRecord, save_presence
    from aggregator.state.store import Store
    from tests.support.broker import free_port

    state = tmp_path / "state"
    assert runner.invoke(app, ["init", "--fed", "f1", "--state", str(state), "--public-context",
                               str(keys_dir / "federation-public.tenseal"), "--broker-url",
                               f"mqtt://127.0.0.1:{free_port()}"]).exit_code == 0
    pub = write_public_key(tmp_path / "box1.pub", generate_signing_key().public_key())
    assert runner.invoke(app, ["devices", "add", "box1", "--public-key", str(pub),
                               "--state", str(state)]).exit_code == 0
    for box in ("box2", "box3", "box4"):
        pub = write_public_key(tmp_path / f"{box}.pub", generate_signing_key().public_key())
        assert runner.invoke(app, ["devices", "add", box, "--public-key", str(pub),
                                   "--state", str(state)]).exit_code == 0
    now = time.time()
    store = Store(state)  # what serve recorded (aggregator.intake.presence)
    save_presence(store.db, PresenceRecord("box1", "round-3", now - 240, now - 230))
    save_presence(store.db, PresenceRecord("box2", "round-2", now - 4000, now - 4000,
                                           offline_since=now - 600, will_at=now - 9000))
    save_presence(store.db, PresenceRecord("box3", "round-3", now - 900, now - 900,
                                           stopped_at=now - 300))
    store.close()
    result = runner.invoke(app, ["status", "--state", str(state)])
    assert result.exit_code == 2
    out = result.stdout
    assert "federation f1" in out and "open round: none" in out
    rows = {line.split()[0]: line.split()[2:] for line in out.splitlines()
            if line.startswith("box")}
    assert rows == {"box1": ["online", "round-3", "4m", "ago"],
                    "box2": ["offline", "round-2", "10m", "ago"],
                    "box3": ["offline", "round-3", "5m", "ago"],
                    "box4": ["unknown", "-", "-"]}, out
    said = [line.strip() for line in out.splitlines() if line.startswith("  box")]
    assert said == [
        "box1: online (last known: its online status of 4m ago; broker unreachable)",
        "box2: offline (last known: serve heard its last will 10m ago: it went away "
        "without a clean stop; broker unreachable)",
        "box3: offline (last known: it stopped cleanly 5m ago; broker unreachable)",
        "box4: unknown (serve has not heard from it; broker unreachable)"], out
    assert result.stderr.startswith("error: the boxes' live status is not shown: cannot "
                                    "reach the broker at mqtt://127.0.0.1:")
    # --json: the live state is unknown, the last known beside it
    box1 = json.loads(runner.invoke(app, ["status", "--json", "--state", str(state)]).stdout
                      )["device_status"][0]
    assert (box1["state"], box1["model"]) == ("unknown", "round-3"), box1
    assert box1["last_known"] == {"state": "online", "since": pytest.approx(now - 240),
                                  "how": "online_status"}, box1


def test_one_serve_per_state_directory(tmp_path: Path, keys_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """helper-41 restarted serve while the old one was still stopping: two serves on one
    state shared its database and MQTT client id and took the broker session from each
    other, silently. A second serve now waits for the first to stop, then refuses, naming
    its pid; the lock goes with its holder, even killed with SIGKILL."""
    import functools
    import logging
    import time

    import aggregator.cli.main as cli_main
    from aggregator.state.serve_lock import LOCK_NAME, lock_state
    from aggregator.state.store import StoreError

    state = tmp_path / "state"
    assert runner.invoke(app, ["init", "--fed", "f1", "--state", str(state),
                               "--public-context",
                               str(keys_dir / "federation-public.tenseal")]).exit_code == 0
    stopped = runner.invoke(app, ["status", "--no-broker", "--state", str(state)])
    # status said nothing of a stopped serve, an open round's deadline ticking on
    # (helper-57)
    assert "serve: NOT running: no round opens or closes until it does" in stopped.stdout, \
        stopped.stdout
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path\n"
        "from aggregator.state.serve_lock import lock_state\n"
        f"held = lock_state(Path({str(state)!r})); print('held', flush=True)\n"
        "time.sleep(60)")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        running = runner.invoke(app, ["status", "--json", "--no-broker", "--state", str(state)])
        assert json.loads(running.stdout)["serve"] == {"running": True,
                                                       "pid": str(holder.pid)}, running.stdout
        assert (state / LOCK_NAME).read_text() == f"{holder.pid}\n"  # status wrote nothing
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"serve` \\(pid {holder.pid}\\) runs on"):
            lock_state(state, wait_seconds=0.5)
        assert time.monotonic() - started >= 0.5  # it waited for the holder to stop
        monkeypatch.setattr(cli_main, "lock_state", functools.partial(lock_state,
                                                                      wait_seconds=0.3))
        # serve's logging.basicConfig writes to this invocation's stderr (an earlier
        # in-process serve's handler would point at a closed one)
        monkeypatch.setattr(logging.root, "handlers", [])
        result = runner.invoke(app, ["serve", "--state", str(state), "--broker",
                                     "mqtt://127.0.0.1:9"])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        said = result.stderr.strip().splitlines()
        assert f"waiting for the serve that holds {state} (pid {holder.pid}) to stop" \
            in said[0], said
        assert said[-1].startswith(f"error: another `fedface-aggregator serve` (pid "
                                   f"{holder.pid}) runs on"), said
        assert "one serve per state directory" in said[-1]
    finally:
        holder.kill()
        holder.wait(10)
    held = lock_state(state, wait_seconds=2.0)  # the killed holder's lock went with it
    assert (state / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE((state / LOCK_NAME).stat().st_mode) == 0o600
    held.close()


@pytest.mark.parametrize("command", [["status"], ["devices", "list"], ["serve"]])
def test_a_command_without_state_says_which_option_and_env_var(command: list[str]) -> None:
    """A walkthrough's first `fedface-aggregator status` without --state got Typer's red
    box of five lines. A real process: one error: line, one hint: line naming --state and
    FEDFACE_AGGREGATOR_STATE, the usage exit code (2), no box."""
    env = {k: v for k, v in os.environ.items() if k != "FEDFACE_AGGREGATOR_STATE"}
    script = Path(sys.executable).parent / "fedface-aggregator"  # the console script
    proc = subprocess.run([str(script), *command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    error, hint = proc.stderr.strip().splitlines()
    assert error == f"error: fedface-aggregator {' '.join(command)} needs --state " \
        "(state directory)", proc.stderr
    assert hint.startswith("hint: pass --state DIR, or set FEDFACE_AGGREGATOR_STATE=DIR"), hint
