"""Issue 15, attack 8: the product's setup commands run as real processes under a given
umask (``umask 000``: every mode the code leaves to the umask comes out world-writable),
and what they created, checked (bench.attacks.file_modes, tests/integration).

The commands, as a commissioner, an operator and a technician run them: ``keys create``,
``init`` with a CA, ``keys bundle``, the box's ``provision`` (request), ``devices add``
(reply), ``provision --install-reply``, and then ``serve`` taking one box's update (the
state's spool/, accepted/round-1/, blobs/ and database).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.rig.procs import REPO

FED = "fed-modes"
PASSPHRASE = "correct horse battery staple"
# Files whose bytes are secret, by name (the rest are found by content, ``is_secret``).
SECRET_NAMES = {"federation-secret.tenseal", "secret.key", "password.hash",
                "aggregator.key", "device.key", "fed.ffkb"}


@dataclass(frozen=True)
class Created:
    path: Path
    mode: int
    is_dir: bool
    secret: bool


def run(argv: list[str], umask: int, what: str, cwd: Path | None = None) -> str:
    """``python -m ...`` under ``umask`` (a real process: its own umask from the start)."""
    r = subprocess.run([sys.executable, "-m", *argv], cwd=cwd or REPO, umask=umask,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {r.stdout[-2000:]}"
                           f"{r.stderr[-2000:]}")
    return r.stdout


def provision(root: Path, umask: int, model_dir: Path) -> dict[str, Path]:
    """Commission, initialise and provision one box under ``umask``; the paths made."""
    agg = ["aggregator.cli"]
    keys, state, ca, box = root / "commissioner", root / "agg-state", root / "ca", root / "box1"
    (root / "passphrase").write_text(PASSPHRASE + "\n")
    (root / "kiosk-pw").write_text("kiosk staff passphrase\n")
    run([*agg, "keys", "create", "--out", str(keys)], umask, "keys create")
    run([*agg, "init", "--fed", FED, "--state", str(state), "--public-context",
         str(keys / "federation-public.tenseal"), "--ca-dir", str(ca)], umask, "init")
    bundle = root / "bundle" / "fed.ffkb"
    run([*agg, "keys", "bundle", "--secret-context", str(keys / "federation-secret.tenseal"),
         "--aggregator-key", str(state / "aggregator.pub"), "--ca-cert", str(ca / "ca.crt"),
         "--fed", FED, "--out", str(bundle), "--passphrase-file", str(root / "passphrase"),
         "--broker-url", "mqtts://localhost:8883"], umask, "keys bundle")
    edge = ["edge.cli", "--data-dir", str(box), "--model-dir", str(model_dir)]
    run([*edge, "provision", "--non-interactive", "--device-id", "box1", "--bundle",
         str(bundle), "--passphrase-file", str(root / "passphrase"), "--camera", "0",
         "--skip-camera-test", "--kiosk-password-file", str(root / "kiosk-pw")],
        umask, "provision (request)")
    reply = root / "replies" / "box1.reply.json"
    run([*agg, "devices", "add", "--request", str(box / "box1.request.json"), "--reply",
         str(reply), "--state", str(state)], umask, "devices add")
    run([*edge, "provision", "--install-reply", str(reply)], umask, "provision (reply)")
    return {"keys": keys, "state": state, "ca": ca, "box": box, "bundle": bundle}


def is_secret(path: Path) -> bool:
    if path.name in SECRET_NAMES or path.suffix == ".key":
        return True
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return False
    return b"PRIVATE KEY" in head


def created(root: Path) -> list[Created]:
    """Every file and directory under ``root`` (symlinks skipped), with its mode."""
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            continue
        st = path.stat()
        is_dir = stat.S_ISDIR(st.st_mode)
        out.append(Created(path, stat.S_IMODE(st.st_mode), is_dir,
                           not is_dir and is_secret(path)))
    return out


def problems(items: list[Created], inputs: set[Path]) -> list[str]:
    """What is wrong: group/world-writable anything; a secret file not 0600; a directory
    holding a secret not 0700. ``inputs``: files the bench wrote itself (not the product)."""
    bad = []
    secret_dirs = {c.path.parent for c in items if c.secret}
    for c in items:
        if c.path in inputs:
            continue
        where = f"{c.path} {c.mode:04o}"
        if c.mode & 0o022:
            bad.append(f"{where}: writable by group/others")
        if c.secret and c.mode != 0o600:
            bad.append(f"{where}: a secret file, not 0600")
        if c.is_dir and c.path in secret_dirs and c.mode != 0o700:
            bad.append(f"{where}: holds secrets, not 0700")
    return bad


def serve_one_update(paths: dict[str, Path], url: str, umask: int) -> list[Created]:
    """``serve`` under ``umask`` (quorum 2: round 1 stays open) and box1's real update,
    accepted: the spool, accepted/round-1/ and its blob, the database's WAL get made.
    Returns the state directory as it is then (the round's files go when it closes)."""
    import numpy as np

    from bench.rig.flood import HonestProbe, wait_open
    from federation.crypto.key_files import read_private_key
    from federation.crypto.keys import load_secret_context
    from federation.crypto.packing import DEFAULT_COUNT_SCALE, encrypt_update

    state = paths["state"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "serve", "--state", str(state), "--broker",
         url, "--quorum", "2", "--rounds", "1", "--round-deadline", "120"],
        cwd=REPO, umask=umask, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        round_no, base = wait_open(url, FED, 120)
        secret = load_secret_context(paths["keys"] / "federation-secret.tenseal")
        vec = np.random.default_rng(1).normal(0, 0.4, 2000).astype(np.float32)
        blob = encrypt_update(secret, vec, 50, DEFAULT_COUNT_SCALE).to_bytes()
        probe = HonestProbe(url, FED, "box1", read_private_key(paths["box"] / "keys" /
                                                               "device.key"),
                            blob, round_no, base)
        try:
            probe.once(120)  # acked: stored (group commit) before the ack went out
            if probe.reasons != [None]:
                raise RuntimeError(f"box1's update was not accepted: {probe.reasons}")
        finally:
            probe.close()
        return created(state)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
