"""``python -m bench.attacks [--quick]``: every attack replay of issue 15, one after the
other; exits non-zero if any replay's defence did not hold."""

from __future__ import annotations

import importlib
import sys

# One module per attack, in the order issue 15 lists them.
ATTACKS: tuple[str, ...] = (
    "weighting", "overflow", "downgrade", "unknown_flood", "revocation_keys",
    "kiosk_login", "upload_bomb", "file_modes",
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(args):
        print(__doc__)
        print("attacks, in order:", ", ".join(ATTACKS))
        print("each alone: python -m bench.attacks.<name> --help")
        return 0
    failed = []
    for name in ATTACKS:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.attacks.{name}")
        if module.main(list(args)) != 0:
            failed.append(name)
    if failed:
        print(f"defences that did not hold: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
