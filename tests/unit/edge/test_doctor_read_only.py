"""helper-58: a data directory on a read-only card or mount passed every doctor check,
while identify, enroll, people and run each stopped with 'data directory ... is not
writable'. Doctor now says so. The directory is made read-only for real: by its mode for
an ordinary user, by a read-only bind mount for root (whom modes do not stop)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.doctor import check_box_data


@pytest.fixture
def read_only_data_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "box"
    enrolled = CliRunner().invoke(app, ["--data-dir", str(data_dir), "people", "list"])
    assert enrolled.exit_code == 0, enrolled.output
    data_dir.mkdir(exist_ok=True)
    (data_dir / "marker").write_text("the box's data")
    if os.geteuid() != 0:
        data_dir.chmod(0o500)
        yield data_dir
        data_dir.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(data_dir), str(data_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {mounted.stderr.strip()}")
    try:
        if os.access(data_dir, os.W_OK):  # an old mount(8) ignores ro on --bind
            subprocess.run(["mount", "-o", "remount,ro,bind", str(data_dir)], check=True)
        yield data_dir
    finally:
        subprocess.run(["umount", str(data_dir)], check=True)


def test_doctor_fails_a_read_only_data_dir(read_only_data_dir: Path) -> None:
    with pytest.raises(OSError):
        (read_only_data_dir / "probe").write_text("x")  # it is read-only indeed
    check = check_box_data(read_only_data_dir)
    assert not check.ok, check
    assert check.detail == (f"data directory {read_only_data_dir} is not writable (a "
                            "read-only card or mount?)"), check.detail
    assert "choose a writable data directory" in check.hint, check.hint
    doctor = CliRunner().invoke(app, ["--data-dir", str(read_only_data_dir), "doctor"])
    assert doctor.exit_code != 0 and "not writable" in doctor.output, doctor.output


def test_doctor_passes_a_writable_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "box"
    data_dir.mkdir(mode=0o700)
    assert check_box_data(data_dir).ok
