"""Attack 5 of issue 15, "revocation keeps the key": a revoked box still holds the
federation's CKKS secret context, so any later result it obtains, it can decrypt.

Replayed against the real services: a real Mosquitto without ACLs (so the revoked box
stays connected: the worst case, a broker that did not cut it), the real
``fedface-aggregator serve`` process, real FederationClients as three boxes (real CKKS,
the federated part ``embed_bn``), every key step through the operator's and the key
holder's CLI. Round 1 with all three; ``devices revoke box-c``; then, in the same run:

- before (revocation only, what issue 15 found): round 2 is published under the same key,
  and the revoked box-c applies it: its weights equal the remaining boxes';
- now (revocation + ``keys rotate`` + ``keys install``): round 3 is published under key
  epoch 1, which only box-a and box-b received (each sealed to its exchange key); box-c
  refuses it (``wrong_key``), and its old secret forced onto the new ciphertexts decrypts
  to noise.

Also printed: the key holder's rotation time, the sealed bundle's bytes per box, the
operator's install time, and the time from the aggregator's restart to the first result
under the new key. Exit 1 if the revoked box read anything after the rotation, or the
remaining boxes did not complete the round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.rig.broker import start_mosquitto, stop_broker
from bench.rig.compare import reproduce
from bench.rig.procs import REPO, tmpdir

FED = "attack5"
BOXES = ("box-a", "box-b", "box-c")
REVOKED = "box-c"
WAIT = 120.0


def _cli(*args: str) -> tuple[str, float]:
    """``fedface-aggregator ARGS`` from this checkout; its output and wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "aggregator.cli", *args], cwd=REPO,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"fedface-aggregator {args[0]} {args[1]}: {proc.stderr.strip()}")
    return proc.stdout, time.perf_counter() - t0


