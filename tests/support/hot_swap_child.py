"""A box process for the crash tests
(``python -m tests.support.hot_swap_child DATA_DIR VERSION SEED``): applies a perturbed
federated vector (``$FEDFACE_SWAP_CRASH_AFTER`` kills it mid-swap)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.hot_swap import open_swapper, perturbed


def main() -> int:
    data_dir, version, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    swapper = open_swapper(data_dir)
    swapper.apply(version, perturbed(swapper.part.initial_vector(swapper.assets.base_weights),
                                     seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
