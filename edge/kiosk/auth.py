"""Staff authentication of the kiosk: password hash file, session secret (who may try
to log in, and which sessions were ended: ``edge.kiosk.access``).

Files live in ``<data dir>/kiosk/`` (0700), each written 0600 by atomic rename:

- ``password.hash``: only a hash of the staff password. Argon2id (argon2-cffi's RFC 9106
  low-memory profile) when argon2-cffi is installed, else ``hashlib.scrypt`` with a
  per-password 16-byte salt (n=2^14, r=8, p=1: ~50 ms and 16 MiB per check, the usual
  interactive-login cost). Either format is verified whichever library is present now,
  as long as the one that wrote it is still importable.
- ``secret.key``: 32 random bytes that sign the session and device cookies. Created on
  first start; deleting it logs every session out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from pathlib import Path

from edge.errors import FedFaceError
from edge.gallery.files import ensure_private_dir
from federation.files import write_atomic

log = logging.getLogger(__name__)

KIOSK_DIRNAME = "kiosk"
PASSWORD_FILENAME = "password.hash"
SECRET_FILENAME = "secret.key"
MIN_PASSWORD_LENGTH = 8
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class KioskAuthError(FedFaceError):
    """The kiosk password or secret cannot be set or read."""

    exit_code = 7


def check_password(password: str) -> None:
    """KioskAuthError unless ``password`` may be the staff password (``provision`` checks
    it before it writes anything)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise KioskAuthError(
            f"the kiosk password must have at least {MIN_PASSWORD_LENGTH} characters",
            hint="choose a longer password (a passphrase of a few words is best)")
    if password != password.strip():
        raise KioskAuthError("the kiosk password starts or ends with whitespace",
                             hint="remove the leading/trailing spaces or newline")


def kiosk_dir(data_dir: Path) -> Path:
    # the data dir first: mkdir(parents=True) would create it with the umask's mode
    ensure_private_dir(Path(data_dir))
    return ensure_private_dir(Path(data_dir) / KIOSK_DIRNAME)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` 0600, atomically (the project's one atomic write)."""
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise KioskAuthError(f"cannot write {path}: {exc.strerror or exc}",
                             hint="check that the data directory is writable") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _argon2_available() -> bool:
    try:
        import argon2  # noqa: F401
    except ImportError:
        return False
    return True


def hash_password(password: str, scheme: str | None = None) -> str:
    """A self-describing hash string (argon2 ``$argon2id$...`` or ``scrypt$...``).

    ``scheme`` None picks argon2 when argon2-cffi is installed, else scrypt.
    """
    if scheme is None:
        scheme = "argon2" if _argon2_available() else "scrypt"
    if scheme == "scrypt":
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
        return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"
    if scheme != "argon2":
        raise ValueError(f"unknown password hash scheme {scheme!r} (argon2 or scrypt)")
    from argon2 import PasswordHasher

    return str(PasswordHasher().hash(password))


def verify_password(stored: str, password: str) -> bool:
    """True if ``password`` matches ``stored``; False for a wrong password."""
    if stored.startswith("scrypt$"):
        try:
            _, n, r, p, salt, digest = stored.split("$")
            expected = base64.b64decode(digest)
            got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt),
                                 n=int(n), r=int(r), p=int(p), dklen=len(expected))
        except (ValueError, TypeError) as exc:
            raise KioskAuthError("the stored kiosk password hash is malformed",
                                 hint="set it again with `fedface-edge kiosk set-password`"
                                 ) from exc
        return hmac.compare_digest(got, expected)
    if stored.startswith("$argon2"):
        try:
            from argon2 import PasswordHasher
            from argon2.exceptions import InvalidHashError, VerificationError
        except ImportError as exc:
            raise KioskAuthError("the kiosk password was hashed with argon2 but argon2-cffi "
                                 "is not installed",
                                 hint="pip install argon2-cffi, or set the password again"
                                 ) from exc
        try:
            return bool(PasswordHasher().verify(stored, password))
        except VerificationError:
            return False
        except InvalidHashError as exc:
            raise KioskAuthError("the stored kiosk password hash is malformed",
                                 hint="set it again with `fedface-edge kiosk set-password`"
                                 ) from exc
    raise KioskAuthError("the stored kiosk password hash has an unknown format",
                         hint="set it again with `fedface-edge kiosk set-password`")


class PasswordStore:
    """The staff password hash of one box."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / KIOSK_DIRNAME / PASSWORD_FILENAME

    def is_set(self) -> bool:
        return self.path.is_file()

    def set(self, password: str) -> None:
        check_password(password)
        kiosk_dir(self.path.parent.parent)
        write_private(self.path, (hash_password(password) + "\n").encode())
        log.info("kiosk password hash written to %s", self.path)

    def _stored(self) -> str:
        try:
            return self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise KioskAuthError(f"no kiosk password is set ({self.path} is missing)",
                                 hint="run `fedface-edge kiosk set-password` first") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KioskAuthError(f"cannot read {self.path}: {exc}",
                                 hint="set it again with `fedface-edge kiosk set-password`"
                                 ) from exc

    def verify(self, password: str) -> bool:
        return verify_password(self._stored(), password)

    def generation(self) -> str:
        """Short fingerprint of the current hash: sessions of an old password are refused."""
        return hashlib.sha256(self._stored().encode()).hexdigest()[:16]


def load_or_create_secret_key(data_dir: Path) -> bytes:
    path = kiosk_dir(data_dir) / SECRET_FILENAME
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    except OSError as exc:
        raise KioskAuthError(f"cannot read {path}: {exc.strerror or exc}",
                             hint="check the data directory's permissions") from exc
    if len(key) < 32:
        key = secrets.token_bytes(32)
        write_private(path, key)
        log.info("new kiosk session secret written to %s", path)
    return key