class Rig:
    """Keys, aggregator state, broker and the three boxes of one run."""

    def __init__(self, root: Path, url: str) -> None:
        from federation.crypto.epochs import (
            EXCHANGE_KEY_NAME,
            exchange_public_hex,
            load_or_create_exchange_key,
            sign_exchange_key,
        )
        from federation.crypto.keys import (
            KEYHOLDER_PUB_NAME,
            create_federation_keys,
            write_private_key,
            write_public_key,
        )
        from federation.crypto.signing import generate_signing_key
        from models.federated_parts import get_part

        self.root, self.url = root, url
        self.part = get_part("embed_bn")
        self.keys = create_federation_keys(root / "keyholder")
        self.state = root / "aggregator"
        _cli("init", "--fed", FED, "--state", str(self.state), "--public-context",
             str(self.keys.public_context), "--part-key", self.part.key)
        self.secrets: dict[str, Path] = {}
        for name in BOXES:  # what provisioning leaves on each box, and its registration
            kdir = root / name / "keys"
            kdir.mkdir(parents=True)
            secret = kdir / "federation-secret.tenseal"
            shutil.copyfile(self.keys.secret_context, secret)
            secret.chmod(0o600)
            shutil.copyfile(self.keys.secret_context.parent / KEYHOLDER_PUB_NAME,
                            kdir / KEYHOLDER_PUB_NAME)
            device = generate_signing_key()
            write_private_key(kdir / "device.key", device)
            write_public_key(kdir / "device.pub", device.public_key())
            kx = exchange_public_hex(load_or_create_exchange_key(kdir / EXCHANGE_KEY_NAME))
            _cli("devices", "add", name, "--public-key", str(kdir / "device.pub"), "--state",
                 str(self.state), "--exchange-key", kx,
                 "--exchange-sig", sign_exchange_key(device, FED, name, kx))
            self.secrets[name] = secret
        self.events: dict[str, list[Any]] = {name: [] for name in BOXES}
        self.clients: dict[str, Any] = {}
        self.aggregator: subprocess.Popen[bytes] | None = None

    def start_boxes(self) -> None:
        import onnx

        from edge.federated.client import ClientConfig, FederationClient
        from edge.federated.epochs import epoch_keys_for
        from edge.serving.sink import base_vector
        from edge.training.drift import NumpyDriftTrainer
        from federation.crypto.keys import load_secret_context, read_private_key, read_public_key
        from federation.transport.mqtt import MqttTransport
        from models.registry import optimised_sface_path

        base = base_vector(onnx.load(str(optimised_sface_path())), self.part)
        for name in BOXES:
            kdir = self.secrets[name].parent

            def transport(will: Any, name: str = name) -> MqttTransport:
                return MqttTransport(self.url, name, will=will, reconnect_max_delay=2)

            client = FederationClient(
                ClientConfig(FED, name), transport, load_secret_context(self.secrets[name]),
                read_private_key(kdir / "device.key"),
                read_public_key(self.state / "aggregator.pub"),
                NumpyDriftTrainer(self.part, base, name, 50, step=1e-2), _Sink(),
                self.root / name / "federation", base, on_event=self.events[name].append,
                epochs=epoch_keys_for(FED, name, self.secrets[name]))
            client.start()
            self.clients[name] = client

    def serve_one_round(self, quorum: int) -> float:
        """Start ``serve --rounds 1`` and wait for it to publish and exit; its wall time."""
        log = (self.root / "aggregator.log").open("ab")
        t0 = time.perf_counter()
        self.aggregator = subprocess.Popen(
            [sys.executable, "-m", "aggregator.cli", "serve", "--state", str(self.state),
             "--broker", self.url, "--quorum", str(quorum), "--rounds", "1",
             "--round-deadline", "600", "--chunk-size", "16384", "--sum-workers", "0"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        if self.aggregator.wait(WAIT) != 0:
            raise RuntimeError(f"aggregator failed; see {self.root / 'aggregator.log'}")
        return time.perf_counter() - t0

    def event(self, name: str, kind: str, round_no: int) -> Any:
        return next((e for e in list(self.events[name])
                     if e.kind == kind and e.round == round_no), None)

    def wait(self, names: tuple[str, ...], kind: str, round_no: int) -> bool:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if all(self.event(n, kind, round_no) is not None for n in names):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        for client in self.clients.values():
            client.stop(timeout=5)
        if self.aggregator is not None and self.aggregator.poll() is None:
            self.aggregator.kill()
            self.aggregator.wait()


class _Sink:
    def apply(self, version: str, vector: np.ndarray,
              reason: str = "federated result") -> None:
        self.version = version


def replay(root: Path, url: str) -> dict[str, Any]:
    from federation.crypto.keys import load_secret_context
    from federation.crypto.packing import EncryptedUpdate, decrypt_average, decrypt_sums
    from federation.errors import FederationError

    rig = Rig(root, url)
    remaining = tuple(n for n in BOXES if n != REVOKED)
    out: dict[str, Any] = {}
    try:
        rig.start_boxes()
        rig.serve_one_round(quorum=3)
        if not rig.wait(BOXES, "applied", 1):
            raise RuntimeError("round 1 did not complete")
        _cli("devices", "revoke", REVOKED, "--state", str(rig.state))

        # before: revocation only; the revoked box (still connected) reads round 2
        rig.serve_one_round(quorum=2)
        rig.wait(remaining, "applied", 2)
        rig.wait((REVOKED,), "applied", 2)  # it may never come: that is the defence
        before = rig.event(REVOKED, "applied", 2)
        honest = rig.event("box-a", "applied", 2)
        out["before_read"] = before is not None
        out["before_error"] = (float(np.max(np.abs(before.data["vector"]
                                                   - honest.data["vector"])))
                               if before is not None and honest is not None else None)

        # now: the key holder rotates to the remaining boxes, the operator installs
        _cli("devices", "recipients", "--state", str(rig.state), "--out",
             str(root / "recipients.json"))
        t0 = time.perf_counter()
        said, rotate_wall = _cli("keys", "rotate", "--keys", str(rig.keys.secret_context.parent),
                              "--recipients", str(root / "recipients.json"), "--fed", FED,
                              "--out", str(root / "epoch-1"))
        _, install_wall = _cli("keys", "install", "--state", str(rig.state), "--epoch",
                               str(root / "epoch-1"))
        sealed = sorted((root / "epoch-1" / "sealed").glob("*.ffsc"))
        out["sealed_to"] = [p.stem for p in sealed]
        out["bundle_bytes"] = [p.stat().st_size for p in sealed]
        out["rotate_s"], out["install_s"] = rotate_wall, install_wall
        # the key holder's own work (new context, checks, sealing), without CLI start-up
        work = re.search(r"\(([0-9.]+) s\)", said)
        out["rotate_work_s"] = float(work.group(1)) if work else rotate_wall
        t1 = time.perf_counter()
        rig.serve_one_round(quorum=2)
        out["completed"] = rig.wait(remaining, "applied", 3)
        out["first_round_s"] = time.perf_counter() - t1
        out["rotation_to_result_s"] = time.perf_counter() - t0
        rig.wait((REVOKED,), "result_rejected", 3)
        rejected = rig.event(REVOKED, "result_rejected", 3)
        out["now_read"] = rig.event(REVOKED, "applied", 3) is not None
        out["now_reason"] = None if rejected is None else rejected.data["reason"]
        old = load_secret_context(rig.secrets[REVOKED])
        new = load_secret_context(rig.secrets["box-a"])
        result = EncryptedUpdate.from_bytes(
            (rig.state / "blobs" / "round-3-result.bin").read_bytes())
        try:
            decrypt_average(old, result)
            out["direct_decrypt"] = "decrypted"
        except FederationError as exc:
            out["direct_decrypt"] = exc.reason
        forced, _ = decrypt_sums(old, dataclasses.replace(result, key_id=old.key_id))
        true, _ = decrypt_sums(new, result)
        out["forced_error"] = float(np.max(np.abs(forced - true)))
        out["forced_corr"] = float(np.corrcoef(forced, true)[0, 1])
        out["epochs"] = (old.epoch, new.epoch)
    finally:
        rig.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks.revocation_keys",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized (the replay is already small: same run)")
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    args = parser.parse_args(argv)
    root = tmpdir("fedface-attack5-")
    broker, url = start_mosquitto(root / "mosquitto")
    try:
        r = replay(root, url)
    finally:
        stop_broker(broker)
    if args.json:
        print(json.dumps(r, indent=2))
    before = ("READ it: weights identical to the remaining boxes' (max diff "
              f"{r['before_error']:.1e})" if r["before_read"] else "did not read it")
    now = ("READ it" if r["now_read"] else
           f"refused ({r['now_reason']}); direct decrypt: {r['direct_decrypt']}; the old "
           f"secret forced onto the new ciphertexts: max error {r['forced_error']:.3g}, "
           f"correlation {r['forced_corr']:+.3f} (noise)")
    sizes = r["bundle_bytes"]
    print("attack 5, revocation keeps the key: does the revoked box read the next result?")
    print("  before (issue 15): yes, every later result it obtains")
    print(f"  before (revocation only, this run): {before}")
    print(f"  now (revocation + key rotation): {now}")
    print(f"  remaining boxes {', '.join(r['sealed_to'])} completed the round under key epoch "
          f"{r['epochs'][1]}: {'yes' if r['completed'] else 'NO'}")
    print(f"  rotation: keys rotate {r['rotate_work_s']:.2f} s of work ({r['rotate_s']:.2f} s "
          f"CLI wall, {len(sizes)} boxes), "
          f"sealed bundle {min(sizes)}-{max(sizes)} bytes per box, keys install "
          f"{r['install_s']:.2f} s, restart to the first result under the new key "
          f"{r['first_round_s']:.1f} s")
    print(reproduce("bench.attacks.revocation_keys", argv))
    held = (r["completed"] and not r["now_read"] and r["now_reason"] == "wrong_key"
            and r["direct_decrypt"] == "wrong_key" and r["forced_error"] > 100.0
            and abs(r["forced_corr"]) < 0.1 and REVOKED not in r["sealed_to"])
    print(f"defence {'HELD' if held else 'DID NOT HOLD'}")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
