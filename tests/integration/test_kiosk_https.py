"""The kiosk served over HTTPS by itself (``--tls-cert/--tls-key``): a real ``fedface-edge
kiosk serve`` with a certificate made by the docs' openssl command, a client that checks
that certificate, a login whose session cookie is Secure; and the key pairs it refuses
(docs/operations.md, "The kiosk over HTTPS")."""

from __future__ import annotations

import http.client
import http.cookiejar
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from edge.kiosk.auth import PasswordStore

PASSWORD = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]


def docs_certificate(folder: Path, name: str = "kiosk") -> tuple[Path, Path]:
    """The certificate exactly as docs/operations.md makes it (its one openssl line)."""
    text = (REPO / "docs" / "operations.md").read_text()
    command = next(line.strip() for line in text.splitlines()
                   if line.strip().startswith("openssl req -x509"))
    command = command.replace("kiosk.key", f"{name}.key").replace("kiosk.crt", f"{name}.crt")
    command = command.replace("IP:192.168.1.20", "IP:127.0.0.1")
    subprocess.run(command, shell=True, cwd=folder, check=True, capture_output=True)
    return folder / f"{name}.crt", folder / f"{name}.key"


def kiosk_cli(data_dir: Path, frames: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), "kiosk", "serve",
            "--source", f"dir:{frames}?fps=5&loop=1", "--port", "0", *extra]


def test_the_kiosk_serves_https_with_a_secure_session(tmp_path: Path, lfw_dir: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for photo in sorted((lfw_dir / "George_W_Bush").glob("*.jpg"))[:2]:
        shutil.copy(photo, frames)
    cert, key = docs_certificate(tmp_path)
    assert oct(key.stat().st_mode & 0o777) == "0o600"  # openssl writes the key 0600
    data_dir = tmp_path / "box"
    PasswordStore(data_dir).set(PASSWORD)
    kiosk = subprocess.Popen(kiosk_cli(data_dir, frames, "--host", "127.0.0.1", "--tls-cert",
                                       str(cert), "--tls-key", str(key)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=os.environ.copy())
    try:
        assert kiosk.stderr is not None
        said = []
        for line in kiosk.stderr:
            said.append(line)
            if "kiosk on " in line:
                break
        banner = said[-1]
        found = re.search(r"kiosk on (https://127\.0\.0\.1:\d+), camera dir:", banner)
        assert found, "".join(said)
        url = found.group(1)
        trusted = ssl.create_default_context(cafile=str(cert))  # the client checks it
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPSHandler(context=trusted),
                                              urllib.request.HTTPCookieProcessor(jar))
        form = browser.open(url + "/login", timeout=30)
        page = form.read().decode()
        assert form.status == 200 and "Set-Cookie" in str(form.headers)
        assert "Secure" in form.headers["Set-Cookie"], form.headers["Set-Cookie"]
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token, page
        body = urllib.parse.urlencode({"password": PASSWORD,
                                       "csrf_token": token.group(1)}).encode()
        live = browser.open(url + "/login", data=body, timeout=30)
        assert live.status == 200 and live.url.rstrip("/") == url, live.url
        assert "Log out" in live.read().decode()
        status = browser.open(url + "/api/status", timeout=30)
        assert status.status == 200
        # a client that does not trust the certificate gets no page
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(url + "/login", timeout=30,
                                   context=ssl.create_default_context())
        # plain HTTP on the port is never served: it is sent to the same page over HTTPS
        # (it used to get a connection reset: staff who typed the address without
        # https:// saw the kiosk as down)
        port = int(url.rsplit(":", 1)[1])
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        plain.request("POST", "/login?next=/people", body=b"password=" + b"x" * 200_000,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        answer = plain.getresponse()
        assert answer.status == 307, answer.status
        assert answer.getheader("Location") == url + "/login?next=/people"
        assert "speaks HTTPS only" in answer.read().decode()
        plain.close()
        followed = browser.open(url.replace("https://", "http://") + "/login", timeout=30)
        assert followed.status == 200 and followed.url == url + "/login", followed.url
        # a request that names no host is told what to do instead
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            said = b""
            while chunk := raw.recv(4096):
                said += chunk
        assert said.startswith(b"HTTP/1.1 400 ") and b"use https:// in the address" in said
    finally:
        kiosk.terminate()
        _, rest = kiosk.communicate(timeout=30)
    assert kiosk.returncode == 0
    # the untrusting client and the plain HTTP one: not raw server lines in the log, with
    # client addresses (helper-61: 25 in a minute of a browser with a new certificate)
    assert "during handshake" not in rest and "plain HTTP into" not in rest, rest


@pytest.mark.parametrize("case", ["mismatched", "missing", "one"])
def test_a_key_that_cannot_serve_is_refused_clearly(tmp_path: Path, lfw_dir: Path,
                                                    case: str) -> None:
    cert, _ = docs_certificate(tmp_path)
    _, other_key = docs_certificate(tmp_path, "other")
    args = {"mismatched": ["--tls-cert", str(cert), "--tls-key", str(other_key)],
            "missing": ["--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope.key")],
            "one": ["--tls-cert", str(cert)]}[case]
    data_dir = tmp_path / "box"
    PasswordStore(data_dir).set(PASSWORD)
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(lfw_dir / "George_W_Bush" / "George_W_Bush_0001.jpg", frames)
    done = subprocess.run(kiosk_cli(data_dir, frames, *args), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 7, done.stderr
    expected = {"mismatched": "key values mismatch",
                "missing": f"the TLS key {tmp_path / 'nope.key'} does not exist",
                "one": "give both --tls-cert and --tls-key, or neither"}[case]
    assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "'The kiosk over HTTPS'" in done.stderr, done.stderr


def test_a_key_readable_by_others_is_served_with_a_warning(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    from edge.http_thread import server_tls

    cert, key = docs_certificate(tmp_path)
    assert server_tls(cert, key) is not None and "readable by other users" not in caplog.text
    key.chmod(0o644)
    assert server_tls(cert, key) is not None
    assert f"the TLS key {key} is readable by other users (mode 0644): chmod 600 it" in \
        caplog.text, caplog.text
