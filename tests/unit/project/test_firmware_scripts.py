"""Install scripts, systemd units, udev/logrotate files: static checks that run the real
tools (shellcheck, systemd-analyze, logrotate), fast. The real installs are in
test_firmware_install.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPTS = REPO / "firmware_scripts"
INSTALLERS = [
    "install-x86.sh",
    "install-rpi.sh",
    "install-jetson.sh",
    "install-aggregator.sh",
    "upgrade.sh",
    "uninstall.sh",
]
UNITS = [
    "fedface-edge.service",
    "fedface-kiosk.service",
    "fedface-aggregator.service",
    "fedface-crl-renew.service",
    "fedface-crl-renew.timer",
]


def need(tool: str) -> str:
    path = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
    )
    if not path:
        pytest.fail(f"{tool} is not installed: run `make setup-test`")
    return path


def test_every_shell_script_passes_shellcheck() -> None:
    scripts = sorted(SCRIPTS.rglob("*.sh"))
    assert len(scripts) >= 8  # the installers, the library, the lead's test-deps script
    r = subprocess.run(
        [need("shellcheck"), "-x", "-S", "info", *map(str, scripts)],
        cwd="/",  # SCRIPTDIR-relative source directives: any cwd works
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_script_is_strict_and_executable() -> None:
    for name in INSTALLERS:
        path = SCRIPTS / name
        assert os.access(path, os.X_OK), f"{name} is not executable"
        assert "set -euo pipefail" in path.read_text(), name


@pytest.mark.parametrize("name", INSTALLERS)
def test_help_exits_zero_without_touching_anything(name: str, tmp_path: Path) -> None:
    # --help wins over everything else, even a prefix that would be created.
    r = subprocess.run(
        ["bash", str(SCRIPTS / name), "--prefix", str(tmp_path / "p"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage:")
    assert not (tmp_path / "p").exists()


def test_unknown_option_is_one_clear_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            "bash",
            str(SCRIPTS / "install-x86.sh"),
            "--no-system",
            "--prefix",
            str(tmp_path),
            "--frobnicate",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "unknown option --frobnicate" in r.stderr


def render(tmp_path: Path) -> Path:
    """Renders every unit + udev + logrotate file with the installers' own library into
    a --no-system prefix, with stand-in executables (systemd-analyze checks ExecStart)."""
    prefix = tmp_path / "prefix"
    for exe in ("fedface-edge", "fedface-aggregator", "python"):
        p = prefix / "venv" / "bin" / exe
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    script = f"""
        set -euo pipefail
        . {SCRIPTS}/lib/common.sh
        ff_parse_common --prefix {prefix} --no-system
        ff_make_dirs
        ff_install_units {" ".join(UNITS)}
        ff_install_udev_and_logrotate
        ff_render_config_once {SCRIPTS}/config/edge.env.in "$FF_CONF_DIR/edge.env"
    """
    subprocess.run(["bash", "-c", script], check=True, timeout=30)
    return prefix


def systemd_analyze_verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    # verify exits 0 on unknown keys or bad values and only prints a warning, so any
    # output at all is a failure.
    return subprocess.run(
        [need("systemd-analyze"), "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    prefix = render(tmp_path)
    units = [prefix / "lib/systemd/system" / u for u in UNITS]
    text = "\n".join(u.read_text() for u in units)
    assert "@" + "PREFIX@" not in text and "@VENV@" not in text
    r = systemd_analyze_verify(units)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: a typo'd hardening key is reported.
    prefix = render(tmp_path)
    unit = prefix / "lib/systemd/system/fedface-edge.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystme=strict"))
    r = systemd_analyze_verify([unit])
    assert "ProtectSystme" in r.stdout + r.stderr


def test_edge_unit_hardening_and_no_blind_watchdog(tmp_path: Path) -> None:
    unit = (render(tmp_path) / "lib/systemd/system/fedface-edge.service").read_text()
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SupplementaryGroups=video",
        "Restart=on-failure",
        "User=fedface",
    ):
        assert line in unit.splitlines(), line
    # fedface-edge does not sd_notify: a WatchdogSec would kill a healthy service.
    assert not any(ln.startswith("WatchdogSec=") for ln in unit.splitlines())
    assert "Type=exec" in unit


def test_the_recogniser_and_the_kiosk_read_one_camera_and_write_one_log(
        tmp_path: Path) -> None:
    """The kiosk unit read camera.source of edge.toml while fedface-edge.service read
    FEDFACE_SOURCE of edge.env: a technician who set the camera in edge.env (as the docs
    say) and switched to the kiosk got another camera, or none on a box not provisioned."""
    units = render(tmp_path) / "lib/systemd/system"
    for unit in ("fedface-edge.service", "fedface-kiosk.service"):
        (start,) = [ln for ln in (units / unit).read_text().splitlines()
                    if ln.startswith("ExecStart=")]
        assert "--source ${FEDFACE_SOURCE} " in start, (unit, start)
        assert "--events ${FEDFACE_EVENTS} " in start, (unit, start)  # the same log too


def test_security_exposure_is_low(tmp_path: Path) -> None:
    prefix = render(tmp_path)
    for unit in ("fedface-edge.service", "fedface-kiosk.service", "fedface-aggregator.service"):
        r = subprocess.run(
            [
                need("systemd-analyze"),
                "security",
                "--offline=yes",
                "--no-pager",
                str(prefix / "lib/systemd/system" / unit),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        last = r.stdout.strip().splitlines()[-1]
        score = float(last.split("fedface")[1].split(":")[1].split()[0])
        assert score <= 2.5, last  # systemd's scale: 0 (locked down) .. 10 (exposed)


def test_logrotate_config_is_valid(tmp_path: Path) -> None:
    prefix = render(tmp_path)
    log_dir = prefix / "var/log/fedface"
    (log_dir / "events.jsonl").write_text('{"name": "x"}\n')
    conf = prefix / "etc/logrotate.d/fedface"
    assert str(log_dir) in conf.read_text()
    # -d: debug/dry run, parses the config and reports what it would rotate.
    r = subprocess.run(
        [need("logrotate"), "-d", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "error" not in out.lower(), out
    assert "events.jsonl" in out


def test_udev_rule_matches_a_capture_node(tmp_path: Path) -> None:
    rule = (SCRIPTS / "udev/99-fedface-camera.rules").read_text()
    lines = [ln for ln in rule.splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 2
    assert all('SUBSYSTEM=="video4linux"' in ln for ln in lines)
    assert 'GROUP="video"' in lines[0] and 'MODE="0660"' in lines[0]
    assert 'SYMLINK+="fedface-camera"' in lines[1] and 'ATTR{index}=="0"' in lines[1]
    udevadm = shutil.which("udevadm")
    if (
        udevadm
        and subprocess.run([udevadm, "verify", "--help"], capture_output=True).returncode == 0
    ):
        r = subprocess.run(
            [udevadm, "verify", str(SCRIPTS / "udev/99-fedface-camera.rules")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr


def test_config_files_are_written_once(tmp_path: Path) -> None:
    prefix = render(tmp_path)
    env = prefix / "etc/fedface/edge.env"
    assert (env.stat().st_mode & 0o777) == 0o640
    assert "FEDFACE_SOURCE=/dev/fedface-camera" in env.read_text()
    env.write_text(env.read_text() + "FEDFACE_RUN_ARGS=--threshold 0.45\n")
    render(tmp_path)  # a second run (repair/upgrade) keeps the operator's edit
    assert "--threshold 0.45" in env.read_text()
    assert (prefix / "etc/fedface").stat().st_mode & 0o777 == 0o750
    assert (prefix / "var/lib/fedface").stat().st_mode & 0o777 == 0o700
