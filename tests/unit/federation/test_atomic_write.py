"""federation.files.write_atomic, the one atomic-write helper: every caller states the
mode, and the file gets exactly that mode whatever the umask, fsynced with its directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import federation.files
from federation.files import write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_mode_must_be_given_by_name(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "f", b"x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "f", b"x", 0o600)  # type: ignore[call-arg]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("umask", [0o000, 0o077])
@pytest.mark.parametrize("wanted", [0o600, 0o644])
def test_the_file_has_exactly_the_mode_asked(tmp_path: Path, umask: int, wanted: int) -> None:
    path = tmp_path / "sub" / "f.json"
    old = os.umask(umask)
    try:
        assert write_atomic(path, b"first", mode=wanted) == path
        assert mode(path) == wanted
        path.chmod(0o666)  # a replace sets the mode again, not keeping the old file's
        write_atomic(path, b"second", mode=wanted)
    finally:
        os.umask(old)
    assert mode(path) == wanted
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temp file left


def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(federation.files.os, "fsync", spy)
    write_atomic(tmp_path / "f", b"data", mode=0o600)
    assert synced == ["file", "dir"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"old", mode=0o644)
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes", mode=0o600)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_only_permission_bits(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_atomic(tmp_path / "f", b"x", mode=0o4755)


def test_modes_are_exact_under_umask_000_and_existing_directories_are_left_alone(
    tmp_path: Path,
) -> None:
    from federation.files import PRIVATE_DIR, PUBLIC_DIR, make_dirs, open_new

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)  # someone else's choice
    old = os.umask(0)
    try:
        make_dirs(shared / "a" / "b", PRIVATE_DIR)
        write_atomic(shared / "keys" / "k.key", b"secret", mode=0o600)
        write_atomic(shared / "pub" / "ctx", b"public", mode=0o644)
        with open_new(shared / "a" / "events", 0o600, "a", encoding="utf-8") as f:
            f.write("x\n")
        make_dirs(shared / "models", PUBLIC_DIR)
    finally:
        os.umask(old)
    assert mode(shared) == 0o775
    assert mode(shared / "a") == mode(shared / "a" / "b") == 0o700
    assert mode(shared / "keys") == 0o700 and mode(shared / "keys" / "k.key") == 0o600
    assert mode(shared / "pub") == 0o755 and mode(shared / "pub" / "ctx") == 0o644
    assert mode(shared / "a" / "events") == 0o600
    assert mode(shared / "models") == 0o755
    with pytest.raises(ValueError, match="at most 0o755"):
        make_dirs(tmp_path / "open", 0o777)
    with pytest.raises(FileNotFoundError):  # open_new makes no directory: a typo is an error
        open_new(tmp_path / "nodir" / "x", 0o600, "a")
