"""Attack 7 of issue 15 against a real kiosk process: a PNG decompression bomb uploaded
for enrolment, the same bomb given to ``fedface-edge enroll``, and a name with a
right-to-left override.

    python -m bench.attacks.upload_bomb [--quick] [--uploads 3] [--side 30000]

The bomb is a valid black RGB PNG of 30000x30000 pixels in 2.6 MB (under the 8 MB
upload limit; 2.7 GB once decoded). Each upload is timed from request to answer, and the
kiosk's ``VmHWM`` (reset before it) gives the memory it took. The CLI run is timed and
its peak RSS measured against the same command on a normal photo (model loading
dominates both). The old decoder path is gone and no knob brings it back (the pixel
cap's setting has a floor), so the "before" figures are the ones recorded in issue 15.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common.lfw import default_lfw_dir
from bench.common.peak_rss import peak_rss
from bench.rig.compare import Target, print_targets
from bench.rig.kiosk import KioskClient, KioskProcess, png_bomb
from bench.rig.procs import REPO, tmpdir

MIB = 2**20


@dataclass
class KioskFigures:
    seconds: list[float]
    grown_mib: list[float]
    statuses: list[int]
    peak_mib: float
    bidi_refused: bool


def kiosk_uploads(kiosk: KioskProcess, bomb: bytes, uploads: int,
                  photo: bytes) -> KioskFigures:
    staff = KioskClient(kiosk.url)
    if staff.log_in().status != 302:
        raise RuntimeError("could not log in to the kiosk")
    seconds, grown, statuses = [], [], []
    for _ in range(uploads):
        token = staff.csrf("/enrol")
        kiosk.reset_high_water()
        before = kiosk.rss()
        started = time.monotonic()
        reply = staff.post_files("/enrol/upload", {"name": "Bomb", "csrf_token": token},
                                 [("bomb.png", bomb)])
        seconds.append(time.monotonic() - started)
        grown.append((kiosk.high_water() - before) / MIB)
        statuses.append(reply.status)
    bidi = staff.post_files("/enrol/upload",
                            {"name": "Ada\u202eecivreS", "csrf_token": staff.csrf("/enrol")},
                            [("ada.jpg", photo)])
    return KioskFigures(seconds, grown, statuses, kiosk.high_water() / MIB,
                        bidi.status == 400 and "text-direction control" in bidi.text)


def cli_enrol(workdir: Path, image: Path) -> tuple[int, float, float]:
    argv = [sys.executable, "-m", "edge.cli", "--data-dir", str(workdir / "box"),
            "enroll", "Dan", str(image)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = peak_rss(argv, timeout=300, env=env, cwd=str(REPO))
    return result.returncode, result.seconds, result.peak_mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks.upload_bomb",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one upload (CI-sized)")
    parser.add_argument("--uploads", type=int, default=3)
    parser.add_argument("--side", type=int, default=30000, help="bomb width = height")
    parser.add_argument("--lfw", type=Path, default=default_lfw_dir())
    args = parser.parse_args(argv)
    uploads = 1 if args.quick else args.uploads
    workdir = tmpdir("upload-bomb-")
    bomb = png_bomb(args.side, args.side)
    bomb_path = workdir / "bomb.png"
    bomb_path.write_bytes(bomb)
    photo_path = sorted((args.lfw / "George_W_Bush").glob("*.jpg"))[0]
    with KioskProcess(workdir / "kiosk", args.lfw) as kiosk:
        got = kiosk_uploads(kiosk, bomb, uploads, photo_path.read_bytes())
    cli_code, cli_s, cli_peak = cli_enrol(workdir / "bomb", bomb_path)
    _, normal_s, normal_peak = cli_enrol(workdir / "normal", photo_path)
    seconds, grown = got.seconds, got.grown_mib
    refused = all(s == 400 for s in got.statuses)
    results: list[Target] = [
        ("kiosk upload answered", "after 43 s", f"{statistics.median(seconds):.3f} s "
         f"(median of {uploads}; HTTP {sorted(set(got.statuses))})",
         "refused in < 1 s", refused and max(seconds) < 1.0),
        ("kiosk memory growth on the upload", "to 5.56 GB peak",
         f"{max(grown):.1f} MiB (most of {uploads}; kiosk peak {got.peak_mib:.0f} MiB)",
         "< 100 MiB", max(grown) < 100),
        ("fedface-edge enroll of the bomb", "decoded (not measured in the issue)",
         f"exit {cli_code} in {cli_s:.1f} s, peak {cli_peak:.0f} MiB (a normal photo: "
         f"{normal_s:.1f} s, {normal_peak:.0f} MiB)", "refused, peak < normal + 100 MiB",
         cli_code == 3 and cli_peak < normal_peak + 100),
        ("name with U+202E (right-to-left override)", "accepted",
         "refused" if got.bidi_refused else "ACCEPTED", "refused", got.bidi_refused),
    ]
    print(f"attack 7, decompression bomb: a {len(bomb) / 1e6:.1f} MB PNG of "
          f"{args.side}x{args.side} ({args.side**2 * 3 / 1e9:.1f} GB decoded)")
    return print_targets("bench.attacks.upload_bomb", results, argv)


if __name__ == "__main__":
    raise SystemExit(main())
