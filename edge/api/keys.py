"""API keys, one or more per service (Double Take, Home Assistant...), stored hashed.

A key is 32 random bytes (``ffk_`` + URL-safe base64), shown once when created. The
file ``<data dir>/api_keys.json`` (0600) keeps only its SHA-256: a key has 256 bits of
entropy, so a fast hash cannot be searched back to it, and checking one costs
microseconds per request (a password hash such as Argon2 is for low-entropy secrets and
would cost tens of milliseconds on every request).

The running server re-reads the file when it changes, so ``fedface-edge api-key
revoke`` takes effect on the next request without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.errors import FedFaceError
from federation.files import write_atomic

KEYS_FILENAME = "api_keys.json"
KEY_PREFIX = "ffk_"


class ApiKeyError(FedFaceError):
    """The key file cannot be read or written, or a service name is not usable."""

    exit_code = 2


@dataclass(frozen=True)
class ApiKey:
    service: str
    sha256: str
    created: float
    hint: str  # the key's first characters, to tell keys apart in a listing


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """The key file of one box's data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / KEYS_FILENAME
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._keys: list[ApiKey] = []

    def _load(self) -> list[ApiKey]:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._seen, self._keys = None, []
                return []
            if self._seen != (st.st_mtime_ns, st.st_size):
                try:
                    rows = json.loads(self.path.read_text(encoding="utf-8"))["keys"]
                    self._keys = [ApiKey(r["service"], r["sha256"], r["created"], r["hint"])
                                  for r in rows]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise ApiKeyError(f"cannot read the API keys in {self.path}: {exc}",
                                      hint="recreate it: delete the file and create the "
                                      "keys again") from exc
                self._seen = (st.st_mtime_ns, st.st_size)
            return list(self._keys)

    def _save(self, keys: list[ApiKey]) -> None:
        rows = [{"service": k.service, "sha256": k.sha256, "created": k.created,
                 "hint": k.hint} for k in keys]
        write_atomic(self.path, json.dumps({"keys": rows}, indent=1).encode(), mode=0o600)

    def list(self) -> list[ApiKey]:
        return self._load()

    def create(self, service: str) -> str:
        """A new key for ``service`` (returned once, never stored in clear)."""
        service = service.strip()
        if not service or not service.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ApiKeyError(f"service name {service!r}: use letters, digits, '-', '_', '.'")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self._save([*self._load(), ApiKey(service, _digest(key), time.time(), key[:8])])
        return key

    def revoke(self, service: str) -> int:
        """Remove every key of ``service``; the number removed."""
        keys = self._load()
        kept = [k for k in keys if k.service != service]
        if len(kept) == len(keys):
            raise ApiKeyError(f"no API key for service {service!r}",
                              hint="see them with `fedface-edge api-key list`")
        self._save(kept)
        return len(keys) - len(kept)

    def service_of(self, key: str) -> str | None:
        """The service a presented key belongs to, None if it is no valid key."""
        digest = _digest(key)
        found = None
        for k in self._load():  # every entry compared, in constant time each
            if hmac.compare_digest(k.sha256, digest):
                found = k.service
        return found
