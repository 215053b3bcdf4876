"""Why a network camera's stream did not open, asked of the camera itself.

FFmpeg (through OpenCV) says only that a stream cannot be opened: a wrong password, a
wrong path, a camera that is off and a wrong address all read alike, and a technician
took a wrong password for a dead camera (helper-58). When a stream fails to open,
``probe`` asks the camera once, as a player starts: a TCP connection, then for RTSP a
``DESCRIBE`` of the URL and for HTTP a ``GET``, with the URL's login (Basic, or Digest
when the camera asks for it), and says what the camera answered. The password goes
only to the camera, as FFmpeg sends it; it is never in what this returns.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import ssl
from urllib.parse import unquote, urlsplit

TIMEOUT_S = 3.0
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_STATUS = re.compile(r"(?:RTSP|HTTP)/\d\.\d (\d{3})")


def probe(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """What the camera at ``url`` says to a first request, as a reason a technician can
    act on; None when it accepts it (the failure is then in the stream itself) or when
    the scheme is not one it can ask (rtmp)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return "the port in the URL is not a number from 1 to 65535"
    where = f"{host}:{port}"
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else ""
    # the request line carries no login: the camera gets it in the Authorization header
    target = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        status, challenge = _ask(scheme, host, port, target, path, None, timeout)
        if status == 401 and user is not None:
            auth = _authorization(challenge, user, password, "DESCRIBE" if "rtsp" in scheme
                                  else "GET", target if "rtsp" in scheme else path)
            status, challenge = _ask(scheme, host, port, target, path, auth, timeout)
    except socket.gaierror:
        return f"the camera's host name {host!r} cannot be resolved (check the address)"
    except ConnectionRefusedError:
        return (f"nothing answers at {where}: the connection was refused (check the port, "
                "and that the camera is on and its RTSP/HTTP service enabled)")
    except TimeoutError:
        return (f"no answer from {where} in {timeout:.0f} s (check the address, the "
                "network and that the camera is on)")
    except ssl.SSLError as exc:
        return f"the TLS handshake with {where} failed ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot reach {where}: {exc.strerror or exc}"
    if status is None:
        return f"{where} answered, but not as an {scheme.upper()} camera (check the port)"
    if status == 401:
        if user is None:
            return ("the camera asks for a login (401 Unauthorized): put it in the URL, "
                    f"{scheme}://USER:PASSWORD@{where}{path}")
        return (f"the camera refused the login of user {user!r} (401 Unauthorized): check "
                "the user name and password in the URL")
    if status == 403:
        return f"the camera refused access (403 Forbidden): user {user!r} may not view this stream"
    if status == 404:
        return f"the camera has no stream at {path!r} (404 Not Found): check the URL's path"
    if status >= 400:
        return f"the camera answered {status} to a request for the stream"
    return None


def _ask(scheme: str, host: str, port: int, target: str, path: str, auth: str | None,
         timeout: float) -> tuple[int | None, str]:
    """One request; the answer's status code (None if it is not RTSP/HTTP) and its
    ``WWW-Authenticate`` challenge."""
    rtsp = scheme.startswith("rtsp")
    if rtsp:
        head = f"DESCRIBE {target} RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n"
    else:
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    head += (f"Authorization: {auth}\r\n" if auth else "") + "User-Agent: fedface\r\n\r\n"
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if scheme in ("https", "rtsps"):  # the answer is what is asked, not the certificate
            context = ssl._create_unverified_context()
            sock = context.wrap_socket(raw, server_hostname=host)
        sock.sendall(head.encode("latin-1"))
        answer = b""
        while b"\r\n\r\n" not in answer and len(answer) < 16384:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    text = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    found = _STATUS.match(text)
    challenge = next((line.split(":", 1)[1].strip() for line in text.split("\r\n")[1:]
                      if line.lower().startswith("www-authenticate:")), "")
    return (int(found.group(1)) if found else None), challenge


def _authorization(challenge: str, user: str, password: str, method: str, uri: str) -> str:
    """The Authorization header answering the camera's challenge (RFC 7616 Digest with
    MD5, as IP cameras use; else Basic)."""
    if not challenge.lower().startswith("digest"):
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge[6:]))
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    header = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "opaque" in fields:
        header += f', opaque="{fields["opaque"]}"'
    if "auth" in fields.get("qop", "").split(","):
        cnonce = os.urandom(8).hex()
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        header += f', qop=auth, nc=00000001, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    return header + f', response="{response}"'
