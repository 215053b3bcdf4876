"""A real kiosk as a child process, a plain HTTP client of it, and the PNG bomb.

- ``KioskProcess``: ``python -m edge.cli -v --data-dir D kiosk serve`` on a free port
  over a folder of two LFW photos, with a staff password set; its log (one line per
  password check, ``edge.kiosk.views_auth``) and its memory: ``VmRSS`` and the kernel's
  high-water mark ``VmHWM``, which ``reset_high_water`` (``/proc/PID/clear_refs``)
  restarts from the current RSS so one request's peak can be read alone.
- ``KioskClient``: one browser as the server sees it: its own cookie jar and source
  address (any 127.0.0.0/8 address reaches a kiosk on 127.0.0.1, so tests can play a
  second client machine). Cookies are sent on every path (a browser keeps the device
  cookie to /login; the server only reads it there).
- ``png_bomb``: a valid RGB PNG of any size, all black, in about size/1000 bytes (a
  30000x30000 one is 2.6 MB and decodes to 2.7 GB), built in a fraction of a second.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode

from bench.rig.broker import free_port
from bench.rig.procs import REPO

PASSWORD = "correct horse battery staple"
ARGON2_MIB = 64  # argon2-cffi's RFC 9106 low-memory profile: 64 MiB per check


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_bomb(width: int, height: int) -> bytes:
    """A black 8-bit RGB PNG; its deflate stream is one compressed block of rows repeated
    (each block follows a full flush, so it stands alone) and the Adler-32 of n zero
    bytes, ((n mod 65521) << 16) | 1, so nothing of decoded size is ever built."""
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    per = max(1, min(height, (16 << 20) // len(row)))
    compressor = zlib.compressobj(9)
    compressor.compress(row * per)
    compressor.flush(zlib.Z_FULL_FLUSH)  # the first block carries the stream header
    block = compressor.compress(row * per) + compressor.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(height, per)
    tail = compressor.compress(row * rest) + compressor.flush(zlib.Z_FULL_FLUSH) if rest else b""
    size = len(row) * height
    stream = (b"\x78\xda" + block * full + tail + b"\x03\x00"  # an empty final block
              + struct.pack(">I", ((size % 65521) << 16) | 1))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
            + _png_chunk(b"IEND", b""))


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    text: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def cookies_set(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]


@dataclass
class KioskClient:
    url: str
    source: str = "127.0.0.1"
    cookies: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> Reply:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout,
                                          source_address=(self.source, 0))
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body or None, headers=sent)
            response = conn.getresponse()
            reply = Reply(response.status, response.getheaders(),
                          response.read().decode("utf-8", "replace"))
        finally:
            conn.close()
        for cookie in reply.cookies_set():
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if not value or "Max-Age=0" in cookie or "1970" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str]) -> Reply:
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def post_files(self, path: str, fields: dict[str, str],
                   files: list[tuple[str, bytes]]) -> Reply:
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                 f"{v}\r\n".encode() for k, v in fields.items()]
        for filename, data in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; '
                         f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'.encode()
                         + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def csrf(self, path: str = "/login") -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get(path).text)
        if not found:
            raise AssertionError(f"no CSRF token on {path}")
        return found.group(1)

    def log_in(self, password: str = PASSWORD, token: str | None = None) -> Reply:
        return self.post("/login", {"password": password,
                                    "csrf_token": token or self.csrf()})


def _proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


class KioskProcess:
    """``fedface-edge kiosk serve`` in a child process (use as a context manager)."""

    def __init__(self, workdir: Path, lfw_dir: Path, start_timeout: float = 180.0) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "kiosk.log"
        self.lfw_dir = Path(lfw_dir)
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> KioskProcess:
        from edge.kiosk.auth import PasswordStore

        frames = self.workdir / "frames"
        frames.mkdir(parents=True, exist_ok=True)
        person = sorted(p for p in self.lfw_dir.iterdir() if p.is_dir())[0]
        for index, photo in enumerate(sorted(person.glob("*.jpg"))[:2]):
            shutil.copy(photo, frames / f"{index:04d}.jpg")
        PasswordStore(self.data_dir).set(PASSWORD)
        self.port = free_port()
        argv = [sys.executable, "-m", "edge.cli", "-v", "--data-dir", str(self.data_dir),
                "kiosk", "serve", "--source", f"dir:{frames}?fps=2&loop=1",
                "--port", str(self.port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the kiosk exited ({self.proc.returncode}): "
                                   f"{self.log()[-2000:]}")
            try:
                if KioskClient(self.url, timeout=5).get("/login").status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the kiosk did not answer within {self.start_timeout:g} s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def password_checks(self) -> int:
        """Passwords checked so far: each check logs one line, success or failure."""
        text = self.log()
        return text.count("kiosk login failed from") + text.count("kiosk login from")

    def rss(self) -> int:
        return _proc_status(self.pid, "VmRSS")

    def high_water(self) -> int:
        return _proc_status(self.pid, "VmHWM")

    def reset_high_water(self) -> None:
        """Restart VmHWM from the current RSS (Linux >= 4.0)."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
            fh.write("5")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> KioskProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
