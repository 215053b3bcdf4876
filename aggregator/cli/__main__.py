"""``python -m aggregator.cli``: the same app as the ``fedface-aggregator`` script."""

from aggregator.cli.main import main

main()
