"""Who may have the staff password checked now, and which sessions were ended.

``LoginGate`` runs BEFORE the password hash (argon2id: 64 MiB and 0.1-0.5 s per check),
so an attempt it refuses costs neither memory nor CPU:

- per client: ``max_failures`` failed logins within ``window_s`` lock that client out.
  A client is a browser that logged in on this kiosk before (it carries a signed device
  cookie, ``edge.kiosk.views_auth``), else its address. Attempts still being checked
  count as failures until they end, so N parallel attempts cannot all slip through
  before the first failure is recorded.
- global backstop: ``global_max_failures`` failures within the window, from all clients
  together, lock out clients WITHOUT a device cookie (an attack spread over many
  addresses). A browser that logged in before keeps its own budget, so the staff's
  usual screen can still log in with the right password.
- at most ``concurrent_checks`` hashes run at once; a request waits at most
  ``check_wait_s`` for one, and at most ``MAX_WAITING`` requests wait: any other gets
  429 at once.

``SessionEnds`` remembers the sessions ended by a log-out (0600 file, kept across
restarts) until their cookie could no longer be used anyway (idle timeout), so an old
copy of the cookie is refused by the server, not only forgotten by the browser.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.kiosk.auth import KIOSK_DIRNAME, KioskAuthError, kiosk_dir, write_private

log = logging.getLogger(__name__)

MAX_WAITING = 8  # requests waiting for a hash slot; any more get 429 at once
MAX_CLIENTS = 10_000  # per-client failure lists kept (bounded memory under a spray)
ENDED_FILENAME = "ended_sessions.json"
MAX_ENDED = 1_000


class LoginRefused(Exception):
    """The password is not checked now: ``reason`` is "locked" (this client failed too
    often), "crowded" (too many failures from new clients) or "busy" (too many checks
    at once); ``retry_after`` in seconds."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = max(1.0, retry_after)


@dataclass
class Attempt:
    """One admitted password check: report how it went with ``failed``/``succeeded``."""

    gate: LoginGate
    client: str
    outcome: str | None = None
    left: int = 0

    def failed(self) -> int:
        """Record the failure; how many attempts this client has left in the window."""
        self.outcome = "failed"
        self.left = self.gate._record_failure(self.client)
        return self.left

    def succeeded(self) -> None:
        self.outcome = "ok"
        self.gate._forget(self.client)


class LoginGate:
    def __init__(self, max_failures: int, window_s: float, global_max_failures: int,
                 concurrent_checks: int, check_wait_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.global_max_failures = global_max_failures
        self.check_wait_s = check_wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrent_checks)
        self._failures: dict[str, deque[float]] = {}
        self._all_failures: deque[float] = deque(maxlen=global_max_failures)
        self._in_flight: dict[str, int] = {}
        self._waiting = 0
        self.checks = 0  # password checks admitted since start (tests, diagnostics)

    def _recent(self, failures: deque[float], now: float) -> deque[float]:
        while failures and now - failures[0] >= self.window_s:
            failures.popleft()
        return failures

    def _reserve(self, client: str, trusted: bool) -> None:
        with self._lock:
            now = self._clock()
            failures = self._recent(self._failures.get(client, deque()), now)
            in_flight = self._in_flight.get(client, 0)
            if len(failures) >= self.max_failures:
                raise LoginRefused("locked", failures[0] + self.window_s - now)
            if len(failures) + in_flight >= self.max_failures:
                raise LoginRefused("busy", 1.0)  # its attempts under way may lock it
            recent = self._recent(self._all_failures, now)
            if not trusted and len(recent) >= self.global_max_failures:
                raise LoginRefused("crowded", recent[0] + self.window_s - now)
            if self._waiting >= MAX_WAITING:
                raise LoginRefused("busy", 1.0)
            self._in_flight[client] = in_flight + 1
            self._waiting += 1

    def _release(self, client: str) -> None:
        with self._lock:
            left = self._in_flight.get(client, 1) - 1
            if left > 0:
                self._in_flight[client] = left
            else:
                self._in_flight.pop(client, None)

    @contextlib.contextmanager
    def attempt(self, client: str, trusted: bool = False) -> Iterator[Attempt]:
        """Admit one password check (``LoginRefused`` if not now); the check runs in the
        ``with`` block, which must call ``failed()`` or ``succeeded()``."""
        self._reserve(client, trusted)
        try:
            got_slot = self._slots.acquire(timeout=self.check_wait_s)
        finally:
            with self._lock:
                self._waiting -= 1
        if not got_slot:
            self._release(client)
            raise LoginRefused("busy", 1.0)
        try:
            with self._lock:
                self.checks += 1
            yield Attempt(self, client)
        finally:
            self._slots.release()
            self._release(client)

    def _record_failure(self, client: str) -> int:
        with self._lock:
            now = self._clock()
            failures = self._recent(self._failures.setdefault(client, deque()), now)
            failures.append(now)
            self._all_failures.append(now)
            if len(self._failures) > MAX_CLIENTS:
                for key in [k for k, v in self._failures.items() if not v][:MAX_CLIENTS // 2]:
                    del self._failures[key]
                if len(self._failures) > MAX_CLIENTS:  # all recent: drop the oldest half
                    for key in list(self._failures)[:MAX_CLIENTS // 2]:
                        del self._failures[key]
            return max(0, self.max_failures - len(failures) - self._in_flight.get(client, 1)
                       + 1)

    def _forget(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


class SessionEnds:
    """Session ids ended on the server, each kept until ``keep_s`` after its end."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / KIOSK_DIRNAME / ENDED_FILENAME
        self._clock = clock
        self._lock = threading.Lock()
        self._until = self._load()

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # fail closed would log everyone out for good; the idle timeout still bounds
            # every old cookie, so start empty and say so
            log.warning("cannot read %s (%s): sessions ended before are forgotten",
                        self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}

    def end(self, sid: str, keep_s: float) -> None:
        """Refuse ``sid`` from now on (for ``keep_s``: after that its cookie has expired)."""
        with self._lock:
            now = self._clock()
            self._until = {k: v for k, v in self._until.items() if v > now}
            self._until[sid] = now + keep_s
            if len(self._until) > MAX_ENDED:
                kept = sorted(self._until.items(), key=lambda kv: kv[1])[-MAX_ENDED:]
                self._until = dict(kept)
            try:
                kiosk_dir(self.path.parent.parent)
                write_private(self.path, json.dumps(self._until, sort_keys=True).encode())
            except KioskAuthError as exc:
                # the log-out still happens and holds until a restart; a full disk must
                # not leave the staff logged in
                log.error("session ended, but not recorded on disk (a restart would "
                          "forget it): %s", exc)

    def ended(self, sid: object) -> bool:
        with self._lock:
            until = self._until.get(str(sid))
            return until is not None and until > self._clock()
