"""helper-58: a wrong password in an RTSP camera's URL read as a dead camera (FFmpeg says
only "cannot be opened"). ``edge.vision.stream_probe`` asks the camera and says what it
answered. A fake camera here speaks RTSP (Digest, as IP cameras do) or HTTP (Basic) on a
free port, checks the login for real, and FFmpeg's own open is run against it too."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading
from collections.abc import Iterator

import pytest

from edge.vision.capture import open_source
from edge.vision.frame_source import SourceError
from edge.vision.stream_probe import probe

USER, PASSWORD, PATH = "admin", "s3cret-pw", "/Streaming/Channels/101"


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class FakeCamera:
    """Answers every request on a connection: 404 off its path, 401 without the right
    login (a Digest challenge for RTSP, Basic for HTTP), else 200."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.seen: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(4096)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                self.seen.append(lines[0])
                method, uri, _ = lines[0].split(" ")
                headers = {k.lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:])}
                cseq = headers.get("cseq", "1")
                conn.sendall(self._answer(method, uri, headers, cseq).encode("latin-1"))

    def _answer(self, method: str, uri: str, headers: dict[str, str], cseq: str) -> str:
        proto = "RTSP/1.0" if self.protocol == "rtsp" else "HTTP/1.1"
        extra = f"CSeq: {cseq}\r\n" if self.protocol == "rtsp" else ""
        path = uri.split("://", 1)[1].partition("/")[2] if "://" in uri else uri[1:]
        if method == "OPTIONS":  # cameras answer it without a login
            return f"{proto} 200 OK\r\n{extra}Public: DESCRIBE, SETUP, PLAY\r\n\r\n"
        if "/" + path.split("?")[0] != PATH:
            return f"{proto} 404 Not Found\r\n{extra}Content-Length: 0\r\n\r\n"
        if not self._logged_in(method, headers.get("authorization", "")):
            challenge = ('Digest realm="cam", nonce="n0nce", qop="auth"'
                         if self.protocol == "rtsp" else 'Basic realm="cam"')
            return (f"{proto} 401 Unauthorized\r\n{extra}WWW-Authenticate: {challenge}\r\n"
                    "Content-Length: 0\r\n\r\n")
        return f"{proto} 200 OK\r\n{extra}Content-Length: 0\r\n\r\n"

    def _logged_in(self, method: str, auth: str) -> bool:
        if auth.startswith("Basic "):
            return base64.b64decode(auth[6:]).decode() == f"{USER}:{PASSWORD}"
        if not auth.startswith("Digest "):
            return False
        f = dict(re.findall(r'(\w+)="?([^",]*)"?', auth[7:]))
        ha1 = md5(f"{f['username']}:cam:{PASSWORD}") if f.get("username") == USER else ""
        ha2 = md5(f"{method}:{f.get('uri', '')}")
        if "qop" in f:
            expected = md5(f"{ha1}:n0nce:{f['nc']}:{f['cnonce']}:{f['qop']}:{ha2}")
        else:
            expected = md5(f"{ha1}:n0nce:{ha2}")
        return bool(ha1) and f.get("response") == expected

    def url(self, login: str = f"{USER}:{PASSWORD}@", path: str = PATH) -> str:
        return f"{self.protocol}://{login}127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.close()


@pytest.fixture(params=["rtsp", "http"])
def camera(request: pytest.FixtureRequest) -> Iterator[FakeCamera]:
    cam = FakeCamera(request.param)
    yield cam
    cam.close()


def test_the_camera_says_what_is_wrong(camera: FakeCamera) -> None:
    assert probe(camera.url()) is None  # the right login and path: the camera accepts
    wrong = probe(camera.url(f"{USER}:wrong-pw@"))
    assert wrong is not None and "refused the login of user 'admin'" in wrong, wrong
    assert "wrong-pw" not in wrong and PASSWORD not in wrong
    none = probe(camera.url(""))
    assert none is not None and "asks for a login" in none, none
    path = probe(camera.url(path="/Streaming/Channels/9"))
    assert path is not None and "no stream at '/Streaming/Channels/9'" in path, path


def test_what_is_not_a_camera_is_said_too() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # a port nothing listens on
    said = probe(f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{port}/x")
    assert said is not None and "the connection was refused" in said, said
    other = socket.create_server(("127.0.0.1", 0))  # something else: an SSH server, say

    def greet() -> None:
        conn, _ = other.accept()
        with conn:
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    threading.Thread(target=greet, daemon=True).start()
    said = probe(f"rtsp://127.0.0.1:{other.getsockname()[1]}/x")
    other.close()
    assert said is not None and "not as an RTSP camera" in said, said
    said = probe("rtsp://cam.invalid/x")
    assert said is not None and "'cam.invalid' cannot be resolved" in said, said
    assert probe("rtmp://127.0.0.1/live") is None  # not asked: the general reason stays


def test_opening_the_stream_says_why_it_failed(camera: FakeCamera) -> None:
    source = open_source(camera.url(f"{USER}:wrong-pw@"))
    with pytest.raises(SourceError) as info:
        source.open()
    message = str(info.value)
    assert "cannot be opened: the camera refused the login of user 'admin'" in message
    assert "wrong-pw" not in message and f"{USER}:***@" in message, message
    assert len(camera.seen) > 2, camera.seen  # FFmpeg asked the camera too, then the probe
