"""Attack 8 of issue 15, file modes under ``umask 000``: the commissioning, aggregator
and box setup commands and a served update run as real processes under umask 000;
prints the mode of what they created next to the mode issue 15 found (measured then on
the commit before the fix: every mode left to the umask came out 0777 or 0666), and
every path that is group/world-writable, a secret not 0600 or a secret's directory not
0700.

    python -m bench.attacks.file_modes [--quick]
"""

from __future__ import annotations

import argparse
import shutil

from bench.rig.broker import start_mosquitto, stop_broker
from bench.rig.compare import reproduce
from bench.rig.procs import tmpdir
from bench.rig.umask import created, problems, provision, serve_one_update

# issue 15 (and the same commands on the commit before the fix, 4bee75c)
BEFORE = {
    "commissioner": 0o777,  # keys create --out: the federation keys' directory
    "agg-state": 0o777,
    "agg-state/accepted": 0o777,
    "agg-state/blobs": 0o777,
    "agg-state/federation-public.tenseal": 0o666,
    "agg-state/state.db": 0o644,
    "bundle": 0o777,
    "replies": 0o777,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the same run (it is CI-sized)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args(argv)
    from models.registry import verify_models

    model_dir = next(iter(verify_models(None).values())).parent
    work = tmpdir("attack-modes-")
    broker, url = start_mosquitto(work / "broker")
    root = work / "setup"
    root.mkdir()
    try:
        paths = provision(root, 0o000, model_dir)
        during = serve_one_update(paths, url, 0o000)
    finally:
        stop_broker(broker)
    items = created(root)
    items += [c for c in during if not c.path.exists()]
    bad = problems(items, {root / "passphrase", root / "kiosk-pw"})
    print("created under umask 000 (d: directory, s: secret; before: issue 15's figure, "
          "measured on 4bee75c, '-': the mode was already explicit there)")
    print(f"  {'path':44} {'before':>8} {'now':>6}")
    for c in items:
        rel = c.path.relative_to(root).as_posix()
        if rel in ("passphrase", "kiosk-pw"):
            continue  # the bench's own input files
        before = BEFORE.get(rel)
        was = f"{before:04o}" if before is not None else "-"
        kind = "d" if c.is_dir else "s" if c.secret else " "
        print(f"  {kind} {rel:42} {was:>8} {c.mode:04o}")
    writable = sum(1 for c in items if c.mode & 0o022)
    was_writable = sum(1 for m in BEFORE.values() if m & 0o022)
    print(f"\ngroup/world-writable paths: before (issue 15) {was_writable} of the above, "
          f"now {writable}")
    for line in bad:
        print(f"  NOT HELD: {line}")
    print(f"file modes: {'held' if not bad else 'NOT HELD'}")
    print(reproduce("bench.attacks.file_modes", argv))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
