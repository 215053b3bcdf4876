"""``python -m edge.cli``: the same as the ``fedface-edge`` console script."""

from edge.cli import main

main()
